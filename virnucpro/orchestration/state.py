"""The run's state: the status of every (stage, shard), shared by every process of a run.

The truth is one small record per pair, `state.d/<stage>/<shard>.json`, replaced atomically
(temp file, fsync, rename) by the process working on that pair; `state.d/shards.json` holds the
number of shards per stage (written at plan time). No update takes a lock: on Lustre mounted
with `localflock` and on some NFS set-ups flock does not exclude processes on other nodes, and
rename is atomic on all of them. One update costs the same at 10 or at 10,000 shards.

`state.json` is the folded view of every pair, for users and tools to read; `fold()` writes it
(`run` after each stage, `submit` at plan time, the consensus task at the end of a SLURM run).
It is only ever a cache: records are never deleted (except by a reset of their stage), so a
reader folds onto it the records changed since it was written. Each fold remembers every
record's (inode, size, mtime) — every rename makes a new inode — and each stage folder's mtime,
so a stage idle since the fold costs one stat. A damaged or missing state.json is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write_text, open_lock
from ..errors import StateError
from ..json_files import JsonFileError, read_json

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
# a folder mtime younger than this at fold time is not trusted to change on the next write
# (coarse timestamps on some NFS servers; clock skew between nodes)
SETTLE_NS = 2_000_000_000
RECORD_NAME = re.compile(r"^(\d+)\.json$")
MAX_RECORD_BYTES = 4 << 20  # a (stage, shard) record is a few hundred bytes, its error message included


@dataclass
class ShardState:
    status: str = PENDING
    attempts: int = 0
    requeues: int = 0  # stopped by a signal in a SLURM task (requeued or resubmitted)
    interruptions: int = 0  # stopped by a signal in a local run (Ctrl-C, SIGTERM, SIGHUP)
    interrupted: dict | None = None  # the last local stop while the pair waits: signal, command, cwd, time
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    error: str | None = None
    log: str | None = None
    host: str | None = None
    pid: int | None = None
    job_id: str | None = None
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ShardState":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


DEFAULT_ENTRY = asdict(ShardState())
_NUMBER, _TEXT, _INT = (int, float), (str,), (int,)
# the type every field of a record read back from disk must have (None allowed where the default is None)
FIELD_TYPES = {"status": _TEXT, "attempts": _INT, "requeues": _INT, "started": _NUMBER, "finished": _NUMBER,
               "seconds": _NUMBER, "error": _TEXT, "log": _TEXT, "host": _TEXT, "pid": _INT, "job_id": _TEXT,
               "metrics": (dict,)}


TEXT_METRICS = frozenset({"device", "precision"})  # a stage's words for what ran (e.g. cuda:0, fp16)


def record_problem(record: dict) -> str | None:
    """Why a state record read back from disk cannot be a (stage, shard)'s state, or None."""
    for name, types in FIELD_TYPES.items():
        value = record.get(name, DEFAULT_ENTRY[name])
        if value is None and DEFAULT_ENTRY[name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{name} is {type(value).__name__}, not {'/'.join(t.__name__ for t in types)}"
    metrics = record.get("metrics") or {}
    for key, value in metrics.items():
        # numbers are summed into throughput and compute time; the words say what ran (report)
        if key in TEXT_METRICS:
            if not (value is None or isinstance(value, str) and len(value) <= 64):
                return f"metric {key} is not a short text"
        elif not (value is None or (isinstance(value, _NUMBER) and not isinstance(value, bool))):
            return "a metric that is not a number"
    if record.get("status", PENDING) not in (PENDING, RUNNING, DONE, FAILED):
        return f"status {str(record['status'])[:20]!r} is none of {PENDING}, {RUNNING}, {DONE}, {FAILED}"
    return None


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if needed, never unlinked). Only for files
    written by processes of one node (provenance, jobs.json, the report); never for state."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(lock_path) as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


