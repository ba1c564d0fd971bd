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

from .. import console
from ..errors import ShardError
from ..evaluation.metrics import LevelScores
from ..modelstore.demo import models_are_demo
from ..orchestration.runner import StageContext
from ..storage import read_frame_ids, read_matrix
from .consensus import InputTally, read_calls, read_summary


@dataclass
class InputScores:
    """Per chunk of one input: virus score and call; where its reads start; its reads without a frame."""

    chunk_scores: np.ndarray
    chunk_calls: np.ndarray
    read_starts: np.ndarray
    frameless_reads: int
    frameless_chunks: int

    def read_calls(self, min_score: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(virus score, call) of every read as consensus makes them (consensus.read_calls), the
        reads without a frame last: scored 0, never called."""
        scores, _, calls = read_calls(self.chunk_scores, self.chunk_calls, self.read_starts, min_score)
        return (np.r_[scores, np.zeros(self.frameless_reads, np.float32)],
                np.r_[calls, np.zeros(self.frameless_reads, bool)])


def open_stage(ctx: StageContext):
    return lambda shard: evaluate(ctx)


def input_scores(ctx: StageContext) -> list[InputScores]:
    """The chunk scores and calls of every input, in order, from the predictions and the frame tables."""
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
    out = []
    for index, tally in enumerate(tallies):
        others, chunk_scores, new_read = tally.columns()
        counts = summary["inputs"][index]
        out.append(InputScores(chunk_scores, chunk_scores >= others, np.flatnonzero(new_read),
                               counts["reads_without_frames"], counts["chunks"] - len(chunk_scores)))
    return out


def evaluation_levels(ctx: StageContext) -> dict[str, LevelScores]:
    """{"chunk": ..., "read": ...}: the truths, scores and calls the metrics are computed on, and
    the calls each --min-score gives (at the read level, `run --min-score`'s own)."""
    inputs = input_scores(ctx)
    virus = [label == "virus" for label in ctx.config.labels]

    def truth(sizes: list[int]) -> np.ndarray:
        return np.concatenate([np.full(n, t, bool) for t, n in zip(virus, sizes)] or [np.zeros(0, bool)])

    def reads_at(min_score: float | None) -> tuple[np.ndarray, np.ndarray]:
        parts = [scores.read_calls(min_score) for scores in inputs]
        return (np.concatenate([p[0] for p in parts] or [np.zeros(0, np.float32)]),
                np.concatenate([p[1] for p in parts] or [np.zeros(0, bool)]))

    read_scores, read_calls_made = reads_at(ctx.config.min_score)
    scored = np.concatenate([np.r_[np.ones(len(s.read_starts), bool), np.zeros(s.frameless_reads, bool)]
                             for s in inputs] or [np.zeros(0, bool)])
    chunk_scores = np.concatenate([s.chunk_scores for s in inputs] or [np.zeros(0, np.float32)])
    return {
        "chunk": LevelScores(truth([len(s.chunk_scores) for s in inputs]), chunk_scores,
                             np.concatenate([s.chunk_calls for s in inputs] or [np.zeros(0, bool)]),
                             left_out=sum(s.frameless_chunks for s in inputs)),
        "read": LevelScores(truth([len(s.read_starts) + s.frameless_reads for s in inputs]), read_scores,
                            read_calls_made, call_at=lambda min_score: reads_at(min_score)[1], scored=scored),
    }


def evaluate(ctx: StageContext) -> dict:
    # matplotlib: only when the stage writes
    from ..evaluation.outputs import PAGE, summary_lines, write_comparison, write_evaluation

    config, workdir = ctx.config, ctx.workdir
    levels = evaluation_levels(ctx)
    demo = models_are_demo(config.models)
    classifier = ((config.fingerprint or {}).get("models") or {}).get("classifier") or {}
    context = {"classifier": config.models.classifier, "classifier_sha256": classifier.get("sha256"),
               "chunk_length": config.chunk_length,
               "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)],
               "models": {"esm": config.models.esm, "dnabert": config.models.dnabert},
               "min_score": config.min_score, "reads_without_frames": "scored 0: never called virus"}
    read_rule = ("one of its chunks is" if config.min_score is None else
                 f"its virus score is at least {config.min_score} (--min-score)")
    folder = workdir.evaluation_result(config.evaluation_name)
    result = write_evaluation(folder, levels, config.target_fdr, context,
                              call_rule=f"a chunk is virus when max(score2) >= max(score1) over its frames (the "
                                        f"original's rule); a read when {read_rule}", demo=demo)
    write_comparison(workdir.evaluation_dir)
    for line in summary_lines(result, folder / PAGE):
        console.info(line)
    return {"chunks": len(levels["chunk"].truth), "reads": len(levels["read"].truth),
            **{f"{level}_auroc": summary["auroc"] for level, summary in result["levels"].items()}}
