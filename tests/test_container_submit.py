"""submit --container: every task of a run runs inside the image. Dry-run scripts for Apptainer,
Singularity and Charliecloud (binds of the workdir, models and inputs; --nv on GPU stages only;
quoting), the batch shell that forwards SLURM's signals and requeues a task that asks, the check
of the image's versions, the profile keys, provenance and the report, and a login node without
torch. No runtime and no SLURM needed: fake programs stand in for them (tests/test_slurm_cluster.py
runs real ones)."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from source_tree import source_copy
from virnucpro import __version__
from virnucpro.orchestration.container import IMAGE_PYTHON, Container
from virnucpro.orchestration.slurm.sbatch import container_task_lines
from virnucpro.paths import Workdir
from virnucpro.pipeline import PREDICTION_STAGES

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "virnucpro.cli"]
GPU_STAGES = {"dnabert", "esm2"}
# A runtime that answers --version and, for `exec`, prints the versions the test gives it (what the
# image's Python would print for submit's version probe).
FAKE_RUNTIME = """#!/bin/sh
case "$1" in
  --version) echo "$FAKE_RUNTIME_VERSION" ;;
  exec|*) printf '{"virnucpro": "%s", "submitit": "%s"}\\n' "$IMAGE_VIRNUCPRO" "$IMAGE_SUBMITIT" ;;
esac
"""


def fake_runtime(tmp_path: Path, program: str, virnucpro: str = __version__, submitit: str | None = None) -> dict:
    """An environment whose PATH starts with a fake `program` reporting these versions from the image."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / program).write_text(FAKE_RUNTIME)
    (bin_dir / program).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RUNTIME_VERSION": f"{program} version 1.3.4",
            "IMAGE_VIRNUCPRO": virnucpro, "IMAGE_SUBMITIT": submitit or version("submitit")}


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def task_line(script: str) -> list[str]:
    """The container command line of a dry-run script: the one the batch shell starts in the background."""
    (line,) = [x for x in script.splitlines() if x.endswith(" &")]
    return shlex.split(line[:-2])


@pytest.fixture
def sif(tmp_path) -> Path:
    image = tmp_path / "my images" / "virnucpro it's.sif"
    image.parent.mkdir()
    image.write_bytes(b"not really a SIF")
    return image


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_every_task_runs_in_the_image_with_the_runs_paths_bound_and_gpus_for_gpu_stages_only(
        runtime, sif, demo_models, example_inputs, tmp_path):
    workdir = tmp_path / "it's a \"run\" dir" / "w $HOME `x`"
    env = fake_runtime(tmp_path, runtime)
    done = cli("submit", example_inputs, "--models", demo_models, "-w", workdir, "--partition", "gpu", "--dry-run",
               "--container", sif, "--container-runtime", runtime, env=env)
    assert done.returncode == 0, done.stderr
    binds = sorted(str(p) for p in (workdir, demo_models, example_inputs.parent))
    for stage in PREDICTION_STAGES:
        script = (Workdir(workdir).dry_run_dir / f"{stage}.sh").read_text()
        assert script in done.stdout  # each task's exact command line is shown
        command = task_line(script)
        nv = ["--nv"] if stage in GPU_STAGES else []
        assert command[:2 + len(nv)] == [runtime, "exec", *nv]
        pairs = command[2 + len(nv):-7]
        assert pairs == [a for path in binds for a in ("--bind", f"{path}:{path}")]
        assert command[-7:] == [str(sif), IMAGE_PYTHON, "-I", "-u", "-m", "submitit.core._submit",
                                str(Workdir(workdir).submitit_dir(stage))]
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        assert not any(line.startswith("exec ") for line in script.splitlines())  # the shell stays outside


