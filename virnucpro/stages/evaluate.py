"""Stage evaluate (an evaluation run): how well the classifier separates the labelled inputs.

Scores as consensus makes its calls: per chunk, the virus score is the maximum score2 over the
chunk's frames (the original's Is_Virus = max(score2) >= max(score1)); per read, the maximum over
its chunks (consensus's max_virus_score). A read that yields no stop-free frame has no score: it
counts as scored 0 (the tool can never call it virus), so the read-level recall is the one a user
gets. The truth of a chunk or read is its input's label. The metrics, threshold tables and curves
are written by virnucpro.evaluation.outputs into W/evaluation/.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShardError
from ..orchestration.runner import StageContext
from ..storage import read_frame_ids, read_matrix
from .consensus import InputTally, read_summary


@dataclass
class Level:
    """Truth and virus score of every item (chunk or read) of one level, in input order."""

    truth: np.ndarray
    scores: np.ndarray

    @classmethod
    def join(cls, parts: list[tuple[bool, np.ndarray]]) -> "Level":
        return cls(np.concatenate([np.full(len(s), t) for t, s in parts] or [np.zeros(0, bool)]).astype(bool),
                   np.concatenate([s for _, s in parts] or [np.zeros(0, np.float32)]).astype(np.float64))


def open_stage(ctx: StageContext):
    return lambda shard: evaluate(ctx)


def input_scores(ctx: StageContext):
    """(input index, per-chunk virus scores, per-read virus scores) of every input, in order,
    from the predictions and the frame tables (reads without a frame score 0)."""
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
    for index, tally in enumerate(tallies):
        _, chunk_scores, new_read = tally.columns()
        read_scores = (np.maximum.reduceat(chunk_scores, np.flatnonzero(new_read)) if len(chunk_scores)
                       else np.zeros(0, np.float32))
        unscored = summary["inputs"][index]["reads_without_frames"]
        yield index, chunk_scores, np.r_[read_scores, np.zeros(unscored, np.float32)]


def evaluation_levels(ctx: StageContext) -> dict[str, Level]:
    """{"chunk": Level, "read": Level}: the scores and truths the metrics are computed on."""
    chunks, reads = [], []
    for index, chunk_scores, read_scores in input_scores(ctx):
        virus = ctx.config.labels[index] == "virus"
        chunks.append((virus, chunk_scores))
        reads.append((virus, read_scores))
    return {"chunk": Level.join(chunks), "read": Level.join(reads)}


def evaluate(ctx: StageContext) -> dict:
    from ..evaluation.outputs import write_evaluation

    config = ctx.config
    levels = evaluation_levels(ctx)
    context = {"classifier": config.models.classifier, "chunk_length": config.chunk_length,
               "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)],
               "models": {"esm": config.models.esm, "dnabert": config.models.dnabert},
               "reads_without_frames": "scored 0: never called virus"}
    write_evaluation(ctx.workdir.evaluation_dir, {name: (level.truth, level.scores) for name, level in levels.items()},
                     config.target_fdr, context)
    return {"chunks": len(levels["chunk"].truth), "reads": len(levels["read"].truth)}
