"""One writer per workdir: `run` (for its whole length) and `submit` (while it plans and submits)
hold the workdir; a second one is refused at once with one line naming the holder.

Two guards, because neither is enough alone on a cluster filesystem:
  - an flock on W/.writer.lock: released by the kernel when the holder dies (kill -9 included),
    so a dead holder never locks the workdir; but it may not exclude another node (Lustre
    `localflock`, some NFS set-ups);
  - the holder record W/.writer.json (host, pid, since, command), refreshed every
    HEARTBEAT_SECONDS: a holder on another node counts as alive while its heartbeat is fresh,
    a holder on this node while its pid is alive. A node lost with its holder frees the workdir
    after STALE_SECONDS.
No torch here: the login node runs this.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from ..atomic import atomic_write_text, open_lock
from ..errors import StateError
from ..json_files import read_json

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 120.0
MAX_RECORD_BYTES = 64 << 10  # who holds the workdir: a command name, a host, a pid and times


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), which a reused pid does not share."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    return start is None or _process_start(pid) in (None, start)


_RECORD_TYPES = {"command": str, "host": str, "pid": int, "pid_start": (str, type(None)), "started": (int, float),
                 "heartbeat": (int, float)}


def _record_types_ok(record: dict) -> bool:
    """A holder record read back from disk has the fields this module writes, of their types (a
    damaged one counts as no record: the flock still guards the workdir)."""
    return all(isinstance(record.get(name), types) and not isinstance(record.get(name), bool)
               for name, types in _RECORD_TYPES.items())


def holder_alive(record: dict, now: float | None = None) -> bool:
    """Whether the process a holder record names may still be working on the workdir."""
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        return _pid_alive(record["pid"], record.get("pid_start"))
    heartbeat = record.get("heartbeat")
    return isinstance(heartbeat, (int, float)) and (now or time.time()) - heartbeat < STALE_SECONDS


def describe_holder(record: dict | None) -> str:
    if not record:
        return "another virnucpro process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started") or 0))
    return f"'{record.get('command', 'virnucpro')}' (pid {record.get('pid')} on {record.get('host')}, since {since})"


class WorkdirWriter:
    """The right to write a workdir's run files. `acquire()` is called by planning once the folder
    is known to be ours; leaving the `with` block (or the process ending) releases it."""

    def __init__(self, root: Path, command: str):
        self.root = Path(root)
        self.command = command
        self._lock = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def lock_path(self) -> Path:
        return self.root / ".writer.lock"

    @property
    def record_path(self) -> Path:
        return self.root / ".writer.json"

    def read_record(self) -> dict | None:
        try:
            record = read_json(self.record_path, max_bytes=MAX_RECORD_BYTES)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and _record_types_ok(record) else None

    def busy(self, record: dict | None) -> StateError:
        return StateError(f"{self.root}: in use by {describe_holder(record)}; wait for it to finish or stop it "
                          "(a holder that died frees the workdir by itself), then run this again")

    def acquire(self) -> None:
        if self._lock is not None:
            return
        lock = open_lock(self.lock_path)
        for attempt in range(10):  # a `status` probing the lock holds it for microseconds
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    lock.close()
                    raise self.busy(self.read_record()) from None
                time.sleep(0.1)
        record = self.read_record()
        mine = record and record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()
        if record and not mine and record.get("host") != socket.gethostname() and holder_alive(record):
            lock.close()  # the flock did not exclude a live holder on another node
            raise self.busy(record)
        self._lock = lock
        self._record = {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(),
                        "pid_start": _process_start(os.getpid()), "started": time.time()}
        self._write_record()
        self._beat = threading.Thread(target=self._heartbeat, name="virnucpro-writer-heartbeat", daemon=True)
        self._beat.start()

    def _write_record(self) -> None:
        atomic_write_text(self.record_path, json.dumps({**self._record, "heartbeat": time.time()}) + "\n")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                self._write_record()

    def release(self) -> None:
        if self._lock is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        record = self.read_record()
        if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                self.record_path.unlink()
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def __enter__(self) -> "WorkdirWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def current_holder(root: Path) -> dict | None:
    """The live holder of a workdir, if any (for `status`): its record when it is alive."""
    writer = WorkdirWriter(root, "status")
    record = writer.read_record()
    if record is None:
        return None
    try:
        with open_lock(writer.lock_path) as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return record  # the lock is held: a live process on a node that shares flock
    except OSError:
        pass  # a read-only workdir: judge by the record alone
    return record if holder_alive(record) else None
