"""Calibrated virus probabilities, each input's virus share and per-read FDR (numpy only).

Definitions, for one input of n reads; read i has the raw score s_i (`max_virus_score`) and k_i
stop-free frames (k_i = 0: no frame; its score placeholder 0 is ignored):

- **Calibration.** A labelled set (truth y ∈ {0, 1}, virus share π_L = mean y) gives
  p(s, k) = P_L(virus | s, k): the probability that a read of that score and frame count is a virus
  *at the labelled set's share*. A read's score is a maximum over its frames, so it rises with k;
  reads are therefore grouped into **frame bands** (consecutive frame counts; each band holds at
  least BAND_MIN_READS labelled reads, BAND_MIN_CLASS of each class, and about 1/MAX_BANDS of the
  set; a count outside the labelled range takes the nearest band), and within a band p is a
  non-decreasing function of s, fitted by one of:
  - `isotonic`: pool-adjacent-violators on the band's reads ordered by score (tied scores one
    block); each block's share is shrunk to (virus + π_L)/(reads + 1), except that a block of m
    reads of one class only (the top or the bottom one) counts one read of the other class,
    m/(m + 1) or 1/(m + 1) (order statistics: see `_block_share`), and pooled again; flat over
    the block's scores, linear across the gap to the next block, constant beyond;
  - `platt`: logit p = a·logit(s) + c, a ≥ 0 (Platt 1999, with his targets (N₊+1)/(N₊+2) and
    1/(N₋+2), so separable data give finite coefficients);
  - `beta`: logit p = a·ln s − b·ln(1 − s) + c, a, b ≥ 0 (Kull, Silva Filho & Flach 2017; a
    coefficient fitted negative is dropped and the rest refitted), Platt's targets;
  - `binned`: equal-count score bins of about BIN_READS reads, each bin's share set as above,
    pooled to be non-decreasing; a step function.
  Reads without a frame get one probability of their own, (frameless viruses + π_L)/(frameless
  reads + 1): how often a read has no stop-free frame depends on its class, so it is evidence.
  Every p lies in [P_MIN, 1 − P_MIN]. The default, isotonic, was chosen by measurement
  (bench/calibration.py --compare-methods): the parametric maps fit as well on average but
  extrapolate the top scores optimistically, so at a low virus share their calls at --max-fdr
  0.05 had several times that FDR; isotonic and binned claim no more certainty than the labelled
  reads show. The file records the method's CV_FOLDS-fold cross-validated log loss and Brier score
  and a reliability diagram from those out-of-fold probabilities (folds seeded).
- **Prior shift** (Saerens, Latinne & Decaestecker 2002). Assumed: the class-conditional
  distribution of (s, k) in the user's data is the labelled set's; only the virus share moves to
  π. Then P(virus | s, k) at share π is
      q = r·p / (r·p + r̄·(1 − p)),   r = π/π_L,  r̄ = (1 − π)/(1 − π_L)     (q = p when π = π_L).
- **Share estimate.** With λ_i = [p_i/(1 − p_i)]·[(1 − π_L)/π_L] (read i's likelihood ratio,
  virus against other), the input's log-likelihood is ℓ(π) = Σ ln(1 + π(λ_i − 1)) (+ a constant),
  concave in π. π̂ = argmax over [0, 1] is the fixed point of Saerens' EM (π ← mean_i q_i(π)):
  mean q(π) = π ⇔ ℓ'(π) = 0. It is found by Newton's method on ℓ' inside a bisection bracket
  (EM's own steps reach the same point, linearly and slowly where the classes overlap); π̂ = 0
  when ℓ'(0) ≤ 0 and 1 when ℓ'(1) ≥ 0.
- **95% interval**, two independent parts added per side in quadrature:
  - sampling: the likelihood-ratio interval {π : 2(ℓ(π̂) − ℓ(π)) ≤ 3.841}, rather than π̂ ± 1.96
    se from the observed information −ℓ''(π̂) (the two agree for large inputs): it stays inside
    [0, 1], is asymmetric near 0 and 1 and is defined when π̂ = 0, where small inputs and rare
    viruses put it; no resampling, so no extra randomness;
  - calibration: the calibration is itself estimated from a finite labelled set, which the
    likelihood treats as exact; that error does not shrink with the input's size, so for large
    inputs it dominates. The calibration file carries REPLICATES refits on stratified bootstrap
    resamples of the labelled set (same method and bands, seeded); σ_cal is the standard
    deviation of π̂ over them, and each side of the interval is sqrt(d² + (1.96 σ_cal)²) with d
    that side's sampling distance, clipped to [0, 1].
  An input gets a warning when it has fewer than SMALL_INPUT reads, when its interval is wider than
  WIDE_INTERVAL, or when the lower end's odds π/(1 − π) are below 1/ODDS_FACTOR of π̂'s (few viral
  reads: the prior shift multiplies every read's odds by the share's, so an overestimated share
  overstates every read's odds, and its fdr understates the false calls), or when the
  calibration's cross-validated AUROC is below WEAK_AUROC (likelihood ratios near 1 make small
  calibration errors large share errors, a bias the interval does not hold: measured 0.02 at a
  share of 0.9 for AUROC 0.64). The interval is wide, and still given: nothing is switched off.
- **fdr** of read i (geNomad's definition): mean of (1 − q_j) over the reads j of the input with
  q_j ≥ q_i, ties included: the expected share of false calls among the reads at least as
  probable. It does not increase as q rises, so `--max-fdr Q` (calls: exactly the reads with
  fdr ≤ Q) calls the most probable reads, and the expected FDR of that call set is ≤ Q.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..calibration_meta import CalibrationFileError  # noqa: F401 (the file's checks live in calibration_meta)
from ..calibration_meta import FORMAT, IDENTITY_FIELDS, METHODS, VERSION, read_calibration
from .metrics import auroc

DEFAULT_METHOD = "isotonic"
CV_FOLDS = 5
REPLICATES = 32
BAND_MIN_READS = 1000
BAND_MIN_CLASS = 100
MAX_BANDS = 8
BIN_READS = 200
MAX_BINS = 50
P_MIN = 1e-6  # no finite labelled set supports more certainty; keeps every likelihood ratio finite
SCORE_CLIP = 1e-7  # logit and log of scores of exactly 0 or 1 (float32 softmax outputs reach them)
CHI2_95 = 3.841458820694124  # 95% quantile of chi-square with 1 degree of freedom
Z_95 = 1.959963984540054
SMALL_INPUT = 1000
WIDE_INTERVAL = 0.1
ODDS_FACTOR = 2.0  # π̂'s odds over the lower end's: every read's odds are that uncertain
WEAK_AUROC = 0.75  # below it (cross-validated, per read) every share estimate is warned about


# ------------------------------------------------------------------ small numeric helpers

def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings at large |x|


def _bounded(p) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), P_MIN, 1.0 - P_MIN)


def _pav(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool adjacent violators: the non-decreasing sequence nearest to `values` in weighted least
    squares, as (end index (exclusive) of each block, block value); equal neighbours pooled too."""
    sums, totals, ends = [], [], []
    for end, (v, w) in enumerate(zip(values.tolist(), weights.tolist()), start=1):
        sums.append(v * w)
        totals.append(w)
        ends.append(end)
        while len(sums) > 1 and sums[-2] * totals[-1] >= sums[-1] * totals[-2]:
            last_sum, last_total = sums.pop(), totals.pop()
            sums[-1] += last_sum
            totals[-1] += last_total
            ends.pop(-2)
    return np.asarray(ends, dtype=np.int64), np.asarray(sums) / np.asarray(totals)


