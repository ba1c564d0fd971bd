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

At submit time (`inspect_image`): the runtime and its version, and the image's virnucpro and
submitit versions, asked of the image's own Python: the tasks are calls pickled by the submitting
virnucpro and unpickled inside the image, so the two must be the same release. The image has no
SLURM commands: a task asks its batch shell, outside, to requeue it (REQUEUE_BY_BATCH_SHELL).

No torch.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path, PurePosixPath

from .. import __version__, console
from ..errors import InputError, VirnucproError

# runtime name -> its program
RUNTIMES = {"apptainer": "apptainer", "singularity": "singularity", "charliecloud": "ch-run"}
# The image's own interpreter: the Containerfile's virtual environment.
IMAGE_PYTHON = "/opt/virnucpro/bin/python"
# What ch-run shares with the host at /tmp.
CHARLIECLOUD_SHARED_TMP = PurePosixPath("/tmp")
# Apptainer's --bind takes "SRC:DST[:OPTIONS]" lists separated by commas; ch-run's -b "SRC:DST".
_BIND_SEPARATORS = (":", ",")
# Set by the batch script of a task that runs inside the image: a task stopped at a checkpoint then
# exits with RunInterrupted.exit_code and the batch shell, outside, runs `scontrol requeue`.
REQUEUE_BY_BATCH_SHELL = "VIRNUCPRO_REQUEUE_BY_BATCH_SHELL"
# What container/build.sh writes into a Charliecloud directory image: the OCI image it came from.
CHARLIECLOUD_IMAGE_RECORD = "ch/virnucpro-image.json"
# Asked of the image's Python at submit time.
_VERSIONS_PROBE = ("import json, virnucpro; from importlib.metadata import version; "
                   "print(json.dumps({'virnucpro': virnucpro.__version__, 'submitit': version('submitit')}))")


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


def runtime_environment() -> dict:
    # ch-run refuses to start, even for --version, without $USER (unset in some batch environments).
    return {**os.environ, "USER": os.environ.get("USER") or getpass.getuser()}


def runtime_version(runtime: str) -> str:
    """The runtime's version as it reports it ("1.3.4", "0.31"), or a one-line error."""
    program = program_of(runtime)
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60,
                              env=runtime_environment())
    except (OSError, subprocess.SubprocessError) as exc:
        raise InputError(f"{program}: cannot run it ({exc}); install {runtime} or pass another --container-runtime") from None
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    if done.returncode != 0 or not lines:
        raise InputError(f"{program} --version failed (exit status {done.returncode}: "
                         f"{lines[-1] if lines else 'no output'}); check the {runtime} installation")
    return lines[0].split()[-1]


# ---------------------------------------------------------------- submit time

def inspect_image(image: str, runtime: str | None, dry_run: bool) -> dict:
    """The container record of a submission: runtime and version, image path, and the versions of
    virnucpro and submitit inside it, which must be this process's. A dry run only warns where the
    runtime is missing here or the versions differ; a submission refuses, in one line."""
    runtime = runtime or detect_runtime()
    path = os.path.abspath(os.path.expanduser(image))
    if not os.path.exists(path):
        raise InputError(f"{path}: no such container image; build one with container/build.sh "
                         "(README: Container image) and give the .sif file or the Charliecloud folder")
    record = {"runtime": runtime, "runtime_version": None, "image": path, "virnucpro": None, "submitit": None}
    if not shutil.which(program_of(runtime)):
        missing = f"{program_of(runtime)} is not on PATH here"
        if not dry_run:
            raise InputError(f"{missing}: submit runs the image's Python to check its versions; "
                             f"load {runtime} (e.g. module load {runtime}) on this machine")
        console.warn(f"{missing}: the image's virnucpro and submitit versions are not checked (dry run)")
        return record
    record["runtime_version"] = runtime_version(runtime)
    record.update(image_versions(Container(runtime, path)))
    here = {"virnucpro": __version__, "submitit": version("submitit")}
    if any(record[name] != here[name] for name in here):
        message = (f"{path} holds virnucpro {record['virnucpro']} and submitit {record['submitit']}, this submit "
                   f"virnucpro {here['virnucpro']} and submitit {here['submitit']}: the tasks are calls pickled here "
                   "and run inside the image; build the image from this checkout, or submit with the image's release")
        if not dry_run:
            raise VirnucproError(message)
        console.warn(message)
    return record


