"""The container command lines (virnucpro/orchestration/container.py): what runs a task inside the
image with Apptainer, Singularity or Charliecloud; binds, --nv, quoting; the runtime on PATH and
its version. Needs no runtime installed: fake programs stand in for them."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.errors import InputError
from virnucpro.orchestration.container import (IMAGE_PYTHON, Container, bind_paths, detect_runtime,
                                               missing_mount_points, runtime_version)

ROOT = Path(__file__).resolve().parents[1]


def fake_program(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_and_singularity_bind_every_path_and_give_gpus_to_gpu_tasks_only(runtime):
    container = Container(runtime, "/images/virnucpro.sif", ("/data/models", "/scratch/w"))
    cpu = container.command(["prog", "arg"], gpu=False)
    gpu = container.command(["prog", "arg"], gpu=True)
    assert cpu == [runtime, "exec", "--bind", "/data/models:/data/models", "--bind", "/scratch/w:/scratch/w",
                   "/images/virnucpro.sif", "prog", "arg"]
    assert gpu == [runtime, "exec", "--nv", *cpu[2:]]


def test_charliecloud_binds_outside_its_shared_tmp_and_never_asks_for_nv():
    container = Container("charliecloud", "/images/virnucpro.ch", ("/data/models", "/tmp/run/w"))
    command = container.command(["prog", "arg"], gpu=True)
    assert command == ["ch-run", "--set-env=TMPDIR=/tmp", "-b", "/data/models:/data/models", "/images/virnucpro.ch",
                       "--", "prog", "arg"]
    assert container.bound == ("/data/models",)


def test_the_image_python_runs_isolated_from_the_host_python_settings():
    command = Container("apptainer", "/i.sif").python(["-u", "-m", "submitit.core._submit", "/w/slurm"], gpu=False)
    assert command[-6:] == [IMAGE_PYTHON, "-I", "-u", "-m", "submitit.core._submit", "/w/slurm"]
    assert "opt/virnucpro" in (ROOT / "Containerfile").read_text()  # the venv the constant names


@pytest.mark.parametrize("runtime", ["apptainer", "singularity", "charliecloud"])
def test_paths_with_spaces_and_quotes_reach_the_runtime_intact_through_a_shell_script(runtime, tmp_path):
    """The command line as the sbatch script holds it (shlex.join) and a shell runs it: the runtime
    gets every bind and the image path as one argument each."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = Container(runtime, "x").program
    fake_program(bin_dir, program, 'for a in "$@"; do printf "%s\\n" "$a"; done')
    odd = "/srv/my runs/it's \"here\" $HOME `x`"  # outside /tmp: ch-run binds it too
    image = str(tmp_path / "images dir" / "virnucpro image")
    container = Container(runtime, image, (odd, "/data/models and more"))
    command = container.python(["-c", "print('a b')"], gpu=True)
    script = tmp_path / "task.sh"
    script.write_text(f"set -euo pipefail\nexec {shlex.join(command)}\n")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == command[1:]
    assert f"{odd}:{odd}" in command and image in command


def test_bind_paths_are_absolute_real_and_not_nested(tmp_path, monkeypatch):
    real = tmp_path / "storage" / "models"
    real.mkdir(parents=True)
    link = tmp_path / "models"
    link.symlink_to(real)
    monkeypatch.chdir(tmp_path)
    binds = bind_paths(["models", tmp_path / "w", tmp_path / "w" / "inside", str(tmp_path / "w") + "/"])
    # the link (what the run records) and its target (what the link leads to), the workdir once
    assert binds == tuple(sorted([str(link), str(real), str(tmp_path / "w")], key=lambda p: Path(p).parts))


@pytest.mark.parametrize("name", ["a:b", "a,b"])
def test_a_path_the_bind_syntax_cannot_carry_is_refused_naming_it(tmp_path, name):
    with pytest.raises(InputError, match=f"{name}: a path bound into the container must not contain"):
        bind_paths([tmp_path / name])


def test_binding_the_root_folder_is_refused():
    with pytest.raises(InputError, match="root folder"):
        bind_paths(["/"])


def test_charliecloud_mount_points_missing_from_the_image_are_listed(tmp_path):
    image = tmp_path / "virnucpro.ch"
    (image / "scratch" / "w").mkdir(parents=True)
    container = Container("charliecloud", str(image), ("/data/models", "/scratch/w", "/tmp/x"))
    assert missing_mount_points(container) == ["/data/models"]
    assert missing_mount_points(Container("apptainer", "/i.sif", ("/data/models",))) == []


def test_an_unknown_runtime_is_refused_naming_the_known_ones():
    with pytest.raises(InputError, match="'docker' is not one of apptainer, singularity, charliecloud"):
        Container("docker", "/i")


def test_the_runtime_found_on_path_apptainer_first(tmp_path, monkeypatch):
    for name in ("ch-run", "singularity"):
        fake_program(tmp_path, name, "exit 0")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_runtime() == "singularity"
    fake_program(tmp_path, "apptainer", "exit 0")
    assert detect_runtime() == "apptainer"
    (tmp_path / "apptainer").unlink()
    (tmp_path / "singularity").unlink()
    assert detect_runtime() == "charliecloud"
    (tmp_path / "ch-run").unlink()
    with pytest.raises(InputError, match="no container runtime found on PATH"):
        detect_runtime()


@pytest.mark.parametrize("runtime, output, version", [
    ("apptainer", "apptainer version 1.3.4", "1.3.4"),
    ("singularity", "singularity-ce version 3.11.0", "3.11.0"),
    ("charliecloud", "0.31", "0.31"),
])
def test_the_runtime_version_as_it_reports_it(tmp_path, monkeypatch, runtime, output, version):
    # Like the real ch-run, every fake refuses to start without $USER (batch jobs may lack it).
    program = Container(runtime, "x").program
    fake_program(tmp_path, program, f'[ -n "${{USER:-}}" ] || {{ echo "error: $USER not set" >&2; exit 1; }}\n'
                                    f'[ "$1" = --version ] && echo "{output}"')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("USER", raising=False)
    assert runtime_version(runtime) == version


def test_a_runtime_that_fails_is_reported_in_one_line(tmp_path, monkeypatch):
    fake_program(tmp_path, "apptainer", 'echo "FATAL: bad install" >&2; exit 3')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match=r"apptainer --version failed \(exit status 3: FATAL: bad install\)"):
        runtime_version("apptainer")


def test_the_container_module_imports_no_torch():
    code = "import sys, virnucpro.orchestration.container; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_build_never_replaces_a_virnucpro_ch_it_did_not_build(tmp_path, kind):
    """A rebuild replaces the image folder build.sh wrote (it holds ch/virnucpro-image.json); a
    folder of that name without it, or a link, is the user's: refused before any work, untouched."""
    theirs = tmp_path / "theirs"
    (theirs / "keep").mkdir(parents=True)
    (theirs / "keep" / "file").write_text("mine\n")
    image = tmp_path / "out" / "virnucpro.ch"
    image.parent.mkdir()
    if kind == "folder":
        theirs.rename(image)
        kept = image / "keep" / "file"
    else:
        image.symlink_to(theirs)
        kept = theirs / "keep" / "file"
    done = subprocess.run(["bash", str(ROOT / "container" / "build.sh"), "--out", str(image.parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "is not an image this script built" in done.stderr, done.stderr
    assert kept.read_text() == "mine\n" and (image.is_symlink() == (kind == "link"))