def _shrunk_monotone(virus: np.ndarray, reads: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Groups (ordered by score) with `virus` of `reads` labelled viruses -> (block ends, value per
    block): shares pooled non-decreasing, each set to `_block_share`, pooled again."""
    ends, _ = _pav(virus / np.maximum(reads, 1), reads.astype(np.float64))
    starts = np.r_[0, ends[:-1]]
    k, m = np.add.reduceat(virus, starts), np.add.reduceat(reads, starts)
    merged, values = _pav(_block_share(k, m, share), m + 1.0)
    return ends[merged - 1], _bounded(values)


def _block_share(virus: np.ndarray, reads: np.ndarray, share: float) -> np.ndarray:
    """(virus + π_L)/(reads + 1), but a block of m reads of one class only counts one read of the
    other class: m/(m + 1) or 1/(m + 1). Such a block is the top (bottom) one, which the data
    place above the highest-scoring labelled other (below the lowest virus); the expected share of
    a distribution above the highest of N draws from it is 1/(N + 1), so about one labelled
    other is expected there, not the zero seen. At a 1% share the calls are that block's reads,
    and the plain shrunk count (odds 2m + 1 instead of m) made calls at --max-fdr 0.05 whose true
    FDR was 0.11 (bench/README.md)."""
    values = (virus + share) / (reads + 1.0)
    values = np.where((virus == reads) & (reads > 0), reads / (reads + 1.0), values)
    return np.where(virus == 0, 1.0 / (reads + 1.0), values)


# ------------------------------------------------------------------ one band's score -> probability map

def _fit_isotonic(scores: np.ndarray, truth: np.ndarray, share: float) -> dict:
    """Blocks held flat over their scores, so that each read takes its block's labelled virus
    share: the share estimate then rests on cells whose class frequencies are counted, not
    interpolated (centring the values at the blocks' mean scores, as Oron & Flournoy 2017 do,
    moved a weak classifier's share estimates by 0.03, measured)."""
    unique, inverse = np.unique(scores, return_inverse=True)
    reads = np.bincount(inverse, minlength=unique.size)
    virus = np.bincount(inverse, weights=truth, minlength=unique.size)
    ends, values = _shrunk_monotone(virus, reads, share)
    starts = np.r_[0, ends[:-1]]
    knots, levels = [], []
    for a, b, v in zip(starts.tolist(), ends.tolist(), values.tolist()):
        for x in ((unique[a],) if b - a == 1 else (unique[a], unique[b - 1])):
            knots.append(float(x))
            levels.append(v)
    return {"knots": knots, "values": levels}


def _fit_binned(scores: np.ndarray, truth: np.ndarray, share: float) -> dict:
    bins = int(np.clip(scores.size // BIN_READS, 1, MAX_BINS))
    edges = np.unique(np.quantile(scores, np.arange(1, bins) / bins)) if bins > 1 else np.zeros(0)
    index = np.searchsorted(edges, scores, side="right")
    reads = np.bincount(index, minlength=edges.size + 1)
    virus = np.bincount(index, weights=truth, minlength=edges.size + 1)
    ends, values = _shrunk_monotone(virus, reads, share)
    return {"edges": edges.tolist(), "values": np.repeat(values, np.diff(np.r_[0, ends])).tolist()}


def _features(method: str, scores: np.ndarray) -> np.ndarray:
    s = np.clip(scores, SCORE_CLIP, 1.0 - SCORE_CLIP)
    if method == "platt":
        return _logit(s)[:, None]
    return np.stack([np.log(s), -np.log1p(-s)], axis=1)


def _logistic(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Maximum-likelihood (coefficients..., intercept) of logit p = X·w + c for soft targets
    (Newton's method with step halving; the log-likelihood is concave)."""
    design = np.c_[features, np.ones(len(features))]
    weights = np.zeros(design.shape[1])

    def loglik(w):
        z = design @ w
        return float(np.sum(targets * z - np.logaddexp(0.0, z)))

    current = loglik(weights)
    for _ in range(100):
        mu = _sigmoid(design @ weights)
        hessian = (design * (mu * (1 - mu))[:, None]).T @ design + 1e-9 * np.eye(design.shape[1])
        step = np.linalg.solve(hessian, design.T @ (targets - mu))
        scale = 1.0
        while scale > 1e-6 and loglik(weights + scale * step) < current:
            scale /= 2
        weights = weights + scale * step
        current = loglik(weights)
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return weights


def _fit_logistic(method: str, scores: np.ndarray, truth: np.ndarray) -> dict:
    positives = int(truth.sum())
    targets = np.where(truth > 0, (positives + 1.0) / (positives + 2.0), 1.0 / (truth.size - positives + 2.0))
    features = _features(method, scores)
    names = ("a",) if method == "platt" else ("a", "b")
    kept = list(range(len(names)))
    while True:  # drop a coefficient fitted negative (monotone in s), refit the rest
        coefficients = _logistic(features[:, kept], targets)
        negative = [j for j, c in zip(kept, coefficients[:-1]) if c < 0]
        if not negative:
            break
        kept.remove(negative[0])
    params = {name: 0.0 for name in names}
    params.update({names[j]: float(c) for j, c in zip(kept, coefficients[:-1])})
    params["c"] = float(coefficients[-1])
    return params


def fit_map(method: str, scores: np.ndarray, truth: np.ndarray, share: float) -> dict:
    """The parameters of one band's map s -> p under `method` (share: π_L, the shrinkage target)."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, np.float64)
    if scores.size == 0:  # a band no labelled read of this resample or fold fell in: uninformative
        return constant_map(method, share)
    if method == "isotonic":
        return _fit_isotonic(scores, truth, share)
    if method == "binned":
        return _fit_binned(scores, truth, share)
    return _fit_logistic(method, scores, truth)


def constant_map(method: str, share: float) -> dict:
    """The map that gives every score the probability `share` (likelihood ratio 1)."""
    if method == "isotonic":
        return {"knots": [0.5], "values": [share]}
    if method == "binned":
        return {"edges": [], "values": [share]}
    return {"a": 0.0, **({"b": 0.0} if method == "beta" else {}), "c": float(_logit(np.float64(share)))}


def apply_map(method: str, params: dict, scores: np.ndarray) -> np.ndarray:
    """p for each score under one band's fitted map."""
    scores = np.asarray(scores, np.float64)
    if method == "isotonic":
        return _bounded(np.interp(scores, params["knots"], params["values"]))
    if method == "binned":
        return _bounded(np.asarray(params["values"])[np.searchsorted(params["edges"], scores, side="right")])
    features = _features(method, scores)
    logit = params["a"] * features[:, 0] + params["c"]
    if method == "beta":
        logit = logit + params["b"] * features[:, 1]
    return _bounded(_sigmoid(logit))


# ------------------------------------------------------------------ frame bands

def frame_bands(frames: np.ndarray, truth: np.ndarray) -> list[int]:
    """Lowest frame count of each band (ascending), from the labelled reads with frames: consecutive
    counts are joined until a band holds BAND_MIN_READS reads (and n/MAX_BANDS), BAND_MIN_CLASS of
    each class; a short last band joins the one before."""
    counts, inverse = np.unique(frames, return_inverse=True)
    reads = np.bincount(inverse, minlength=counts.size)
    virus = np.bincount(inverse, weights=truth, minlength=counts.size).astype(np.int64)
    need = max(BAND_MIN_READS, math.ceil(frames.size / MAX_BANDS))
    lows, held = [], None
    for count, n, v in zip(counts.tolist(), reads.tolist(), virus.tolist()):
        if held is None:
            lows.append(count)
            held = [0, 0]
        held = [held[0] + n, held[1] + v]
        if held[0] >= need and min(held[1], held[0] - held[1]) >= BAND_MIN_CLASS:
            held = None
    if held is not None and len(lows) > 1:
        lows.pop()
    return lows or [1]


def _band_index(lows: list[int], frames: np.ndarray) -> np.ndarray:
    return np.maximum(np.searchsorted(np.asarray(lows), frames, side="right") - 1, 0)


# ------------------------------------------------------------------ the calibration

@dataclass(frozen=True)
class Fit:
    """One fitted calibration's parameters: a map per band and the frameless reads' probability."""

    maps: tuple[dict, ...]
    frameless: float | None

    def to_dict(self) -> dict:
        return {"bands": list(self.maps), "frameless_probability": self.frameless}


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration (see the module's docstring) and what it was fitted on."""

    level: str  # "read" or "chunk"
    method: str
    labelled_share: float  # π_L
    band_lows: tuple[int, ...]  # lowest frame count of each band
    fit: Fit
    replicates: tuple[Fit, ...] = ()
    counts: dict = field(default_factory=dict)  # reads, virus, other; per band; frameless
    identity: dict = field(default_factory=dict)  # classifier_sha256, chunk_length, models
    fitted_on: dict = field(default_factory=dict)  # what the labelled reads were (free form)
    validation: dict = field(default_factory=dict)  # cross-validated log loss and Brier score
    reliability: list = field(default_factory=list)  # cross-validated reliability diagram rows

    def probability(self, scores, frames=None, fit: Fit | None = None) -> np.ndarray:
        """p = P_L(virus | s, k) of each read, at the labelled share π_L."""
        fit = fit or self.fit
        scores = np.asarray(scores, np.float64)
        if frames is None:
            if len(self.band_lows) > 1 or fit.frameless is not None:
                raise ValueError("this calibration needs each read's frame count")
            return apply_map(self.method, fit.maps[0], scores)
        frames = np.asarray(frames, np.int64)
        if frames.shape != scores.shape:
            raise ValueError(f"{frames.size} frame counts for {scores.size} scores")
        out = np.empty(scores.size, np.float64)
        framed = frames > 0
        band = _band_index(list(self.band_lows), frames)
        for b, params in enumerate(fit.maps):
            chosen = framed & (band == b)
            out[chosen] = apply_map(self.method, params, scores[chosen])
        out[~framed] = fit.frameless if fit.frameless is not None else self.labelled_share
        return out

    def band_rows(self) -> list[dict]:
        """Each band's frame counts [lowest, highest] (None: no upper end) and labelled reads."""
        highs = [low - 1 for low in self.band_lows[1:]] + [None]
        counts = self.counts.get("bands") or [{} for _ in self.band_lows]
        return [{"frames": [low, high], **c} for low, high, c in zip(self.band_lows, highs, counts)]

    def _document(self) -> dict:
        bands = self.band_rows()
        return {
            "format": FORMAT, "version": VERSION, "level": self.level, "method": self.method,
            "labelled_virus_share": self.labelled_share,
            "counts": {k: v for k, v in self.counts.items() if k != "bands"}, "bands": bands,
            **self.identity, "fitted_on": self.fitted_on, "validation": self.validation,
            "reliability": self.reliability,
            "fit": self.fit.to_dict(), "replicates": [r.to_dict() for r in self.replicates],
        }

    def to_dict(self) -> dict:
        """The JSON document (a copy: editing it leaves the calibration as it is)."""
        return copy.deepcopy(self._document())

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def fit_calibration(truth, scores, frames=None, method: str = DEFAULT_METHOD, *, level: str = "read",
                    replicates: int = REPLICATES, seed: int = 0, identity: dict | None = None,
                    fitted_on: dict | None = None) -> Calibration:
    """Fit a calibration of `scores` against `truth` by `method` (frames: each read's frame count,
    0 = no frame; None for chunks: one band), with `replicates` bootstrap refits for the share
    interval; seeded, so the same data give the same file."""
    truth = np.asarray(truth, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    frames = None if frames is None else np.asarray(frames, dtype=np.int64).ravel()
    _check_labelled(truth, scores, frames, method)
    share = float(truth.mean())
    framed = np.ones(truth.size, bool) if frames is None else frames > 0
    lows = [1] if frames is None else frame_bands(frames[framed], truth[framed])
    band = np.zeros(truth.size, np.int64) if frames is None else _band_index(lows, frames)
    with_frames = frames is not None
    calibration = Calibration(level, method, share, tuple(lows),
                              _fit_all(method, share, with_frames, len(lows), truth, scores, band, framed))
    folds = np.random.default_rng(seed).permutation(truth.size) % CV_FOLDS
    held_out = _cross_validated(calibration, folds, truth, scores, frames, band, framed)
    rng = np.random.default_rng([seed, 1])
    refits = tuple(_fit_all(method, share, with_frames, len(lows), *_resampled(rng, truth, scores, band, framed))
                   for _ in range(replicates))
    return replace(calibration, replicates=refits, identity=dict(identity or {}), fitted_on=dict(fitted_on or {}),
                   counts=_counts(truth, band, framed, len(lows), with_frames),
                   validation={"log_loss": _log_loss(truth, held_out), "brier": float(np.mean((held_out - truth) ** 2)),
                               "auroc": auroc(truth, held_out),
                               "how": f"{CV_FOLDS}-fold cross-validated (folds seeded {seed}), bands fixed",
                               "replicates": f"{replicates} stratified bootstrap refits (seed {seed})"},
                   reliability=reliability_table(truth, held_out))


def _check_labelled(truth, scores, frames, method) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: one of {', '.join(METHODS)}")
    if truth.shape != scores.shape or (frames is not None and frames.shape != truth.shape):
        raise ValueError("truth, scores and frames differ in length")
    if not np.isfinite(scores).all() or ((scores < 0) | (scores > 1)).any():
        raise ValueError("scores must lie in [0, 1]")
    if truth.all() or not truth.any():
        raise ValueError("a calibration needs labelled reads of both classes")


def _fit_all(method: str, share: float, with_frames: bool, bands: int, truth, scores, band, framed) -> Fit:
    """Every band's map and (with frame counts) the frameless reads' probability."""
    maps = tuple(fit_map(method, scores[framed & (band == b)], truth[framed & (band == b)], share) for b in range(bands))
    frameless = None
    if with_frames:
        frameless = float(_bounded((truth[~framed].sum() + share) / ((~framed).sum() + 1.0)))
    return Fit(maps, frameless)


def _cross_validated(calibration: Calibration, folds, truth, scores, frames, band, framed) -> np.ndarray:
    """Out-of-fold probabilities of every read (the bands fixed from all reads)."""
    out = np.empty(truth.size)
    for fold in range(CV_FOLDS):
        test, train = folds == fold, folds != fold
        fit = _fit_all(calibration.method, calibration.labelled_share, frames is not None, len(calibration.band_lows),
                       truth[train], scores[train], band[train], framed[train])
        out[test] = calibration.probability(scores[test], None if frames is None else frames[test], fit)
    return out


def _resampled(rng, truth, scores, band, framed):
    """A stratified bootstrap resample (the class counts, hence π_L, unchanged)."""
    index = np.concatenate([rng.choice(np.flatnonzero(truth == c), size=int((truth == c).sum())) for c in (False, True)])
    return truth[index], scores[index], band[index], framed[index]


def _counts(truth, band, framed, bands, with_frames) -> dict:
    counts = {"reads": int(truth.size), "virus": int(truth.sum()), "other": int((~truth).sum()),
              "bands": [{"reads": int((framed & (band == b)).sum()), "virus": int((truth & framed & (band == b)).sum())}
                        for b in range(bands)]}
    if with_frames:
        counts["frameless"] = {"reads": int((~framed).sum()), "virus": int((truth & ~framed).sum())}
    return counts


def _log_loss(truth, p) -> float:
    p = _bounded(p)
    return float(-np.mean(np.where(truth, np.log(p), np.log1p(-p))))


def reliability_table(truth, probability, bins: int = 10) -> list[dict]:
    """The reliability diagram: per probability bin [j/bins, (j+1)/bins), the reads in it, their
    mean probability and their observed virus share (empty bins left out)."""
    truth, probability = np.asarray(truth, bool), np.asarray(probability, np.float64)
    index = np.minimum((probability * bins).astype(np.int64), bins - 1)
    rows = []
    for j in range(bins):
        chosen = index == j
        if chosen.any():
            rows.append({"low": j / bins, "high": (j + 1) / bins, "reads": int(chosen.sum()),
                         "mean_probability": float(probability[chosen].mean()),
                         "virus_share": float(truth[chosen].mean())})
    return rows


# ------------------------------------------------------------------ prior shift and the share

def adjust_to_share(p, labelled_share: float, share: float) -> np.ndarray:
    """q = P(virus | s, k) at the sample's share from p at the labelled share (the prior shift)."""
    p = _bounded(p)
    if share <= 0 or share >= 1:
        return np.full(p.shape, float(share >= 1))
    return _sigmoid(_logit(p) + _logit(np.float64(share)) - _logit(np.float64(labelled_share)))


def likelihood_ratios(p, labelled_share: float) -> np.ndarray:
    """λ = [p/(1 − p)]·[(1 − π_L)/π_L]: how much likelier the read is as a virus than as other."""
    return np.exp(_logit(_bounded(p)) - _logit(np.float64(labelled_share)))


def log_likelihood(share: float, ratios: np.ndarray) -> float:
    """ℓ(π) = Σ ln(1 + π(λ − 1)) (the input's log-likelihood, up to a constant)."""
    return float(np.sum(np.log1p(share * (np.asarray(ratios, np.float64) - 1.0))))


def em_steps(p, labelled_share: float, start: float = 0.5, steps: int = 10000, tolerance: float = 1e-12) -> float:
    """Saerens' EM as published: π ← mean of the reads' q at the current π, until it stops moving."""
    share = start
    for _ in range(steps):
        updated = float(np.mean(adjust_to_share(p, labelled_share, share)))
        if abs(updated - share) < tolerance:
            return updated
        share = updated
    return share


def maximum_likelihood_share(ratios: np.ndarray, start: float = 0.5) -> np.ndarray:
    """π̂ per row of `ratios` (reads along the last axis): the root of ℓ'(π) = Σ (λ−1)/(1+π(λ−1)),
    by Newton steps kept inside a shrinking bisection bracket; 0 or 1 when ℓ is monotone."""
    delta = np.atleast_2d(ratios) - 1.0
    low, high = np.zeros(len(delta)), np.ones(len(delta))
    at_zero, at_one = delta.sum(axis=1), np.sum(delta / (1.0 + delta), axis=1)
    share = np.full(len(delta), float(start))
    for _ in range(200):
        terms = delta / (1.0 + share[:, None] * delta)
        slope, curvature = terms.sum(axis=1), -(terms * terms).sum(axis=1)
        low, high = np.where(slope > 0, share, low), np.where(slope > 0, high, share)
        newton = share - slope / np.where(curvature < 0, curvature, -np.inf)
        updated = np.where((newton >= low) & (newton <= high), newton, 0.5 * (low + high))
        done = np.all(np.abs(updated - share) < 1e-12)
        share = updated
        if done:
            break
    return np.where(at_zero <= 0, 0.0, np.where(at_one >= 0, 1.0, share))


def likelihood_interval(ratios: np.ndarray, share: float, chi2: float = CHI2_95) -> tuple[float, float]:
    """{π : 2(ℓ(π̂) − ℓ(π)) ≤ chi2}: Newton from each end of [0, 1] towards π̂ (ℓ concave: the
    steps never pass the bound)."""
    delta = np.asarray(ratios, np.float64) - 1.0
    level = float(np.sum(np.log1p(share * delta))) - chi2 / 2

    def bound(start: float, limit: float) -> float:
        x = start
        for _ in range(200):
            gap = float(np.sum(np.log1p(x * delta))) - level
            if gap >= 0:
                return x
            slope = float(np.sum(delta / (1.0 + x * delta)))
            if slope == 0:
                return x
            moved = min(max(x - gap / slope, min(start, limit)), max(start, limit))
            if abs(moved - x) < 1e-13:
                return moved
            x = moved
        return x

    return bound(0.0, share), bound(1.0, share)


@dataclass(frozen=True)
class ShareEstimate:
    """An input's virus share: the estimate with its 95% interval, or the share given."""

    share: float | None
    low: float | None
    high: float | None
    reads: int
    method: str  # "em" (estimated) or "given" (--virus-share)
    sampling: tuple[float, float] | None = None  # the likelihood-ratio interval alone
    calibration_sd: float | None = None  # σ_cal: π̂'s spread over the calibration's replicates
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"share": self.share, "low": self.low, "high": self.high, "reads": self.reads, "method": self.method,
                "sampling_interval": None if self.sampling is None else list(self.sampling),
                "calibration_sd": self.calibration_sd, "warning": self.warning}


def estimate_share(calibration: Calibration, scores, frames=None) -> ShareEstimate:
    """π̂ of one input (EM's fixed point) with its 95% interval (sampling and calibration parts)."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return ShareEstimate(None, None, None, 0, "em", warning="no reads: no share estimated")
    prior = calibration.labelled_share
    ratios = likelihood_ratios(calibration.probability(scores, frames), prior)
    share = float(maximum_likelihood_share(ratios)[0])
    low, high = likelihood_interval(ratios, share)
    sd = 0.0
    if calibration.replicates:
        spread = np.stack([likelihood_ratios(calibration.probability(scores, frames, fit), prior)
                           for fit in calibration.replicates])
        sd = float(np.std(maximum_likelihood_share(spread, start=share), ddof=1)) if len(spread) > 1 else 0.0
    widened = (max(0.0, share - math.hypot(share - low, Z_95 * sd)), min(1.0, share + math.hypot(high - share, Z_95 * sd)))
    return ShareEstimate(share, *widened, reads=int(scores.size), method="em", sampling=(low, high),
                         calibration_sd=sd, warning=_share_warning(scores.size, share, *widened,
                                                                 calibration.validation.get("auroc")))


def _share_warning(reads: int, share: float, low: float, high: float, area: float | None) -> str | None:
    problems = []
    if area is not None and area < WEAK_AUROC:
        problems.append(f"a weak classifier (AUROC {area:.2f} on the labelled reads)")
    if reads < SMALL_INPUT:
        problems.append(f"{reads:,} reads (fewer than {SMALL_INPUT:,})")
    if high - low > WIDE_INTERVAL:
        problems.append(f"95% interval {low:.3f}-{high:.3f} wider than {WIDE_INTERVAL:g}")
    elif share > 0 and (low <= 0 or share * (1 - low) > ODDS_FACTOR * low * (1 - share)):
        problems.append(f"few viral reads: 95% interval {low:.4f}-{high:.4f}, its lower end over {ODDS_FACTOR:g}-fold "
                        f"below {share:.4f} in odds")
    if not problems:
        return None
    return "; ".join(problems) + ": this input's virus share, probabilities and fdr are uncertain"


# ------------------------------------------------------------------ fdr and calls

def fdr_column(probability) -> np.ndarray:
    """fdr of each read: mean of (1 − q_j) over the reads with q_j ≥ q_i, ties included."""
    q = np.asarray(probability, np.float64)
    if q.size == 0:
        return np.zeros(0)
    order = np.argsort(-q, kind="stable")
    ordered = q[order]
    last_of_run = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), q.size - 1]
    running = np.cumsum(1.0 - ordered)[last_of_run] / (last_of_run + 1)
    out = np.empty(q.size)
    out[order] = np.repeat(running, np.diff(np.r_[-1, last_of_run]))
    return out


def calls_at_max_fdr(fdr, max_fdr: float) -> np.ndarray:
    """--max-fdr Q: exactly the reads whose fdr ≤ Q."""
    check_max_fdr(max_fdr)
    return np.asarray(fdr) <= max_fdr


def check_max_fdr(value: float, what: str = "--max-fdr") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{what} {value}: an FDR is between 0 (excluded) and 1")
    return float(value)


def check_share(value: float, what: str = "--virus-share") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{what} {value}: a virus share is between 0 and 1 (both excluded)")
    return float(value)


@dataclass(frozen=True)
class InputCalibration:
    """One input's reads at its own share: probability q, fdr and (with max_fdr) the calls."""

    probability: np.ndarray
    fdr: np.ndarray
    calls: np.ndarray | None
    estimate: ShareEstimate


def calibrate_input(calibration: Calibration, scores, frames=None, virus_share: float | None = None,
                    max_fdr: float | None = None) -> InputCalibration:
    """Every read's virus probability at the input's share (estimated, or `virus_share`), its fdr
    and, with `max_fdr`, the calls."""
    scores = np.asarray(scores, np.float64)
    if virus_share is None:
        estimate = estimate_share(calibration, scores, frames)
        share = estimate.share
    else:
        share = check_share(virus_share)
        estimate = ShareEstimate(share, share, share, int(scores.size), "given")
    p = calibration.probability(scores, frames)
    q = adjust_to_share(p, calibration.labelled_share, share if share is not None else calibration.labelled_share)
    fdr = fdr_column(q)
    return InputCalibration(q, fdr, None if max_fdr is None else calls_at_max_fdr(fdr, max_fdr), estimate)


# ------------------------------------------------------------------ the file

def load_calibration(path) -> Calibration:
    """A calibration file (or a classifier description carrying one), checked (calibration_meta):
    CalibrationFileError, one line naming the file and field, when unusable."""
    return from_document(read_calibration(path))


def from_document(document: dict) -> Calibration:
    """The Calibration of a checked document (calibration_meta.read_calibration)."""
    def fit(data: dict) -> Fit:
        return Fit(tuple(dict(m) for m in data["bands"]), data.get("frameless_probability"))

    bands = [{k: v for k, v in b.items() if k != "frames"} for b in document["bands"]]
    return Calibration(document["level"], document["method"], float(document["labelled_virus_share"]),
                       tuple(b["frames"][0] for b in document["bands"]), fit(document["fit"]),
                       tuple(fit(r) for r in document.get("replicates", [])),
                       {**document.get("counts", {}), "bands": bands},
                       {k: document[k] for k in IDENTITY_FIELDS if k in document},
                       document.get("fitted_on", {}), document.get("validation", {}), document.get("reliability", []))
