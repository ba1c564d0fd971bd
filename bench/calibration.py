"""Calibrated probabilities, virus-share estimates and per-read FDR against known truth.

Synthetic scores whose class-conditional distributions are known exactly (tests/synthetic_scores.py:
reads of 1, 2 or 4 chunks, frame scores from beta mixtures, a read's score the maximum over its
frames, class-dependent frameless reads), so every read's true posterior is known. A labelled set
(virus share 0.5) is drawn and a calibration fitted on it (isotonic, frame bands); then, for each virus share π and input size n, `--draws` inputs are
drawn, each independently (the number of viruses binomial), and per input:
- |π̂ − π|, the 95% interval's width and whether it holds π (coverage; also of the likelihood
  interval alone, without the calibration's part);
- MAE of the calibrated probabilities against the true posterior at π, and of the raw scores;
- at --max-fdr Q: the estimated FDR of the calls (mean of 1 − q over them) against the true
  expected FDR (mean of 1 − the true posterior over them), and the realised FDR (false calls /
  calls; averaged over the inputs with calls).

    python bench/calibration.py                      # the README's table (both scenarios)
    python bench/calibration.py --compare-methods    # isotonic / platt / beta / binned, frame bands or one
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402

from synthetic_scores import SCENARIOS  # noqa: E402  (tests/synthetic_scores.py)
from virnucpro.evaluation import calibration as cal  # noqa: E402
from virnucpro.evaluation.metrics import auroc  # noqa: E402

TARGETS = (0.05, 0.1)


def one_input(calibration, scenario, rng, n: int, share: float) -> dict:
    truth, scores, frames = scenario.sample(rng, n, share)
    result = cal.calibrate_input(calibration, scores, frames)
    estimate, q = result.estimate, result.probability
    true_q = scenario.posterior(scores, frames, share)
    row = {"error": abs(estimate.share - share), "width": estimate.high - estimate.low,
           "covered": estimate.low <= share <= estimate.high,
           "covered_sampling": estimate.sampling[0] <= share <= estimate.sampling[1],
           "mae": float(np.mean(np.abs(q - true_q))), "mae_raw": float(np.mean(np.abs(scores - true_q))),
           "warned": estimate.warning is not None}
    for target in TARGETS:
        called = result.fdr <= target
        if called.any():
            row[f"fdr_error_{target}"] = abs(float(np.mean(1 - q[called])) - float(np.mean(1 - true_q[called])))
            row[f"realised_{target}"] = float(np.mean(~truth[called]))
    return row


SUMMARY_KEYS = ("error", "width", "covered", "covered_sampling", "mae", "mae_raw", "warned",
                *(f"{what}_{target}" for what in ("fdr_error", "realised") for target in TARGETS))


def summarise(rows: list[dict]) -> dict:
    """Means over the inputs (the FDR figures over the inputs with calls: NaN when none had any)."""
    out = {key: float(np.mean([r[key] for r in rows if key in r])) if any(key in r for r in rows) else float("nan")
           for key in SUMMARY_KEYS}
    for target in TARGETS:
        out[f"with_calls_{target}"] = float(np.mean([f"realised_{target}" in r for r in rows]))
    return out


def fit(scenario, labelled: int, seed: int, method: str = cal.DEFAULT_METHOD, bands: bool = True):
    truth, scores, frames = scenario.sample(np.random.default_rng([seed, 0]), labelled, 0.5)
    started = time.perf_counter()
    calibration = cal.fit_calibration(truth, scores, frames if bands else np.minimum(frames, 1), method, seed=seed)
    return calibration, time.perf_counter() - started, auroc(truth, scores)


def table(args) -> None:
    print("| scenario | π | reads | draws | mean abs(π̂ − π) | 95% width | coverage | coverage, likelihood part alone "
          "| MAE calibrated | MAE raw score | inputs with calls @0.05 | @0.1 | abs(est − true FDR) @0.05 | @0.1 "
          "| realised FDR @0.05 | @0.1 | warned |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        calibration, seconds, area = fit(scenario, args.labelled, args.seed)
        print(f"<!-- {name}: read AUROC {area:.3f}; {calibration.method} fitted on {args.labelled:,} labelled reads "
              f"in {seconds:.1f} s; bands from frames {list(calibration.band_lows)}; CV log loss "
              f"{calibration.validation['log_loss']:.4f} -->", flush=True)
        for share in args.shares:
            for n in args.sizes:
                rng = np.random.default_rng([args.seed, int(share * 1000), n])
                draws = args.draws if n < 100_000 else args.draws_large
                s = summarise([one_input(calibration, scenario, rng, n, share) for _ in range(draws)])
                print(f"| {name} | {share:g} | {n:,} | {draws} | {s['error']:.4f} | {s['width']:.4f} | "
                      f"{s['covered']:.0%} | {s['covered_sampling']:.0%} | {s['mae']:.4f} | {s['mae_raw']:.4f} | "
                      f"{s['with_calls_0.05']:.0%} | {s['with_calls_0.1']:.0%} | "
                      f"{s['fdr_error_0.05']:.4f} | {s['fdr_error_0.1']:.4f} | {s['realised_0.05']:.3f} | "
                      f"{s['realised_0.1']:.3f} | {s['warned']:.0%} |", flush=True)


COMPARED_SHARES = (0.01, 0.1, 0.5)


def compare_methods(args) -> None:
    """Each method, with frame bands and with one band, fitted on the same labelled reads and
    applied to one 100,000-read input per share: CV log loss on the labelled set; MAE against the
    true posterior; abs(π̂ − π); at --max-fdr 0.05 the true expected FDR of the calls and their
    number against the calls the true posterior makes at 0.05 (the most a calibration can do)."""
    print("| scenario | labelled reads | method | bands | CV log loss | MAE @π=0.01 | @0.1 | @0.5 "
          "| abs(π̂ − π) @0.01 | @0.1 | @0.5 | true FDR of calls @0.05, π=0.01 | @0.1 | @0.5 "
          "| calls / true posterior's @0.01 | @0.1 | @0.5 |")
    print("|---|---:|---|---|" + "---:|" * 13)
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        inputs = {}
        for share in COMPARED_SHARES:
            truth, scores, frames = scenario.sample(np.random.default_rng([args.seed, 7, int(share * 100)]), 100_000, share)
            posterior = scenario.posterior(scores, frames, share)
            inputs[share] = (scores, frames, posterior, int(np.sum(cal.fdr_column(posterior) <= 0.05)))
        for labelled in args.compare_labelled:
            for bands in (True, False):
                for method in cal.METHODS:
                    calibration, seconds, _ = fit(scenario, labelled, args.seed, method, bands)
                    columns = {"mae": [], "error": [], "fdr": [], "calls": []}
                    for share, (scores, frames, posterior, oracle) in inputs.items():
                        result = cal.calibrate_input(calibration, scores, frames if bands else np.minimum(frames, 1))
                        called = result.fdr <= 0.05
                        columns["mae"].append(f"{np.mean(np.abs(result.probability - posterior)):.4f}")
                        columns["error"].append(f"{abs(result.estimate.share - share):.4f}")
                        columns["fdr"].append(f"{np.mean(1 - posterior[called]):.3f}" if called.any() else "no call")
                        columns["calls"].append(f"{called.sum() / max(oracle, 1):.2f}")
                    print(f"| {name} | {labelled:,} | {method} | {'frames' if bands else 'one'} | "
                          f"{calibration.validation['log_loss']:.4f} | "
                          + " | ".join(" | ".join(v) for v in columns.values()) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="typical,weak")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.1, 0.5, 0.9])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 100_000])
    parser.add_argument("--labelled", type=int, default=20_000, help="labelled reads the calibration is fitted on")
    parser.add_argument("--draws", type=int, default=200, help="inputs per (share, size) below 100,000 reads")
    parser.add_argument("--draws-large", type=int, default=50, help="inputs per share at 100,000 reads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare-methods", action="store_true")
    parser.add_argument("--compare-labelled", type=int, nargs="+", default=[2_000, 20_000, 200_000])
    args = parser.parse_args()
    compare_methods(args) if args.compare_methods else table(args)


if __name__ == "__main__":
    main()
