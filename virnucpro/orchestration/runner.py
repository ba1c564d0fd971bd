"""Step-first execution: each stage runs over all its shards before the next stage starts.

What runs is `pipeline.plan` (the stage table and the recompute rule); a stage is a module
`virnucpro.stages.<name>` with `open_stage(ctx) -> process(shard) -> metrics` (the stage
protocol, in pipeline.py). The local runner and the SLURM array tasks both go through
`run_stage_shards`, so they share every code path that touches the state file.

Healing: a file an earlier (stage, shard) wrote that is missing or damaged when read raises
`StaleInputError`; `run_stage_shards` marks its producer and everything made from it pending.
`run_locally` then says what it recomputes and why, and recomputes it in the same run (once per
pair: a file still bad after that is an error). This module knows nothing of torch.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

from .. import console, pipeline
from ..atomic import atomic_write_text, remove_stale_temp_files
from ..errors import RunInterrupted, StaleInputError, VirnucproError
from ..paths import Workdir
from ..pipeline import STAGES, ShardInterrupted, StageContext  # noqa: F401 (the stage protocol, re-exported)
from .provenance import record_environment
from .state import PENDING, StateFile

log = logging.getLogger("virnucpro.runner")

EXIT_REQUEUE = RunInterrupted.exit_code  # EX_TEMPFAIL: stopped at a checkpoint by a signal; run again to resume


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
        console.warn_from_signal_handler(f"received {self.signal_name}: stopping at the next checkpoint")
        self.event.set()

    def __call__(self) -> bool:
        if self.event.is_set():
            console.log_signal_warnings()
        return self.event.is_set()


@dataclass
class StageOutcome:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    # shards that found a file of an earlier pair missing or damaged: {shard: the error}
    stale: dict[int, StaleInputError] = field(default_factory=dict)


def open_stage(stage: str, ctx: StageContext):
    return importlib.import_module(pipeline.stage(stage).module).open_stage(ctx)


def _failure_log(workdir: Workdir, stage: str, shard: int) -> str:
    path = workdir.error_log(stage, shard)
    atomic_write_text(path, traceback.format_exc())
    return str(path)


def mark_stale(state: StateFile, config, error: StaleInputError) -> list[tuple[str, int]]:
    """Mark the producer of a missing or damaged file, and every pair made from it, pending."""
    pairs = pipeline.dependents(error.stage, error.shard, config)
    for stage, shard in pairs:
        state.update(stage, shard, status=PENDING, error=None)
    return pairs


def local_interruption(ctx: StageContext, signal_name: str | None = None) -> dict:
    """What `status` says about a local run stopped by a signal: which signal, and the command
    (with its folder) that resumes it: this process's own `run` command line."""
    import os
    import shlex
    import sys

    name = signal_name or getattr(ctx.stop_requested, "signal_name", None) or "a signal"
    resume = shlex.join(["virnucpro-slurm", *sys.argv[1:]]) if sys.argv[1:2] == ["run"] else None
    return {"signal": name, "command": resume, "cwd": os.getcwd(), "time": time.time()}