class StateFile:
    def __init__(self, path: Path, lock_path: Path | None = None):
        self.path = Path(path)
        self.records = self.path.with_suffix(".d")  # state.json -> state.d/
        self.lock_path = lock_path  # kept for callers that lock other run files with it

    # ---------------------------------------------------------------- records
    def record_path(self, stage: str, shard: int) -> Path:
        return self.records / stage / f"{int(shard)}.json"

    def _read_record(self, path: Path | str) -> dict | None:
        try:  # a str from the folder scan: no Path per record (10,000s per status)
            data, problem = read_json(path, max_bytes=MAX_RECORD_BYTES), None
        except FileNotFoundError:
            return None
        except JsonFileError as exc:
            data, problem = None, exc.reason
        problem = problem or ("not a JSON object" if not isinstance(data, dict) else record_problem(data))
        if problem:
            raise StateError(f"{path}: damaged state record ({problem}); delete it (that shard is then run "
                             "again) and run the same command again")
        return data

    def read_entry(self, stage: str, shard: int) -> ShardState:
        return ShardState.from_dict(self._read_record(self.record_path(stage, shard)) or DEFAULT_ENTRY)

    @contextlib.contextmanager
    def entry(self, stage: str, shard: int) -> Iterator[ShardState]:
        """Yield one (stage, shard) entry; changes to it are written back atomically. Only the
        process working on the pair changes it, so no lock is needed."""
        current = self.read_entry(stage, shard)
        yield current
        path = self.record_path(stage, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(current), sort_keys=True))

    def entries(self, stage: str, shards) -> dict[int, ShardState]:
        """The entries of some shards of a stage, reading only their records (array tasks)."""
        return {shard: self.read_entry(stage, shard) for shard in shards}

    # ---------------------------------------------------------------- the folded view
    def _shard_counts(self) -> dict[str, int]:
        path = self.records / "shards.json"
        try:
            counts = read_json(path, max_bytes=MAX_RECORD_BYTES)
        except FileNotFoundError:
            return {}
        except JsonFileError:
            counts = None
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise StateError(f"{path}: damaged; run the same 'run' or 'submit' command again to rewrite it")
        return counts

    def _snapshot(self) -> dict:
        """state.json as last folded; {} when missing or damaged (it is rebuilt from the records)."""
        try:
            raw = read_json(self.path)
        except FileNotFoundError:
            return {}
        except JsonFileError:
            raw = None
        stages = raw.get("stages") if isinstance(raw, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(v, dict) and all(isinstance(e, dict) for e in v.values())
                                                   for v in stages.values()):
            if not self.records.is_dir():
                raise StateError(f"{self.path}: damaged state file and no {self.records.name}/ records to rebuild it "
                                 "from; restore it from a backup, or add --restart to recompute everything")
            from .. import console  # rich: only on this rare path (array tasks and status stay light)
            console.warn(f"{self.path} is damaged: rebuilt from the per-shard records in {self.records}/")
            return {}
        if not isinstance(raw.get("folded"), dict):
            raw["folded"] = {}
        return raw

    def _fold(self) -> tuple[dict, dict]:
        """(stages {stage: {str(shard): entry}}, bookkeeping of what was read) — state.json's content."""
        snapshot = self._snapshot()
        if snapshot and not self.records.is_dir():
            return snapshot["stages"], {}  # a workdir of a version before per-shard records
        stages = snapshot.get("stages", {})
        folded = snapshot.get("folded", {})
        counts = self._shard_counts()
        now = time.time_ns()
        out_stages, out_folded = {}, {}
        names = set(counts)
        with contextlib.suppress(FileNotFoundError):
            names |= {p.name for p in os.scandir(self.records) if p.is_dir()}
        for stage in sorted(names):
            old_entries, old = stages.get(stage, {}), folded.get(stage, {})
            folder = self.records / stage
            try:
                folder_key = _stat_key(folder.stat())  # before the scan: a rename during it changes the folder
            except FileNotFoundError:
                folder_key = None
            if folder_key is not None and folder_key == old.get("folder") and old.get("entries") is not None:
                entries, keys = dict(old_entries), dict(old.get("keys", {}))
            else:
                entries, keys = {}, {}
                with contextlib.suppress(FileNotFoundError):
                    for item in os.scandir(folder):
                        match = RECORD_NAME.match(item.name)
                        if not match:
                            continue  # a writer's temp file
                        shard = match.group(1)
                        try:
                            key = _stat_key(item.stat())
                        except FileNotFoundError:
                            continue
                        if key == old.get("keys", {}).get(shard) and shard in old_entries:
                            entries[shard] = old_entries[shard]
                        else:
                            record = self._read_record(item.path)
                            if record is None:
                                continue
                            entries[shard] = {**DEFAULT_ENTRY, **record}
                        keys[shard] = key
            for shard in range(counts.get(stage, 0)):
                entries.setdefault(str(shard), dict(DEFAULT_ENTRY))
            out_stages[stage] = entries
            settled = folder_key is not None and now - folder_key[2] > SETTLE_NS
            out_folded[stage] = {"folder": folder_key if settled else None, "keys": keys, "entries": True}
        return out_stages, out_folded

    def read_raw(self) -> dict:
        """{'version': 1, 'stages': {stage: {'<shard>': entry dict}}}: the current state, folded."""
        stages, _ = self._fold()
        return {"version": 1, "stages": stages}

    def load(self) -> dict[str, dict[int, ShardState]]:
        return {stage: {int(k): ShardState.from_dict(v) for k, v in shards.items()}
                for stage, shards in self.read_raw()["stages"].items()}

    def fold(self) -> None:
        """Rewrite state.json from the records. Any process may: it is a cache, so two folds at
        once (or a fold racing an update) lose nothing; the next reader sees what changed."""
        stages, folded = self._fold()
        # no indent: json's C encoder only runs without one (10x faster at 100,000 shards);
        # `status --json` is the readable view
        atomic_write_text(self.path, json.dumps({"version": 2, "stages": stages, "folded": folded},
                                                sort_keys=True) + "\n")

    # ---------------------------------------------------------------- plan time (the workdir's one writer)
    def initialise(self, shards_per_stage: dict[str, int]) -> None:
        """Record how many shards each stage has (entries of new pairs are pending); keep records."""
        if not self.records.is_dir() and self.path.exists():
            self._adopt_snapshot()
        self.records.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.records / "shards.json", json.dumps(shards_per_stage, sort_keys=True) + "\n")
        self.fold()

    def _adopt_snapshot(self) -> None:
        """A state.json written before per-shard records: its entries become records."""
        for stage, entries in self._snapshot().get("stages", {}).items():
            for shard, entry in entries.items():
                if entry != DEFAULT_ENTRY:
                    with self.entry(stage, int(shard)) as current:
                        vars(current).update(ShardState.from_dict(entry).__dict__)

    def reset(self, stages: list[str]) -> None:
        """Forget every record of these stages (their pairs are pending again)."""
        import shutil

        for stage in stages:
            shutil.rmtree(self.records / stage, ignore_errors=True)
        if self.path.exists() or self.records.is_dir():
            self.fold()

    # ---------------------------------------------------------------- transitions
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
            current.pid = os.getpid()
            current.job_id = job_id or os.environ.get("SLURM_JOB_ID")
            current.log = log
            current.interrupted = None
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

    def mark_interrupted(self, stage: str, shard: int, metrics: dict | None = None, local: dict | None = None) -> None:
        """Stopped by a signal (after an emergency checkpoint, or before the shard started):
        pending again, one more requeue; or, in a local run (`local`: what stopped it and the
        command that resumes it), one more interruption, shown as such until the pair runs again."""
        with self.entry(stage, shard) as current:
            current.status = PENDING
            if local is None:
                current.requeues += 1
            else:
                current.interruptions += 1
                current.interrupted = local
            current.finished = time.time()
            current.error = None
            current.metrics = {**current.metrics, **(metrics or {})}
