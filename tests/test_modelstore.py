"""Models for an air-gapped cluster: `models download` against a real HTTP server on loopback
(mirror, the original sources' URL layouts, resume with Range, 404, bad hashes), `models verify`,
the manifest in the run's fingerprint, resolution on the login node, and safe loading (hostile
pickles are refused and never run)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from virnucpro.modelstore import manifest as mf
from virnucpro.modelstore import sources
from virnucpro.modelstore.download import download, part_path
from virnucpro.orchestration.config import HashCache, model_identity

CLI = [sys.executable, "-m", "virnucpro.cli"]
ESM = "esm2_t2_demo.pt"


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class Server:
    """A threaded HTTP server on 127.0.0.1 serving `routes` (URL path -> file), with Range support.

    Knobs: status[path] = code (answered instead of the file), body[path] = bytes served instead of
    the file, limit[path] = at most that many bytes per response, then the connection is dropped
    (Content-Length still announces everything). Every request is recorded as (path, Range header)."""

    def __init__(self):
        self.routes: dict[str, Path | bytes] = {}
        self.status: dict[str, int] = {}
        self.body: dict[str, bytes] = {}
        self.limit: dict[str, int] = {}
        self.slow: dict[str, threading.Event] = {}  # send 4 kB at a time until the event is set
        # answer 200 without Content-Length and send this chunk again and again (after a pause)
        # until the client hangs up or 200 MB went: an endless or dripping body
        self.stream: dict[str, tuple[bytes, float]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                server.requests.append((path, self.headers.get("Range")))
                if path in server.stream:
                    chunk, pause = server.stream[path]
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        for _ in range((200 << 20) // len(chunk)):
                            self.wfile.write(chunk)
                            self.wfile.flush()
                            time.sleep(pause)
                    return
                if path in server.status or path not in server.routes:
                    code = server.status.get(path, 404)
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                source = server.routes[path]
                data = server.body.get(path) or (source if isinstance(source, bytes) else source.read_bytes())
                start, code = 0, 200
                wanted = self.headers.get("Range")
                if wanted:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    code = 206
                self.send_response(code)
                self.send_header("Content-Length", str(len(data) - start))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                chunk = data[start:start + server.limit[path]] if path in server.limit else data[start:]
                if path in server.slow:
                    for at in range(0, len(chunk), 4096):
                        if server.slow[path].wait(0.02):
                            break
                        self.wfile.write(chunk[at:at + 4096])
                        self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                if path in server.limit and start + len(chunk) < len(data):
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection halfway

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve_folder(self, folder: Path, prefix: str = "") -> "Server":
        for path in folder.rglob("*"):
            if path.is_file():
                self.routes[f"{prefix}/{path.relative_to(folder).as_posix()}"] = path
        return self

    def ranges(self, path: str) -> list[str]:
        return [r for p, r in self.requests if p == path and r]


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def mirror(server, demo_models) -> Server:
    return server.serve_folder(demo_models)


def manifest_of(directory: Path) -> dict[str, mf.Entry]:
    return {e.path: e for e in mf.read_manifest(directory)}


# ---------------------------------------------------------------- mirror, verify, run


def test_mirror_download_then_verify_then_run(mirror, demo_models, tmp_path, quiet_demo_run, example_inputs):
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", mirror.url)
    assert done.returncode == 0, done.stderr
    served = manifest_of(demo_models)
    got = manifest_of(target)
    assert set(got) == set(served) == set(mf.folder_files(target))
    for path, entry in got.items():
        assert (entry.size, entry.sha256, entry.url) == (served[path].size, served[path].sha256, served[path].url)
        assert (target / path).read_bytes() == (demo_models / path).read_bytes()
    assert [p.name for p in target.rglob(".*")] == [".virnucpro-download.lock"]  # no .part, no download record
    verified = cli("models", "verify", target)
    assert verified.returncode == 0 and f"{len(got)} file(s)" in verified.stderr, verified.stderr
    again = cli("models", "download", target, "--mirror", mirror.url)  # complete: nothing fetched twice
    assert again.returncode == 0 and "already complete" in again.stderr
    assert len([p for p, _ in mirror.requests if p.endswith(ESM)]) == 1

    workdir = tmp_path / "run"
    run = cli("run", example_inputs, "--models", target, "--workdir", workdir, "--quiet")
    assert run.returncode == 0, run.stderr
    for name in ("sample_a", "sample_b"):  # the same model bytes give the demo run's results
        ours = (workdir / "results" / name / "prediction_results.txt").read_bytes()
        assert ours == (quiet_demo_run.workdir / "results" / name / "prediction_results.txt").read_bytes()
    fingerprint = json.loads((workdir / "run.json").read_text())["fingerprint"]["models"]
    assert fingerprint["esm"]["sha256"] == got[ESM].sha256


def test_only_fetches_one_kind_and_keeps_the_others_in_the_manifest(mirror, tmp_path):
    target = tmp_path / "models"
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers").returncode == 0
    assert set(manifest_of(target)) == {"300_model.pth", "500_model.pth"}
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2").returncode == 0
    assert set(manifest_of(target)) == {"300_model.pth", "500_model.pth", ESM, "esm2_t2_demo-contact-regression.pt"}
    bad = cli("models", "download", target, "--only", "esm3")
    assert bad.returncode == 2 and "--only" in bad.stderr


# ---------------------------------------------------------------- resume


def test_a_dropped_connection_resumes_with_range_within_the_run(mirror, demo_models, tmp_path):
    size = (demo_models / ESM).stat().st_size
    step = size * 2 // 5
    mirror.limit[f"/{ESM}"] = step  # every response stops after 40% of the file
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2")
    assert done.returncode == 0, done.stderr
    assert mirror.ranges(f"/{ESM}") == [f"bytes={step}-", f"bytes={2 * step}-"]
    assert hashlib.sha256((target / ESM).read_bytes()).hexdigest() == manifest_of(demo_models)[ESM].sha256


def test_a_killed_download_leaves_no_final_file_and_the_rerun_resumes(mirror, demo_models, tmp_path):
    size = (demo_models / ESM).stat().st_size
    half = size // 2
    mirror.limit[f"/{ESM}"] = half
    target = tmp_path / "models"
    jobs = sources.mirror_jobs(mirror.url, {"esm2"})
    _, errors = download(target, jobs, retries=0)  # as if the first run were killed halfway
    assert len(errors) == 1 and errors[0].startswith(f"{ESM}: connection") and "\n" not in errors[0]
    assert not (target / ESM).exists() and part_path(target / ESM).stat().st_size == half
    assert not mf.manifest_path(target).exists()  # the manifest is written only when every file is in

    del mirror.limit[f"/{ESM}"]
    mirror.requests.clear()
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2")
    assert done.returncode == 0, done.stderr
    assert mirror.ranges(f"/{ESM}") == [f"bytes={half}-"]  # resumed, not restarted
    assert not any(p == "/esm2_t2_demo-contact-regression.pt" for p, _ in mirror.requests)  # already complete
    assert hashlib.sha256((target / ESM).read_bytes()).hexdigest() == manifest_of(demo_models)[ESM].sha256
    assert not part_path(target / ESM).exists()


def test_ctrl_c_stops_the_download_and_the_rerun_resumes(mirror, demo_models, tmp_path):
    import signal
    import time

    released = threading.Event()
    mirror.slow[f"/{ESM}"] = released
    target = tmp_path / "models"
    running = subprocess.Popen([*CLI, "models", "download", str(target), "--mirror", mirror.url, "--only", "esm2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = part_path(target / ESM)
    while not (part.exists() and part.stat().st_size > 0) and running.poll() is None:
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=120)
    released.set()
    assert running.returncode == 130, stderr
    assert "interrupted" in stderr and not (target / ESM).exists() and part.stat().st_size > 0
    held = part.stat().st_size
    del mirror.slow[f"/{ESM}"]
    mirror.requests.clear()
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2").returncode == 0
    assert mirror.ranges(f"/{ESM}") == [f"bytes={held}-"]
    assert (target / ESM).read_bytes() == (demo_models / ESM).read_bytes()


def test_a_corrupt_partial_file_is_caught_by_the_hash_and_discarded(mirror, demo_models, tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    part_path(target / ESM).write_bytes(b"garbage that is not the start of the file")
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2")
    # resumed after the garbage prefix: the SHA-256 of the whole does not match, the .part goes
    assert done.returncode == 1 and "SHA-256" in done.stderr and not part_path(target / ESM).exists()
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2").returncode == 0
    assert (target / ESM).read_bytes() == (demo_models / ESM).read_bytes()


# ---------------------------------------------------------------- one-line errors


def test_a_404_is_one_line_and_a_nonzero_exit(mirror, tmp_path):
    mirror.status["/500_model.pth"] = 404
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", mirror.url)
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert lines[0] == f"error: 500_model.pth: HTTP 404 Not Found from {mirror.url}/500_model.pth", done.stderr
    assert not (target / "500_model.pth").exists() and (target / "300_model.pth").exists()
    assert not mf.manifest_path(target).exists()


def test_a_bad_hash_is_one_line_and_nothing_under_the_final_name(mirror, demo_models, tmp_path):
    data = bytearray((demo_models / "300_model.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    mirror.body["/300_model.pth"] = bytes(data)
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers")
    assert done.returncode == 1
    (line,) = [l for l in error_lines(done.stderr) if "300_model.pth" in l]
    assert "SHA-256" in line and manifest_of(demo_models)["300_model.pth"].sha256 in line
    assert not (target / "300_model.pth").exists() and not part_path(target / "300_model.pth").exists()


def test_unreachable_and_unresolvable_hosts_are_one_line(tmp_path, server):
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()
    refused = cli("models", "download", tmp_path / "m", "--mirror", url)
    assert refused.returncode == 1 and len(error_lines(refused.stderr)) == 1 and "refused" in refused.stderr
    dns = cli("models", "download", tmp_path / "m", "--mirror", "http://no-such-host.invalid")
    assert dns.returncode == 1 and "cannot resolve host no-such-host.invalid" in dns.stderr
    assert len(error_lines(dns.stderr)) == 1


def test_a_full_disk_is_one_line_and_the_rerun_resumes(mirror, demo_models, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail as a full disk does, without a real full disk."""
    import resource
    import signal

    limit = (demo_models / ESM).stat().st_size // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    target = tmp_path / "models"
    full = subprocess.run([*CLI, "models", "download", str(target), "--mirror", mirror.url, "--only", "esm2"],
                          capture_output=True, text=True, timeout=600, preexec_fn=small_disk)
    assert full.returncode == 1
    (line, summary) = error_lines(full.stderr)
    assert line.startswith(f"error: {ESM}: File too large after ") and "disk full" in line and "resumes" in line
    assert not (target / ESM).exists() and part_path(target / ESM).stat().st_size == limit
    mirror.requests.clear()
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "esm2").returncode == 0
    assert mirror.ranges(f"/{ESM}") == [f"bytes={limit}-"]
    assert (target / ESM).read_bytes() == (demo_models / ESM).read_bytes()


