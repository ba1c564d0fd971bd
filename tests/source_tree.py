"""A copy of the project's sources to build or install from: a build writes build/ and egg-info
beside the sources, so never the checkout itself."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_copy(folder: Path) -> Path:
    """The files a build of the package reads, copied into `folder / "source"`."""
    source = folder / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("virnucpro", "slurm_templates"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    return source
