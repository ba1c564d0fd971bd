"""What the two embedding stages (DNABERT-S, ESM-2) share: checkpointed, resumable windows.

A shard is embedded in windows of about `window_tokens` tokens. Window boundaries are a pure
function of the shard and the window size, so a task resumed after SIGTERM or kill -9 computes
exactly the same batches as an uninterrupted one and its embeddings are bitwise identical. Each
finished window is an atomic checkpoint; a stop request is honoured at the next window boundary.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from .. import console
from ..orchestration.runner import ShardInterrupted, StageContext
from ..storage import ShardCheckpoint, read_shard_frames


def windows(costs: Sequence[int], start: int, window_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) ranges from `start`, each closed once it holds >= window_tokens."""
    out, a, acc = [], start, 0
    for i in range(start, len(costs)):
        acc += costs[i]
        if acc >= window_tokens:
            out.append((a, i + 1))
            a, acc = i + 1, 0
    if a < len(costs):
        out.append((a, len(costs)))
    return out


def embed_shard(ctx: StageContext, kind: str, shard: int, sequences_of: Callable, embed: Callable[[list[str]], np.ndarray],
                dim: int, window_tokens: int, attrs: dict | None = None) -> dict:
    workdir = ctx.workdir
    frames = read_shard_frames(workdir.shard_frames(shard))
    sequences = sequences_of(frames)
    costs = [len(s) + 2 for s in sequences]
    checkpoint = ShardCheckpoint(workdir.embedding_parts(kind, shard), workdir.embeddings(kind, shard), frames.frame_ids, dim)
    start = checkpoint.resume()
    if start:
        console.info(f"{kind} shard {shard}: resuming at frame {start} of {len(sequences)}")
    started = time.perf_counter()
    computed_tokens = 0
    # Checkpoint pieces are written by one background thread while the next window computes;
    # waiting for the previous write before queueing the next keeps pieces in order.
    with console.progress(f"{kind} shard {shard}", len(sequences)) as advance, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind}-checkpoint") as writer:
        advance(start)
        pending = None
        for a, b in windows(costs, start, window_tokens):
            if ctx.stop_requested():
                if pending is not None:
                    pending.result()
                raise ShardInterrupted({"resume_row": checkpoint.rows_done})
            matrix = embed(sequences[a:b])
            if matrix.shape != (b - a, dim):
                raise RuntimeError(f"{kind} engine returned {matrix.shape} for {b - a} sequences")
            if pending is not None:
                pending.result()
            pending = writer.submit(checkpoint.append, a, matrix)
            computed_tokens += sum(costs[a:b])
            advance(b - a)
        if pending is not None:
            pending.result()
    checkpoint.finish(attrs)
    seconds = time.perf_counter() - started
    return {"frames": len(sequences), "tokens": sum(costs), "computed_tokens": computed_tokens,
            "resumed_from": start, "compute_seconds": round(seconds, 3),
            "tokens_per_second": round(computed_tokens / seconds, 1) if seconds > 0 and computed_tokens else None}


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import VirnucproError
        raise VirnucproError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    return requested
