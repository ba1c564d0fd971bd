"""W/slurm/jobs.json: every submission of a run and its array job ids, for `cancel`, `status`
and the tasks themselves (a task of a cancelled submission does not requeue itself).

Changes are read-modify-write under an exclusive flock on W/slurm/.jobs.lock (never unlinked),
and the file is replaced atomically: the discipline of state.json (orchestration/state.py), so a
`cancel` and a `submit` running at once lose neither's record, and readers need no lock.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Iterator

from ...atomic import atomic_write_text
from ...errors import VirnucproError
from ...paths import Workdir
from ...pipeline import STAGE, STAGES
from ..state import exclusive_lock


def jobs_path(workdir: Workdir) -> Path:
    return workdir.jobs


JOB_ID = re.compile(r"\d+(_\d+)?")  # what sbatch prints (an array job) and what scancel may be given


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stage_problem(stage, job) -> str | None:
    if stage not in STAGE:
        return f"unknown stage {str(stage)[:40]!r}"
    if not isinstance(job, dict) or not isinstance(job.get("job_id"), str) or not JOB_ID.fullmatch(job["job_id"]):
        return f"{stage}: not a SLURM job id: {str(job.get('job_id') if isinstance(job, dict) else job)[:40]!r}"
    tasks = job.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                                                          and s >= 0 for s in t) for t in tasks):
        return f"{stage}: tasks are not lists of shard numbers"
    return None


def _problem(data) -> str | None:
    """What is wrong with jobs.json's content (it is passed to scancel, sacct and squeue), or None."""
    if not isinstance(data, dict) or not isinstance(data.get("submissions"), list):
        return "no list of submissions"
    for number, sub in enumerate(data["submissions"]):
        if not isinstance(sub, dict) or not isinstance(sub.get("stages"), dict) or not _is_number(sub.get("submitted")):
            return f"submission {number}: not a submission record"
        if sub.get("cancelled") is not None and not _is_number(sub["cancelled"]):
            return f"submission {number}: cancelled is not a time"
        for stage, job in sub["stages"].items():
            problem = _stage_problem(stage, job)
            if problem:
                return f"submission {number}: {problem}"
    return None


def load_jobs(workdir: Workdir) -> dict:
    try:
        data = json.loads(workdir.jobs.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"submissions": []}
    except (ValueError, UnicodeDecodeError) as exc:
        raise VirnucproError(f"{workdir.jobs}: unreadable ({exc}); cancel its jobs by hand with scancel") from None
    problem = _problem(data)
    if problem:
        raise VirnucproError(f"{workdir.jobs}: damaged ({problem}); nothing was passed to SLURM: cancel this "
                             "run's jobs by hand with scancel, then delete the file") from None
    return data


@contextlib.contextmanager
def jobs_transaction(workdir: Workdir) -> Iterator[dict]:
    """Yield jobs.json's data under the lock; it is written back atomically on success."""
    with exclusive_lock(workdir.jobs_lock):
        data = load_jobs(workdir)
        yield data
        atomic_write_text(workdir.jobs, json.dumps(data, indent=1) + "\n")


def append_submission(workdir: Workdir, record: dict) -> int:
    with jobs_transaction(workdir) as data:
        data["submissions"].append(record)
        return len(data["submissions"]) - 1


def update_submission(workdir: Workdir, index: int, record: dict) -> None:
    with jobs_transaction(workdir) as data:
        data["submissions"][index] = record


def mark_cancelled(workdir: Workdir, when: float) -> list[str]:
    """Mark every submission cancelled; the job ids of all of them."""
    with jobs_transaction(workdir) as data:
        for sub in data["submissions"]:
            sub["cancelled"] = sub.get("cancelled") or when
        return [s["job_id"] for sub in data["submissions"] for s in sub["stages"].values()]


def recorded_job_ids(workdir: Workdir) -> list[str]:
    return [s["job_id"] for sub in load_jobs(workdir)["submissions"] for s in sub["stages"].values()]


def is_cancelled(workdir: Workdir, array_job_id: str) -> bool:
    for sub in load_jobs(workdir)["submissions"]:
        if any(s["job_id"] == array_job_id for s in sub["stages"].values()):
            return bool(sub.get("cancelled"))
    return False


def stage_jobs(workdir: Workdir) -> dict[str, list[dict]]:
    """Per stage, its submitted arrays (oldest first): job id, tasks (shard lists), submission time."""
    out: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    for sub in load_jobs(workdir)["submissions"]:
        for stage, job in sub["stages"].items():
            out[stage].append({**job, "submitted": sub["submitted"], "cancelled": sub.get("cancelled")})
    return out
