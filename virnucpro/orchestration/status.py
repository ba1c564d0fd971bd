"""What is done, running, failed: a summary of the state file per stage (no torch, no SLURM)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..paths import STAGES
from .state import DONE, FAILED, PENDING, RUNNING, ShardState


@dataclass
class StageSummary:
    stage: str
    shards: int = 0
    counts: dict = field(default_factory=lambda: {PENDING: 0, RUNNING: 0, DONE: 0, FAILED: 0})
    requeues: int = 0
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    failures: list = field(default_factory=list)
    job_ids: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.shards > 0 and self.counts[DONE] == self.shards

    def to_dict(self) -> dict:
        return {"stage": self.stage, "shards": self.shards, **self.counts, "requeues": self.requeues,
                "tokens_per_second": self.tokens_per_second, "eta_seconds": self.eta_seconds,
                "failures": self.failures, "job_ids": self.job_ids}


def summarise(state: dict[str, dict[int, ShardState]]) -> list[StageSummary]:
    summaries = []
    for stage in STAGES:
        entries = state.get(stage, {})
        summary = StageSummary(stage, shards=len(entries))
        done_seconds = []
        tokens = []
        for shard, entry in sorted(entries.items()):
            summary.counts[entry.status if entry.status in summary.counts else PENDING] += 1
            summary.requeues += entry.requeues
            if entry.job_id and entry.job_id not in summary.job_ids:
                summary.job_ids.append(entry.job_id)
            if entry.status == FAILED:
                summary.failures.append({"shard": shard, "error": entry.error, "log": entry.log})
            if entry.status == DONE and entry.seconds:
                done_seconds.append(entry.seconds)
                if entry.metrics.get("tokens_per_second"):
                    tokens.append(entry.metrics["tokens_per_second"])
        if tokens:
            summary.tokens_per_second = round(sum(tokens) / len(tokens), 1)
        remaining = summary.shards - summary.counts[DONE]
        if done_seconds and remaining:
            running = sum(1 for e in entries.values() if e.status == RUNNING) or 1
            summary.eta_seconds = round(sum(done_seconds) / len(done_seconds) * remaining / running, 1)
        summaries.append(summary)
    return summaries


def all_done(summaries: list[StageSummary]) -> bool:
    return all(s.complete for s in summaries)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} d"
