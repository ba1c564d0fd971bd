"""Stage evaluate (an evaluation run): how well the classifier separates the labelled inputs, and
the calibration of its scores.

Scores and calls as consensus makes them: per chunk, the virus score is the maximum score2 over
the chunk's frames and the call the original's Is_Virus = max(score2) >= max(score1); per read,
the score is the maximum over its chunks (consensus's max_virus_score) and the call consensus's
(virus when one of its chunks is, with --min-score when its score reaches it, with --max-fdr when
its fdr is at most it). A read that yields no stop-free frame has no score: it counts as scored 0
and is not called virus (but by --max-fdr), so the read-level recall is the one a user gets. The
truth of a chunk or read is its input's label. The metrics (of the calls, and of the scores at
every threshold), threshold tables and curves are written by virnucpro.evaluation.outputs into
W/evaluation/, the calibrations (reads: with each read's frame count, frameless reads included)
by virnucpro.evaluation.calibration_outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..calibration_meta import run_identity
from ..errors import ShardError
from ..orchestration.runner import StageContext
from ..storage import read_frame_ids, read_matrix
from .consensus import InputTally, read_calls, read_probabilities, read_summary, read_table_frames, run_calibration


@dataclass
class Level:
    """Truth, virus score and call of every item (chunk or read) of one level, in input order;
    per read also its frame count."""

    truth: np.ndarray
    scores: np.ndarray
    calls: np.ndarray
    frames: np.ndarray | None = None

    @classmethod
    def join(cls, parts: list[tuple]) -> "Level":
        """parts: (truth, scores, calls[, frames]) of each input."""
        frames = [p[3] for p in parts if len(p) > 3]
        return cls(np.concatenate([np.full(len(p[1]), p[0], bool) for p in parts] or [np.zeros(0, bool)]),
                   np.concatenate([p[1] for p in parts] or [np.zeros(0)]).astype(np.float64),
                   np.concatenate([p[2] for p in parts] or [np.zeros(0, bool)]).astype(bool),
                   np.concatenate(frames).astype(np.int64) if frames else None)


def open_stage(ctx: StageContext):
    return lambda shard: evaluate(ctx)


def input_scores(ctx: StageContext):
    """(input index, per-chunk (virus scores, calls), per-read (virus scores, calls, frames)) of
    every input, in order; reads in prepare's table order (without a frame: score 0)."""
    workdir, config = ctx.workdir, ctx.config
    summary = read_summary(workdir)
    expected = [s["frames"] for s in summary["shards"]]
    input_ends = np.cumsum([entry["frames"] for entry in summary["inputs"]])
    if len(input_ends) != len(config.inputs) or input_ends[-1] != sum(expected):
        raise ShardError(f"{workdir.prepare_summary}: does not describe this run's inputs and shards; "
                         "re-run with --restart")
    tallies = [InputTally() for _ in config.inputs]  # only chunk maxima: ~100 bytes per chunk
    first = 0
    for shard in range(config.shards):
        frame_ids = read_frame_ids(workdir.shard_frames(shard), expected[shard])
        _, scores = read_matrix(workdir.predictions(shard), frame_ids, name="scores", dim=2, producer=("predict", shard))
        bounds = np.clip(input_ends - first, 0, len(frame_ids))
        for index, (a, b) in enumerate(zip(np.r_[0, bounds[:-1]].tolist(), bounds.tolist())):
            if a < b:
                tallies[index].add(frame_ids[a:b], scores[a:b, 0], scores[a:b, 1])
        first += len(frame_ids)
    calibration = run_calibration(config) if config.max_fdr is not None else None  # for the calls only
    for index, tally in enumerate(tallies):
        others, chunk_scores, new_read = tally.columns()
        chunk_calls = chunk_scores >= others
        best, _, calls = read_calls(chunk_scores, chunk_calls, np.flatnonzero(new_read), config.min_score)
        frames = read_table_frames(workdir.reads_table(index))
        if calibration is not None:
            read_called = read_probabilities(calibration, frames, best, config.virus_share, config.max_fdr).calls
        else:
            read_called = np.zeros(len(frames), bool)
            read_called[frames > 0] = calls
        read_scores = np.zeros(len(frames), np.float32)
        read_scores[frames > 0] = best
        yield index, (chunk_scores, chunk_calls), (read_scores, read_called, frames)


def evaluation_levels(ctx: StageContext) -> dict[str, Level]:
    """{"chunk": Level, "read": Level}: the truths, scores and calls the metrics are computed on."""
    chunks, reads = [], []
    for index, chunk, read in input_scores(ctx):
        virus = ctx.config.labels[index] == "virus"
        chunks.append((virus, *chunk))
        reads.append((virus, *read))
    return {"chunk": Level.join(chunks), "read": Level.join(reads)}


def evaluate(ctx: StageContext) -> dict:
    # matplotlib: only when the stage writes
    from ..evaluation.calibration_outputs import write_calibrations
    from ..evaluation.outputs import write_evaluation

    config = ctx.config
    levels = evaluation_levels(ctx)
    read, chunk = levels["read"], levels["chunk"]
    section = write_calibrations(
        ctx.workdir.evaluation_dir, (read.truth, read.scores, read.frames), (chunk.truth, chunk.scores),
        run_identity((config.fingerprint or {}).get("models", {}), config.chunk_length),
        {"labels": config.inputs_list, "workdir": str(ctx.workdir.root),
         "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)]})
    context = {"classifier": config.models.classifier, "chunk_length": config.chunk_length,
               "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)],
               "models": {"esm": config.models.esm, "dnabert": config.models.dnabert},
               "reads_without_frames": "scored 0: not called virus (but by --max-fdr)"}
    read_rule = (f"its fdr is at most {config.max_fdr} (--max-fdr)" if config.max_fdr is not None else
                 "one of its chunks is" if config.min_score is None else
                 f"its virus score is at least {config.min_score} (--min-score)")
    write_evaluation(ctx.workdir.evaluation_dir,
                     {name: (level.truth, level.scores, level.calls) for name, level in levels.items()},
                     config.target_fdr, context,
                     call_rule=f"a chunk is virus when max(score2) >= max(score1) over its frames (the original's "
                               f"rule); a read when {read_rule}", extra_sections=section)
    return {"chunks": len(levels["chunk"].truth), "reads": len(levels["read"].truth)}