def test_a_training_on_the_cpu_asks_no_gpu_libraries_for_its_train_task(sif, demo_models, tmp_path):
    labels = tmp_path / "labels.tsv"
    example = ROOT / "virnucpro" / "data" / "example"
    labels.write_text(f"{example / 'sample_a.fasta'}\tvirus\n{example / 'sample_b.fasta'}\tother\n")
    workdir = tmp_path / "w"
    done = cli("submit", labels, "--kind", "train", "--device", "cpu", "--models", demo_models, "-w", workdir,
               "--partition", "gpu", "--dry-run", "--container", sif, "--container-runtime", "apptainer",
               env=fake_runtime(tmp_path, "apptainer"))
    assert done.returncode == 0, done.stderr
    assert "--nv" not in task_line((Workdir(workdir).dry_run_dir / "train.sh").read_text())


def test_charliecloud_binds_outside_tmp_and_names_the_mount_points_a_dry_run_does_not_create(
        demo_models, inputs_outside_tmp, tmp_path):
    example_inputs = inputs_outside_tmp
    image = tmp_path / "virnucpro.ch"
    image.mkdir()
    done = cli("submit", example_inputs, "--models", demo_models, "-w", tmp_path / "w", "--partition", "gpu", "--dry-run",
               "--container", image, "--container-runtime", "charliecloud", env=fake_runtime(tmp_path, "ch-run"))
    assert done.returncode == 0, done.stderr
    examples = str(example_inputs.parent)
    script = (Workdir(tmp_path / "w").dry_run_dir / "esm2.sh").read_text()
    assert task_line(script)[:5] == ["ch-run", "--set-env=TMPDIR=/tmp", "-b", f"{examples}:{examples}", str(image)]
    assert 'export USER="${USER:-$(id -un)}"' in script  # ch-run refuses to start without $USER
    assert f"ch-run needs these folders in the image to bind onto; submit creates them: {examples}" in done.stderr
    assert list(image.iterdir()) == []  # a dry run changes nothing


@pytest.mark.parametrize("image_versions, named", [
    ({"virnucpro": "0.0.9"}, "holds virnucpro 0.0.9 and submitit {submitit}"),
    ({"submitit": "1.5.3"}, "holds virnucpro {virnucpro} and submitit 1.5.3"),
])
def test_an_image_of_another_release_is_refused_in_one_line_naming_both(
        image_versions, named, sif, demo_models, example_inputs, tmp_path):
    env = fake_runtime(tmp_path, "apptainer", **image_versions)
    args = ["submit", example_inputs, "--models", demo_models, "-w", tmp_path / "w", "--partition", "gpu",
            "--container", sif, "--container-runtime", "apptainer"]
    done = cli(*args, env=env)
    here = {"virnucpro": __version__, "submitit": version("submitit")}
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert named.format(**here) in done.stderr
    assert f"this submit virnucpro {here['virnucpro']} and submitit {here['submitit']}" in done.stderr
    assert not (tmp_path / "w").exists()
    dry = cli(*args, "--dry-run", env=env)  # a dry run shows the scripts, and warns
    assert dry.returncode == 0 and "warning: " in dry.stderr and named.format(**here) in dry.stderr


