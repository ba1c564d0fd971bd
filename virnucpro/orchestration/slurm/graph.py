"""The job graph: one array job per stage with work to do, each after the jobs it reads from.

    prepare (CPU) --afterok--> dnabert (GPU array) --+
                  --afterok--> esm2    (GPU array) --+--afterok--> predict (array) --afterok--> consensus
                                                     +--afterok--> train (one task: a training run)

Only the stages of the run's kind are in the graph (pipeline.stages_of).

What runs is `pipeline.plan` (the same rule as `virnucpro-slurm run`); a stage with nothing to
do is left out and its dependents wait for its own parents instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import pipeline
from ...paths import Workdir
from ...pipeline import GPU_STAGES, STAGE
from ..config import RunConfig
from ..state import ShardState

# SLURM's default MaxArraySize is 1001 (indices 0..1000): a stage with more unfinished shards
# gives each task several shards instead of failing at sbatch time.
MAX_ARRAY_TASKS = 1000


@dataclass
class StageJob:
    """One array job: task i processes shards tasks[i]."""

    stage: str
    tasks: list[list[int]]
    after: list[str] = field(default_factory=list)  # stages of this submission it waits for
    gpus: int = 0
    after_any: list[str] = field(default_factory=list)  # waits for these to end, however they end

    @property
    def waits_for(self) -> list[str]:
        return self.after + [s for s in self.after_any if s not in self.after]

    @property
    def shards(self) -> list[int]:
        return [s for task in self.tasks for s in task]


def group_shards(shards: list[int], per_task: int) -> list[list[int]]:
    """Consecutive groups of at most `per_task` shards (grown so that no array exceeds
    MAX_ARRAY_TASKS), as few as that allows and as even as possible: 6 shards for 4-GPU tasks
    become 3 + 3, not 4 + 2, so no task holds GPUs it has no shard for."""
    if not shards:
        return []
    per_task = max(per_task, per_task * -(-len(shards) // (per_task * MAX_ARRAY_TASKS)))
    tasks = -(-len(shards) // per_task)
    base, extra = divmod(len(shards), tasks)
    groups, start = [], 0
    for size in [base + 1] * extra + [base] * (tasks - extra):
        groups.append(shards[start:start + size])
        start += size
    return groups


def plan_jobs(config: RunConfig, state: dict[str, dict[int, ShardState]], gpus_per_task: int,
              one_gpu_array_at_a_time: bool = False, workdir: Workdir | None = None) -> tuple[list[StageJob], dict]:
    """The array jobs that run what `pipeline.plan` says must run, and the done shards among them
    ({stage: [shards]}: mark them pending before submitting, so their tasks do not skip them).
    With `workdir`, done shards whose files are missing are planned again (pipeline.plan).

    `one_gpu_array_at_a_time` (set when --max-parallel-gpus caps the run) starts esm2 only once
    the dnabert array has ended, however it ended, so the two arrays never hold GPUs together
    and the cap holds for the run, not for each array."""
    return jobs_for(pipeline.plan(config, state, workdir), config, gpus_per_task, one_gpu_array_at_a_time)


def jobs_for(plan: pipeline.Plan, config: RunConfig, gpus_per_task: int,
             one_gpu_array_at_a_time: bool = False) -> tuple[list[StageJob], dict]:
    """plan_jobs for a plan already made (its stages: those of the run's kind)."""
    submitted: set[str] = set()
    jobs = []
    for stage in pipeline.stages_of(config):
        shards = plan.todo[stage.name]
        if not shards:
            continue
        gpu = stage.wants_gpu(config)
        tasks = group_shards(shards, gpus_per_task if gpu else 1)
        gpus = min(gpus_per_task, max(map(len, tasks))) if gpu else 0  # 1 shard left: 1 GPU, not N
        jobs.append(StageJob(stage.name, tasks, after=nearest_submitted(stage.name, submitted), gpus=gpus))
        if gpu and one_gpu_array_at_a_time:
            jobs[-1].after_any = [s for s in GPU_STAGES if s in submitted]
        submitted.add(stage.name)
    return jobs, plan.reset


def nearest_submitted(stage: str, submitted: set[str]) -> list[str]:
    """The stages this one must wait for: its parents, or theirs when a parent has nothing to do."""
    out: list[str] = []
    for parent in STAGE[stage].parents:
        for found in ([parent] if parent in submitted else nearest_submitted(parent, submitted)):
            if found not in out:
                out.append(found)
    return out
