#!/usr/bin/env python
"""The first, ~1-minute part of a GPU session: the figures that matter most, written before anything slower.

    python bench/gpu_quick.py --model 3B --device cuda --json figures.jsonl
    python bench/gpu_quick.py --model tiny --device cpu              # what CI runs

Figures (one JSON line each, bench/figures.py):
  varlen_signature     torch's varlen_attn parameters (None: absent) and the engine's attention back-end
  gemm_bound_tokens_per_s   tokens/s if a layer cost only its four dense GEMMs (q/k/v, out, fc1, fc2)
                       at --gemm-tokens tokens, per dtype: fp16, bf16 and fp8 (torch._scaled_mm, per-
                       tensor scales, bf16 out) on CUDA; fp32 and bf16 on a CPU (fp8: skipped)
  engine_tokens_per_s  the packed engine (default precision, eager) on --n 166-aa proteins, after a warm-up
  bitwise_repeat       the same call twice gives the same bytes (deterministic pooling, issue 23)
  peak_memory_bytes    torch.cuda.max_memory_allocated during that call (CUDA only)
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from esm2_throughput import load_model, make_workload, sync  # noqa: E402
from figures import emit  # noqa: E402

from virnucpro.engines.esm2_packed import PackedESM2Engine  # noqa: E402

STEP = "quick"


def varlen_signature() -> str | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:  # noqa: BLE001 - absent before torch 2.10
        return None
    return str(inspect.signature(varlen_attn))


def best_seconds(fn, device, repeats: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_layer(tokens: int, dim: int, dtype: torch.dtype, device: torch.device):
    """A function running one layer's four dense GEMMs at `tokens` tokens in `dtype`."""
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = ((3 * dim, dim), (dim, dim), (4 * dim, dim), (dim, 4 * dim))  # (out, in) as nn.Linear keeps them
    if dtype == torch.float8_e4m3fn:
        one = torch.tensor(1.0, device=device)
        inputs = {k: (torch.randn(tokens, k, device=device, generator=gen) * 0.1).to(dtype) for k in (dim, 4 * dim)}
        weights = [(torch.randn(n, k, device=device, generator=gen) * 0.02).to(dtype) for n, k in shapes]
        # _scaled_mm wants the second operand column-major: a row-major [n, k] weight, transposed
        return lambda: [torch._scaled_mm(inputs[w.shape[1]], w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
                        for w in weights]
    inputs = {k: torch.randn(tokens, k, device=device, dtype=dtype, generator=gen) for k in (dim, 4 * dim)}
    weights = [torch.randn(n, k, device=device, dtype=dtype, generator=gen) * 0.02 for n, k in shapes]
    return lambda: [F.linear(inputs[w.shape[1]], w) for w in weights]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="3B | tiny (random weights, the real architecture)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="proteins for the engine figures (default 512 CUDA, 4 CPU)")
    ap.add_argument("--gemm-tokens", type=int, default=None, help="tokens of the GEMM bound (default 65536 CUDA, 512 CPU)")
    ap.add_argument("--json", default=None, help="append the figures here (JSON lines)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    n = args.n or (512 if cuda else 4)
    gemm_tokens = args.gemm_tokens or (65536 if cuda else 512)
    where = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
             "model": args.model}

    emit(args.json, STEP, "varlen_signature", varlen_signature(), None, **where)

    model, alphabet, _ = load_model(args.model, device if cuda else torch.device("cpu"))
    layers, dim = int(model.num_layers), int(model.embed_dim)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn} if cuda else \
        {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": None}
    for name, dtype in dtypes.items():
        if dtype is None:
            emit(args.json, STEP, "gemm_bound_tokens_per_s", None, "tokens/s", dtype=name, skipped="fp8 GEMMs need CUDA",
                 **where)
            continue
        try:
            seconds = best_seconds(gemm_layer(gemm_tokens, dim, dtype, device), device, 5 if cuda else 2)
            emit(args.json, STEP, "gemm_bound_tokens_per_s", round(gemm_tokens / (seconds * layers), 1), "tokens/s",
                 dtype=name, tokens=gemm_tokens, layers=layers, dim=dim,
                 tflops=round(24 * dim * dim * gemm_tokens / seconds / 1e12, 2), **where)
        except Exception as exc:  # noqa: BLE001 - e.g. no fp8 on this GPU: the figure says why
            emit(args.json, STEP, "gemm_bound_tokens_per_s", None, "tokens/s", dtype=name,
                 skipped=f"{type(exc).__name__}: {exc}"[:300], **where)
        if cuda:
            torch.cuda.empty_cache()

    engine = PackedESM2Engine(model, alphabet, device)
    del model
    emit(args.json, STEP, "engine_backend", engine.backend, None, precision=engine.precision,
         token_budget=engine.token_budget, **where)
    proteins = make_workload("frames500", n, seed=1)
    tokens = sum(len(p) + 2 for p in proteins)
    engine.warm_up()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    first = engine.embed(proteins)
    sync(device)
    seconds = time.perf_counter() - start
    emit(args.json, STEP, "engine_tokens_per_s", round(tokens / seconds, 1), "tokens/s", proteins=n, tokens=tokens,
         precision=engine.precision, backend=engine.backend, compiled=False, **where)
    emit(args.json, STEP, "peak_memory_bytes", torch.cuda.max_memory_allocated(device) if cuda else None, "bytes",
         **({} if cuda else {"skipped": "CPU"}), **where)
    again = engine.embed(proteins)
    emit(args.json, STEP, "bitwise_repeat", bool(first.tobytes() == again.tobytes()), None,
         max_abs_difference=float(np.abs(first - again).max()), **where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
