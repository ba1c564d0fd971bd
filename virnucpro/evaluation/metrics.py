"""Binary classification metrics of virus scores against labels, computed with numpy alone.

The definitions are scikit-learn's (tests/test_evaluation_metrics.py checks them against it):
- a sequence is called virus when `called` says so, or else when its score >= the threshold
  (a min-score: compared in float32, the scores' precision, as `--min-score` is);
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, each 0 when its
  denominator is 0; MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0 when a factor is 0;
- AUROC: the probability that a random virus scores above a random other, ties counting one half
  (the area under the ROC curve with tied scores joined by a straight line);
- AUPRC: average precision, Σ (R_k − R_{k−1}) · P_k over the distinct scores from high to low
  (no interpolation), as `average_precision_score`;
- AUROC and AUPRC are None when the labels hold one class only (they are undefined).

The threshold table answers the question every user of a viral identifier asks: at which
`--min-score` does the false-discovery rate FDR = FP / (TP + FP) fall to a target? It is measured
on this labeled set, so it holds for data with the same share of viruses: FDR rises when viruses
are rarer in the real data than in the labeled set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# the rows of a threshold table besides the one reaching the target FDR
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)


def _arrays(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if truth.shape != scores.shape:
        raise ValueError(f"{truth.size} labels for {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return truth, scores


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def confusion(truth, called) -> dict[str, int]:
    truth = np.asarray(truth, dtype=bool)
    called = np.asarray(called, dtype=bool)
    tp = int(np.count_nonzero(truth & called))
    fp = int(np.count_nonzero(~truth & called))
    fn = int(np.count_nonzero(truth & ~called))
    return {"tp": tp, "fp": fp, "tn": int(truth.size) - tp - fp - fn, "fn": fn}


def auroc(truth, scores) -> float | None:
    """Mann-Whitney U / (P·N) with average ranks for ties: the ROC area with ties interpolated."""
    truth, scores = _arrays(truth, scores)
    positives = int(truth.sum())
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    ranks = np.empty(truth.size, dtype=np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _cumulative_at_distinct_scores(truth: np.ndarray, scores: np.ndarray):
    """(thresholds high to low, TP and FP counts when calling score >= each threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], truth[order]
    last_of_run = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1]
    tps = np.cumsum(hits)[last_of_run]
    fps = (last_of_run + 1) - tps
    return ordered[last_of_run], tps, fps


def auprc(truth, scores) -> float | None:
    truth, scores = _arrays(truth, scores)
    positives = int(truth.sum())
    if positives == 0 or positives == truth.size:
        return None
    _, tps, fps = _cumulative_at_distinct_scores(truth, scores)
    precision = tps / (tps + fps)
    recall = tps / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_curve(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per distinct score."""
    truth, scores = _arrays(truth, scores)
    _, tps, fps = _cumulative_at_distinct_scores(truth, scores)
    positives, negatives = max(int(truth.sum()), 1), max(truth.size - int(truth.sum()), 1)
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def precision_recall_curve(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(recalls, precisions), one point per distinct score from the highest down."""
    truth, scores = _arrays(truth, scores)
    _, tps, fps = _cumulative_at_distinct_scores(truth, scores)
    return tps / max(int(truth.sum()), 1), tps / (tps + fps)


def binary_metrics(truth, scores, called=None, threshold: float = 0.5) -> dict:
    """Every metric of one set of calls: accuracy, precision, recall, F1, MCC, AUROC, AUPRC and
    the confusion matrix. `called` gives the calls themselves (e.g. the consensus rule); without
    it a sequence is called virus when its score >= `threshold`."""
    truth, scores = _arrays(truth, scores)
    called = scores >= threshold if called is None else np.asarray(called, dtype=bool).ravel()
    if called.shape != truth.shape:
        raise ValueError(f"{called.size} calls for {truth.size} labels")
    counts = confusion(truth, called)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    denominator = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    return {
        "n": int(truth.size), "positives": int(truth.sum()),
        "accuracy": _ratio(tp + tn, truth.size),
        "precision": precision, "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "mcc": float((tp * tn - fp * fn) / np.sqrt(denominator)) if denominator else 0.0,
        "auroc": auroc(truth, scores), "auprc": auprc(truth, scores),
        "confusion": counts,
    }


def threshold_row(truth: np.ndarray, called: np.ndarray, min_score: float) -> dict:
    """Precision, recall, FDR and the share called virus of the calls a min-score gives."""
    truth = np.asarray(truth, dtype=bool)
    counts = confusion(truth, called)
    tp, fp = counts["tp"], counts["fp"]
    return {"min_score": float(min_score), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, int(truth.sum())),
            "fdr": _ratio(fp, tp + fp), "called_virus": _ratio(tp + fp, truth.size), **counts}


def calls_at(scores: np.ndarray, min_score: float, scored: np.ndarray | None = None) -> np.ndarray:
    """The calls of `--min-score min_score`: scored items whose score >= it, compared in float32
    (the scores' precision, as consensus compares them); an item without a score is never called."""
    called = np.asarray(scores) >= np.float32(min_score)
    return called if scored is None else called & scored


def min_score_for_fdr(truth, scores, target_fdr: float, scored=None) -> float | None:
    """The lowest observed score whose calls (score >= it) have FDR <= target on this set: the
    most sequences called at that error rate. Only the scores of `scored` items are candidates
    (a read without a frame carries a placeholder score but is never called, so its placeholder
    is no threshold). None when no threshold reaches the target, and for a set of one class,
    whose FDR says nothing of the classifier (0 or 1 at every threshold)."""
    truth, scores = _arrays(truth, scores)
    if truth.all() or not truth.any():
        return None
    if scored is not None:
        scored = np.asarray(scored, dtype=bool).ravel()
        truth, scores = truth[scored], scores[scored]
        if truth.size == 0:
            return None
    thresholds, tps, fps = _cumulative_at_distinct_scores(truth, scores)
    reaching = np.flatnonzero(fps <= target_fdr * (tps + fps))
    reaching = reaching[(tps + fps)[reaching] > 0]
    return float(thresholds[reaching[-1]]) if reaching.size else None


def threshold_table(truth, scores, thresholds: Sequence[float] | None = None, call_at=None) -> list[dict]:
    """One row per min-score (ascending): precision, recall, FDR and the share called virus of
    the calls `call_at(min_score)` makes (default: calls_at, every item scored)."""
    truth, scores = _arrays(truth, scores)
    call_at = call_at or (lambda min_score: calls_at(scores, min_score))
    chosen = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    return [threshold_row(truth, call_at(t), t) for t in sorted(set(float(t) for t in chosen))]


@dataclass
class LevelScores:
    """One level (chunk, read) of an evaluation: per item its truth, virus score and call.
    `call_at(min_score)` gives the calls `--min-score` would make (default: metrics.calls_at);
    `scored` marks the items with a score of their own (None: all): an item without one (a read
    without a stop-free frame) carries a placeholder score, is never called, and its placeholder
    is never a candidate threshold."""

    truth: np.ndarray
    scores: np.ndarray
    calls: np.ndarray | None = None  # None: score >= 0.5
    call_at: Callable[[float], np.ndarray] | None = None
    scored: np.ndarray | None = None
    left_out: int | None = None  # items of this level without a score, not among these (chunks without a frame)

    def __post_init__(self):
        self.truth = np.asarray(self.truth, dtype=bool)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.call_at is None:
            self.call_at = lambda min_score: calls_at(self.scores, min_score, self.scored)
