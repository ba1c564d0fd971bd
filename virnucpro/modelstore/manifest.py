"""The models manifest: what a models folder holds, file by file (path, size, SHA-256, origin URL,
revision, time), written atomically by `models download` and `demo-models`.

It serves three readers:
- `models verify DIR` re-hashes every listed file against it;
- `models download --mirror URL` reads it at the root of a served models folder to know what to
  fetch (a mirror is just such a folder behind an HTTP server);
- `run`/`submit --models DIR` take a file's SHA-256 from it for the run's fingerprint instead of
  hashing gigabytes, as long as the file's size and modification time (st_mtime_ns) are still the
  ones recorded. Any other change of the file (copied without keeping times, rewritten, touched)
  makes the fingerprint hash it again; only content changes that keep both size and mtime would
  go unseen, and `models verify` finds those.

No torch here: the login node and the planner import it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError
from ..json_files import JsonFileError, parse_json, read_file_bytes, read_json

MANIFEST_NAME = "virnucpro-models.json"
MANIFEST_VERSION = 1
KINDS = ("esm2", "dnabert", "classifiers")
# A manifest lists a handful of files (kilobytes); past this it is not one, and is not read into memory.
MAX_MANIFEST_BYTES = 16 << 20
NAME_MAX = 255  # bytes in one path component (Linux filesystems)


@dataclass
class Entry:
    path: str  # relative to the models folder, '/'-separated
    size: int
    sha256: str
    kind: str  # esm2, dnabert, classifiers or other
    url: str  # where the file originally comes from
    revision: str
    time: str  # when it was written into this folder (UTC, ISO 8601)
    mtime_ns: int  # st_mtime_ns of the file in this folder, for the cheap unchanged check

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def sha256_file(path: Path, advance=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if advance:
                advance(len(block))
    return digest.hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def kind_of(relative: str) -> str:
    name = relative.split("/")[-1]
    if "/" in relative:
        return "dnabert"
    if name.startswith("esm2") and name.endswith(".pt"):
        return "esm2"
    if name.endswith(".pth"):
        return "classifiers"
    return "other"


def manifest_path(directory: Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def _path_problem(path: str) -> str | None:
    """Why a listed path cannot be a file of a models folder, or None. Hidden names are the
    download's own (.NAME.part, its record and lock): a manifest never lists them, nor itself."""
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        return "not a relative path inside the folder"
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "a control character in the name"
    if any(len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
        return f"a name longer than {NAME_MAX} bytes"
    if any(p.startswith(".") for p in parts) or path == MANIFEST_NAME:
        return "a hidden name or the manifest's own (the download's bookkeeping)"
    return None


def _check_entries(entries: list[Entry]) -> None:
    seen: set[str] = set()
    folders = {"/".join(e.path.split("/")[:n]) for e in entries if isinstance(e.path, str)
               for n in range(1, e.path.count("/") + 1)}
    for entry in entries:
        if not isinstance(entry.path, str) or not isinstance(entry.size, int) or isinstance(entry.size, bool) \
                or entry.size < 0 or not isinstance(entry.sha256, str):
            raise ValueError(f"entry {str(entry.path)[:40]!r}: path, size or sha256 of the wrong type")
        problem = _path_problem(entry.path)
        if problem:
            raise ValueError(f"path {entry.path[:60]!r}: {problem}")
        if entry.path in seen or entry.path in folders:
            raise ValueError(f"path {entry.path[:60]!r} listed twice (or as a file and a folder)")
        seen.add(entry.path)
        for name in ("kind", "url", "revision"):
            if getattr(entry, name) is not None and not isinstance(getattr(entry, name), str):
                raise ValueError(f"entry {entry.path[:60]!r}: {name} is not text")


def parse_manifest(text: str, where: str) -> list[Entry]:
    try:
        data = parse_json(text, where)
        entries = [Entry.from_dict(item) for item in data["files"]]
        _check_entries(entries)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: not a virnucpro models manifest ({type(exc).__name__}: {str(exc)[:120]}); "
                         f"recreate it with 'virnucpro-slurm models download'") from None
    return entries


def too_large(where: str) -> InputError:
    return InputError(f"{where}: larger than {MAX_MANIFEST_BYTES >> 20} MiB, so not a models manifest (it lists a "
                      "few files); check the folder or the mirror URL")


