"""What runs on a compute node: one SLURM array task of one stage, over its shard(s).

submitit's job runner unpickles `run_array_task(...)` and calls it. The task opens the run,
skips shards already done (a requeued task resumes), and goes through `run_stage_shards` like
the local runner, so the stage loads its model once and records state the same way.

Signals: submitit only logs SIGTERM and would answer SIGUSR2 with its own checkpoint logic; our
StopFlag replaces both handlers. On either signal the stage stops at its next checkpoint (the
runner marks the shard pending, requeues + 1), then the task requeues itself with
`scontrol requeue <array job>_<index>` and the restarted task resumes from the checkpoint.
SLURM-initiated requeues (preemption, `scontrol requeue`) end the same way.

A task given N GPUs runs one worker process per GPU (CUDA_VISIBLE_DEVICES narrowed to one
device), each over a deterministic slice of the task's shards and each loading its model once.
Every shard is computed exactly as in a one-GPU task, so the results are identical.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import console, pipeline
from ..errors import VirnucproError
from ..pipeline import StageContext
from .plan import open_run
from .runner import EXIT_REQUEUE, RunInterrupted, StopFlag, run_stage_shards
from .slurm.jobs import is_cancelled

log = logging.getLogger("virnucpro.task")

# A shard requeued this often is not making progress between signals (e.g. a time limit shorter
# than one checkpoint window): fail it so the user sees why instead of requeueing forever.
MAX_REQUEUES = 20


def slurm_task_id() -> str | None:
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{index}" if array_job and index else os.environ.get("SLURM_JOB_ID")


def split_for_workers(shards: list[int], workers: int) -> list[list[int]]:
    """Shard i goes to worker i mod n: deterministic, and balanced when shards cost the same."""
    count = max(1, min(workers, len(shards)))
    return [shards[i::count] for i in range(count)]


_private_hf_modules: str | None = None  # the folder use_private_hf_modules_cache made, if any


def use_private_hf_modules_cache() -> None:
    """Give this process its own HF_MODULES_CACHE (under the node's TMPDIR) unless the site set one.

    transformers copies trust_remote_code modules (DNABERT-S's model code) into HF_MODULES_CACHE,
    ~/.cache/huggingface/modules by default, with a plain unlocked copy whenever the file is new or
    differs; array tasks that share a home directory on a cluster file system can then import a
    file another task is halfway through copying. Must run before transformers is imported.
    """
    global _private_hf_modules
    if os.environ.get("HF_MODULES_CACHE") or _private_hf_modules:
        return
    import atexit
    import shutil
    import tempfile

    _private_hf_modules = tempfile.mkdtemp(prefix="virnucpro-hf-modules-")
    os.environ["HF_MODULES_CACHE"] = _private_hf_modules
    atexit.register(shutil.rmtree, _private_hf_modules, True)


def visible_devices() -> list[str] | None:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    return [d for d in value.split(",") if d.strip()]


def gpus_for_workers(device: str) -> int:
    """GPUs a multi-GPU task hands to its workers itself: torch's count where the site sets no
    CUDA_VISIBLE_DEVICES (else every worker would land on GPU 0), 0 where the site binds GPUs or
    the task runs on the CPU. Counted in stages/, where torch is imported (orchestration never is)."""
    if device == "cpu" or visible_devices() is not None:
        return 0
    return pipeline.cuda_device_count()


def run_array_task(workdir: str, stage: str, shards: list[int], workers: int = 1, device: str | None = None) -> dict:
    """One array task: process `shards` of `stage`; raise when a shard failed (the job fails and
    SLURM cancels its dependents); requeue the task when it was stopped at a checkpoint."""
    console.configure()
    use_private_hf_modules_cache()
    stop = StopFlag().install()  # after submitit's handlers, so ours win
    wd, config, state = open_run(Path(workdir))
    if device:
        config.device = device
    elif config.device.startswith("cuda:"):
        config.device = "cuda"  # SLURM picks the GPU (CUDA_VISIBLE_DEVICES); cuda:N names none of ours
    job_id = slurm_task_id()
    array_job, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    log_path = str(wd.task_log(stage, array_job, index)) if array_job and index else None
    entries = state.entries(stage, shards)  # this task's records only: 10,000 tasks must not each read all
    todo = [s for s in shards if not pipeline.is_done(entries[s])]
    stuck = [s for s in todo if entries[s].requeues >= MAX_REQUEUES]
    if stuck:
        for shard in stuck:
            state.mark_failed(stage, shard, f"requeued {MAX_REQUEUES} times without finishing; raise this stage's --time")
        raise VirnucproError(f"{stage} shard(s) {stuck}: requeued {MAX_REQUEUES} times; raise --time-{stage} and submit again")
    parts = split_for_workers(todo, workers)
    log.info("%s task %s: shards %s (%d already done), %d worker(s)", stage, job_id, todo, len(shards) - len(todo), len(parts))
    if len(parts) > 1:
        failed, interrupted = run_workers(wd.root, stage, parts, config.device, job_id, log_path, stop,
                                          gpus_for_workers(config.device))
    else:
        ctx = StageContext(workdir=wd, config=config, device=config.device, stop_requested=stop)
        outcome = run_stage_shards(ctx, state, stage, todo, job_id=job_id, log_path=log_path)
        fail_stale_shards(state, stage, outcome.stale, config)
        failed, interrupted = sorted({*outcome.failed, *outcome.stale}), outcome.interrupted

    if failed:
        after = state.entries(stage, failed)
        for shard in failed:
            log.error("%s shard %d failed: %s", stage, shard, after[shard].error or "worker crashed")
        raise VirnucproError(f"{stage} shard(s) {failed} failed; fix the cause and submit again "
                             f"('virnucpro-slurm status --workdir {wd.root}' lists the errors)")
    if stage == pipeline.stage_names(config)[-1] and not interrupted:
        state.fold()  # the run's last task: every other task of the job graph has ended
    if interrupted:
        if array_job and not is_cancelled(wd, array_job):
            requeue(job_id)
            return {"stage": stage, "shards": todo, "requeued": True}
        raise RunInterrupted(f"{stage} task stopped by {stop.signal_name or 'a signal'} at a checkpoint; "
                             "submit again to resume")
    return {"stage": stage, "shards": todo, "requeued": False}


def fail_stale_shards(state, stage: str, stale: dict, config) -> None:
    """A shard that found an earlier pair's file missing or damaged: its producer (and what is made
    from it) is pending again; the shard fails here, and the next submit recomputes them."""
    for shard, exc in stale.items():
        redo = pipeline.describe_pairs(pipeline.dependents(exc.stage, exc.shard, config))
        state.mark_failed(stage, shard, f"{exc}; submit again recomputes {redo}")


def requeue(job_id: str) -> None:
    """Put this array task back in the queue; SLURM restarts it (after its cred_expire wait)."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("scontrol requeue %s failed (%s); submit again to resume", job_id, exc)
        return
    if result.returncode == 0:
        log.warning("stopped at a checkpoint; requeued %s", job_id)
    else:  # e.g. SLURM itself is already requeueing it (preemption, scontrol requeue)
        log.warning("scontrol requeue %s: %s", job_id, (result.stderr or result.stdout).strip())


def worker_commands(root: Path, stage: str, parts: list[list[int]], device: str, job_id: str | None,
                    log_path: str | None, gpu_count: int = 0) -> list[tuple[list[str], dict]]:
    """(argv, environment) of each worker: worker i sees only GPU i of the task's GPUs (those of
    CUDA_VISIBLE_DEVICES, else GPUs 0..gpu_count-1)."""
    devices = visible_devices() or [str(i) for i in range(gpu_count)]
    commands = []
    for i, part in enumerate(parts):
        env = dict(os.environ)
        if _private_hf_modules and env.get("HF_MODULES_CACHE") == _private_hf_modules:
            del env["HF_MODULES_CACHE"]  # each worker makes its own: they run side by side
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
        if env.get("SLURM_CPUS_PER_TASK", "").isdigit():  # the task's CPUs shared among its workers
            threads = str(max(1, int(env["SLURM_CPUS_PER_TASK"]) // len(parts)))
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        argv = [sys.executable, "-m", "virnucpro.orchestration.task", str(root), stage,
                "--shards", ",".join(map(str, part)), "--device", device]
        if job_id:
            argv += ["--job-id", job_id]
        if log_path:
            argv += ["--log", log_path]
        commands.append((argv, env))
    return commands


def run_workers(root: Path, stage: str, parts: list[list[int]], device: str, job_id: str | None,
                log_path: str | None, stop: StopFlag, gpu_count: int = 0) -> tuple[list[int], bool]:
    """One process per visible GPU (or per part on CPU), each over its slice of the shards."""
    children = [subprocess.Popen(argv, env=env)
                for argv, env in worker_commands(root, stage, parts, device, job_id, log_path, gpu_count)]
    forwarded = False
    while any(child.poll() is None for child in children):
        if stop() and not forwarded:  # SLURM signals every process, but a test or a shell may not
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            forwarded = True
        time.sleep(0.1)
    codes = [child.returncode for child in children]
    _, _, state = open_run(root)
    entries = state.entries(stage, [s for part in parts for s in part])
    failed = set()
    for part, code in zip(parts, codes):
        marked = [s for s in part if entries.get(s) and entries[s].status == "failed"]
        crashed = code not in (0, EXIT_REQUEUE)  # killed or crashed before it could mark anything
        failed.update(marked or ([s for s in part if not pipeline.is_done(entries.get(s))] if crashed else []))
    return sorted(failed), any(code == EXIT_REQUEUE for code in codes)


def worker_main(argv: list[str] | None = None) -> int:
    """A worker process of a multi-GPU task: exit 0 done, 75 stopped at a checkpoint, 1 failed."""
    parser = argparse.ArgumentParser(prog="python -m virnucpro.orchestration.task")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("stage")
    parser.add_argument("--shards", required=True, help="comma-separated shard numbers")
    parser.add_argument("--device")
    parser.add_argument("--job-id")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    console.configure()
    use_private_hf_modules_cache()
    stop = StopFlag().install()
    wd, config, state = open_run(args.workdir)
    if args.device:
        config.device = args.device
    shards = [int(s) for s in args.shards.split(",") if s]
    ctx = StageContext(workdir=wd, config=config, device=config.device, stop_requested=stop)
    outcome = run_stage_shards(ctx, state, args.stage, shards, job_id=args.job_id, log_path=args.log)
    fail_stale_shards(state, args.stage, outcome.stale, config)
    if outcome.failed or outcome.stale:
        return 1
    return EXIT_REQUEUE if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(worker_main())
