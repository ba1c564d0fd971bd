#!/usr/bin/env python3
"""DNABERT-S throughput: the native engine against the remote-code model, on the same sequences.

Three ways, one run, the same sequences (random 500-bp and 300-bp frame slices: 499 and 299 nt,
the nucleotide slices VirNucPro pairs with 166- and 99-aa frames):
  - original: the model's own code (transformers AutoModel, trust_remote_code), one sequence per
    call, no mask, mean over all tokens (the original VirNucPro way);
  - remote:   the same model batched with padding and attention masks (virnucpro's fallback);
  - native:   virnucpro's own engine (packed, no model code run), fp32 unless --precision.
Prints real tokens/s ([CLS] and [SEP] included), ratios against the remote path, and the largest
relative difference from the original.

  python bench/dnabert_throughput.py                                   # tiny demo model, CPU
  python bench/dnabert_throughput.py --model real-arch --device cuda --precision fp16 --n 20000
`real-arch` builds the real 768-wide, 12-layer, 12-head architecture with random weights (the
numbers, not the calls, are meaningless). The model folder is written to a temp dir.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from virnucpro.engines.demo import write_dnabert_demo  # noqa: E402
from virnucpro.engines.dnabert import DnabertEmbedder  # noqa: E402
from virnucpro.engines.dnabert_native import NativeDnabert  # noqa: E402
from figures import emit  # noqa: E402  (bench/figures.py)

ARCHITECTURES = {"tiny": dict(hidden=64, layers=2, heads=4, intermediate=128),
                 "real-arch": dict(hidden=768, layers=12, heads=12, intermediate=3072)}


def slices(n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(length)) for _ in range(n)]


def timed(fn, seqs, device: str) -> tuple[np.ndarray, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(seqs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="native engine only")
    parser.add_argument("--n", type=int, default=300, help="sequences per workload")
    parser.add_argument("--original-n", type=int, default=None, help="sequences for the one-at-a-time way (default n)")
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--json", default=None, help="append one JSON line per workload and way here (bench/figures.py)")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="dnabert-bench-")) / "dnabert"
    write_dnabert_demo(folder, **ARCHITECTURES[args.model])
    native = NativeDnabert(str(folder), device=args.device, precision=args.precision, token_budget=args.token_budget)
    remote = DnabertEmbedder(str(folder), device=args.device, token_budget=args.token_budget)
    print(f"model {args.model} ({ARCHITECTURES[args.model]}), device {args.device}, native {args.precision}, "
          f"remote fp32, {args.n} sequences per workload, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| workload | way | tokens/s | vs remote | max rel. error vs original |")
    print("|---|---|---:|---:|---:|")
    for label, length in (("500-bp frames (499 nt)", 499), ("300-bp frames (299 nt)", 299)):
        seqs = slices(args.n, length, seed=length)
        few = seqs[: args.original_n or args.n]
        tokens, few_tokens = int(native.count_tokens(seqs).sum()), int(native.count_tokens(few).sum())
        native.embed(seqs[:8]), remote.embed(seqs[:8])  # warm-up (allocations, kernels)
        original, t_orig = timed(remote.embed_one_at_a_time, few, args.device)
        batched, t_remote = timed(remote.embed, seqs, args.device)
        packed, t_native = timed(native.embed, seqs, args.device)
        scale = np.abs(original).max()
        rates = {"original (one per call)": few_tokens / t_orig, "remote (batched, masks)": tokens / t_remote,
                 f"native ({args.precision})": tokens / t_native}
        errors = {"original (one per call)": 0.0,
                  "remote (batched, masks)": float(np.abs(batched[: len(few)] - original).max() / scale),
                  f"native ({args.precision})": float(np.abs(packed[: len(few)] - original).max() / scale)}
        for way, rate in rates.items():
            print(f"| {label} | {way} | {rate:,.0f} | {rate / rates['remote (batched, masks)']:.2f}x | {errors[way]:.1e} |")
            emit(args.json, f"dnabert_{args.precision}", "tokens_per_s", round(rate, 1), "tokens/s", way=way,
                 workload=label, model=args.model, device=args.device, native_precision=args.precision,
                 max_rel_err_vs_original=errors[way], echo=False)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
