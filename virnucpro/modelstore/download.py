"""Fetching model files: resumable, checked, parallel, one line per failure.

Each file is fetched into a hidden `.NAME.part` beside its final name and renamed over it only
after its size (and SHA-256, where the source publishes one) matched: a killed download never
leaves a half file under the final name. The next run continues the `.part` with an HTTP Range
request (a server that ignores Range answers 200 and the file starts over). Files already
complete from an earlier run (recorded in DIR's manifest or in `.virnucpro-download.json`, the
record of a run that did not finish) are kept when their size and mtime still match.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from .. import console
from ..atomic import atomic_write_text, fsync_dir, open_lock
from ..json_files import read_json
from .manifest import MAX_MANIFEST_BYTES, Entry, entry_for, read_manifest, sha256_file, size_text, write_manifest
from .sources import TIMEOUT_S, USER_AGENT, DownloadError, Job, describe_url_error

STATE_NAME = ".virnucpro-download.json"
LOCK_NAME = ".virnucpro-download.lock"  # held while a download writes DIR; never unlinked
BLOCK = 1 << 20
DEADLINE_S = 12 * 3600.0  # per file, all attempts together (--file-deadline): a mirror dripping bytes is abandoned
RETRIES = 3  # further attempts per file after a dropped connection or a 5xx, each resuming with Range
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _Retry(Exception):
    """A transient failure: try again, resuming from what the .part holds."""


class _Stopped(Exception):
    """Ctrl-C in the main thread: the worker leaves its .part for the next run."""


@contextlib.contextmanager
def _exclusive(directory: Path):
    with open_lock(directory / LOCK_NAME) as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{directory}: another 'models download' is writing this folder; wait for it "
                                "to end (or stop it) and run again") from None
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.part")


def _not_ours(path: Path, what: str) -> DownloadError:
    return DownloadError(f"{path}: {what} where 'models download' keeps its partial file; it never writes "
                         "through one: remove it and run again")


def _part_size(part: Path) -> int:
    """Bytes the .part holds (0 when absent); refuses a link or anything but a regular file."""
    try:
        mode = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(mode.st_mode):
        raise _not_ours(part, "a symbolic link")
    if not stat.S_ISREG(mode.st_mode):
        raise _not_ours(part, "not a regular file")
    return mode.st_size


def _open_part(part: Path, append: bool):
    """The .part opened for writing without following a link (O_NOFOLLOW), a regular file only
    (O_NONBLOCK: a planted FIFO fails at once instead of blocking the download)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(part, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_ours(part, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise _not_ours(part, "not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_ours(part, "not a regular file")
    return os.fdopen(fd, "ab" if append else "wb")


class _Record:
    """Entries of files completed by this or an earlier run; saved after each file."""

    def __init__(self, directory: Path):
        self.path = directory / STATE_NAME
        self.lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        for entry in read_manifest(directory) or []:
            self.entries[entry.path] = entry
        try:
            for item in read_json(self.path, MAX_MANIFEST_BYTES)["files"]:
                self.entries[item["path"]] = Entry.from_dict(item)
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def complete(self, directory: Path, job: Job) -> Entry | None:
        entry = self.entries.get(job.path)
        target = directory / job.path
        if entry is None or not target.is_file():
            return None
        stat = target.stat()
        if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
            return None
        if (job.sha256 and job.sha256 != entry.sha256) or (job.size is not None and job.size != entry.size):
            return None  # the source now publishes another file under this name
        return entry

    def add(self, entry: Entry, run_entries: dict[str, Entry]) -> None:
        with self.lock:
            self.entries[entry.path] = entry
            run_entries[entry.path] = entry
            atomic_write_text(self.path, json.dumps({"files": [asdict(e) for e in run_entries.values()]}, indent=1))


class _Bars:
    """rich progress bars (bytes, rate, time left) on a terminal; plain lines elsewhere."""

    def __init__(self):
        self.progress = None
        if console.console.is_terminal and not console.is_quiet():
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=console.console)

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def task(self, name: str):
        if not self.progress:
            return None
        from rich.markup import escape

        return self.progress.add_task(escape(name), total=None)  # a mirror's path is not markup

    def update(self, task, **fields):
        if self.progress and task is not None:
            self.progress.update(task, **fields)


def _open(job: Job, offset: int, deadline: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    timeout = max(0.1, min(TIMEOUT_S, deadline - time.monotonic()))  # a silent server ends with the deadline too
    return urllib.request.urlopen(urllib.request.Request(job.url, headers=headers), timeout=timeout)


def _hash_prefix(part: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest


def _attempt(job: Job, part: Path, bars: _Bars, task, state: dict, stop: threading.Event) -> None:
    """One request: continue the .part from its current size. Sets state['total'] and ['digest']."""
    offset = _part_size(part)
    total = job.size if job.size is not None else state.get("total")
    if total is not None and offset > total:
        part.unlink()
        offset = 0
    if total is not None and offset == total and offset > 0:
        if state.get("digest") is None:
            state["digest"] = _hash_prefix(part)
        return
    try:
        response = _open(job, offset, state["deadline"])
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing past what we hold: start over (size unknown or changed)
            part.unlink()
            state["digest"] = None
            raise _Retry(f"HTTP 416 for a resume at byte {offset}") from None
        if exc.code >= 500 or exc.code == 429:
            raise _Retry(describe_url_error(exc, job.url)) from None
        raise DownloadError(f"{job.path}: {describe_url_error(exc, job.url)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, OSError) and reason.__class__.__name__ == "gaierror":
            raise DownloadError(f"{job.path}: {describe_url_error(exc, job.url)}") from None
        raise _Retry(describe_url_error(exc, job.url)) from None
    with response:
        if response.status == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise DownloadError(f"{job.path}: the server answered a resume at byte {offset} with Content-Range "
                                    f"{response.headers.get('Content-Range')!r} ({job.url})")
            if match.group(3) != "*":
                state["total"] = int(match.group(3))
            mode = "ab"
            if state.get("digest") is None:
                state["digest"] = _hash_prefix(part)
        else:  # 200: the whole file (a server without Range support starts over)
            offset, mode = 0, "wb"
            state["digest"] = hashlib.sha256()
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit():
                state["total"] = int(length)
        total = job.size if job.size is not None else state.get("total")
        if total is not None:
            _check_space(job, part, total - offset)
        bars.update(task, total=total, completed=offset)
        digest = state["digest"]
        try:
            with _open_part(part, append=mode == "ab") as handle:
                while True:
                    try:
                        # what has arrived (Ctrl-C and the bars stay prompt), never past the listed size + 1 byte
                        block = response.read1(BLOCK if total is None else min(BLOCK, total + 1 - offset))
                    except (http.client.IncompleteRead, OSError, http.client.HTTPException) as exc:
                        handle.flush()
                        raise _Retry(f"connection lost after {size_text(offset)} ({type(exc).__name__})") from None
                    if not block:
                        break
                    if stop.is_set():
                        raise _Stopped()
                    if total is not None and offset + len(block) > total:
                        handle.close()
                        part.unlink()
                        raise DownloadError(f"{job.path}: {_source(job)} sent more than the {total} bytes listed "
                                            f"for it ({job.url}); stopped after {total + 1} bytes and removed the "
                                            "partial file; check the mirror")
                    handle.write(block)
                    digest.update(block)
                    offset += len(block)
                    bars.update(task, completed=offset)
                    _check_deadline(job, state, offset)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.errno in _OUT_OF_SPACE:
                raise DownloadError(f"{job.path}: {exc.strerror} after {size_text(offset)} in {part} (disk full, "
                                    "quota or file-size limit); free space and run the same command again (it "
                                    "resumes)") from None
            raise
    if total is not None and offset < total:
        raise _Retry(f"connection closed after {size_text(offset)} of {size_text(total)}")


def _source(job: Job) -> str:
    return urllib.parse.urlsplit(job.url).netloc or "the server"


def _check_deadline(job: Job, state: dict, held: int) -> None:
    if time.monotonic() > state["deadline"]:
        raise DownloadError(f"{job.path}: not complete after {state['deadline_s']:g} s from {_source(job)} "
                            f"({job.url}); {size_text(held)} kept in its .part: run the same command again to "
                            "resume (or raise --file-deadline)")


def _check_space(job: Job, part: Path, needed: int) -> None:
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        raise DownloadError(f"{job.path}: needs {size_text(needed)} more but {part.parent} has {size_text(free)} "
                            "free; free space (or choose another DIR) and run again")


def fetch(job: Job, directory: Path, bars: _Bars, retries: int = RETRIES,
          stop: threading.Event | None = None, deadline_s: float = DEADLINE_S) -> tuple[str, int]:
    """Fetch one file to DIR/job.path; returns (sha256, size). Raises DownloadError (one line)."""
    target = directory / job.path
    for folder in list(Path(job.path).parents)[:-1]:  # DNABERT-S/ of DNABERT-S/config.json
        if (directory / folder).is_symlink():
            raise DownloadError(f"{directory / folder}: a symbolic link; 'models download' never writes through "
                                "one: replace it with a real folder and run again")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    task = bars.task(job.path)
    state: dict = {"digest": None, "deadline": time.monotonic() + deadline_s, "deadline_s": deadline_s}
    stop = stop or threading.Event()
    last = ""
    for attempt in range(retries + 1):
        try:
            _attempt(job, part, bars, task, state, stop)
            break
        except _Retry as exc:
            last = str(exc)
            _check_deadline(job, state, _part_size(part))
            if attempt < retries and not stop.is_set():
                console.warn(f"{job.path}: {last}; resuming (attempt {attempt + 2} of {retries + 1})")
                if stop.wait(min(2 ** attempt, 10)):
                    raise _Stopped()
    else:
        held = _part_size(part)
        where = "" if job.url in last else f" ({job.url})"
        raise DownloadError(f"{job.path}: {last}{where}; {size_text(held)} kept in {part.name}, run the same "
                            "command again to resume")
    size = _part_size(part)
    expected_size = job.size if job.size is not None else state.get("total")
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"{job.path}: got {size} bytes, expected {expected_size} ({job.url}); removed the "
                            "partial file, run again")
    sha = state["digest"].hexdigest() if state.get("digest") is not None else sha256_file(part)
    if job.sha256 and sha != job.sha256:
        part.unlink()
        raise DownloadError(f"{job.path}: SHA-256 {sha} does not match the expected {job.sha256} ({job.url}); "
                            "removed the download, run again (or check the mirror)")
    os.replace(part, target)
    fsync_dir(target.parent)
    bars.update(task, completed=size, total=size)
    return sha, size


def download(directory: Path, jobs: list[Job], workers: int = 4, retries: int = RETRIES,
             deadline_s: float = DEADLINE_S, mirror: str | None = None) -> tuple[list[Entry], list[str]]:
    """Fetch every job into `directory` (skipping completed ones); then write the manifest if all
    succeeded, recording the `mirror` the files came from (advice then names it). Returns (entries
    of this run's files, one error line per failed file)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{directory}: cannot create the models folder ({exc.strerror}); choose a writable DIR") from None
    with _exclusive(directory):
        return _download(directory, jobs, workers, retries, deadline_s, mirror)


def _download(directory: Path, jobs: list[Job], workers: int, retries: int,
              deadline_s: float, mirror: str | None) -> tuple[list[Entry], list[str]]:
    record = _Record(directory)
    previous = {e.path: e for e in read_manifest(directory) or []}
    run_entries: dict[str, Entry] = {}
    errors: list[str] = []
    todo = []
    for job in jobs:
        done = record.complete(directory, job)
        if done is not None:
            run_entries[job.path] = done
        elif job.sha256 and (directory / job.path).is_file() and (directory / job.path).stat().st_size == job.size \
                and sha256_file(directory / job.path) == job.sha256:
            run_entries[job.path] = entry_for(directory, job.path, job.sha256, job.origin, job.revision)
        else:
            todo.append(job)
    if len(todo) < len(jobs):
        console.info(f"{len(jobs) - len(todo)} file(s) already complete in {directory}")

    stop = threading.Event()

    def one(job: Job) -> None:
        try:
            sha, size = fetch(job, directory, bars, retries, stop, deadline_s)
        except _Stopped:
            return
        except DownloadError as exc:
            errors.append(str(exc))
            console.error(str(exc))
            return
        except OSError as exc:
            line = f"{job.path}: {exc.strerror or exc} writing {directory / job.path}"
            errors.append(line)
            console.error(line)
            return
        record.add(entry_for(directory, job.path, sha, job.origin, job.revision), run_entries)
        if bars.progress is None:
            console.info(f"fetched {job.path} ({size_text(size)}, sha256 {sha[:12]}...)")

    with _Bars() as bars:
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
                futures = [pool.submit(one, job) for job in todo]
                try:
                    for future in futures:
                        future.result()
                except KeyboardInterrupt:  # workers stop at their next block; the .part files stay
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    if not errors:
        kept = {p: e for p, e in previous.items() if p not in run_entries and (directory / p).is_file()
                and (directory / p).stat().st_size == e.size}
        write_manifest(directory, list(kept.values()) + list(run_entries.values()),
                       **({"mirror": mirror.rstrip("/")} if mirror else {}))
        record.path.unlink(missing_ok=True)
    return list(run_entries.values()), errors
