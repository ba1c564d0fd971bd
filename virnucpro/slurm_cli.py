"""`virnucpro-slurm submit` and `cancel`: a run as SLURM array jobs (see orchestration/slurm/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import console, pipeline
from .pipeline import STAGES

SUBMIT_EPILOG = """\
examples:
  virnucpro-slurm submit inputs.txt -w W --partition gpu --classifier 500_model.pth
  virnucpro-slurm submit inputs.txt -w W --profile slurm_templates/example-site.yaml --dry-run
  virnucpro-slurm submit inputs.txt -w W --partition gpu --gpus-per-task 4 --max-parallel-gpus 16 --time-esm2 12:00:00
  virnucpro-slurm status -w W --watch
  virnucpro-slurm cancel -w W

The job graph: prepare (CPU) -> dnabert and esm2 (GPU arrays over shards) -> predict (array)
-> consensus. Submitting again on the same workdir submits only the unfinished (stage, shard)
pairs. Settings come from built-in defaults < --profile < flags. Shards: --shards N, default
one per 50 Mbp of input (about 4 min of ESM-2 3B per shard on one H100), so each GPU task
amortises its model loading; a task with --gpus-per-task N takes N shards, one per GPU.
"""


def register(subparsers, add_common, add_run_options) -> None:
    submit = subparsers.add_parser("submit", help="run every stage as SLURM array jobs (resubmit: only unfinished work)",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUBMIT_EPILOG)
    add_run_options(submit, "any")
    slurm = submit.add_argument_group("SLURM (flags override the --profile, which overrides the defaults)")
    slurm.add_argument("--profile", metavar="YAML|NAME", help="site profile, e.g. slurm_templates/example-site.yaml")
    slurm.add_argument("--partition", help="partition of the GPU stages (dnabert, esm2)")
    slurm.add_argument("--cpu-partition", help="partition of prepare, predict and consensus (default: --partition)")
    slurm.add_argument("--account", help="account to charge the jobs to (sbatch --account)")
    slurm.add_argument("--qos", help="quality of service of the jobs (sbatch --qos)")
    slurm.add_argument("--gres-name", help="GPU gres as in --gres=NAME:N (default gpu; e.g. gpu:a100)")
    slurm.add_argument("--gpus-per-task", type=int, metavar="N",
                       help="GPUs per dnabert/esm2 task (one worker per GPU, up to N shards per task; default 1)")
    slurm.add_argument("--max-parallel-gpus", type=int, metavar="N",
                       help="at most N GPUs held by the run at once (the two GPU arrays then run one after the other)")
    for stage in STAGES:
        slurm.add_argument(f"--time-{stage}", metavar="TIME", help=f"time limit of {stage} tasks (minutes or H:MM:SS)")
    slurm.add_argument("--dry-run", action="store_true",
                       help="write and print the sbatch scripts under W/slurm/dry-run/; submit nothing, change no state")
    add_common(submit)
    submit.set_defaults(func=cmd_submit)

    cancel = subparsers.add_parser("cancel", help="cancel every SLURM job of a workdir (resubmit to resume)",
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="cancels the jobs recorded in W/slurm/jobs.json; tasks stopped by it do not "
                                          "requeue themselves\n\nexamples:\n  virnucpro-slurm cancel --workdir W\n"
                                          "  virnucpro-slurm submit inputs.txt --workdir W --partition gpu   # resume later")
    cancel.add_argument("--workdir", "-w", type=Path, required=True, help="the run's workdir")
    add_common(cancel)
    cancel.set_defaults(func=cmd_cancel)


def slurm_flags(args) -> dict:
    return {
        "partition": args.partition, "cpu_partition": args.cpu_partition, "account": args.account, "qos": args.qos,
        "gres_name": args.gres_name, "gpus_per_task": args.gpus_per_task, "max_parallel_gpus": args.max_parallel_gpus,
        "stages": {stage: {"time": getattr(args, f"time_{stage}")} for stage in STAGES},
    }


def preview_run(request):
    """The run's configuration and state as `plan_run` would make them (refusals included), writing nothing."""
    from .orchestration.config import HashCache
    from .orchestration.plan import check_is_workdir_or_empty, compare_with_workdir, new_config, refuse_while_jobs_active
    from .orchestration.writer import WorkdirWriter, current_holder
    from .orchestration.state import StateFile
    from .paths import Workdir

    workdir = Workdir(request.workdir)
    config = new_config(request)
    check_is_workdir_or_empty(workdir)
    holder = current_holder(workdir.root)
    if holder:
        raise WorkdirWriter(workdir.root, "").busy(holder)
    refuse_while_jobs_active(workdir)
    discard, reset = compare_with_workdir(request, workdir, config, HashCache(workdir.hash_cache))
    state = {} if discard else StateFile(workdir.state, workdir.state_lock).load()
    for stage in reset:  # as plan_run resets them
        state.pop(stage, None)
    return workdir, config, state


