"""The sbatch script of a stage, rendered once: what `--dry-run` prints and what sbatch runs.

`render_script` is submitit's own sbatch writer (see submitit_private.py) with our parameters:
logs under W/logs/<stage>/%A_%a.{out,err}, the batch shell `exec`s the task (so SLURM's signals
reach Python directly), SIGUSR2 90 s before the time limit, `kill-on-invalid-dep=yes` so a failed
job's dependents are cancelled instead of pending forever, `--requeue` for requeueable stages.
With a container image the task runs inside it and the batch shell stays outside
(`container_task_lines`). Needs no SLURM installed.
"""

from __future__ import annotations

import re
import shlex
import sys

from ...errors import InputError, RunInterrupted
from ...paths import Workdir
from ...pipeline import STAGE
from ..container import REQUEUE_BY_BATCH_SHELL, Container
from . import submitit_private
from .graph import StageJob
from .profile import SlurmOptions

# Seconds before the time limit at which SLURM sends SIGUSR2 to the batch shell ("B:"): our task
# runs as the batch shell itself (exec, no srun step), so the signal must go there.
SIGNAL_WARNING_S = 90


def placeholder(stage: str) -> str:
    """Stands for a job id not known before submission (dry-run scripts)."""
    return f"{stage.upper()}_JOB_ID"


PREVIEW_NOTE = ("# PREVIEW written by 'virnucpro-slurm submit --dry-run': not for sbatch by hand (the *_JOB_ID "
                "placeholders stand for job ids, and the task files it runs are written only by a real submit); "
                "submit with the same command without --dry-run\n")


def as_preview(script: str) -> str:
    """A dry run's copy of a script: the script with PREVIEW_NOTE after its first line (a comment
    among the #SBATCH lines, which sbatch reads on)."""
    first, _, rest = script.partition("\n")
    return f"{first}\n{PREVIEW_NOTE}{rest}"


def check_workdir_path(workdir: Workdir) -> None:
    # '%' is a SLURM filename pattern and a submitit id tag; a newline breaks #SBATCH lines.
    text = str(workdir.root)
    if any(c in text for c in "%\\\n\r"):
        raise InputError(f"{text}: a SLURM workdir path must not contain '%', '\\' or line breaks; choose another --workdir")


def sbatch_parameters(workdir: Workdir, job: StageJob, options: SlurmOptions, dependency: str | None) -> dict:
    """Keyword arguments of submitit's sbatch writer for one stage."""
    p = options.profile
    res = p["stages"][job.stage]
    scale = max(job.gpus, 1)
    mem = res["mem"]
    if scale > 1:
        number, unit = re.match(r"(\d+)([KMGT]?)", mem).groups()
        mem = f"{int(number) * scale}{unit}"
    extra = {
        "output": workdir.task_log_pattern(job.stage, "out"),
        "error": workdir.task_log_pattern(job.stage, "err"),
        "chdir": str(workdir.root),
        "signal": f"B:USR2@{SIGNAL_WARNING_S}",
        "kill-on-invalid-dep": "yes",
    }
    if STAGE[job.stage].requeueable:
        extra["requeue"] = True
    if job.gpus:
        extra["gres"] = f"{p['gres_name']}:{job.gpus}"
    extra.update(p["sbatch"])
    parallel = len(job.tasks)
    if job.gpus and p["max_parallel_gpus"]:
        parallel = min(parallel, max(1, p["max_parallel_gpus"] // job.gpus))
    return dict(
        job_name=f"virnucpro-{job.stage}", partition=options.partition_of(job.stage, bool(job.gpus)), time=res["time"],
        cpus_per_task=res["cpus"] * scale, mem=mem, account=p["account"], qos=p["qos"], dependency=dependency,
        map_count=len(job.tasks), array_parallelism=parallel, wckey=None, use_srun=False,
        setup=setup_lines(p["preamble"], options.origin), additional_parameters=extra,
    )


def setup_lines(preamble: str, origin: str) -> list[str]:
    # CPU threads follow the task's allotment: without task binding (TaskPlugin=task/none, no
    # cgroups) torch starts a thread per core of the whole node, and a login shell's exported
    # OMP_NUM_THREADS would leak in through sbatch. The thread count also fixes the order of float
    # sums in CPU kernels, so a run is reproducible given its profile. The preamble may override.
    lines = ["set -euo pipefail",
             'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"']
    if preamble.strip():
        # Module and conda scripts read unset variables; errors in the preamble still stop the job.
        where = " ".join(origin.split())  # a comment line, whatever the profile's path holds
        lines += [f"# site preamble ({where}); nounset is relaxed around it", "set +u",
                  *preamble.rstrip("\n").splitlines(), "set -u"]
    return lines


def task_command(workdir: Workdir, stage: str, container: Container | None = None, gpu: bool = False) -> str:
    runner = ["-u", "-m", "submitit.core._submit", str(workdir.submitit_dir(stage))]
    if container:
        return container_task_lines(container, container.python(runner, gpu))
    # exec: the Python process is the batch shell itself, so it receives SLURM's signals directly.
    return f"exec {shlex.join([sys.executable, *runner])}"


# The image has no SLURM commands (scontrol), so the batch shell stays outside: it passes SLURM's
# signals on to the task (B:USR2 reaches the batch shell only) and requeues the task when the task
# asks, by its exit status. `wait` returns early when a trapped signal arrives: wait again while
# the task runs.
_CONTAINER_TASK = """\
{user}export {flag}=1
task=""
trap '[ -z "$task" ] || kill -USR2 "$task" 2>/dev/null || true' USR2
trap '[ -z "$task" ] || kill -TERM "$task" 2>/dev/null || true' TERM
{command} &
task=$!
while :; do
    status=0
    wait "$task" || status=$?
    kill -0 "$task" 2>/dev/null || break
done
if [ "$status" -eq {requeue} ]; then
    job="${{SLURM_ARRAY_JOB_ID:+${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}}}"
    job="${{job:-$SLURM_JOB_ID}}"
    if scontrol requeue "$job"; then
        echo "requeued $job" >&2
    else
        echo "scontrol requeue $job did not requeue it (SLURM may be requeueing it already); if it stays ended, submit again" >&2
    fi
    exit 0
fi
exit "$status"
"""


def container_task_lines(container: Container, command: list[str]) -> str:
    """The script lines that run `command` (the task, inside the image) under a batch shell that
    forwards signals and requeues."""
    user = 'export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it\n' if container.runtime == "charliecloud" else ""
    return _CONTAINER_TASK.format(user=user, flag=REQUEUE_BY_BATCH_SHELL, command=shlex.join(command),
                                  requeue=RunInterrupted.exit_code).rstrip("\n")


def render_script(workdir: Workdir, job: StageJob, options: SlurmOptions, job_ids: dict[str, str]) -> str:
    """The sbatch script of a stage; `job_ids` gives the ids (or placeholders) of its dependencies."""
    # comma: every condition must hold; afterany is met however the job ends (not cancelled by a failure)
    conditions = [f"{kind}:" + ":".join(job_ids[s] for s in stages)
                  for kind, stages in (("afterok", job.after), ("afterany", job.after_any)) if stages]
    dependency = ",".join(conditions) or None
    command = task_command(workdir, job.stage, options.container, gpu=bool(job.gpus))
    return submitit_private.sbatch_text(command=command, folder=workdir.submitit_dir(job.stage),
                                        **sbatch_parameters(workdir, job, options, dependency))
