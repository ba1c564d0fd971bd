"""Shared fixtures: one folder of demo models per test session (they are deterministic), and the
container image, built once per session by the tests that need it."""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_INPUTS = ROOT / "virnucpro" / "data" / "example" / "inputs.txt"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    from virnucpro.engines.demo import write_demo_models

    directory = tmp_path_factory.mktemp("demo-models")
    write_demo_models(directory)
    return directory


@pytest.fixture
def inputs_outside_tmp() -> Path:
    """The example inputs copied to a folder outside /tmp (ch-run shares /tmp; elsewhere is bound),
    wherever the checkout lies; removed afterwards."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="virnucpro-test-", dir="/var/tmp"))
    try:
        shutil.copytree(EXAMPLE_INPUTS.parent, folder / "example")
        yield folder / "example" / EXAMPLE_INPUTS.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def example_inputs() -> Path:
    return EXAMPLE_INPUTS


@dataclass
class CliRun:
    workdir: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def quiet_demo_run(tmp_path_factory, demo_models) -> CliRun:
    """One `run --demo --quiet` through the real CLI, shared by the report and CLI tests (~15 s).
    Read-only for its users: a test that changes the run copies the workdir first."""
    workdir = tmp_path_factory.mktemp("demo-run") / "w"
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "run", "--demo", "--quiet", "--models", str(demo_models),
                           "--workdir", str(workdir)], capture_output=True, text=True)
    return CliRun(workdir, done.returncode, done.stdout, done.stderr)


def require_container_tools() -> None:
    """The image is built as root (podman, debootstrap; container/build.sh installs what is
    missing): skipped for anyone else, and a failure in CI."""
    if os.geteuid() == 0:
        return
    missing = [p for p in ("podman", "ch-run", "ch-convert", "debootstrap") if not shutil.which(p)]
    reason = ("the container tests build the image as root (podman, debootstrap): run 'sudo bash tests/run.sh'"
              + (f"; missing here: {', '.join(missing)}" if missing else ""))
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container_image(tmp_path_factory) -> Path:
    """container/build.sh --base debootstrap with this environment's own torch wheel (so that the
    image computes what this Python does), once per session: the --out folder, holding
    virnucpro.oci.tar and the Charliecloud folder virnucpro.ch/."""
    require_container_tools()
    out = tmp_path_factory.mktemp("image")
    wheels = out / "wheels"
    torch = f"torch=={version('torch')}"
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), torch],
                             capture_output=True, text=True, timeout=900)
    assert fetched.returncode == 0, f"pip cannot get this environment's {torch} wheel:\n{fetched.stderr[-3000:]}"
    started = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / "container" / "build.sh"), "--out", str(out), "--base", "debootstrap",
                            "--wheels", str(wheels)], capture_output=True, text=True, timeout=2400)
    assert built.returncode == 0, built.stdout + built.stderr[-6000:]
    print(f"\ncontainer/build.sh took {time.monotonic() - started:.0f} s:\n{built.stdout}")
    return out
