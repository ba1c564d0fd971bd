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
