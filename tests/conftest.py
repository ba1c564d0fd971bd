"""Shared fixtures: one folder of demo models per test session (they are deterministic)."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "virnucpro" / "data" / "example" / "inputs.txt"


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    from virnucpro.engines.demo import write_demo_models

    directory = tmp_path_factory.mktemp("demo-models")
    write_demo_models(directory)
    return directory


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
