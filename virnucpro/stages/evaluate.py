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
W/evaluation/<classifier>/, the calibrations (reads: with each read's frame count, frameless
reads included) by virnucpro.evaluation.calibration_outputs into the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import console
from ..calibration_meta import run_identity
from ..errors import ShardError
from ..evaluation.metrics import LevelScores
from ..modelstore.demo import models_are_demo
from ..orchestration.runner import StageContext
from ..storage import read_frame_ids, read_matrix
from .consensus import InputTally, read_calls, read_probabilities, read_summary, read_table_frames, run_calibration


@dataclass
class InputScores:
    """Per chunk of one input: virus score and call; where its reads start; per read (prepare's
    table order) its frame count; its chunks without a frame."""

    chunk_scores: np.ndarray
    chunk_calls: np.ndarray
    read_starts: np.ndarray
    read_frames: np.ndarray
    frameless_chunks: int

    @property
    def scored(self) -> np.ndarray:
        return self.read_frames > 0

    def read_calls(self, min_score: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(virus score, call) of every read as consensus makes them (consensus.read_calls), in
        prepare's table order: the reads without a frame scored 0, never called."""
        best, _, calls = read_calls(self.chunk_scores, self.chunk_calls, self.read_starts, min_score)
        scores, called = np.zeros(len(self.read_frames), np.float32), np.zeros(len(self.read_frames), bool)
        scores[self.scored], called[self.scored] = best, calls
        return scores, called


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
        out.append(InputScores(chunk_scores, chunk_scores >= others, np.flatnonzero(new_read),
                               read_table_frames(workdir.reads_table(index)),
                               summary["inputs"][index]["chunks"] - len(chunk_scores)))
    return out


def evaluation_levels(ctx: StageContext, inputs: list[InputScores] | None = None) -> dict[str, LevelScores]:
    """{"chunk": ..., "read": ...}: the truths, scores and calls the metrics are computed on, and
    the calls each --min-score gives (at the read level, `run --min-score`'s own). With --max-fdr
    the read calls are the calibrated fdr's, as consensus makes them."""
    config = ctx.config
    inputs = input_scores(ctx) if inputs is None else inputs
    virus = [label == "virus" for label in config.labels]

    def truth(sizes: list[int]) -> np.ndarray:
        return np.concatenate([np.full(n, t, bool) for t, n in zip(virus, sizes)] or [np.zeros(0, bool)])

    def reads_at(min_score: float | None) -> tuple[np.ndarray, np.ndarray]:
        parts = [scores.read_calls(min_score) for scores in inputs]
        return (np.concatenate([p[0] for p in parts] or [np.zeros(0, np.float32)]),
                np.concatenate([p[1] for p in parts] or [np.zeros(0, bool)]))

    read_scores, read_calls_made = reads_at(config.min_score)
    calibration = run_calibration(config) if config.max_fdr is not None else None  # for the calls only
    if calibration is not None:
        read_calls_made = np.concatenate([
            read_probabilities(calibration, s.read_frames, s.read_calls(None)[0][s.scored], config.virus_share,
                               config.max_fdr).calls for s in inputs] or [np.zeros(0, bool)])
    chunk_scores = np.concatenate([s.chunk_scores for s in inputs] or [np.zeros(0, np.float32)])
    return {
        "chunk": LevelScores(truth([len(s.chunk_scores) for s in inputs]), chunk_scores,
                             np.concatenate([s.chunk_calls for s in inputs] or [np.zeros(0, bool)]),
                             left_out=sum(s.frameless_chunks for s in inputs)),
        "read": LevelScores(truth([len(s.read_frames) for s in inputs]), read_scores, read_calls_made,
                            call_at=lambda min_score: reads_at(min_score)[1],
                            scored=np.concatenate([s.scored for s in inputs] or [np.zeros(0, bool)])),
    }


def evaluate(ctx: StageContext) -> dict:
    # matplotlib: only when the stage writes
    from ..evaluation.calibration_outputs import write_calibrations
    from ..evaluation.outputs import PAGE, summary_lines, write_comparison, write_evaluation

    config, workdir = ctx.config, ctx.workdir
    inputs = input_scores(ctx)
    levels = evaluation_levels(ctx, inputs)
    read, chunk = levels["read"], levels["chunk"]
    folder = workdir.evaluation_result(config.evaluation_name)
    folder.mkdir(parents=True, exist_ok=True)
    section = write_calibrations(
        folder, (read.truth, read.scores, np.concatenate([s.read_frames for s in inputs] or [np.zeros(0, np.int64)])),
        (chunk.truth, chunk.scores), run_identity((config.fingerprint or {}).get("models", {}), config.chunk_length),
        {"labels": config.inputs_list, "workdir": str(workdir.root),
         "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)]})
    classifier = ((config.fingerprint or {}).get("models") or {}).get("classifier") or {}
    context = {"classifier": config.models.classifier, "classifier_sha256": classifier.get("sha256"),
               "chunk_length": config.chunk_length,
               "inputs": [{"path": path, "label": label} for path, label in zip(config.inputs, config.labels)],
               "models": {"esm": config.models.esm, "dnabert": config.models.dnabert},
               "min_score": config.min_score, "max_fdr": config.max_fdr,
               "reads_without_frames": "scored 0: not called virus (but by --max-fdr)"}
    read_rule = (f"its fdr is at most {config.max_fdr} (--max-fdr)" if config.max_fdr is not None else
                 "one of its chunks is" if config.min_score is None else
                 f"its virus score is at least {config.min_score} (--min-score)")
    result = write_evaluation(folder, levels, config.target_fdr, context,
                              call_rule=f"a chunk is virus when max(score2) >= max(score1) over its frames (the "
                                        f"original's rule); a read when {read_rule}",
                              demo=models_are_demo(config.models), extra_sections=section)
    write_comparison(workdir.evaluation_dir)
    for line in summary_lines(result, folder / PAGE):
        console.info(line)
    return {"chunks": len(chunk.truth), "reads": len(read.truth),
            **{f"{level}_auroc": summary["auroc"] for level, summary in result["levels"].items()}}