def read_manifest(directory: Path) -> list[Entry] | None:
    path = manifest_path(directory)
    try:
        data = read_file_bytes(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None
    except JsonFileError as exc:
        if exc.too_large:
            raise too_large(str(path)) from None
        raise InputError(f"{exc}; recreate it with 'virnucpro-slurm models download'") from None
    return parse_manifest(data.decode("utf-8", "replace"), str(path))


def write_manifest(directory: Path, entries: list[Entry], **about) -> Path:
    """`about`: what the folder is, beside its files: demo=True (modelstore.demo), mirror=URL."""
    path = manifest_path(directory)
    data = {"version": MANIFEST_VERSION, "written": now_iso(), **about,
            "files": [asdict(e) for e in sorted(entries, key=lambda e: e.path)]}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def entry_for(directory: Path, relative: str, sha256: str, url: str, revision: str) -> Entry:
    stat = (Path(directory) / relative).stat()
    return Entry(path=relative, size=stat.st_size, sha256=sha256, kind=kind_of(relative), url=url,
                 revision=revision, time=now_iso(), mtime_ns=stat.st_mtime_ns)


def folder_files(directory: Path) -> list[str]:
    """Relative paths of the files a models folder holds (no hidden files, caches or the manifest)."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if (path.is_file() and not any(part.startswith(".") for part in relative.parts)
                and "__pycache__" not in relative.parts and relative.as_posix() != MANIFEST_NAME):
            found.append(relative.as_posix())
    return found


def write_folder_manifest(directory: Path, url: str, revision: str, **about) -> Path:
    """Hash every file of a folder written here (demo-models) and record them all."""
    directory = Path(directory)
    entries = [entry_for(directory, rel, sha256_file(directory / rel), f"{url}/{rel}", revision)
               for rel in folder_files(directory)]
    return write_manifest(directory, entries, **about)


def download_command(directory: Path) -> str:
    """The `models download` command that (re)fetches this folder's files from where they came
    from: with `--mirror URL` when its manifest says a mirror filled it (not ~6 GB from the internet)."""
    import shlex

    try:
        mirror = read_json(manifest_path(directory), MAX_MANIFEST_BYTES).get("mirror")
    except (OSError, ValueError, AttributeError):
        mirror = None
    words = ["virnucpro-slurm", "models", "download", str(directory)]
    return shlex.join(words + (["--mirror", mirror] if isinstance(mirror, str) and mirror else []))


# ---------------------------------------------------------------- verify

def verify(directory: Path, progress=None) -> tuple[list[str], list[str]]:
    """Re-hash every listed file: (problems, one line per mismatch; ok paths)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such folder; check the path, or fetch the models into it with "
                         f"'{download_command(directory)}'")
    entries = read_manifest(directory)
    if entries is None:
        raise InputError(f"{manifest_path(directory)}: no models manifest; write the folder with "
                         "'virnucpro-slurm models download DIR' (or demo-models DIR)")
    problems, ok = [], []
    for entry in entries:
        path = directory / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {MANIFEST_NAME})")
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(f"{path}: size {size} bytes, the manifest says {entry.size}")
            continue
        digest = sha256_file(path, progress)
        if digest != entry.sha256:
            problems.append(f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {entry.sha256[:16]}...")
        else:
            ok.append(entry.path)
    return problems, ok


# ---------------------------------------------------------------- cheap lookup for fingerprints

_CACHE: dict[Path, tuple[int, dict[str, Entry]]] = {}


def _entries_by_path(directory: Path) -> dict[str, Entry]:
    path = manifest_path(directory)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _CACHE.get(path)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        entries = {e.path: e for e in (read_manifest(directory) or [])}
    except InputError:
        entries = {}  # a damaged manifest only costs a re-hash here; verify reports it
    _CACHE[path] = (stamp, entries)
    return entries


def recorded_sha256(file: Path, levels: int = 2) -> str | None:
    """The SHA-256 a models manifest in one of the file's parent folders records for it, when the
    file's size and st_mtime_ns are still the recorded ones; else None (the caller hashes it)."""
    file = Path(file).resolve()
    try:
        stat = file.stat()
    except OSError:
        return None
    folder = file.parent
    for _ in range(levels):
        entry = _entries_by_path(folder).get(file.relative_to(folder).as_posix())
        if entry is not None:
            if entry.size == stat.st_size and entry.mtime_ns == stat.st_mtime_ns:
                return entry.sha256
            return None
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def size_text(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
