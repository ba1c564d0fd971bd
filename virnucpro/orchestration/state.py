"""The run's state file: the status of every (stage, shard), shared by every process of a run.

Updates are read-modify-write under an exclusive `flock` on a lock file that is never unlinked
(unlinking a lock file on release lets two writers hold "the" lock at once), and the JSON itself
is replaced atomically, so a reader never sees a partial file and no concurrent update is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_text
from ..errors import StateError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass
class ShardState:
    status: str = PENDING
    attempts: int = 0
    requeues: int = 0
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    error: str | None = None
    log: str | None = None
    host: str | None = None
    job_id: str | None = None
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ShardState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if needed, never unlinked)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class StateFile:
    def __init__(self, path: Path, lock_path: Path):
        self.path = Path(path)
        self.lock_path = Path(lock_path)

    def read_raw(self) -> dict:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": 1, "stages": {}}
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._damaged(f"not valid JSON ({exc})") from None
        stages = raw.get("stages") if isinstance(raw, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(v, dict) and all(isinstance(e, dict) for e in v.values())
                                                   for v in stages.values()):
            raise self._damaged("not a state file ({'stages': {stage: {shard: entry}}} expected)")
        return raw

    def _damaged(self, why: str) -> StateError:
        return StateError(f"{self.path}: damaged state file, {why}; restore it from a backup, or add --restart to "
                          "recompute everything (results already written are discarded)")

    def load(self) -> dict[str, dict[int, ShardState]]:
        raw = self.read_raw()
        return {
            stage: {int(k): ShardState.from_dict(v) for k, v in shards.items()}
            for stage, shards in raw.get("stages", {}).items()
        }

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Yield the raw state dict under the lock; it is written back atomically on success."""
        with exclusive_lock(self.lock_path):
            raw = self.read_raw()
            yield raw
            atomic_write_text(self.path, json.dumps(raw, indent=1, sort_keys=True) + "\n")

    def initialise(self, shards_per_stage: dict[str, int]) -> None:
        """Create entries for every (stage, shard) that has none; keep existing ones."""
        with self.transaction() as raw:
            stages = raw.setdefault("stages", {})
            for stage, count in shards_per_stage.items():
                entries = stages.setdefault(stage, {})
                for shard in range(count):
                    entries.setdefault(str(shard), asdict(ShardState()))

    @contextlib.contextmanager
    def entry(self, stage: str, shard: int) -> Iterator[ShardState]:
        """Yield one (stage, shard) entry under the lock; changes to it are written back atomically."""
        with self.transaction() as raw:
            entries = raw.setdefault("stages", {}).setdefault(stage, {})
            current = ShardState.from_dict(entries.get(str(shard), {}))
            yield current
            entries[str(shard)] = asdict(current)

    def update(self, stage: str, shard: int, **changes) -> ShardState:
        with self.entry(stage, shard) as current:
            for key, value in changes.items():
                setattr(current, key, value)
        return current

    def mark_running(self, stage: str, shard: int, job_id: str | None = None, log: str | None = None) -> ShardState:
        with self.entry(stage, shard) as current:
            current.status = RUNNING
            current.attempts += 1
            current.started = time.time()
            current.finished = None
            current.error = None
            current.host = socket.gethostname()
            current.job_id = job_id or os.environ.get("SLURM_JOB_ID")
            current.log = log
        return current

    def mark_done(self, stage: str, shard: int, metrics: dict | None = None) -> None:
        with self.entry(stage, shard) as current:
            current.status = DONE
            current.finished = time.time()
            current.seconds = (current.finished - current.started) if current.started else None
            current.error = None
            current.metrics = {**current.metrics, **(metrics or {})}

    def mark_failed(self, stage: str, shard: int, error: str) -> None:
        self.update(stage, shard, status=FAILED, finished=time.time(), error=error)

    def mark_interrupted(self, stage: str, shard: int, metrics: dict | None = None) -> None:
        """Stopped by a signal after an emergency checkpoint: pending again, one more requeue."""
        with self.entry(stage, shard) as current:
            current.status = PENDING
            current.requeues += 1
            current.finished = time.time()
            current.error = None
            current.metrics = {**current.metrics, **(metrics or {})}

    def reset(self, stages: list[str]) -> None:
        with self.transaction() as raw:
            for stage in stages:
                raw.get("stages", {}).pop(stage, None)
