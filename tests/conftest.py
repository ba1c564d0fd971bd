"""Shared fixtures: one folder of demo models per test session (they are deterministic)."""

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
