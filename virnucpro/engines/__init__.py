"""Engines: DNABERT-S, ESM-2 and the classifier. They know nothing of SLURM or the workdir."""

import numpy as np


def output_rows(out: np.ndarray | None, rows: int, dim: int) -> np.ndarray:
    """Where an engine's embed() writes its float32 [rows, dim] result: the caller's buffer when
    given (embed_shard reuses two, so a window's rows never page-fault fresh memory), else new."""
    if out is None:
        return np.empty((rows, dim), dtype=np.float32)
    if out.shape != (rows, dim) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"output buffer {out.shape} {out.dtype} is not a contiguous float32 [{rows}, {dim}]")
    return out


def warm_up_cpu_math() -> None:
    """One small cos on the calling thread before any threaded torch math (needed once per process,
    cheap to repeat: every stage calls it through resolve_device).

    torch's CPU cos/sin/exp/... call MKL VML on chunks split across OpenMP threads. When the first
    such call of a process is a threaded one, the worker thread's chunk sometimes comes out wrong:
    measured under pytest on this 2-core VM, 9 of 40 fresh processes got half of a 16,384-value cos
    table up to 1.5e-4 off (an exp first: 7 of 30 wrong); every later call was right, and after
    this serial warm-up 30 of 30 were. Only that first call is affected, so engines that use such
    ops (fair-esm's own rotary tables and erf GELU, the remote DNABERT-S code) are safe after it."""
    import torch

    torch.zeros(16).cos()
