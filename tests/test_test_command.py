"""The test command itself (tests/run.sh) and the test cluster's port choice
(tests/slurm/free-ports.sh): taken ports are skipped, and run.sh stops the cluster it started,
whatever ends the suite, but never one it found running. Pure bash with stand-in commands: no
root, no SLURM needed."""

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FREE_PORTS = ROOT / "tests" / "slurm" / "free-ports.sh"


def free_ports(first: int, count: int) -> int:
    done = subprocess.run(["bash", str(FREE_PORTS), str(first), str(count)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def listener():
    """A TCP socket listening on a port the OS chose (as slurmctld of another cluster would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_free_ports_skips_a_block_holding_a_listening_port(listener):
    first = listener - 1  # the block first..first+1 holds the listener
    base = free_ports(first, 2)
    assert base > listener and (base - first) % 2 == 0
    assert bindable(base) and bindable(base + 1)


def test_free_ports_keeps_the_first_block_when_it_is_free():
    with socket.socket() as sock:  # a port the OS has just found free
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert free_ports(port, 1) == port


def test_free_ports_with_no_free_block_says_so(listener):
    done = subprocess.run(["bash", str(FREE_PORTS), str(listener), str(65536 - listener)], capture_output=True, text=True)
    assert done.returncode == 1 and not done.stdout and "no " in done.stderr


# ---------------------------------------------------------------- tests/run.sh, with stand-ins

STAND_INS = {
    # root, so that run.sh starts a cluster; the browser and container tools already installed, so no apt
    "id": 'echo 0',
    "chromium": "true",
    "chromedriver": "true",
    "podman": "true",
    "debootstrap": "true",
    "ch-run": "true",
    "ch-convert": "true",
    # pytest: records itself; PYTEST_INTERRUPT=1 sends run.sh a Ctrl-C's SIGINT while it runs
    "python3": ('case "$*" in *pytest*) echo pytest >> "$CALLS"\n'
                '  [ "${PYTEST_INTERRUPT:-0}" = 1 ] && kill -INT "$PPID"\n'
                '  exit "${PYTEST_STATUS:-0}" ;; esac; exit 0'),
    "scontrol": '[ "${CLUSTER_UP:-0}" = 1 ] && echo "Slurmctld(primary) at vm is UP" || exit 1',
}


def fake_checkout(tmp_path: Path, start_status: int = 0) -> tuple[Path, dict]:
    checkout = tmp_path / "checkout"
    (checkout / "tests" / "slurm").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "run.sh", checkout / "tests" / "run.sh")
    (checkout / "tests" / "slurm" / "start-cluster.sh").write_text(
        f'echo "start $1" >> "$CALLS"; mkdir -p "$1"; : > "$1/env.sh"; exit {start_status}\n')
    (checkout / "tests" / "slurm" / "stop-cluster.sh").write_text('echo "stop $1" >> "$CALLS"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "VIRNUCPRO_SLURM_DIR": str(tmp_path / "cluster")}
    return checkout, env


def run_tests(checkout: Path, env: dict) -> tuple[int, list[str]]:
    done = subprocess.run(["bash", str(checkout / "tests" / "run.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = Path(env["CALLS"]).read_text().splitlines() if Path(env["CALLS"]).exists() else []
    return done.returncode, calls


@pytest.mark.parametrize("pytest_status", [0, 1])
def test_run_sh_stops_the_cluster_it_started_and_keeps_the_suites_exit_status(tmp_path, pytest_status):
    checkout, env = fake_checkout(tmp_path)
    cluster = env["VIRNUCPRO_SLURM_DIR"]
    status, calls = run_tests(checkout, {**env, "PYTEST_STATUS": str(pytest_status)})
    assert calls == [f"start {cluster}", "pytest", f"stop {cluster}"]
    assert status == pytest_status


def test_run_sh_stops_the_cluster_it_started_on_ctrl_c(tmp_path):
    checkout, env = fake_checkout(tmp_path)
    cluster = env["VIRNUCPRO_SLURM_DIR"]
    status, calls = run_tests(checkout, {**env, "PYTEST_INTERRUPT": "1", "PYTEST_STATUS": "2"})
    assert calls == [f"start {cluster}", "pytest", f"stop {cluster}"] and status == 130


def test_run_sh_cleans_up_after_a_failed_start(tmp_path):
    checkout, env = fake_checkout(tmp_path, start_status=1)
    status, calls = run_tests(checkout, env)
    assert status == 1 and calls == [f"start {env['VIRNUCPRO_SLURM_DIR']}", f"stop {env['VIRNUCPRO_SLURM_DIR']}"]


def test_run_sh_leaves_a_cluster_it_found_running_alone(tmp_path):
    checkout, env = fake_checkout(tmp_path)
    cluster = Path(env["VIRNUCPRO_SLURM_DIR"])
    cluster.mkdir()
    (cluster / "env.sh").write_text("")
    status, calls = run_tests(checkout, {**env, "CLUSTER_UP": "1"})
    assert status == 0 and "pytest" in calls and not [call for call in calls if call.startswith("stop")]
