"""Synthetic read scores whose class-conditional distributions are known exactly (tests and bench).

A read has 1, 2 or 4 chunks (150, 300, 600 bp at chunk length 150), so 6, 12 or 24 candidate
frames; each is stop-free with a per-class chance (the AT-rich class has more stops, so more of its
reads have no frame at all). Each stop-free frame's virus score is drawn from the class's mixture
of beta distributions with integer parameters, and the read's score is the maximum over its frames
(float32, as the predictions are); a read without a frame scores 0. Because the frame-score CDF G
of an integer beta mixture is a polynomial, the true likelihood ratio of a read with k frames and
score s is exact:
    λ(s, k) = P(k | virus)·G₁(s)^(k−1)·g₁(s) / (P(k | other)·G₀(s)^(k−1)·g₀(s))   (k ≥ 1),
    λ(0) = P(k = 0 | virus) / P(k = 0 | other),
and the true posterior at share π is πλ / (πλ + 1 − π).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAMES_PER_CHUNK = 6


def beta_cdf(x: np.ndarray, a: int, b: int) -> np.ndarray:
    """I_x(a, b) for integer a, b: Σ_{j=a}^{a+b−1} C(a+b−1, j) x^j (1−x)^(a+b−1−j)."""
    n = a + b - 1
    return sum(math.comb(n, j) * x ** j * (1 - x) ** (n - j) for j in range(a, n + 1))


def beta_pdf(x: np.ndarray, a: int, b: int) -> np.ndarray:
    return x ** (a - 1) * (1 - x) ** (b - 1) * math.factorial(a + b - 1) / (math.factorial(a - 1) * math.factorial(b - 1))


@dataclass(frozen=True)
class Scenario:
    name: str
    virus: tuple  # ((weight, a, b), ...): a frame's score distribution, viral reads
    other: tuple
    stop_free: tuple = (0.11, 0.2)  # chance that a frame is stop-free: other, virus
    chunks: tuple = ((1, 0.5), (2, 0.3), (4, 0.2))  # (chunks per read, share of reads)

    def _frame_scores(self, rng, mixture, count: int) -> np.ndarray:
        weights = np.array([w for w, _, _ in mixture])
        component = rng.choice(len(mixture), size=count, p=weights / weights.sum())
        a = np.array([a for _, a, _ in mixture])[component]
        b = np.array([b for _, _, b in mixture])[component]
        return rng.beta(a, b)

    def sample(self, rng, n: int, share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(truth, scores, frames) of n reads, each a virus with probability `share`."""
        truth = rng.random(n) < share
        sizes = np.array([c for c, _ in self.chunks])
        chunks = sizes[rng.choice(len(sizes), size=n, p=[w for _, w in self.chunks])]
        frames = rng.binomial(FRAMES_PER_CHUNK * chunks, np.where(truth, self.stop_free[1], self.stop_free[0]))
        scores = np.zeros(n, np.float64)
        framed = np.flatnonzero(frames > 0)
        for virus, mixture in ((True, self.virus), (False, self.other)):
            reads = framed[truth[framed] == virus]
            if reads.size:
                values = self._frame_scores(rng, mixture, int(frames[reads].sum()))
                scores[reads] = np.maximum.reduceat(values, np.r_[0, np.cumsum(frames[reads])[:-1]])
        return truth, scores.astype(np.float32).astype(np.float64), frames

    def _frames_probability(self, k: np.ndarray, virus: bool) -> np.ndarray:
        p = self.stop_free[1 if virus else 0]
        total = np.zeros(k.shape)
        for size, weight in self.chunks:
            n = FRAMES_PER_CHUNK * size
            comb = np.array([math.comb(n, int(j)) if j <= n else 0 for j in range(int(k.max(initial=0)) + 1)], float)
            total += weight * comb[k] * p ** k * (1 - p) ** np.maximum(n - k, 0) * (k <= n)
        return total

    def _log_max_density(self, s: np.ndarray, k: np.ndarray, mixture) -> np.ndarray:
        cdf = sum(w * beta_cdf(s, a, b) for w, a, b in mixture) / sum(w for w, _, _ in mixture)
        pdf = sum(w * beta_pdf(s, a, b) for w, a, b in mixture) / sum(w for w, _, _ in mixture)
        return (k - 1) * np.log(cdf) + np.log(pdf)

    def log_ratio(self, scores: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """ln λ(s, k), the true log likelihood ratio of each read."""
        k = np.asarray(frames, np.int64)
        s = np.clip(np.asarray(scores, np.float64), 1e-9, 1 - 1e-9)
        out = np.log(self._frames_probability(k, True)) - np.log(self._frames_probability(k, False))
        framed = k > 0
        out[framed] += (self._log_max_density(s[framed], k[framed], self.virus)
                        - self._log_max_density(s[framed], k[framed], self.other))
        return out

    def posterior(self, scores, frames, share: float) -> np.ndarray:
        """The true P(virus | s, k) at `share`."""
        z = self.log_ratio(scores, frames) + math.log(share) - math.log1p(-share)
        return 0.5 * (1 + np.tanh(0.5 * z))


TYPICAL = Scenario("typical", virus=((0.7, 8, 2), (0.3, 2, 4)), other=((0.85, 1, 8), (0.15, 3, 3)))
WEAK = Scenario("weak", virus=((0.5, 2, 3), (0.5, 3, 3)), other=((0.6, 2, 3), (0.4, 2, 2)))
SCENARIOS = {s.name: s for s in (TYPICAL, WEAK)}
