"""Where the real model files come from, and the folder layout `models download` writes.

Layout of DIR (what `--models DIR`, i.e. modelstore.resolve.models_in_dir, reads):
  esm2_t36_3B_UR50D.pt, esm2_t36_3B_UR50D-contact-regression.pt   fair-esm's hub files (~5.7 GB)
  DNABERT-S/                                                       the hub repository's files
  300_model.pth, 500_model.pth                                     the VirNucPro classifiers
  virnucpro-models.json                                            the manifest (manifest.py)

Sources:
- ESM-2 3B: fair-esm's download URLs (esm.pretrained), which publish no checksum: the size is
  checked against the server's Content-Length and the SHA-256 is computed and recorded.
- DNABERT-S: the hub API lists the repository at a revision (`.../api/models/<repo>/revision/<rev>
  ?blobs=true`): the commit it resolves to, each file's size and, for LFS files (the weights),
  their SHA-256, which is checked. Files are then fetched from `<endpoint>/<repo>/resolve/<commit>/
  <file>`, all from that one commit, which the manifest records as the revision. Fetched: config.json,
  the tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt when
  present), the weights (model.safetensors when the repository has it, else pytorch_model.bin) and
  the model code (*.py: bert_layers.py, bert_padding.py, configuration_bert.py, flash_attn_triton.py
  in the released repository; kept for --dnabert-remote-code, never run by the native engine).
  The default revision is `main` (no commit was verifiable offline when this was written); pass
  `--dnabert-revision <commit>` (e.g. the one an earlier manifest records) to pin it. HF_ENDPOINT
  is honoured as huggingface_hub honours it.
- Classifiers: the files at the root of github.com/Li-Jing-1997/VirNucPro (branch main).
- A mirror (`--mirror URL`): a models folder served over HTTP(S); its manifest lists every file
  with size and SHA-256, both checked.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import VirnucproError
from .manifest import KINDS, MANIFEST_NAME, MAX_MANIFEST_BYTES, kind_of, parse_manifest, too_large

ESM_NAME = "esm2_t36_3B_UR50D"
FAIR_ESM_ROOT = "https://dl.fbaipublicfiles.com/fair-esm"
DNABERT_REPO = "zhihan1996/DNABERT-S"
DNABERT_REVISION = "main"
DNABERT_DIR = "DNABERT-S"
CLASSIFIER_ROOT = "https://github.com/Li-Jing-1997/VirNucPro/raw/main"
CLASSIFIERS = ("300_model.pth", "500_model.pth")
DNABERT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
DNABERT_REQUIRED = ("config.json", "tokenizer.json")
DNABERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the first one the repository has
USER_AGENT = "virnucpro-models-download"
TIMEOUT_S = 60


class DownloadError(VirnucproError):
    """One file (or a listing) could not be fetched; one line naming it and why."""

    exit_code = 1


@dataclass
class Job:
    path: str  # relative to DIR, '/'-separated
    url: str  # fetched from
    origin: str  # recorded in the manifest as the file's origin
    revision: str
    kind: str
    size: int | None = None  # expected, when the source publishes it
    sha256: str | None = None  # expected, when the source publishes it


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def describe_url_error(exc: BaseException, url: str) -> str:
    """One line for a failed request: HTTP status, DNS failure, refused connection, timeout."""
    import socket
    import urllib.error

    host = urllib.parse.urlsplit(url).netloc
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason} from {url}"
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror):
        return (f"cannot resolve host {host} (DNS: {reason.strerror or reason}); no internet here? run "
                "'models download' where there is, or use --mirror URL")
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer from {host} within {TIMEOUT_S} s ({url})"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection to {host} refused ({url})"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"{type(reason).__name__}: {text} ({url})"


def fetch_small(url: str, what: str) -> bytes:
    """GET a listing or manifest (kilobytes) into memory; refused past MAX_MANIFEST_BYTES."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read(MAX_MANIFEST_BYTES + 1)
    except Exception as exc:  # urllib raises HTTPError, URLError, OSError, http.client errors
        raise DownloadError(f"{what}: {describe_url_error(exc, url)}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise DownloadError(str(too_large(f"{what}: {url}"))) from None
    return data


def esm2_jobs(root: str = FAIR_ESM_ROOT, name: str = ESM_NAME) -> list[Job]:
    model = f"{root}/models/{name}.pt"
    regression = f"{root}/regression/{name}-contact-regression.pt"
    return [Job(f"{name}.pt", model, model, "fair-esm", "esm2"),
            Job(f"{name}-contact-regression.pt", regression, regression, "fair-esm", "esm2")]


def classifier_jobs(root: str = CLASSIFIER_ROOT) -> list[Job]:
    revision = root.rstrip("/").rsplit("/", 1)[-1]
    return [Job(name, f"{root}/{name}", f"{root}/{name}", revision, "classifiers") for name in CLASSIFIERS]


def dnabert_jobs(endpoint: str | None = None, repo: str = DNABERT_REPO, revision: str = DNABERT_REVISION,
                 folder: str = DNABERT_DIR) -> list[Job]:
    endpoint = (endpoint or hf_endpoint()).rstrip("/")
    listing_url = f"{endpoint}/api/models/{repo}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"
    where = f"{repo}@{revision} (hub listing)"
    try:
        info = json.loads(fetch_small(listing_url, where))
        commit = info.get("sha") or revision
        siblings = {s["rfilename"]: s for s in info["siblings"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DownloadError(f"{where}: unexpected answer from {listing_url} (not a hub model listing)") from None
    names = [n for n in DNABERT_FILES if n in siblings]
    weights = [n for n in DNABERT_WEIGHTS if n in siblings][:1]  # safetensors when there is one
    names += weights + sorted(n for n in siblings if n.endswith(".py") and "/" not in n)
    missing = [n for n in DNABERT_REQUIRED if n not in names] + ([] if weights else [" or ".join(DNABERT_WEIGHTS)])
    if missing:
        raise DownloadError(f"{where}: the repository at {commit} has no {', '.join(missing)}; "
                            "give a --dnabert-revision that holds the model")
    jobs = []
    for name in names:
        sibling = siblings[name]
        lfs = sibling.get("lfs") or {}
        url = f"{endpoint}/{repo}/resolve/{commit}/{urllib.parse.quote(name)}"
        jobs.append(Job(f"{folder}/{name}", url, url, commit, "dnabert",
                        size=lfs.get("size", sibling.get("size")), sha256=lfs.get("sha256")))
    return jobs


def mirror_jobs(mirror: str, only: set[str] | None) -> list[Job]:
    mirror = mirror.rstrip("/")
    url = f"{mirror}/{MANIFEST_NAME}"
    entries = parse_manifest(fetch_small(url, f"mirror {mirror}").decode("utf-8", "replace"), url)
    jobs = []
    for entry in entries:
        kind = entry.kind or kind_of(entry.path)
        if only is not None and kind not in only:
            continue
        jobs.append(Job(entry.path, f"{mirror}/{urllib.parse.quote(entry.path)}", entry.url or entry.path,
                        entry.revision or "", kind, size=entry.size, sha256=entry.sha256))
    if not jobs:
        raise DownloadError(f"{url}: the mirror's manifest lists no {'/'.join(sorted(only or KINDS))} files")
    return jobs


def original_jobs(only: set[str] | None, dnabert_revision: str = DNABERT_REVISION) -> list[Job]:
    wanted = set(KINDS) if only is None else only
    jobs = []
    if "esm2" in wanted:
        jobs += esm2_jobs()
    if "dnabert" in wanted:
        jobs += dnabert_jobs(revision=dnabert_revision)
    if "classifiers" in wanted:
        jobs += classifier_jobs()
    return jobs