def test_two_downloads_into_one_folder_are_refused(mirror, tmp_path):
    import fcntl

    target = tmp_path / "models"
    target.mkdir()
    with open(target / ".virnucpro-download.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        busy = cli("models", "download", target, "--mirror", mirror.url)
    assert busy.returncode == 1 and "another 'models download' is writing this folder" in busy.stderr
    assert mf.folder_files(target) == []


def test_verify_names_each_file_that_changed(demo_models, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(demo_models, target)
    assert cli("models", "verify", target).returncode == 0
    flipped = target / "dnabert-s-demo" / "config.json"
    data = bytearray(flipped.read_bytes())
    data[10] ^= 0x01
    flipped.write_bytes(bytes(data))
    (target / "300_model.pth").unlink()
    done = cli("models", "verify", target)
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert any(str(flipped) in l and "SHA-256" in l for l in lines), done.stderr
    assert any(str(target / "300_model.pth") in l and "missing" in l for l in lines)
    assert len(lines) == 3  # two files, then the summary
    no_manifest = cli("models", "verify", tmp_path)
    assert no_manifest.returncode == 2 and "no models manifest" in no_manifest.stderr
    no_folder = cli("models", "verify", tmp_path / "nonexistent")
    assert no_folder.returncode == 2 and "no such folder" in no_folder.stderr and "manifest" not in no_folder.stderr


def test_advice_on_a_mirrored_folder_names_the_mirror(mirror, tmp_path):
    """Issue 24 item 4: without --mirror the advised command would fetch ~6 GB from the internet."""
    target = tmp_path / "models"
    assert cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers").returncode == 0
    assert json.loads(mf.manifest_path(target).read_text())["mirror"] == mirror.url.rstrip("/")
    (target / "300_model.pth").unlink()
    done = cli("models", "verify", target)
    assert done.returncode == 1
    assert f"'virnucpro-slurm models download {target} --mirror {mirror.url.rstrip('/')}'" in done.stderr
    assert mf.download_command(tmp_path / "elsewhere") == f"virnucpro-slurm models download {tmp_path / 'elsewhere'}"


# ---------------------------------------------------------------- the original sources' layouts


def hub_listing(folder: Path, commit: str, lfs: set[str]) -> bytes:
    siblings = []
    for path in sorted(folder.iterdir()):
        item = {"rfilename": path.name, "size": path.stat().st_size}
        if path.name in lfs:
            item["lfs"] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}
        siblings.append(item)
    siblings.append({"rfilename": "README.md", "size": 3})
    return json.dumps({"sha": commit, "siblings": siblings}).encode()


def test_original_sources_layout_from_loopback(server, demo_models, tmp_path):
    """fair-esm's, the hub's and GitHub's URL layouts served on loopback: the folder `--models` reads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    dnabert = demo_models / "dnabert-s-demo"
    server.routes["/api/models/zhihan1996/DNABERT-S/revision/main"] = hub_listing(dnabert, commit, {"model.safetensors"})
    server.serve_folder(dnabert, f"/zhihan1996/DNABERT-S/resolve/{commit}")
    server.routes[f"/fair-esm/models/{ESM}"] = demo_models / ESM
    server.routes["/fair-esm/regression/esm2_t2_demo-contact-regression.pt"] = demo_models / "esm2_t2_demo-contact-regression.pt"
    for name in ("300_model.pth", "500_model.pth"):
        server.routes[f"/raw/main/{name}"] = demo_models / name
    jobs = (sources.esm2_jobs(f"{server.url}/fair-esm", "esm2_t2_demo") + sources.dnabert_jobs(server.url)
            + sources.classifier_jobs(f"{server.url}/raw/main"))
    weights = next(j for j in jobs if j.path == "DNABERT-S/model.safetensors")
    assert weights.sha256 and weights.revision == commit
    assert not any(j.path.endswith("README.md") for j in jobs)
    target = tmp_path / "models"
    entries, errors = download(target, jobs)
    assert errors == []
    from virnucpro.modelstore.resolve import models_in_dir
    found = models_in_dir(target, None)
    assert found == {"esm": str(target / ESM), "dnabert": str(target / "DNABERT-S"), "classifier": str(target / "500_model.pth")}
    recorded = manifest_of(target)
    assert recorded["DNABERT-S/config.json"].revision == commit and recorded[ESM].revision == "fair-esm"
    assert recorded["500_model.pth"].url == f"{server.url}/raw/main/500_model.pth"
    for name in mf.folder_files(dnabert):
        assert (target / "DNABERT-S" / name).read_bytes() == (dnabert / name).read_bytes()

    # the hub's LFS SHA-256 is checked: a wrong one refuses the file
    listing = json.loads(hub_listing(dnabert, commit, {"model.safetensors"}))
    next(s for s in listing["siblings"] if s["rfilename"] == "model.safetensors")["lfs"]["sha256"] = "0" * 64
    server.routes["/api/models/zhihan1996/DNABERT-S/revision/main"] = json.dumps(listing).encode()
    _, errors = download(tmp_path / "other", sources.dnabert_jobs(server.url))
    assert [e for e in errors if "model.safetensors" in e][0].startswith(
        f"DNABERT-S/model.safetensors: SHA-256 {weights.sha256} does not match the expected {'0' * 64}"), errors
    assert not (tmp_path / "other" / "DNABERT-S" / "model.safetensors").exists()
    server.routes["/api/models/zhihan1996/DNABERT-S/revision/main"] = json.dumps({"sha": commit, "siblings": [
        {"rfilename": "config.json"}]}).encode()
    with pytest.raises(sources.DownloadError, match="has no tokenizer.json, model.safetensors or pytorch_model.bin"):
        sources.dnabert_jobs(server.url)


# ---------------------------------------------------------------- manifest in the fingerprint


def test_fingerprint_takes_hashes_from_the_manifest_while_size_and_mtime_match(demo_models, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(demo_models, target)  # copy2 keeps mtimes, so the manifest still applies
    cache = HashCache(tmp_path / "hashes.json")
    recorded = manifest_of(target)
    identity = model_identity(str(target / ESM), cache)
    folder = model_identity(str(target / "dnabert-s-demo"), cache)
    assert identity["sha256"] == recorded[ESM].sha256
    assert folder["files"]["config.json"] == recorded["dnabert-s-demo/config.json"].sha256
    assert cache.entries == {}  # nothing was hashed
    os.utime(target / ESM, ns=(1, 1))  # touched: hashed again, same content, same identity
    # (not cached either: HashCache never caches a file whose ctime is under 2 s old)
    assert model_identity(str(target / ESM), cache)["sha256"] == recorded[ESM].sha256
    (target / ESM).write_bytes(b"x" * recorded[ESM].size)  # same size, new content and mtime
    assert model_identity(str(target / ESM), cache)["sha256"] != recorded[ESM].sha256


# ---------------------------------------------------------------- login-node resolution


def test_submit_refuses_models_that_are_not_on_the_login_node(demo_models, example_inputs, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["submit", example_inputs, "-w", tmp_path / "w", "--partition", "gpu", "--classifier",
            demo_models / "500_model.pth", "--dnabert-model", demo_models / "dnabert-s-demo"]
    refused = cli(*args, env=env)
    assert refused.returncode == 2
    (line,) = error_lines(refused.stderr)
    assert line.startswith("error: esm2_t36_3B_UR50D: the ESM-2 model is not on this machine") and "models download" in line
    assert "--allow-download" in line and not (tmp_path / "w").exists()
    dry = cli(*args, "--dry-run", env=env)
    assert dry.returncode == 0 and "warning: esm2_t36_3B_UR50D: the ESM-2 model is not on this machine" in dry.stderr
    missing = cli("submit", example_inputs, "-w", tmp_path / "w", "--partition", "gpu", "--models", tmp_path / "nowhere", env=env)
    assert missing.returncode == 2 and "models download" in error_lines(missing.stderr)[0]


def test_hub_names_resolve_to_the_local_caches(demo_models, tmp_path):
    """fair-esm's torch hub cache and the huggingface_hub cache, laid out as those libraries write them."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in (ESM, "esm2_t2_demo-contact-regression.pt"):
        shutil.copy(demo_models / name, checkpoints / name)
    commit = "f" * 40
    repo = tmp_path / "hf" / "models--zhihan1996--DNABERT-S"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(demo_models / "dnabert-s-demo", repo / "snapshots" / commit)
    code = ("import json, sys; from virnucpro.cli import build_parser; from virnucpro.cli.run import run_request;"
            "from virnucpro.modelstore.resolve import resolve_for_submit;"
            "r = run_request(build_parser().parse_args(sys.argv[1:]));"
            "resolve_for_submit(r, warn_only=False); print(json.dumps([r.esm_model, r.dnabert_model]))")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code, "submit", "inputs.txt", "--classifier",
                           str(demo_models / "500_model.pth"), "--esm-model", "esm2_t2_demo"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [str(checkpoints / ESM), str(repo / "snapshots" / commit)]


# ---------------------------------------------------------------- safe loading


class Hostile:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


def test_hostile_model_files_are_refused_and_never_run(demo_models, tmp_path, marker):
    from virnucpro.engines.classifier import load_classifier
    from virnucpro.engines.esm2 import load_esm2
    from virnucpro.engines.safe_load import UnsafeModelFileError, load

    evil = tmp_path / "evil"
    evil.mkdir()
    esm = torch.load(demo_models / ESM, weights_only=False)
    torch.save({**esm, "cfg": {"model": esm["cfg"]["model"], "extra": Hostile(marker)}}, evil / "esm2_t2_demo.pt")
    (tmp_path / "reg").mkdir()
    shutil.copy(demo_models / ESM, tmp_path / "reg" / ESM)
    torch.save({"model": Hostile(marker)}, tmp_path / "reg" / "esm2_t2_demo-contact-regression.pt")
    torch.save(Hostile(marker), evil / "500_model.pth")
    torch.save({"encoder.weight": torch.zeros(2), "x": Hostile(marker)}, evil / "pytorch_model.bin")

    for load_it, path in ((lambda p: load_esm2(str(p)), evil / ESM),
                          (lambda p: load_esm2(str(p.with_name(ESM))), tmp_path / "reg" / "esm2_t2_demo-contact-regression.pt"),
                          (load_classifier, evil / "500_model.pth"),
                          (load, evil / "pytorch_model.bin")):  # the DNABERT-S engine's .bin path goes through load
        with pytest.raises(UnsafeModelFileError) as info:
            load_it(path)
        message = str(info.value)
        assert message.startswith(f"{path}: refused to unpickle posix.system") or "os.system" in message, message
        assert "--trust-model-pickles" in message and "\n" not in message
    assert not marker.exists()


def test_a_run_with_a_hostile_classifier_stops_before_running_it(demo_models, example_inputs, tmp_path, marker):
    models = tmp_path / "models"
    shutil.copytree(demo_models, models)
    torch.save(Hostile(marker), models / "500_model.pth")
    done = cli("run", example_inputs, "--models", models, "--workdir", tmp_path / "w")
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert str(models / "500_model.pth") in line and "posix.system" in line and not marker.exists()


def test_trust_model_pickles_is_the_only_way_around_and_runs_code(tmp_path):
    from virnucpro.engines.classifier import ClassifierFileError, load_classifier

    trusted = tmp_path / "TRUSTED-MARKER"
    torch.save(Hostile(trusted), tmp_path / "500_model.pth")
    with pytest.raises(ClassifierFileError):  # the pickle ran (that is what trusting means), then it is no model
        load_classifier(tmp_path / "500_model.pth", trust_pickles=True)
    assert trusted.exists()


def test_real_formats_load_safely(demo_models, tmp_path):
    """The demo files keep the hazards of the real ones: a Namespace in the ESM-2 checkpoint, a whole
    `__main__.MLPClassifier` module as classifier. Both load with weights_only=True; so does a state_dict."""
    from virnucpro.engines.classifier import load_classifier
    from virnucpro.engines.esm2 import load_esm2

    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint
    assert unsafe(str(demo_models / ESM)) == ["argparse.Namespace"]
    assert "__main__.MLPClassifier" in unsafe(str(demo_models / "500_model.pth"))
    assert load_esm2(str(demo_models / ESM)).embed_dim == 64
    model = load_classifier(demo_models / "500_model.pth")
    assert type(model).__module__ == "virnucpro.engines.classifier"
    torch.save(model.state_dict(), tmp_path / "state.pth")
    assert torch.equal(load_classifier(tmp_path / "state.pth").hidden_layer.weight, model.hidden_layer.weight)


# ---------------------------------------------------------------- issue 25: hostile folders and mirrors

CLASSIFIER = "300_model.pth"


def _hostile_mirror(server: Server, demo_models: Path, tmp_path: Path, files: list[dict]) -> Server:
    """A mirror whose manifest lists `files` (each completed from the demo 300_model.pth entry);
    each file is served as that classifier's bytes."""
    real = manifest_of(demo_models)[CLASSIFIER]
    entries = [{**vars(real), **item} for item in files]
    server.routes["/" + mf.MANIFEST_NAME] = json.dumps({"version": 1, "files": entries}).encode()
    for entry in entries:
        server.routes.setdefault("/" + entry["path"], demo_models / CLASSIFIER)
    return server


@pytest.mark.parametrize("dangling", [False, True], ids=["link to a file", "dangling link"])
def test_a_planted_part_link_is_refused_and_nothing_outside_is_written(mirror, tmp_path, dangling):
    """Issue 25 item 2: a `.300_model.pth.part` symlink in DIR made the download overwrite (or
    create) the file it points to, then rename the link to the final name."""
    victim = tmp_path / "victim" / "t.txt"
    victim.parent.mkdir()
    if not dangling:
        victim.write_text("short\n")
    target = tmp_path / "models"
    target.mkdir()
    part_path(target / CLASSIFIER).symlink_to(victim)
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers")
    assert done.returncode == 1
    (line,) = [l for l in error_lines(done.stderr) if CLASSIFIER in l]
    assert line == (f"error: {part_path(target / CLASSIFIER)}: a symbolic link where 'models download' keeps its "
                    "partial file; it never writes through one: remove it and run again"), line
    assert (victim.read_text() == "short\n") if not dangling else not victim.exists()
    assert not (target / CLASSIFIER).exists() and part_path(target / CLASSIFIER).is_symlink()


def test_a_planted_part_fifo_is_refused_at_once(mirror, tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    os.mkfifo(part_path(target / CLASSIFIER))
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers")
    assert done.returncode == 1 and "not a regular file where 'models download' keeps" in done.stderr


def test_a_body_longer_than_listed_stops_at_the_listed_size_plus_one(mirror, demo_models, tmp_path):
    """Issue 25 item 3: a body without Content-Length past the listed size was written on and on
    (300 MB into a 20 MB tmpfs), and the message said it resumes."""
    size = manifest_of(demo_models)[CLASSIFIER].size
    mirror.stream["/" + CLASSIFIER] = (b"x" * 65536, 0.0)
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers")
    assert done.returncode == 1
    (line,) = [l for l in error_lines(done.stderr) if CLASSIFIER in l]
    assert line.startswith(f"error: {CLASSIFIER}: 127.0.0.1:") and f"sent more than the {size} bytes listed" in line
    assert f"stopped after {size + 1} bytes" in line and f"{mirror.url}/{CLASSIFIER}" in line and "resume" not in line
    assert not part_path(target / CLASSIFIER).exists() and not (target / CLASSIFIER).exists()


def test_an_oversized_mirror_manifest_is_refused_without_reading_it_whole(server, tmp_path):
    """Issue 25 item 4: a 2 GB manifest was read whole (4.3 GB RSS)."""
    server.stream["/" + mf.MANIFEST_NAME] = (b" " * (1 << 20), 0.0)
    done = cli("models", "download", tmp_path / "models", "--mirror", server.url)
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "larger than 16 MiB, so not a models manifest" in line and f"{server.url}/{mf.MANIFEST_NAME}" in line


@pytest.mark.parametrize("files, problem", [
    ([{"path": "a\u0000b.pth"}], "a control character in the name"),
    ([{"path": "x" * 300 + ".pth"}], "a name longer than 255 bytes"),
    ([{"path": ".virnucpro-download.json"}], "a hidden name or the manifest's own"),
    ([{"path": "." + CLASSIFIER + ".part"}], "a hidden name or the manifest's own"),
    ([{"path": mf.MANIFEST_NAME}], "a hidden name or the manifest's own"),
    ([{"path": CLASSIFIER}, {"path": CLASSIFIER}], "listed twice"),
    ([{"path": "d"}, {"path": "d/e.pth"}], "listed twice (or as a file and a folder)"),
    ([{"size": -1}], "of the wrong type"),
    ([{"size": True}], "of the wrong type"),
    ([{"url": ["x"]}], "url is not text"),
], ids=["NUL", "300 characters", "the download's record", "a .part", "the manifest", "twice", "file and folder",
        "negative size", "bool size", "url list"])
def test_hostile_mirror_manifest_entries_are_one_line(server, demo_models, tmp_path, files, problem):
    """Issue 25 item 12: NUL bytes and 300-character names were internal errors; an entry named
    like the download's own record was reported done, then deleted; duplicates shared a .part."""
    _hostile_mirror(server, demo_models, tmp_path, files)
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", server.url)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: {server.url}/{mf.MANIFEST_NAME}: not a virnucpro models manifest") and problem in line
    assert "Traceback" not in done.stderr and not target.exists()


def test_a_mirror_path_that_looks_like_markup_downloads(server, demo_models, tmp_path):
    """Issue 25 item 12: a mirror path `x[/]y.pth` was an internal error (rich markup)."""
    _hostile_mirror(server, demo_models, tmp_path, [{"path": "x[/]y.pth"}])
    target = tmp_path / "models"
    done = cli("models", "download", target, "--mirror", server.url)
    assert done.returncode == 0, done.stderr
    assert "fetched x[/]y.pth" in done.stderr
    assert (target / "x[" / "]y.pth").read_bytes() == (demo_models / CLASSIFIER).read_bytes()


def test_a_dripping_mirror_is_abandoned_at_the_file_deadline(mirror, tmp_path):
    """Issue 25 item 12: a mirror sending 1 byte per 5 s was never abandoned."""
    mirror.stream["/" + CLASSIFIER] = (b"x", 0.2)
    target = tmp_path / "models"
    started = time.monotonic()
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "classifiers", "--file-deadline", "1")
    assert done.returncode == 1 and time.monotonic() - started < 60
    (line,) = [l for l in error_lines(done.stderr) if CLASSIFIER in l]
    assert line.startswith(f"error: {CLASSIFIER}: not complete after 1 s from 127.0.0.1:") and "resume" in line
    assert 0 < part_path(target / CLASSIFIER).stat().st_size < 50  # kept for the next run


def test_a_linked_models_subfolder_is_refused(mirror, demo_models, tmp_path):
    """A new hostile case: DIR/DNABERT-S as a link to another folder got the hub files written there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    target = tmp_path / "models"
    target.mkdir()
    dnabert = next(p for p in manifest_of(demo_models) if "/" in p).split("/")[0]
    (target / dnabert).symlink_to(victim)
    done = cli("models", "download", target, "--mirror", mirror.url, "--only", "dnabert")
    assert done.returncode == 1 and f"{target / dnabert}: a symbolic link" in done.stderr
    assert list(victim.iterdir()) == []
