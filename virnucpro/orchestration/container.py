"""Container runtimes: the command line that runs a program inside virnucpro's image.

The image (Containerfile, container/build.sh) holds its own Python in /opt/virnucpro; a task runs
that Python through the runtime, with the host paths it reads and writes (workdir, models,
inputs) bound at the same paths inside, so every path a run records means the same file in and
out of the container.

- Apptainer / Singularity: `exec` a SIF file; `--nv` (the host's NVIDIA driver libraries and
  devices) on GPU stages only; one `--bind P:P` per path. The runtime forwards signals to the
  program it starts.
- Charliecloud: `ch-run` a directory image; one `-b P:P` per path; the destination must exist in
  the image (`missing_mount_points`). ch-run shares the host's /tmp (or $TMPDIR) at /tmp, so paths
  under /tmp need, and take, no bind. ch-run execs the program: it keeps ch-run's process id and
  receives SLURM's signals itself. GPU libraries come from `ch-fromhost --nvidia IMAGE`, run once
  on a GPU node.

The image's Python runs isolated (-I): the host's PYTHONPATH, PYTHONHOME and user site-packages
(Apptainer binds $HOME) never shadow the image's packages.

Builds argument lists only; runs nothing but `RUNTIME --version`. No torch.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import InputError

# runtime name -> its program
RUNTIMES = {"apptainer": "apptainer", "singularity": "singularity", "charliecloud": "ch-run"}
# The image's own interpreter: the Containerfile's virtual environment.
IMAGE_PYTHON = "/opt/virnucpro/bin/python"
# What ch-run shares with the host at /tmp.
CHARLIECLOUD_SHARED_TMP = PurePosixPath("/tmp")
# Apptainer's --bind takes "SRC:DST[:OPTIONS]" lists separated by commas; ch-run's -b "SRC:DST".
_BIND_SEPARATORS = (":", ",")


@dataclass(frozen=True)
class Container:
    """A runtime, an image path (a SIF file; a directory for charliecloud) and the host paths
    bound at the same paths inside (see `bind_paths`)."""

    runtime: str
    image: str
    binds: tuple[str, ...] = ()

    def __post_init__(self):
        program_of(self.runtime)

    @property
    def program(self) -> str:
        return program_of(self.runtime)

    @property
    def bound(self) -> tuple[str, ...]:
        """The paths the command line binds: charliecloud's shared /tmp needs none."""
        if self.runtime == "charliecloud":
            return tuple(b for b in self.binds if not PurePosixPath(b).is_relative_to(CHARLIECLOUD_SHARED_TMP))
        return self.binds

    def command(self, argv: list[str], gpu: bool) -> list[str]:
        """The command line that runs `argv` inside the image; `gpu`: the task uses a GPU."""
        if self.runtime == "charliecloud":
            # ch-run mounts the node's $TMPDIR (or /tmp) at /tmp: the variable must say so inside.
            return [self.program, "--set-env=TMPDIR=/tmp", *[a for b in self.bound for a in ("-b", f"{b}:{b}")],
                    self.image, "--", *argv]
        return [self.program, "exec", *(["--nv"] if gpu else []), *[a for b in self.bound for a in ("--bind", f"{b}:{b}")],
                self.image, *argv]

    def python(self, args: list[str], gpu: bool) -> list[str]:
        """The image's Python, isolated from the host's Python settings, with `args`."""
        return self.command([IMAGE_PYTHON, "-I", *args], gpu)


def bind_paths(paths) -> tuple[str, ...]:
    """Host paths to bind: absolute, each also by its real path where a symbolic link leads
    elsewhere (the link itself is read inside), without paths inside another one (a second
    bind into a bound folder is redundant; ch-run refuses it). Refused in one line: a path with
    a character the runtimes' bind syntax reserves, and the root folder."""
    found = set()
    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        for candidate in (absolute, os.path.realpath(absolute)):
            if any(c in candidate for c in _BIND_SEPARATORS):
                raise InputError(f"{candidate}: a path bound into the container must not contain ':' or ','; "
                                 "rename it or give it through a link without them")
            if candidate == "/":
                raise InputError(f"{path}: binding the root folder into the container would hide the image; "
                                 "give the workdir, models and inputs folders")
            found.add(candidate)
    kept: list[str] = []
    for candidate in sorted(found, key=lambda p: PurePosixPath(p).parts):
        if not any(PurePosixPath(candidate).is_relative_to(k) for k in kept):
            kept.append(candidate)
    return tuple(kept)


def missing_mount_points(container: Container) -> list[str]:
    """Bound paths whose destination folder a Charliecloud directory image lacks (ch-run binds
    only onto existing folders of a read-only image); none for the other runtimes."""
    if container.runtime != "charliecloud":
        return []
    return [b for b in container.bound if not os.path.isdir(os.path.join(container.image, b.lstrip("/")))]


def program_of(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise InputError(f"container runtime '{runtime}' is not one of {', '.join(RUNTIMES)}")
    return RUNTIMES[runtime]


def detect_runtime() -> str:
    """The first runtime whose program is on PATH (apptainer, singularity, then charliecloud)."""
    for runtime, program in RUNTIMES.items():
        if shutil.which(program):
            return runtime
    raise InputError("no container runtime found on PATH (apptainer, singularity or ch-run); "
                     "load it (e.g. module load apptainer) or pass --container-runtime")


def runtime_version(runtime: str) -> str:
    """The runtime's version as it reports it ("1.3.4", "0.31"), or a one-line error."""
    program = program_of(runtime)
    # ch-run refuses to start, even for --version, without $USER (unset in some batch environments).
    env = {**os.environ, "USER": os.environ.get("USER") or getpass.getuser()}
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InputError(f"{program}: cannot run it ({exc}); install {runtime} or pass another --container-runtime") from None
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    if done.returncode != 0 or not lines:
        raise InputError(f"{program} --version failed (exit status {done.returncode}: "
                         f"{lines[-1] if lines else 'no output'}); check the {runtime} installation")
    return lines[0].split()[-1]
