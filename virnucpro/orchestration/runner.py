"""Step-first execution: each stage runs over all its shards before the next stage starts.

A stage is a module `virnucpro.stages.<name>` with `open_stage(ctx) -> process(shard) -> metrics`.
`open_stage` loads the stage's model once; `process` handles one shard. The local runner and the
SLURM array tasks both go through `run_stage_shards`, so they share every code path that touches
the state file. This module knows nothing of torch.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from ..atomic import atomic_write_text, remove_stale_temp_files
from ..errors import VirnucproError
from ..paths import SHARDED_STAGES, STAGES, Workdir
from .config import RunConfig
from .state import DONE, StateFile

log = logging.getLogger("virnucpro.runner")

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped at a checkpoint by a signal; run again to resume


class ShardInterrupted(Exception):
    """Raised by a stage that stopped at a checkpoint because a stop was requested."""

    def __init__(self, metrics: dict | None = None):
        super().__init__("interrupted at a checkpoint")
        self.metrics = metrics or {}


class RunInterrupted(VirnucproError):
    exit_code = EXIT_REQUEUE


class StopFlag:
    """Set by SIGTERM / SIGUSR2 (SLURM preemption, time limit warning), SIGHUP (terminal closed,
    ssh dropped) or by a test."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: stopping at the next checkpoint", self.signal_name)
        self.event.set()

    def __call__(self) -> bool:
        return self.event.is_set()


@dataclass
class StageContext:
    workdir: Workdir
    config: RunConfig
    device: str = "cpu"
    stop_requested: Callable[[], bool] = lambda: False
    worker: tuple[int, int] = (0, 1)  # (index, count) when a task splits its shards over GPUs


@dataclass
class StageOutcome:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False


def shard_count(stage: str, config: RunConfig) -> int:
    return config.shards if stage in SHARDED_STAGES else 1


def open_stage(stage: str, ctx: StageContext) -> Callable[[int], dict]:
    if stage not in STAGES:
        raise VirnucproError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
    return importlib.import_module(f"virnucpro.stages.{stage}").open_stage(ctx)


def _failure_log(workdir: Workdir, stage: str, shard: int) -> str:
    path = workdir.stage_log(stage) / f"shard-{shard:05d}.error.log"
    atomic_write_text(path, traceback.format_exc())
    return str(path)


def run_stage_shards(ctx: StageContext, state: StateFile, stage: str, shards: list[int],
                     job_id: str | None = None, log_path: str | None = None) -> StageOutcome:
    """Process `shards` of `stage` in order, loading the stage's model once, recording state."""
    outcome = StageOutcome()
    process = None
    for shard in shards:
        if ctx.stop_requested():
            outcome.interrupted = True
            break
        state.mark_running(stage, shard, job_id=job_id, log=log_path)
        removed = remove_stale_temp_files(ctx.workdir.written_by(stage, shard))
        if removed:
            log.info("%s shard %d: removed %d temp file(s) left by an interrupted run", stage, shard, removed)
        try:
            if process is None:
                process = open_stage(stage, ctx)
            started = time.time()
            metrics = process(shard) or {}
            metrics.setdefault("wall_seconds", round(time.time() - started, 3))
        except ShardInterrupted as stop:
            state.mark_interrupted(stage, shard, stop.metrics)
            outcome.interrupted = True
            break
        except VirnucproError as exc:
            state.update(stage, shard, log=log_path or _failure_log(ctx.workdir, stage, shard))
            state.mark_failed(stage, shard, str(exc))
            outcome.failed[shard] = str(exc)
            if process is None:
                break  # the stage could not even start (bad model file): the same for every shard
            continue
        except Exception as exc:  # a bug or an environment failure: keep the traceback in a log
            where = _failure_log(ctx.workdir, stage, shard)
            state.update(stage, shard, log=log_path or where)
            state.mark_failed(stage, shard, f"{type(exc).__name__}: {exc} (traceback in {where})")
            outcome.failed[shard] = f"{type(exc).__name__}: {exc}"
            if process is None:
                break
            continue
        state.mark_done(stage, shard, metrics)
        outcome.done.append(shard)
    return outcome


def pending_shards(state: StateFile, stage: str, config: RunConfig) -> list[int]:
    entries = state.load().get(stage, {})
    return [s for s in range(shard_count(stage, config)) if entries.get(s) is None or entries[s].status != DONE]


def run_locally(ctx: StageContext, state: StateFile, stages: tuple[str, ...] = STAGES) -> None:
    """Run every unfinished (stage, shard) in order; stop before a stage whose inputs failed."""
    from .. import console

    for stage in stages:
        todo = pending_shards(state, stage, ctx.config)
        total = shard_count(stage, ctx.config)
        if not todo:
            console.info(f"[dim]{stage}: {total}/{total} shards already done, skipped[/dim]")
            continue
        console.info(f"[bold]{stage}[/bold]: {len(todo)} of {total} shard(s) to run")
        started = time.time()
        outcome = run_stage_shards(ctx, state, stage, todo)
        if outcome.failed:
            shard, message = next(iter(outcome.failed.items()))
            entry = state.load()[stage][shard]
            more = f" (and {len(outcome.failed) - 1} more shard(s))" if len(outcome.failed) > 1 else ""
            raise VirnucproError(
                f"stage {stage}, shard {shard} failed{more}: {message}"
                + (f" [log: {entry.log}]" if entry.log else "")
                + "; fix the cause and run the same command again to resume"
            )
        if outcome.interrupted:
            raise RunInterrupted(
                f"stopped during stage {stage} after a checkpoint; run the same command again to resume"
            )
        console.info(f"[green]{stage}[/green]: done in {time.time() - started:.1f} s")
