"""`submit`, `status` and `cancel`: a run as SLURM array jobs (see orchestration/slurm/), and what
it has done so far."""

from __future__ import annotations

import json

from .. import console, pipeline
from ..atomic import atomic_write_text
from ..orchestration import slurm
from ..orchestration.config import HashCache, RunConfig
from ..orchestration.state import PENDING, StateFile
from ..orchestration.status import render_status, status_console, status_report, watch
from ..orchestration.writer import WorkdirWriter, current_holder
from ..paths import Workdir
from ..pipeline import STAGES


def slurm_flags(args) -> dict:
    return {
        "partition": args.partition, "cpu_partition": args.cpu_partition, "account": args.account, "qos": args.qos,
        "gres_name": args.gres_name, "gpus_per_task": args.gpus_per_task, "max_parallel_gpus": args.max_parallel_gpus,
        "stages": {stage: {"time": getattr(args, f"time_{stage}")} for stage in STAGES},
    }


def preview_run(request):
    """The run's configuration and state as `plan_run` would make them (refusals included), writing nothing."""
    # the planner reads FASTA with numpy: imported for submit only, so status stays fast
    from ..orchestration.plan import check_is_workdir_or_empty, compare_with_workdir, new_config, refuse_while_jobs_active

    workdir = Workdir(request.workdir)
    config = new_config(request)
    check_is_workdir_or_empty(workdir)
    holder = current_holder(workdir.root)
    if holder:
        raise WorkdirWriter(workdir.root, "").busy(holder)
    refuse_while_jobs_active(workdir, slurm.active_jobs)
    discard, reset = compare_with_workdir(request, workdir, config, HashCache(workdir.hash_cache))
    state = {} if discard else StateFile(workdir.state, workdir.state_lock).load()
    for stage in reset:  # as plan_run resets them
        state.pop(stage, None)
    return workdir, config, state


def cmd_submit(args) -> int:
    # the planner (numpy) and the model store (urllib): for submit only, so status stays fast
    from ..modelstore.resolve import resolve_for_submit
    from ..orchestration.plan import plan_run
    from .run import run_request, warn_if_demo

    options = slurm.resolve_options(args.profile, slurm_flags(args))
    request = run_request(args)
    resolve_for_submit(request, warn_only=args.dry_run)  # login node: tasks get local model paths only
    slurm.check_workdir_path(Workdir(request.workdir))
    if args.dry_run:
        workdir, config, state = preview_run(request)
        warn_if_demo(config)
        jobs, _ = slurm.plan_jobs(config, state, options.gpus_per_task, options.gpus_capped, workdir)
        write_dry_run(workdir, jobs, options)
        return 0

    slurm.require_slurm()
    with WorkdirWriter(request.workdir, "virnucpro-slurm submit") as writer:  # until the jobs are recorded
        return _submit_held(request, options, plan_run(request, writer, slurm.active_jobs))


def _submit_held(request, options, planned) -> int:
    # the task code submitit pickles (the planner, numpy): for a real submission only
    from ..orchestration.slurm.submit import submit_graph
    from .run import warn_if_demo  # the planner's numpy: for submit only, so status stays fast

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
    record = submit_graph(workdir, jobs, options)
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


def cmd_status(args) -> int:
    workdir = Workdir(args.workdir)
    config = RunConfig.load(workdir)  # refuses a folder that is not a workdir (and imports no numpy: status is fast)
    if args.watch:
        report = watch(workdir, args.watch, status_console(), config)
    else:
        report = status_report(workdir, config)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            status_console().print(render_status(report))
    return 0 if report["complete"] else 1


def cmd_cancel(args) -> int:
    workdir = Workdir(args.workdir)
    ids = slurm.cancel_run(workdir)
    if not ids:
        console.info(f"no SLURM jobs recorded in {workdir.jobs}")
        return 0
    console.info(f"cancelled jobs {', '.join(ids)}; 'virnucpro-slurm submit' on this workdir resumes the run")
    return 0
