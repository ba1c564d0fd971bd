"""The pipeline in one place: its stages, how they depend on each other, and what must run.

    prepare (CPU) --> dnabert (GPU, per shard) --+--> predict (per shard) --> consensus [--> evaluate]
                  --> esm2    (GPU, per shard) --+--> train (one task)

A run is of one kind (RunConfig.kind): a prediction (prepare, dnabert, esm2, predict, consensus),
a training (prepare, dnabert, esm2, train) or an evaluation (a prediction plus evaluate). Each
stage says which kinds have it (Stage.kinds); whatever reads the table takes only the stages of
the run's kind (`stages_of`), so the three kinds share one graph and one orchestration.

`STAGE_TABLE` below is the whole graph: per stage its parents, whether it runs per shard or
once, on a GPU or not, whether SLURM may requeue it, the module that implements it, the files it
writes (named through `paths.Workdir`) and what a recomputed parent means for it. `plan` is the
one rule that says which (stage, shard) pairs must run, given the run's config and state:

- a pair runs when it is not done, or when it is done but a file it wrote is missing (healing:
  scratch purges delete files under a finished run);
- an embedding shard recomputed => its predict shard is recomputed; any earlier stage recomputed
  => consensus is recomputed (it reads every prediction and prepare's read tables). prepare's
  frame tables are a pure function of the inputs and the shard count, so a recomputed prepare
  does not invalidate the embeddings made from them.

`virnucpro-slurm run` (orchestration/runner.py), `submit` and its dry run (orchestration/slurm/),
the state entries (orchestration/plan.py), `status`, provenance and the report all read this
module. A file an earlier pair wrote that turns out missing or damaged when read raises
`errors.StaleInputError`; `dependents` gives what must then be recomputed with its producer.

The stage protocol: `virnucpro.stages.<name>.open_stage(ctx: StageContext)` loads what the stage
needs once (a model) and returns `process(shard) -> metrics dict`; a stage asked to stop raises
`ShardInterrupted` at its next checkpoint. No torch here (login nodes import this).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import VirnucproError

# What a recomputed parent means for a stage (Stage.redo_after):
SAME_SHARD = "same shard"  # shard k is recomputed when shard k of a parent is
ANY_EARLIER = "any earlier"  # recomputed whenever any earlier stage recomputes anything
NOTHING = "nothing"  # the parent's files come out byte-identical: nothing to redo

# The kinds of run (RunConfig.kind)
PREDICTION, TRAINING, EVALUATION = "predict", "train", "evaluate"
KINDS = (PREDICTION, TRAINING, EVALUATION)


@dataclass(frozen=True)
class Stage:
    name: str
    parents: tuple[str, ...]  # stages whose files this one reads (SLURM: afterok on their jobs)
    sharded: bool  # one pair per shard (else one pair, shard 0)
    gpu: bool
    requeueable: bool  # SLURM may requeue its tasks (they checkpoint and resume)
    redo_after: str
    # files a finished pair has written (checked before planning: a missing one is recomputed)
    outputs: Callable[..., tuple[Path, ...]]  # (workdir, shard, config) -> paths
    # files and folders written only by this pair, beside its outputs (its temp files may be cleared)
    owns: Callable[..., tuple[Path, ...]] = lambda workdir, shard: ()
    # run options only this stage reads (not in the fingerprint): changing one redoes the stage alone
    options: tuple[str, ...] = ()
    summary: str = ""
    kinds: tuple[str, ...] = KINDS  # the kinds of run that have this stage

    @property
    def module(self) -> str:
        return f"virnucpro.stages.{self.name}"

    def shard_count(self, config) -> int:
        return config.shards if self.sharded else 1

    def wants_gpu(self, config) -> bool:
        """Whether its SLURM tasks ask for a GPU: with --device cpu no stage does (the embedding
        arrays and a training then run on the CPU partition instead of holding a GPU idle)."""
        return self.gpu and config.device != "cpu"


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("prepare", parents=(), sharded=False, gpu=False, requeueable=False, redo_after=NOTHING,
          outputs=lambda w, shard, config: (w.prepare_summary, *map(w.reads_table, range(len(config.inputs))),
                                            *map(w.shard_frames, range(config.shards)),
                                            *(map(w.split_keys, range(config.shards)) if config.kind == TRAINING else ())),
          owns=lambda w, shard: (w.prepare_dir, w.shards_dir), options=("holdout_window",),
          summary="read, chunk and six-frame translate every input; cut the frames into shards"),
    Stage("dnabert", parents=("prepare",), sharded=True, gpu=True, requeueable=True, redo_after=NOTHING,
          outputs=lambda w, shard, config: (w.embeddings("dnabert", shard),),
          owns=lambda w, shard: (w.embeddings("dnabert", shard), w.embedding_parts("dnabert", shard)),
          summary="DNABERT-S embedding of each frame's nucleotides"),
    Stage("esm2", parents=("prepare",), sharded=True, gpu=True, requeueable=True, redo_after=NOTHING,
          outputs=lambda w, shard, config: (w.embeddings("esm2", shard),),
          owns=lambda w, shard: (w.embeddings("esm2", shard), w.embedding_parts("esm2", shard)),
          summary="ESM-2 embedding of each frame's protein"),
    Stage("predict", parents=("dnabert", "esm2"), sharded=True, gpu=False, requeueable=False, redo_after=SAME_SHARD,
          outputs=lambda w, shard, config: (w.predictions(shard),),
          owns=lambda w, shard: (w.predictions(shard),), kinds=(PREDICTION, EVALUATION),
          summary="classifier scores of each frame"),
    # not report/: `virnucpro-slurm report` may be writing it at any time
    Stage("consensus", parents=("predict",), sharded=False, gpu=False, requeueable=False, redo_after=ANY_EARLIER,
          outputs=lambda w, shard, config: (*(path for name in config.input_names
                                              for path in w.result_files(name, config.compress)),
                                            w.results_index, w.multiqc_summary),
          owns=lambda w, shard: (w.results,), options=("min_score", "compress", "calibration", "calibration_sha256", "virus_share", "max_fdr"),
          kinds=(PREDICTION, EVALUATION),
          summary="per-chunk and per-read calls of each input; the report"),
    # an embedding shard recomputed after training (healing a scratch purge) holds the same numbers:
    # the hours of a finished training are not spent again for it
    Stage("train", parents=("dnabert", "esm2"), sharded=False, gpu=True, requeueable=True, redo_after=NOTHING,
          outputs=lambda w, shard, config: (w.classifier_weights, w.classifier_meta),
          owns=lambda w, shard: (w.training_dir, w.classifier_dir), options=("labels", "holdout", "seed", "holdout_window"),
          kinds=(TRAINING,), summary="fit the MLP classifier on the labelled embeddings, split by sequence"),
    # reads the predictions and prepare's frame and read tables
    Stage("evaluate", parents=("predict",), sharded=False, gpu=False, requeueable=False, redo_after=ANY_EARLIER,
          outputs=lambda w, shard, config: (w.evaluation_metrics(config.evaluation_name), w.evaluations_page),
          owns=lambda w, shard: (w.evaluation_dir,), options=("labels", "target_fdr"),
          kinds=(EVALUATION,), summary="metrics of the classifier on the labelled inputs, per chunk and per read"),
)

STAGE = {stage.name: stage for stage in STAGE_TABLE}
STAGES = tuple(STAGE)
SHARDED_STAGES = tuple(s.name for s in STAGE_TABLE if s.sharded)
GPU_STAGES = tuple(s.name for s in STAGE_TABLE if s.gpu)
KIND_STAGES = {kind: tuple(s for s in STAGE_TABLE if kind in s.kinds) for kind in KINDS}
PREDICTION_STAGES = tuple(s.name for s in KIND_STAGES[PREDICTION])


def stages_of(config) -> tuple[Stage, ...]:
    """The stages of the run's kind, in table order (a run.json without a kind is a prediction)."""
    return KIND_STAGES[getattr(config, "kind", PREDICTION)]