def image_versions(container: Container) -> dict:
    """virnucpro's and submitit's versions, as the image's own Python reports them."""
    try:
        done = subprocess.run(container.python(["-c", _VERSIONS_PROBE], gpu=False), capture_output=True, text=True,
                              timeout=600, env=runtime_environment())
    except (OSError, subprocess.SubprocessError) as exc:
        raise InputError(f"{container.image}: cannot run the image's Python ({exc})") from None
    lines = done.stdout.strip().splitlines()
    try:
        versions = json.loads(lines[-1])
        return {"virnucpro": str(versions["virnucpro"]), "submitit": str(versions["submitit"])}
    except (IndexError, ValueError, KeyError, TypeError):
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"{container.image}: the image's Python did not report its virnucpro and submitit versions "
                         f"(exit status {done.returncode}: {said}); is it an image container/build.sh made?") from None


def image_digest(image: str, hashes) -> tuple[str | None, str]:
    """(digest, what it is of): a file image's own SHA-256 (`hashes`: a HashCache), or for a
    Charliecloud folder the OCI image it was converted from, as container/build.sh records it."""
    path = Path(image)
    if path.is_file():
        return f"sha256:{hashes.sha256(path)}", "the image file"
    try:
        recorded = json.loads((path / CHARLIECLOUD_IMAGE_RECORD).read_text(encoding="utf-8"))
        return str(recorded["id"]), "the OCI image it was converted from, as container/build.sh recorded it"
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"unknown: no {CHARLIECLOUD_IMAGE_RECORD}, so the folder was not made by container/build.sh"


def run_paths(config, workdir) -> list[str]:
    """What a run's tasks read and write: the workdir, the inputs' folders (FASTA, GenBank, the
    inputs list), the models (a model folder, a model file's folder), each model file's real
    folder where it is a link (a Hugging Face cache snapshot links into blobs/)."""
    files = [config.inputs_list, *config.inputs, *(g for g in config.genbank if g)]
    for spec in (config.models.esm, config.models.dnabert, config.models.classifier):
        model = Path(spec) if spec else None
        if model is not None and model.is_dir():
            files += [str(entry) for entry in model.iterdir()]
        elif model is not None and model.exists():  # else a hub name the task resolves itself (--allow-download)
            files.append(str(model))
    folders = {os.path.dirname(f(path)) for path in files for f in (os.path.abspath, os.path.realpath)}
    return [str(workdir.root), *sorted(folders)]


def prepare_mount_points(container: Container, dry_run: bool) -> None:
    """Charliecloud binds only onto folders the image has: create the missing ones in the image
    folder (empty folders, once), or say which are missing."""
    missing = missing_mount_points(container)
    if not missing:
        return
    if dry_run:
        console.warn(f"{container.image}: ch-run needs these folders in the image to bind onto; submit creates them: "
                     + ", ".join(missing))
        return
    try:
        for path in missing:
            os.makedirs(os.path.join(container.image, path.lstrip("/")), exist_ok=True)
    except OSError as exc:
        raise InputError(f"{container.image}: cannot create the folders ch-run binds onto ({exc.strerror or exc}); "
                         f"create them inside the image folder: {', '.join(missing)}") from None


def container_for_run(image: dict, config, workdir, hashes) -> tuple[Container, dict]:
    """The container every task of this run runs in (the run's paths bound) and the submission's
    record of it; `hashes`: a HashCache for the image's digest, or None (a dry run: not computed,
    and no mount point created)."""
    container = Container(image["runtime"], image["image"], bind_paths(run_paths(config, workdir)))
    prepare_mount_points(container, dry_run=hashes is None)
    digest, digest_of = image_digest(image["image"], hashes) if hashes else (None, "not computed in a dry run")
    return container, {**image, "digest": digest, "digest_of": digest_of, "binds": list(container.bound)}