def run_stage_shards(ctx: StageContext, state: StateFile, stage: str, shards: list[int],
                     job_id: str | None = None, log_path: str | None = None, local: bool = False) -> StageOutcome:
    """Process `shards` of `stage` in order, loading the stage's model once, recording state.
    A stop is a requeue in a SLURM task; in a `local` run (`virnucpro-slurm run`) it is an
    interruption, and a second Ctrl-C, which stops at once without a checkpoint, is one too."""
    outcome = StageOutcome()
    process = None

    def interrupted(shard: int, metrics: dict | None = None, signal_name: str | None = None) -> None:
        state.mark_interrupted(stage, shard, metrics, local=local_interruption(ctx, signal_name) if local else None)
        outcome.interrupted = True

    for position, shard in enumerate(shards):
        ctx.next_shard = shards[position + 1] if position + 1 < len(shards) else None
        if ctx.stop_requested():  # stopped between shards: the next one is where a requeue resumes
            interrupted(shard)
            break
        state.mark_running(stage, shard, job_id=job_id, log=log_path)
        removed = remove_stale_temp_files(ctx.workdir.written_by(stage, shard))
        if removed:
            log.info("%s shard %d: removed %d temp file(s) left by an interrupted run", stage, shard, removed)
        try:
            if process is None:
                process = open_stage(stage, ctx)
                if pipeline.STAGE[stage].gpu:  # model loaded: the GPU this task got is known now
                    record_environment(ctx.workdir, f"stage:{stage}")
            started = time.time()
            metrics = process(shard) or {}
            metrics.setdefault("wall_seconds", round(time.time() - started, 3))
        except ShardInterrupted as stop:
            interrupted(shard, stop.metrics)
            break
        except KeyboardInterrupt:
            if not local:
                raise
            interrupted(shard, signal_name="SIGINT twice (no checkpoint of the window in progress)")
            break
        except StaleInputError as exc:
            if (stage, shard) not in mark_stale(state, ctx.config, exc):
                state.update(stage, shard, status=PENDING)  # it read the bad file: run it again too
            outcome.stale[shard] = exc
            continue
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


def run_locally(ctx: StageContext, state: StateFile, stages: tuple[str, ...] | None = None) -> None:
    """Run what `pipeline.plan` says, stage by stage (`stages`: only these; default: every stage
    of the run's kind); stop before a stage whose inputs failed.
    A missing or damaged input found on the way is recomputed (with what is made from it) in the
    same run, once per pair."""
    stages = stages or pipeline.stage_names(ctx.config)
    healed: set[tuple[str, int]] = set()
    while True:
        plan = pipeline.plan(ctx.config, state.load(), ctx.workdir)
        for note in pipeline.healing_notes(plan, ctx.config):
            console.warn(note)
        for stage, shards in plan.reset.items():  # recorded done, made from what is recomputed
            for shard in shards:
                state.update(stage, shard, status=PENDING)
        try:
            stale = _run_stages(ctx, state, plan, stages)
        finally:
            with contextlib.suppress(OSError, VirnucproError):  # never hide why the run stopped
                state.fold()  # state.json shows where the run stopped, whatever stopped it
        if not stale:
            return
        for shard, exc in stale.items():
            producer = (exc.stage, exc.shard)
            if producer in healed:
                raise VirnucproError(f"{exc} (still, after recomputing {pipeline.describe_pairs([producer])} once in "
                                     "this run); check the disk and the files under the workdir, then run again")
            healed.add(producer)
            console.warn(f"{exc}: recomputing {pipeline.describe_pairs(pipeline.dependents(*producer, ctx.config))}")


def _run_stages(ctx: StageContext, state: StateFile, plan, stages: tuple[str, ...]) -> dict:
    """Run the plan's pairs stage by stage; the shards that found a stale input, if any."""
    for stage in stages:
        todo = plan.todo[stage]
        total = pipeline.STAGE[stage].shard_count(ctx.config)
        if not todo:
            console.info((f"{stage}: {total}/{total} shards already done, skipped", "dim"))
            continue
        console.info((stage, "bold"), f": {len(todo)} of {total} shard(s) to run")
        started = time.time()
        outcome = run_stage_shards(ctx, state, stage, todo, local=True)
        if outcome.failed:
            shard, message = next(iter(outcome.failed.items()))
            entry = state.read_entry(stage, shard)
            more = f" (and {len(outcome.failed) - 1} more shard(s))" if len(outcome.failed) > 1 else ""
            raise VirnucproError(
                f"stage {stage}, shard {shard} failed{more}: {message}"
                + (f" [log: {entry.log}]" if entry.log else "")
                + "; fix the cause and run again to resume"
            )
        if outcome.interrupted:
            signal_name = getattr(ctx.stop_requested, "signal_name", None)
            raise RunInterrupted(f"run the same command again to resume (stopped by {signal_name or 'a signal'} "
                                 f"during stage {stage}; finished work and checkpoints are kept)")
        if outcome.stale:
            return outcome.stale
        state.fold()
        console.info((stage, "green"), f": done in {time.time() - started:.1f} s")
    return {}
