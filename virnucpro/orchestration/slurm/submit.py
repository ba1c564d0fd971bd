"""Submission: the job graph to sbatch, stage by stage, each array after the jobs it waits for.

Every task is a pickled call of `virnucpro.orchestration.task.run_array_task` (submitit's job
runner unpickles and calls it), which goes through `run_stage_shards` like the local runner.
Every job id is recorded in jobs.json as soon as sbatch returns it, so `cancel` works even if a
later sbatch fails; on a failure the part of the graph already submitted is cancelled.
"""

from __future__ import annotations

import getpass
import subprocess
import time

from ...errors import VirnucproError
from ...paths import Workdir
from ..task import run_array_task
from . import submitit_private
from .graph import StageJob
from .jobs import append_submission, update_submission
from .profile import SlurmOptions
from .queries import cancel_ids, require_slurm
from .sbatch import render_script


def task_calls(workdir: Workdir, job: StageJob):
    from submitit.helpers import DelayedSubmission

    device = None if job.gpus else "cpu"  # CPU stages never claim a GPU they were not given
    return [DelayedSubmission(run_array_task, str(workdir.root), job.stage, shards, max(job.gpus, 1), device)
            for shards in job.tasks]


def submit_graph(workdir: Workdir, jobs: list[StageJob], options: SlurmOptions) -> dict:
    """Submit the stages in order, each after the jobs it depends on; record every id as soon as
    it exists (so `cancel` works even if a later sbatch fails), cancel the partial graph on error."""
    require_slurm()
    refused = (*submitit_private.submission_errors(), subprocess.SubprocessError, OSError)
    record = {"submitted": time.time(), "user": getpass.getuser(), "profile": options.origin,
              "cancelled": None, "stages": {}}
    index = append_submission(workdir, record)
    ids: dict[str, str] = {}
    for job in jobs:
        script = render_script(workdir, job, options, ids)
        workdir.stage_log(job.stage).mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        try:
            job_id, script_path = submitit_private.submit_array(workdir.submitit_dir(job.stage), script,
                                                                task_calls(workdir, job))
        except refused as exc:
            cancelled = cancel_ids(list(ids.values()))
            detail = str(exc).strip().splitlines()
            raise VirnucproError(f"sbatch refused the {job.stage} job ({detail[-1] if detail else exc})"
                                 + (f"; cancelled the jobs already submitted ({', '.join(cancelled)})" if cancelled else "")
                                 + "; fix the SLURM settings (partition, account, limits) and submit again") from None
        ids[job.stage] = job_id
        record["stages"][job.stage] = {"job_id": job_id, "tasks": job.tasks, "after": job.waits_for,
                                       "gpus": job.gpus, "script": str(script_path)}
        update_submission(workdir, index, record)
    return record