def stage_names(config) -> tuple[str, ...]:
    return tuple(s.name for s in stages_of(config))


def stage(name: str) -> Stage:
    try:
        return STAGE[name]
    except KeyError:
        raise VirnucproError(f"unknown stage '{name}'; stages are {', '.join(STAGES)}") from None


def reset_by_options(previous, requested) -> list[str]:
    """Stages to redo entirely because a run option only they read changed (e.g. --min-score:
    consensus); `previous` is the workdir's RunConfig, `requested` the new config or request."""
    return [s.name for s in stages_of(requested)
            if any(getattr(previous, o, None) != getattr(requested, o) for o in s.options)]


def downstream(stage_name: str, config) -> list[str]:
    """The stages of the run that are recomputed when all of `stage_name` is, itself first."""
    closure = with_dependents({stage_name: set(range(STAGE[stage_name].shard_count(config)))}, config)
    return [name for name in stage_names(config) if closure[name]]


def shard_counts(config) -> dict[str, int]:
    """{stage: number of (stage, shard) pairs}: what the state file holds entries for."""
    return {s.name: s.shard_count(config) for s in stages_of(config)}


# ---------------------------------------------------------------- the stage protocol

@dataclass
class StageContext:
    """What a stage is opened with: the run and how to run it."""

    workdir: object  # paths.Workdir
    config: object  # orchestration.config.RunConfig
    device: str = "cpu"
    stop_requested: Callable[[], bool] = lambda: False
    # the shard this process runs after the current one (None: the last), so its input can be
    # read ahead while this one computes
    next_shard: int | None = None


