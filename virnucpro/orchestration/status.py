"""What is done, running, failed: the state file per stage, plus what SLURM says about the run's
jobs when it was submitted (W/slurm/jobs.json; sacct, or `squeue -t all` without accounting).

The state file is the truth about shards; SLURM only adds job ids and states, and catches the
one thing the state file cannot know: a shard marked running whose task SLURM has ended (killed
for memory, node failure, cancelled) is reported as failed. A shard running outside SLURM whose
process is gone (see `mark_dead_local_shards`) is reported failed too. Work is O(shards): the
folded state (state.json plus the records changed since), one pass, one sacct/squeue call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import pipeline
from ..pipeline import STAGES, stage_names
from .slurm import format_states, slurm_view
from .state import DONE, FAILED, PENDING, RUNNING, ShardState, StateFile
from .writer import current_holder, describe_holder, holder_alive

# SLURM states after which a task no longer runs anything.
ENDED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
MAX_LISTED_FAILURES = 20


@dataclass
class StageSummary:
    stage: str
    shards: int = 0
    counts: dict = field(default_factory=lambda: {PENDING: 0, RUNNING: 0, DONE: 0, FAILED: 0})
    requeues: int = 0
    requeued_shards: int = 0
    # pending pairs a local run was stopped in (Ctrl-C, SIGTERM, SIGHUP): {shard, signal, command, cwd, time}
    interrupted: list = field(default_factory=list)
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    failures: list = field(default_factory=list)
    job_ids: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.shards > 0 and self.counts[DONE] == self.shards

    def to_dict(self) -> dict:
        return {"stage": self.stage, "shards": self.shards, **self.counts, "requeues": self.requeues,
                "requeued_shards": self.requeued_shards, "interrupted": self.interrupted, "tokens_per_second": self.tokens_per_second,
                "eta_seconds": self.eta_seconds, "failures": self.failures, "job_ids": self.job_ids}


def summarise(state: dict[str, dict[int, ShardState | dict]], task_states: dict[str, str] | None = None,
              stages: tuple[str, ...] = STAGES) -> list[StageSummary]:
    """Per stage counts. Entries are ShardStates or their raw JSON dicts (faster: no objects).
    `task_states` ({'12_3': 'OUT_OF_MEMORY'}) turns running shards whose SLURM task ended into failures."""
    task_states = task_states or {}
    summaries = []
    for stage in stages:
        entries = state.get(stage, {})
        summary = StageSummary(stage, shards=len(entries))
        done_seconds = []
        tokens = []
        running = 0
        job_ids: dict[str, None] = {}  # ordered and O(1) per shard
        for shard, entry in sorted(entries.items()):
            e = entry if isinstance(entry, dict) else vars(entry)
            status = e.get("status") if e.get("status") in summary.counts else PENDING
            job_id, error = e.get("job_id"), e.get("error")
            if status == RUNNING and task_states.get(job_id or "") in ENDED_STATES:
                status = FAILED
                error = f"SLURM task {job_id} ended {task_states[job_id]} while running this shard"
            summary.counts[status] += 1
            running += status == RUNNING
            requeues = e.get("requeues") or 0
            summary.requeues += requeues
            summary.requeued_shards += requeues > 0
            if job_id:
                job_ids[job_id] = None
            if status == PENDING and e.get("interrupted"):
                summary.interrupted.append({"shard": shard, **e["interrupted"]})
            if status == FAILED:
                summary.failures.append({"shard": shard, "error": error, "log": e.get("log"), "job_id": job_id})
            if status == DONE and e.get("seconds"):
                done_seconds.append(e["seconds"])
                speed = (e.get("metrics") or {}).get("tokens_per_second")
                if speed:
                    tokens.append(speed)
        summary.job_ids = list(job_ids)
        if tokens:
            summary.tokens_per_second = round(sum(tokens) / len(tokens), 1)
        remaining = summary.shards - summary.counts[DONE]
        if done_seconds and remaining:
            summary.eta_seconds = round(sum(done_seconds) / len(done_seconds) * remaining / (running or 1), 1)
        summaries.append(summary)
    return summaries


def read_state(workdir) -> dict[str, dict[int, dict]]:
    """The state file as raw dicts (status reads it without the lock: writes are atomic renames)."""
    raw = StateFile(workdir.state, workdir.state_lock).read_raw()  # checked: a damaged file is one line
    return {stage: {int(k): v for k, v in shards.items()} for stage, shards in raw.get("stages", {}).items()}


def all_done(summaries: list[StageSummary]) -> bool:
    return all(s.complete for s in summaries)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"


def status_report(workdir, config=None) -> dict:
    """Everything `status` shows, as plain data (also the --json output). With the run's `config`,
    a done pair whose output is gone counts as pending, as the next run/submit plans it
    (`pipeline.plan`, a stat per file), and `missing` says which file and what it recomputes."""
    slurm = {"source": None, "stages": {}, "task_states": {}, "active": False}
    if workdir.jobs.exists():
        slurm = slurm_view(workdir)
    state = read_state(workdir)
    holder = current_holder(workdir.root)
    mark_dead_local_shards(state, holder)
    missing = mark_missing_outputs(state, config, workdir) if config is not None else []
    # the stages of the run's kind (a workdir evaluated after a training keeps train's records)
    stages = stage_names(config) if config is not None else tuple(s for s in STAGES if state.get(s))
    summaries = summarise(state, slurm["task_states"], stages)
    if not (slurm["active"] or holder or any(s.counts[RUNNING] for s in summaries)):
        # nothing runs (interrupted, failed, or its process is gone): no time left to estimate
        for summary in summaries:
            summary.eta_seconds = None
    stages = []
    for s in summaries:
        entry = s.to_dict()
        job = slurm["stages"].get(s.stage)
        entry["slurm"] = job and {k: v for k, v in job.items() if k != "crashed"}
        # tasks SLURM ended in failure before they could record anything (launch failure, killed
        # while loading the model): their log is the only account of what happened
        recorded = {f["shard"] for f in entry["failures"]}
        for crash in (job or {}).get("crashed", []):
            shards = [x for x in crash["shards"] if x not in recorded and state.get(s.stage, {}).get(x, {}).get("status") != DONE]
            if shards:
                entry["failures"].append({"shard": shards[0] if len(shards) == 1 else shards, "job_id": crash["task"],
                                          "error": f"SLURM task {crash['task']} ended {crash['state']}", "log": crash["log"]})
        stages.append(entry)
    return {"workdir": str(workdir.root), "complete": all_done(summaries), "slurm_source": slurm["source"],
            "slurm_active": slurm["active"], "holder": holder, "stages": stages, "missing": missing}


def mark_missing_outputs(state: dict[str, dict[int, dict]], config, workdir) -> list[dict]:
    """Mark pending the done pairs the next run/submit recomputes because a file is missing (and
    those made from it); one entry per missing file."""
    plan = pipeline.plan(config, state, workdir, signatures=False)
    for stage, shards in plan.reset.items():
        for shard in shards:
            state[stage][shard]["status"] = PENDING
    return [{"stage": stage, "shard": shard, "path": str(path),
             "recomputed": pipeline.describe_pairs(pipeline.dependents(stage, shard, config))}
            for (stage, shard), path in plan.missing.items()]


def mark_dead_local_shards(state: dict[str, dict[int, dict]], holder: dict | None) -> None:
    """A shard marked running outside SLURM whose process is gone (kill -9, terminal closed, node
    lost) is shown failed, with how to resume: on this host its pid is checked; elsewhere, a
    local run holds the workdir for its whole length, so no live holder means no live run."""
    import socket

    here = socket.gethostname()
    for stage, entries in state.items():
        for entry in entries.values():
            if entry.get("status") != RUNNING or entry.get("job_id"):
                continue
            pid, host = entry.get("pid"), entry.get("host")
            if host == here and isinstance(pid, int):
                alive = holder_alive({"host": host, "pid": pid})
            else:
                alive = holder is not None
            if not alive:
                entry["status"] = FAILED
                entry["error"] = (f"the process running it (pid {pid} on {host}) is gone (killed, or its terminal "
                                  "closed); run the same command again to resume")


def render_status(report: dict):
    """A rich table of the report plus one line per failure (log path included)."""
    from rich.console import Group
    from rich.table import Table

    from rich import box
    from rich.markup import escape  # user text (paths, errors quoting read ids) is never markup

    table = Table(title=f"virnucpro run {escape(str(report['workdir']))}", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["stage", "shards", "done", "running", "pending", "failed", "requeued", "tok/s", "ETA"]
    slurm_column = report["slurm_source"] is not None or any(s["slurm"] for s in report["stages"])
    if slurm_column:
        columns.append(f"SLURM job: tasks ({report['slurm_source'] or 'SLURM unavailable'})")
    for column in columns:
        table.add_column(column, justify="left" if column == "stage" or column.startswith("SLURM") else "right",
                         no_wrap=not column.startswith("SLURM"))
    lines = []
    if report.get("holder"):
        lines.append(f"in use by {escape(describe_holder(report['holder']))}")
    for s in report["stages"]:
        row = [s["stage"], str(s["shards"]), f"[green]{s['done']}[/green]", str(s["running"]), str(s["pending"]),
               f"[red]{s['failed']}[/red]" if s["failed"] else "0",
               str(s["requeued_shards"]),
               f"{s['tokens_per_second']:,.0f}" if s["tokens_per_second"] else "-", format_seconds(s["eta_seconds"])]
        if slurm_column:
            job = s["slurm"]
            row.append(escape(f"{job['latest']}: {format_states(job['states'])}") if job else "-")
        table.add_row(*row)
        for failure in s["failures"][:MAX_LISTED_FAILURES]:
            lines.append(f"[red]{s['stage']} shard {failure['shard']} failed[/red]: {escape(str(failure['error']))}"
                         + (f" (log: {escape(str(failure['log']))})" if failure.get("log") else ""))
        if len(s["failures"]) > MAX_LISTED_FAILURES:
            lines.append(f"[red]{s['stage']}: {len(s['failures']) - MAX_LISTED_FAILURES} more failed shard(s)[/red] "
                         "(--json lists them all)")
    for s in report["stages"]:
        for stop in s.get("interrupted", [])[:MAX_LISTED_FAILURES]:
            lines.append(describe_interruption(s["stage"], stop))
    for gone in report.get("missing", [])[:MAX_LISTED_FAILURES]:
        lines.append(f"[yellow]{escape(str(gone['path']))} is missing[/yellow]: will be recomputed by the next run/submit "
                     f"({gone['recomputed']})")
    if len(report.get("missing", [])) > MAX_LISTED_FAILURES:
        lines.append(f"[yellow]{len(report['missing']) - MAX_LISTED_FAILURES} more missing file(s)[/yellow] (--json lists them all)")
    return Group(table, *lines)


def describe_interruption(stage: str, stop: dict) -> str:
    """One status line for a pair a local run was stopped in, with the command that resumes it."""
    from rich.markup import escape

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stop["time"])) if stop.get("time") else "?"
    resume = (f"resume with: {stop['command']}" + (f" (in {stop['cwd']})" if stop.get("cwd") else "")
              if stop.get("command") else "run the same command again to resume")
    return f"[yellow]{stage} shard {stop['shard']} interrupted[/yellow] " + escape(f"by {stop.get('signal')} at {when}; {resume}")


def status_console():
    """stdout; when piped, wide enough that no column is cut (a terminal keeps its own width)."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def watch(workdir, interval: float, console, config=None) -> dict:
    """Redraw the status every `interval` seconds until the run is complete or nothing is left
    that could change it: no SLURM job queued or running, no live process holding the workdir,
    no shard running in a live process."""
    from rich.live import Live

    report = status_report(workdir, config)
    with Live(render_status(report), console=console, auto_refresh=False) as live:
        while True:
            running = any(s["running"] for s in report["stages"])
            if report["complete"] or not (report["slurm_active"] or running or report["holder"]):
                return report
            time.sleep(interval)
            report = status_report(workdir, config)
            live.update(render_status(report), refresh=True)
