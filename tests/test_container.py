"""The container image: container/build.sh builds it from the Containerfile (a debootstrap base and
this machine's CPU torch wheel, once per test session), and the demo run inside it with ch-run
gives results byte-identical to the same run outside. Also: the build passes only network pip
settings into the build, and signals reach the Python that ch-run starts.

The `container` tests need root (podman builds as root here, debootstrap); tests/run.sh installs
podman, debootstrap and charliecloud. Elsewhere they are skipped, and fail instead where CI is set.
tests/test_slurm_cluster.py runs whole SLURM runs inside the same image.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

from virnucpro import __version__
from virnucpro.orchestration.container import IMAGE_PYTHON, Container, bind_paths, missing_mount_points

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "container" / "build.sh"
EXAMPLE = ROOT / "virnucpro" / "data" / "example"
_spec = importlib.util.spec_from_file_location("pip_settings", ROOT / "container" / "pip_settings.py")
pip_settings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pip_settings)


# ---------------------------------------------------------------- what the build takes from this machine

def test_pip_settings_follow_pips_precedence_environment_over_install_over_global():
    listed = ("global.index-url='https://global.example/simple'\n"
              "install.index-url='https://install.example/simple'\n"
              ":env:.timeout='60'\n"
              "global.timeout='15'\n")
    assert pip_settings.parse_config_list(listed) == {"index-url": "https://install.example/simple", "timeout": "60"}


def test_only_network_sources_go_into_the_build():
    effective = {"index-url": "https://proxy.example/pypi/simple", "extra-index-url": "file:///opt/pypi/simple https://x.example/simple",
                 "find-links": "/opt/wheels", "cert": "/etc/ssl/certs/ca.crt", "constraint": "/etc/pip/c.txt",
                 "trusted-host": "proxy.example", "default-timeout": "180"}
    settings = pip_settings.build_settings(effective, {"HTTPS_PROXY": "http://proxy:3128"})
    assert settings == {"index-url": "https://proxy.example/pypi/simple", "extra-index-url": "https://x.example/simple",
                        "trusted-host": "proxy.example", "proxy": "http://proxy:3128", "default-timeout": "180"}
    text = pip_settings.pip_conf_text(settings)
    assert text.startswith("[global]\n") and "cert" not in text and "/opt/" not in text


def test_the_ca_bundle_is_pips_own_first_then_the_usual_variables(tmp_path):
    pip_ca, env_ca = tmp_path / "pip.pem", tmp_path / "env.pem"
    env_ca.write_text("x")
    assert pip_settings.ca_bundle({"cert": str(pip_ca)}, {"SSL_CERT_FILE": str(env_ca)}) == str(env_ca)  # pip's is missing
    pip_ca.write_text("x")
    assert pip_settings.ca_bundle({"cert": str(pip_ca)}, {"SSL_CERT_FILE": str(env_ca)}) == str(pip_ca)


@pytest.mark.parametrize("args, message", [
    ([], "--out DIR is required"),
    (["--out", "x", "--colour"], "unknown argument '--colour'"),
    (["--out", "x", "--wheels", "EMPTY"], "build.sh: EMPTY: no .whl files there; give the folder that holds the torch wheel\n"),
])
def test_build_sh_refuses_bad_arguments_before_doing_anything(tmp_path, args, message):
    (tmp_path / "EMPTY").mkdir()
    done = subprocess.run(["bash", str(BUILD), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    if "--wheels" in args:
        assert done.stderr == message  # one line
    else:
        assert "usage: container/build.sh --out DIR" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY"]


# ---------------------------------------------------------------- the image (tests/conftest.py builds it once per session)

def charliecloud(image_dir: Path, paths) -> Container:
    container = Container("charliecloud", str(image_dir / "virnucpro.ch"), bind_paths(paths))
    for path in missing_mount_points(container):  # only where pytest's folders are outside /tmp
        Path(container.image, path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return container


def image_python_version(container: Container) -> str:
    done = subprocess.run(container.python(["-c", "import platform; print(platform.python_version())"], gpu=False),
                          capture_output=True, text=True, timeout=300, env=ch_env())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ch_env() -> dict:
    return {**os.environ, "USER": os.environ.get("USER") or "root"}  # ch-run refuses to start without $USER


@pytest.mark.container
def test_the_demo_run_inside_the_image_is_byte_identical_to_the_run_outside(container_image, demo_models, tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "example")  # the same input paths in and out (index.tsv lists them)
    inputs = tmp_path / "example" / "inputs.txt"
    args = ["run", str(inputs), "--demo", "--quiet", "--models", str(demo_models), "--workdir"]
    outside = subprocess.run([sys.executable, "-m", "virnucpro.cli", *args, str(tmp_path / "outside")],
                             capture_output=True, text=True, timeout=900)
    assert outside.returncode == 0, outside.stderr
    container = charliecloud(container_image, [tmp_path, demo_models])
    command = container.python(["/opt/virnucpro/bin/virnucpro-slurm", *args, str(tmp_path / "inside")], gpu=False)
    inside = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ch_env())
    assert inside.returncode == 0, inside.stderr

    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    host, contained = files(tmp_path / "outside" / "results"), files(tmp_path / "inside" / "results")
    assert len(host) >= 5 and host.keys() == contained.keys()
    assert [name for name in host if host[name] != contained[name]] == []
    # the run inside used the image's Python (Debian's), with the same torch as this one
    versions = json.loads((tmp_path / "inside" / "provenance.json").read_text())["versions"]
    assert versions["python"] == image_python_version(container)
    assert versions["torch"] == version("torch") and versions["virnucpro"] == __version__


@pytest.mark.container
def test_signals_sent_to_ch_run_reach_the_python_inside(container_image, tmp_path):
    script = tmp_path / "signals.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "def got(number, frame):\n"
        "    print('got', signal.Signals(number).name, flush=True)\n"
        "    if number == signal.SIGTERM:\n"
        "        sys.exit(0)\n"
        "signal.signal(signal.SIGUSR2, got)\n"
        "signal.signal(signal.SIGTERM, got)\n"
        "print('ready', os.getpid(), sys.executable, flush=True)\n"
        "while True:\n"
        "    time.sleep(0.05)\n")
    command = charliecloud(container_image, [tmp_path]).python(["-u", str(script)], gpu=False)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ch_env())
    try:
        ready = process.stdout.readline().split()
        assert ready[:1] == ["ready"], process.stderr.read()
        # ch-run execs the Python: the process SLURM signals is the Python itself
        assert int(ready[1]) == process.pid and ready[2] == IMAGE_PYTHON
        process.send_signal(signal.SIGUSR2)
        assert process.stdout.readline().strip() == "got SIGUSR2"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "got SIGTERM"
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.container
def test_the_oci_archive_is_labelled_and_the_image_holds_no_weights_wheels_or_build_secrets(container_image):
    with tarfile.open(container_image / "virnucpro.oci.tar") as archive:
        def blob(digest: str) -> dict:
            return json.load(archive.extractfile("blobs/sha256/" + digest.split(":")[1]))

        manifest = blob(json.load(archive.extractfile("index.json"))["manifests"][0]["digest"])
        config = blob(manifest["config"]["digest"])
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.source"] and labels["org.opencontainers.image.revision"]
    assert config["config"]["Entrypoint"] == ["virnucpro-slurm"]
    history = json.dumps(config.get("history", []))
    assert "pip.conf," not in history and "/etc/ssl" not in history and str(container_image) not in history

    root = container_image / "virnucpro.ch"
    weights = ("*.safetensors", "esm2_*.pt", "*_model.pth", "pytorch_model.bin")
    assert [p for pattern in weights for p in root.rglob(pattern)] == []
    assert list(root.rglob("torch-*.whl")) == [] and list((root / "run" / "secrets").iterdir()) == []
    assert not (root / "etc" / "pip.conf").exists() and not (root / "root" / ".config" / "pip").exists()
    assert (root / IMAGE_PYTHON.lstrip("/")).exists()