# Where the stage side counts this process's CUDA GPUs (it imports torch; orchestration.task,
# which never does, finds it by name, as the runner finds the stages' modules)
CUDA_DEVICE_COUNT = "virnucpro.stages.embedding:cuda_device_count"


def cuda_device_count() -> int:
    module, _, name = CUDA_DEVICE_COUNT.partition(":")
    return getattr(importlib.import_module(module), name)()


class ShardInterrupted(Exception):
    """Raised by a stage that stopped at a checkpoint because a stop was requested."""

    def __init__(self, metrics: dict | None = None):
        super().__init__("interrupted at a checkpoint")
        self.metrics = metrics or {}


# ---------------------------------------------------------------- what must run

def is_done(entry) -> bool:
    """A state entry (ShardState or its raw dict) that records a finished pair."""
    status = entry.get("status") if isinstance(entry, dict) else getattr(entry, "status", None)
    return status == "done"


def unfinished(state: dict, stage_name: str, config) -> list[int]:
    """Shards of a stage whose state entry is missing or not done."""
    entries = state.get(stage_name, {})
    return [s for s in range(STAGE[stage_name].shard_count(config)) if not is_done(entries.get(s))]


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def missing_output(stage_name: str, shard: int, config, workdir, signatures: bool = True,
                   listed: dict[str, set[str]] | None = None) -> Path | None:
    """The first declared output of a pair that is missing or plainly damaged, or None.

    A cheap look (a stat, and the 8-byte signature of an HDF5 file) so that a finished run whose
    files a scratch purge deleted, or someone overwrote, heals even when no later stage would read
    them again; deeper damage is found by the readers (StaleInputError) when they run. Without
    `signatures` its presence alone (`status`: opening 10,000 files would make it slow), looked up
    in `listed` ({folder: its names}, filled one listing per folder) when given."""
    for path in STAGE[stage_name].outputs(workdir, shard, config):
        try:
            if signatures and path.suffix == ".h5":
                with open(path, "rb") as handle:
                    if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                        return path
            elif listed is not None:
                folder, _, name = str(path).rpartition(os.sep)
                if folder not in listed:
                    try:
                        listed[folder] = {entry.name for entry in os.scandir(folder) if entry.is_file()}
                    except OSError:
                        listed[folder] = set()
                if name not in listed[folder]:
                    return path
            elif not path.exists():
                return path
        except OSError:
            return path
    return None


