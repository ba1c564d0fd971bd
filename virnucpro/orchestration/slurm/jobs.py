"""W/slurm/jobs.json: every submission of a run and its array job ids, for `cancel`, `status`
and the tasks themselves (a task of a cancelled submission does not requeue itself).

Changes are read-modify-write under an exclusive flock on W/slurm/.jobs.lock (never unlinked),
and the file is replaced atomically: the discipline of state.json (orchestration/state.py), so a
`cancel` and a `submit` running at once lose neither's record, and readers need no lock.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

from ...atomic import atomic_write_text
from ...errors import VirnucproError
from ...paths import Workdir
from ..state import exclusive_lock


def jobs_path(workdir: Workdir) -> Path:
    return workdir.jobs


def load_jobs(workdir: Workdir) -> dict:
    try:
        return json.loads(workdir.jobs.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"submissions": []}
    except ValueError as exc:
        raise VirnucproError(f"{workdir.jobs}: unreadable ({exc}); cancel its jobs by hand with scancel") from None


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
    from ...pipeline import STAGES

    out: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    for sub in load_jobs(workdir)["submissions"]:
        for stage, job in sub["stages"].items():
            out[stage].append({**job, "submitted": sub["submitted"], "cancelled": sub.get("cancelled")})
    return out
