"""Stage evaluate (an evaluation run): how well the classifier separates the labelled inputs.

Scores and calls as consensus makes them: per chunk, the virus score is the maximum score2 over
the chunk's frames and the call the original's Is_Virus = max(score2) >= max(score1); per read,
the score is the maximum over its chunks (consensus's max_virus_score) and the call consensus's
(virus when one of its chunks is, or with --min-score when its score reaches it). A read that
yields no stop-free frame has no score: it counts as scored 0 and never called virus (as the tool
treats it), so the read-level recall is the one a user gets. The truth of a chunk or read is its
input's label. The metrics (of the calls, and of the scores at every threshold), threshold tables
and curves are written by virnucpro.evaluation.outputs into W/evaluation/.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShardError
from ..orchestration.runner import StageContext
from ..storage import read_frame_ids, read_matrix
from .consensus import InputTally, read_calls, read_summary


@dataclass
class Level:
    """Truth, virus score and call of every item (chunk or read) of one level, in input order."""

    truth: np.ndarray
    scores: np.ndarray
    calls: np.ndarray

    @classmethod
    def join(cls, parts: list[tuple[bool, np.ndarray, np.ndarray]]) -> "Level":
        return cls(np.concatenate([np.full(len(s), t, bool) for t, s, _ in parts] or [np.zeros(0, bool)]),
                   np.concatenate([s for _, s, _ in parts] or [np.zeros(0)]).astype(np.float64),
                   np.concatenate([c for _, _, c in parts] or [np.zeros(0, bool)]).astype(bool))


def open_stage(ctx: StageContext):
    return lambda shard: evaluate(ctx)


def input_scores(ctx: StageContext):
    """(input index, per-chunk (virus scores, calls), per-read (virus scores, calls)) of every
    input, in order, from the predictions and the frame tables (reads without a frame: 0, False)."""
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
    min_score = config.min_score
    for index, tally in enumerate(tallies):
        others, chunk_scores, new_read = tally.columns()
        chunk_calls = chunk_scores >= others
        read_scores, _, calls = read_calls(chunk_scores, chunk_calls, np.flatnonzero(new_read), min_score)
        unscored = summary["inputs"][index]["reads_without_frames"]
        yield (index, (chunk_scores, chunk_calls),
               (np.r_[read_scores, np.zeros(unscored, np.float32)], np.r_[calls, np.zeros(unscored, bool)]))


def evaluation_levels(ctx: StageContext) -> dict[str, Level]:
    """{"chunk": Level, "read": Level}: the truths, scores and calls the metrics are computed on."""
    chunks, reads = [], []
    for index, chunk, read in input_scores(ctx):
        virus = ctx.config.labels[index] == "virus"
        chunks.append((virus, *chunk))
        reads.append((virus, *read))
    return {"chunk": Level.join(chunks), "read": Level.join(reads)}


def evaluate(ctx: StageContext) -> dict:
    from ..evaluation.outputs import write_evaluation  # matplotlib: only when the stage writes

    config = ctx.config
    levels = evaluation_levels(ctx)
    context = {"classifier": config.models.classifier, "chunk_length": config.chunk_length,
               "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)],
               "models": {"esm": config.models.esm, "dnabert": config.models.dnabert},
               "reads_without_frames": "scored 0: never called virus"}
    read_rule = ("one of its chunks is" if config.min_score is None else
                 f"its virus score is at least {config.min_score} (--min-score)")
    write_evaluation(ctx.workdir.evaluation_dir,
                     {name: (level.truth, level.scores, level.calls) for name, level in levels.items()},
                     config.target_fdr, context,
                     call_rule=f"a chunk is virus when max(score2) >= max(score1) over its frames (the original's "
                               f"rule); a read when {read_rule}")
    return {"chunks": len(levels["chunk"].truth), "reads": len(levels["read"].truth)}