def with_dependents(redo: dict[str, set[int]], config) -> dict[str, set[int]]:
    """`redo` ({stage: shards recomputed}) plus every pair made from them: the recompute rule.
    Only the stages of the run's kind have pairs."""
    table = stages_of(config)
    out = {s.name: set(redo.get(s.name, ())) for s in table}
    for index, s in enumerate(table):
        if s.redo_after == SAME_SHARD:
            for parent in s.parents:
                if STAGE[parent].sharded and s.sharded:
                    out[s.name] |= out[parent]
                elif out[parent]:
                    out[s.name] |= set(range(s.shard_count(config)))
        elif s.redo_after == ANY_EARLIER and any(out[earlier.name] for earlier in table[:index]):
            out[s.name] |= set(range(s.shard_count(config)))
    return out


def dependents(stage_name: str, shard: int, config) -> list[tuple[str, int]]:
    """The pairs that must be recomputed with (stage, shard), itself first."""
    closure = with_dependents({stage_name: {shard}}, config)
    return [(stage_name, shard)] + [(s, k) for s in closure for k in sorted(closure[s]) if (s, k) != (stage_name, shard)]


@dataclass
class Plan:
    """What must run, per stage in order; `reset` are the pairs recorded done that must run again
    (mark them pending before submitting); `missing` says why a done pair is recomputed."""

    todo: dict[str, list[int]]
    reset: dict[str, list[int]] = field(default_factory=dict)
    missing: dict[tuple[str, int], Path] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, int]]:
        return [(stage_name, shard) for stage_name in self.todo for shard in self.todo[stage_name]]

    def __bool__(self) -> bool:
        return any(self.todo.values())


def plan(config, state: dict, workdir=None, signatures: bool = True) -> Plan:
    """The (stage, shard) pairs that finish this run, given its config and state
    ({stage: {shard: ShardState or raw dict}}). With `workdir`, a done pair whose declared output
    is missing (or, with `signatures`, not HDF5) runs again: see `missing_output`. Only the stages
    of the run's kind are in the plan (`Plan.todo` in their order)."""
    names = stage_names(config)
    redo = {s: set(unfinished(state, s, config)) for s in names}
    missing: dict[tuple[str, int], Path] = {}
    listed = None if signatures else {}  # one listing per folder instead of a stat per file
    if workdir is not None:
        for s in stages_of(config):
            for shard in range(s.shard_count(config)):
                if shard not in redo[s.name]:
                    gone = missing_output(s.name, shard, config, workdir, signatures, listed)
                    if gone is not None:
                        missing[(s.name, shard)] = gone
                        redo[s.name].add(shard)
    todo = with_dependents(redo, config)
    reset = {s: sorted(todo[s] - set(unfinished(state, s, config))) for s in names}
    return Plan({s: sorted(todo[s]) for s in names}, {s: v for s, v in reset.items() if v}, missing)


def healing_notes(plan: Plan, config) -> list[str]:
    """One line per done pair found with a file missing: what is recomputed and why."""
    return [f"{path} is missing or damaged: recomputing {describe_pairs(dependents(stage_name, shard, config))}"
            for (stage_name, shard), path in plan.missing.items()]


def describe_pairs(pairs: list[tuple[str, int]]) -> str:
    """'esm2 shard 1, predict shard 1 and consensus' (unsharded stages without a shard number)."""
    words = [name if not STAGE[name].sharded else f"{name} shard {shard}" for name, shard in pairs]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
