"""SLURM execution: a run becomes one graph of array jobs, submitted through submitit.

One module per concern (read them in this order):

- profile.py   site settings: built-in defaults < --profile YAML < flags, validated
- graph.py     the job graph: one array per stage with work (what `pipeline.plan` says must run)
- sbatch.py    the sbatch script of a stage (what --dry-run prints is what sbatch runs)
- submit.py    submission, stage by stage, each after the jobs it waits for (imported on its own:
               it pickles the array tasks' calls, so it imports orchestration/task.py, which reads jobs.py)
- jobs.py      W/slurm/jobs.json (every submission's job ids), under the state file's lock discipline
- queries.py   sacct / squeue / scancel: job states for `status`, active jobs, `cancel`
- submitit_private.py  the only module that calls submitit's private API (tests guard it)

The stages themselves, their order and the recompute rule are virnucpro/pipeline.py; a task is
`orchestration/task.py`. Knows nothing of torch; --dry-run needs no SLURM installed.
"""

from .graph import MAX_ARRAY_TASKS, StageJob, group_shards, jobs_for, plan_jobs
from .jobs import append_submission, is_cancelled, jobs_path, load_jobs
from .profile import DEFAULT_PROFILE, SlurmOptions, load_profile, resolve_options
from .queries import active_jobs, cancel_run, expand_task_ids, format_states, job_states, require_slurm, slurm_view
from .sbatch import check_workdir_path, placeholder, render_script

__all__ = ["MAX_ARRAY_TASKS", "StageJob", "group_shards", "jobs_for", "plan_jobs", "append_submission", "is_cancelled",
           "jobs_path", "load_jobs", "DEFAULT_PROFILE", "SlurmOptions", "load_profile", "resolve_options",
           "active_jobs", "cancel_run", "expand_task_ids", "format_states", "job_states", "require_slurm",
           "slurm_view", "check_workdir_path", "placeholder", "render_script"]