def cmd_submit(args) -> int:
    from .cli import run_request, warn_if_demo
    from .orchestration import slurm
    from .paths import Workdir

    options = slurm.resolve_options(args.profile, slurm_flags(args))
    request = run_request(args)
    from .modelstore.resolve import resolve_for_submit
    resolve_for_submit(request, warn_only=args.dry_run)  # login node: tasks get local model paths only
    slurm.check_workdir_path(Workdir(request.workdir))
    if args.dry_run:
        workdir, config, state = preview_run(request)
        warn_if_demo(config)
        jobs, _ = slurm.plan_jobs(config, state, options.gpus_per_task, options.gpus_capped, workdir)
        write_dry_run(workdir, jobs, options)
        return 0

    from .orchestration.plan import plan_run
    from .orchestration.writer import WorkdirWriter

    slurm.require_slurm()
    with WorkdirWriter(request.workdir, "virnucpro-slurm submit") as writer:  # until the jobs are recorded
        return _submit_held(request, options, plan_run(request, writer))


def _submit_held(request, options, planned) -> int:
    from .cli import warn_if_demo
    from .orchestration import slurm
    from .orchestration.state import PENDING

    workdir, config, state = planned
    warn_if_demo(config)
    plan = pipeline.plan(config, state.load(), workdir)
    for note in pipeline.healing_notes(plan, config):
        console.warn(note)
    jobs, rerun = slurm.jobs_for(plan, config, options.gpus_per_task, options.gpus_capped)
    if not jobs:
        console.info(("nothing to submit", "green"), f": every stage of {workdir.root} is done")
        return 0
    for stage, shards in rerun.items():  # done, but made from recomputed inputs or missing a file: compute again
        for shard in shards:
            state.update(stage, shard, status=PENDING)
    record = slurm.submit_graph(workdir, jobs, options)
    print_submission(workdir, jobs, record)
    return 0


def shard_ranges(shards: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []
    for shard in shards:
        if runs and shard == runs[-1][1] + 1:
            runs[-1][1] = shard
        else:
            runs.append([shard, shard])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe(job) -> str:
    shards = job.shards
    span = f"shard {shards[0]}" if len(shards) == 1 else f"{len(shards)} shards ({shard_ranges(shards)})"
    after = f", after {' and '.join(job.waits_for)}" if job.waits_for else ""
    gpus = f", {job.gpus} GPU(s) per task" if job.gpus else ""
    return f"{job.stage}: {len(job.tasks)} task(s), {span}{gpus}{after}"


def write_dry_run(workdir, jobs, options) -> None:
    from .atomic import atomic_write_text
    from .orchestration import slurm

    folder = workdir.dry_run_dir
    if folder.is_dir():
        for old in folder.glob("*.sh"):
            old.unlink()
    placeholders = {job.stage: slurm.placeholder(job.stage) for job in jobs}
    tty = console.stdout_is_tty()
    if tty:
        from rich.console import Console
        from rich.syntax import Syntax
        out = Console(highlight=False)
    if not jobs:
        console.info(f"nothing to submit: every stage of {workdir.root} is done")
    for job in jobs:
        script = slurm.render_script(workdir, job, options, placeholders)
        path = workdir.dry_run_script(job.stage)
        atomic_write_text(path, script)
        header = f"# ==== {path} -- {describe(job)}"
        if tty:
            out.print(header, style="bold", markup=False)
            out.print(Syntax(script, "bash", word_wrap=True))
        else:
            print(header)
            print(script)
    waited_for = [placeholders[s] for s in placeholders if any(s in job.waits_for for job in jobs)]
    console.info(f"dry run ({options.origin}): {len(jobs)} script(s) in {folder}; nothing submitted"
                 + (f"; {', '.join(waited_for)} stand for the job ids sbatch will assign" if waited_for else ""))


def print_submission(workdir, jobs, record) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"submitted {workdir.root}"))
    for column in ("stage", "job id", "tasks", "shards", "after"):
        table.add_column(column)
    for job in jobs:
        entry = record["stages"][job.stage]
        shards = job.shards
        table.add_row(job.stage, entry["job_id"], str(len(job.tasks)),
                      str(shards[0]) if len(shards) == 1 else f"{len(shards)} ({shards[0]}-{shards[-1]})",
                      ", ".join(record["stages"][s]["job_id"] for s in job.waits_for) or "-")
    out = Console(highlight=False)
    out.print(table)
    out.print(f"logs: {workdir.logs}/<stage>/<job>_<task>.err   follow: virnucpro-slurm status -w {workdir.root} --watch",
              soft_wrap=True, markup=False)  # one line, whatever the width: the paths are copied from it


def cmd_cancel(args) -> int:
    from .orchestration import slurm
    from .paths import Workdir

    workdir = Workdir(args.workdir)
    ids = slurm.cancel_run(workdir)
    if not ids:
        console.info(f"no SLURM jobs recorded in {workdir.jobs}")
        return 0
    console.info(f"cancelled jobs {', '.join(ids)}; 'virnucpro-slurm submit' on this workdir resumes the run")
    return 0