def test_a_missing_image_and_a_runtime_missing_here_are_refused_in_one_line(sif, demo_models, example_inputs, tmp_path):
    args = ["submit", example_inputs, "--models", demo_models, "-w", tmp_path / "w", "--partition", "gpu"]
    missing = cli(*args, "--container", tmp_path / "nowhere.sif", "--container-runtime", "apptainer")
    assert missing.returncode == 2 and "nowhere.sif: no such container image; build one with container/build.sh" in missing.stderr
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": f"{empty}:{os.path.dirname(sys.executable)}"}
    absent = cli(*args, "--container", sif, "--container-runtime", "singularity", env=env)
    assert absent.returncode == 2 and "singularity is not on PATH here" in absent.stderr
    assert len(absent.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
    detect = cli(*args, "--container", sif, env=env)
    assert detect.returncode == 2 and "no container runtime found on PATH" in detect.stderr


def test_the_profile_names_the_image_and_the_runtime_and_flags_override_it(sif, demo_models, example_inputs, tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({"partition": "gpu", "container": str(sif), "container_runtime": "singularity"}))
    fake_runtime(tmp_path, "singularity")
    env = fake_runtime(tmp_path, "apptainer")  # both on PATH
    args = ["submit", example_inputs, "--models", demo_models, "--profile", profile, "--dry-run"]
    done = cli(*args, "-w", tmp_path / "a", env=env)
    assert done.returncode == 0, done.stderr
    assert task_line((Workdir(tmp_path / "a").dry_run_dir / "esm2.sh").read_text())[:3] == ["singularity", "exec", "--nv"]
    done = cli(*args, "-w", tmp_path / "b", "--container-runtime", "apptainer", env=env)
    assert task_line((Workdir(tmp_path / "b").dry_run_dir / "esm2.sh").read_text())[0] == "apptainer"
    profile.write_text(yaml.safe_dump({"partition": "gpu", "container_runtime": "docker"}))
    bad = cli(*args, "-w", tmp_path / "c")
    assert bad.returncode == 2 and f"{profile}: container_runtime 'docker' is not one of apptainer" in bad.stderr


# ---------------------------------------------------------------- the batch shell outside the image

FAKE_TASK = """#!/bin/bash
# stands for the runtime running the task: records what it was given, then waits for a signal
echo "$VIRNUCPRO_REQUEUE_BY_BATCH_SHELL ${USER:-no-user} $*" > "$RECORD"
trap 'echo "got USR2" >> "$RECORD"; exit "$ON_SIGNAL"' USR2
trap 'echo "got TERM" >> "$RECORD"; exit "$ON_SIGNAL"' TERM
[ -z "${EXIT_AT_ONCE:-}" ] || exit "$EXIT_AT_ONCE"
while :; do sleep 0.05; done
"""


def run_batch_shell(tmp_path: Path, runtime: str, send: signal.Signals | None, on_signal: int = 75,
                    exit_at_once: str = "") -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """The container part of a task's sbatch script under bash, with a fake runtime and scontrol;
    `send`: the signal SLURM sends the batch shell once the task runs. Returns (the shell's
    outcome, what the task recorded, what scontrol was asked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    container = Container(runtime, "/images/virnucpro", ("/data/w",))
    (bin_dir / container.program).write_text(FAKE_TASK)
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$*" >> "$SCONTROL"\n')
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    script = tmp_path / "task.sh"
    script.write_text("set -euo pipefail\n" + container_task_lines(container, container.python(["-m", "x"], gpu=True)) + "\n")
    record, scontrol = tmp_path / "record", tmp_path / "scontrol"
    env = {k: v for k, v in os.environ.items() if k != "USER"}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(record), SCONTROL=str(scontrol),
               ON_SIGNAL=str(on_signal), EXIT_AT_ONCE=exit_at_once, SLURM_ARRAY_JOB_ID="123", SLURM_ARRAY_TASK_ID="4",
               SLURM_JOB_ID="127")
    shell = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not record.exists() and shell.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if send:
        time.sleep(0.2)  # the fake task's traps are set
        shell.send_signal(send)
    out, err = shell.communicate(timeout=60)
    lines = lambda path: path.read_text().splitlines() if path.exists() else []  # noqa: E731
    return subprocess.CompletedProcess(shell.args, shell.returncode, out, err), lines(record), lines(scontrol)


@pytest.mark.parametrize("sent", [signal.SIGUSR2, signal.SIGTERM])
def test_the_batch_shell_passes_slurms_signal_on_and_requeues_the_task_that_asks(tmp_path, sent):
    done, task, scontrol = run_batch_shell(tmp_path, "apptainer", sent)
    assert task[0].startswith(f"1 {os.environ.get('USER', 'no-user')} exec --nv --bind /data/w:/data/w /images/virnucpro")
    assert task[1:] == [f"got {sent.name.removeprefix('SIG')}"]
    assert scontrol == ["requeue 123_4"] and "requeued 123_4" in done.stderr
    assert done.returncode == 0, done.stderr


def test_the_batch_shell_keeps_the_tasks_failure_and_success_and_requeues_neither(tmp_path):
    done, task, scontrol = run_batch_shell(tmp_path / "failed", "singularity", signal.SIGUSR2, on_signal=1)
    assert task[1:] == ["got USR2"] and done.returncode == 1 and scontrol == []
    done, task, scontrol = run_batch_shell(tmp_path / "finished", "singularity", None, exit_at_once="0")
    assert done.returncode == 0 and scontrol == [] and len(task) == 1


def test_the_charliecloud_batch_shell_gives_ch_run_a_user(tmp_path):
    done, task, scontrol = run_batch_shell(tmp_path, "charliecloud", signal.SIGUSR2)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert task[0].startswith(f"1 {user} --set-env=TMPDIR=/tmp -b /data/w:/data/w /images/virnucpro -- {IMAGE_PYTHON} -I")
    assert scontrol == ["requeue 123_4"] and done.returncode == 0


# ---------------------------------------------------------------- what the run records

def test_provenance_and_the_report_name_the_image_the_tasks_ran_in(quiet_demo_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    container = {"runtime": "charliecloud", "runtime_version": "0.31", "image": "/shared/images/virnucpro.ch",
                 "virnucpro": __version__, "submitit": version("submitit"), "digest": "sha256:" + "ab" * 32,
                 "digest_of": "the OCI image it was converted from, as container/build.sh recorded it",
                 "binds": ["/shared"]}
    Workdir(workdir).jobs.parent.mkdir(parents=True, exist_ok=True)
    Workdir(workdir).jobs.write_text(json.dumps({"submissions": [
        {"submitted": 1.0, "user": "u", "profile": "p", "container": None, "cancelled": None, "stages": {}},
        {"submitted": 2.0, "user": "u", "profile": "p", "container": container, "cancelled": None, "stages": {}}]}))
    done = cli("report", "-w", workdir)
    assert done.returncode == 0, done.stderr
    assert json.loads(Workdir(workdir).provenance.read_text())["container"] == container
    page = Workdir(workdir).report_index.read_text()
    assert "/shared/images/virnucpro.ch" in page and "sha256:" + "ab" * 32 in page and "charliecloud 0.31" in page


# ---------------------------------------------------------------- the login node

# The engines' dependencies, which a login node does without
BLOCKED = ("torch", "transformers", "fair-esm", "h5py", "matplotlib", "biopython", "safetensors", "tokenizers", "einops")


def test_the_login_node_requirements_are_the_packages_own_pins():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pins = {line.strip() for line in setup["options"]["install_requires"].splitlines() if line.strip()}
    light = [line.strip() for line in (ROOT / "login-node-requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert light and set(light) <= pins
    assert not any(line.startswith(BLOCKED) for line in light)


def test_a_login_node_installed_without_torch_submits_a_container_run(sif, demo_models, example_inputs, tmp_path):
    """The README's login-node install: the package without its dependencies, then the light ones."""
    source = source_copy(tmp_path)
    venv = tmp_path / "login-node"
    python = venv / "bin" / "python"
    for argv in ([sys.executable, "-m", "venv", venv],
                 [python, "-m", "pip", "install", "-q", "--no-deps", source],
                 [python, "-m", "pip", "install", "-q", "-r", ROOT / "login-node-requirements.txt"]):
        done = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    env = {**fake_runtime(tmp_path, "apptainer"), "PYTHONPATH": ""}

    def login_node(*args) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "virnucpro-slurm"), *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)

    workdir = tmp_path / "w"
    done = login_node("submit", example_inputs, "--models", demo_models, "-w", workdir, "--partition", "gpu", "--dry-run",
                      "--container", sif)
    assert done.returncode == 0, done.stderr
    assert task_line((Workdir(workdir).dry_run_dir / "esm2.sh").read_text())[:3] == ["apptainer", "exec", "--nv"]
    status = login_node("status", "-w", workdir)
    assert status.returncode == 2 and "only a dry run so far" in status.stderr, status.stderr
    cancel = login_node("cancel", "-w", workdir)
    assert cancel.returncode == 0 and "no SLURM jobs recorded" in cancel.stderr, cancel.stderr
