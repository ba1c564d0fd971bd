"""Asking SLURM about a run's jobs, and cancelling them: sacct (or `squeue -t all` without
accounting), squeue, scancel. Every call has a timeout and a missing command is "no answer",
never a crash: `status` must work on a login node whose SLURM is down.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

from ...errors import VirnucproError
from ...paths import Workdir
from .jobs import mark_cancelled, recorded_job_ids, stage_jobs

UNLISTED_GRACE_S = 120
# Task states that mean the task itself went wrong (CANCELLED is a user's or a dependency's doing).
CRASH_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED", "PREEMPTED"}


def require_slurm(command: str = "sbatch") -> None:
    if shutil.which(command) is None or shutil.which("srun") is None:
        raise VirnucproError(f"'{command}' not found on PATH: submit from a SLURM login node "
                             "(or use --dry-run to only write the scripts, or 'virnucpro-slurm run' to run here)")


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def expand_task_ids(job_id: str) -> list[str]:
    """'12_3' -> ['12_3']; '12_[0-2,5%2]' -> ['12_0', '12_1', '12_2', '12_5']; '12' -> ['12']."""
    match = re.match(r"^(\d+)_\[([^\]]*)\]$", job_id)
    if not match:
        return [job_id]
    base, spec = match.groups()
    out = []
    for part in spec.split("%")[0].split(","):
        bounds = part.split(":")[0].split("-")
        if bounds[0].isdigit():
            first, last = int(bounds[0]), int(bounds[-1])
            out += [f"{base}_{i}" for i in range(first, last + 1)]
    return out


def job_states(array_job_ids: list[str], since: float | None = None) -> tuple[str | None, dict[str, str]]:
    """State of every array task of these jobs: ('sacct' | 'squeue' | None, {'12_3': 'RUNNING'}).

    sacct when accounting works; else `squeue -t all` (which sees finished jobs for MinJobAge).
    """
    if not array_job_ids:
        return None, {}
    wanted = set(array_job_ids)
    argv = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(array_job_ids)]
    if since:
        argv += ["-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))]
    result = _run(argv)
    source, lines = None, []
    if result is not None and result.returncode == 0:
        source, lines = "sacct", result.stdout.splitlines()
    else:
        result = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(array_job_ids)])
        if result is not None and (result.returncode == 0 or result.stdout.strip()):
            source, lines = "squeue", result.stdout.splitlines()
    states: dict[str, str] = {}
    for line in lines:
        parts = line.strip().split("|")
        if len(parts) < 2 or parts[0].split("_")[0].split(".")[0] not in wanted:
            continue
        state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # sacct: "CANCELLED by 0"
        for task in expand_task_ids(parts[0]):
            states[task] = state
    return source, states


def active_jobs(workdir: Workdir) -> list[str]:
    """Recorded jobs of this workdir that SLURM still has queued or running."""
    ids = recorded_job_ids(workdir)
    if not ids:
        return []
    result = _run(["squeue", "-h", "-o", "%F|%i|%T", "-j", ",".join(ids)])
    if result is None:
        return []
    out = []
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids and parts[2] in ACTIVE_STATES and parts[0] not in out:
            out.append(parts[0])
    return out


def cancel_ids(ids: list[str]) -> list[str]:
    if not ids:
        return []
    result = _run(["scancel", *ids])
    return ids if result is not None and result.returncode == 0 else []


def cancel_run(workdir: Workdir) -> list[str]:
    """Mark every submission cancelled (so tasks stopped by the scancel do not requeue themselves),
    then scancel all recorded jobs of the workdir."""
    require_slurm("scancel")
    if not recorded_job_ids(workdir):
        return []
    ids = mark_cancelled(workdir, time.time())
    result = _run(["scancel", *ids])
    if result is None or result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1] if result else "scancel did not run"
        raise VirnucproError(f"scancel {' '.join(ids)} failed ({message}); cancel the jobs by hand")
    return ids


def slurm_view(workdir: Workdir) -> dict:
    """What SLURM says about this run's jobs (for `status`): per stage, the states of the tasks
    of its latest array; `active` when any of them may still run."""
    per_stage = stage_jobs(workdir)
    ids = [job["job_id"] for jobs in per_stage.values() for job in jobs]
    if not ids:
        return {"source": None, "stages": {}, "task_states": {}, "active": False}
    since = min(job["submitted"] for jobs in per_stage.values() for job in jobs)
    source, states = job_states(ids, since)
    stages, active = {}, False
    for stage, jobs in per_stage.items():
        if not jobs:
            continue
        latest = jobs[-1]
        counts: dict[str, int] = {}
        crashed = []
        for index, shards in enumerate(latest["tasks"]):
            state = states.get(f"{latest['job_id']}_{index}")
            if state in CRASH_STATES:
                crashed.append({"task": f"{latest['job_id']}_{index}", "state": state, "shards": shards,
                                "log": str(workdir.task_log(stage, latest["job_id"], index))})
            if state is None:
                # sacct lists a job a moment after sbatch returns; a task it never lists is gone.
                active |= time.time() - latest["submitted"] < UNLISTED_GRACE_S
                state = "UNKNOWN" if source else "-"
            else:
                active |= state in ACTIVE_STATES
            counts[state] = counts.get(state, 0) + 1
        stages[stage] = {"job_ids": [job["job_id"] for job in jobs], "latest": latest["job_id"], "states": counts,
                         "crashed": crashed}
    return {"source": source, "stages": stages, "task_states": states, "active": active}


def format_states(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
