"""What the two embedding stages (DNABERT-S, ESM-2) share: checkpointed, resumable windows.

A shard is embedded in blocks of about `block_tokens` tokens, one engine call each. Block
boundaries are a pure function of the shard and the block size, so a task resumed after SIGTERM
or kill -9 computes exactly the same batches as an uninterrupted one and its embeddings are
bitwise identical: on the CPU and on CUDA, since the engines' pooling is a fixed-order segment sum
(engines.pooled_rows.segment_means, no float atomics) and every other kernel they run (GEMMs,
attention forward, gathers, index_copy_ to distinct rows) gives the same bits for the same
inputs and shapes on the same GPU model.

A checkpoint window is one or more consecutive blocks: it is closed (rows made durable, an atomic
checkpoint) before the next block would take it past `window_seconds` of measured engine time
(predicted from the block just computed) or past `window_tokens`, and at once when a stop is
requested, so SIGTERM costs at most one block of work, whatever the engine, precision or packing.
Windows decide only when rows are recorded, never what they are.

The rows are written once, into the final file's layout (storage.ShardCheckpoint), by a
background thread while the engine computes the next window; the main thread only hands windows
to the engine and their results to the writer. What stays serial, and why: a window's rows are
written after its forward returns (they exist only then) and the next window is started before
that write ends; the main thread waits for window k's write only once window k+1 is computed,
so writes never delay the GPU unless they are slower than the GPU itself.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np

from .. import console
from ..engines import warm_up_cpu_math
from ..errors import ShardError, VirnucproError
from ..orchestration.runner import ShardInterrupted, StageContext
from ..direct_io import CongruentBuffers
from ..storage import ShardCheckpoint, read_shard_frames


# Engine replacements by stage kind ("dnabert", "esm2"): kind -> factory(ctx) returning an object with
# `.dim` and `.embed(list[str], out=None) -> float32 [n, dim]` (into `out` when given). Each embedding stage asks `engine_override`
# before it loads its model. Only bench/host_overhead.py fills it (null engines, to time everything
# but the model math); it is empty in every run a user starts.
ENGINE_OVERRIDES: dict[str, Callable] = {}


def engine_override(kind: str, ctx: StageContext):
    factory = ENGINE_OVERRIDES.get(kind)
    return factory(ctx) if factory is not None else None


def windows(costs: Sequence[int], start: int, window_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) ranges from `start`, each closed once it holds >= window_tokens."""
    costs = np.asarray(costs, dtype=np.int64)
    ends = np.cumsum(costs)
    out, a = [], start
    while a < len(costs):
        before = ends[a - 1] if a else 0
        # first i >= a whose running sum from a reaches window_tokens; the window is [a, i + 1)
        i = max(a, int(np.searchsorted(ends, before + window_tokens, side="left")))
        b = min(i + 1, len(costs))
        out.append((a, b))
        a = b
    return out


WINDOW_SECONDS = 10.0  # of measured engine work per checkpoint window: well inside a 30 s KillWait


def checkpointing(checkpoint_tokens: int | None, window_tokens: int, block_tokens: int) -> dict:
    """embed_shard's window arguments: an explicit --checkpoint-tokens is one block per window of
    that many tokens; otherwise blocks of `block_tokens` in windows of at most `window_tokens`
    tokens and WINDOW_SECONDS of measured work."""
    if checkpoint_tokens:
        return {"window_tokens": checkpoint_tokens}
    return {"window_tokens": window_tokens, "block_tokens": min(block_tokens, window_tokens),
            "window_seconds": WINDOW_SECONDS}


def default_costs(sequences: Sequence[str]) -> np.ndarray:
    """Tokens a sequence costs when nothing better is known: its letters plus the two special tokens."""
    return np.fromiter(map(len, sequences), np.int64, len(sequences)) + 2


def embed_shard(ctx: StageContext, kind: str, shard: int, sequences_of: Callable, embed: Callable[..., np.ndarray],
                dim: int, window_tokens: int, attrs: dict | None = None,
                cost_of: Optional[Callable[[list[str]], Sequence[int]]] = None,
                block_tokens: int | None = None, window_seconds: float | None = None) -> dict:
    """Embed one shard block by block, checkpointed window by window (module docstring).
    `cost_of(sequences)` gives each sequence's token count (the engine's own tokenizer, when it has
    one); it sizes the blocks and is the "tokens" metric. Default: letters + 2 (exact for ESM-2:
    BOS + residues + EOS). block_tokens defaults to window_tokens and window_seconds to None: then
    each block is its own window (an explicit --checkpoint-tokens)."""
    workdir = ctx.workdir
    frames = read_shard_frames(workdir.shard_frames(shard))
    sequences = sequences_of(frames)
    costs = np.asarray(cost_of(sequences) if cost_of is not None else default_costs(sequences), dtype=np.int64)
    if costs.shape != (len(sequences),):
        raise RuntimeError(f"{kind}: cost_of gave {costs.shape} costs for {len(sequences)} sequences")
    dtype = getattr(ctx.config, "embedding_dtype", "float32") or "float32"
    checkpoint = ShardCheckpoint(workdir.embedding_parts(kind, shard), workdir.embeddings(kind, shard), frames.frame_ids,
                                 dim, dtype=dtype, attrs=attrs)
    start = checkpoint.resume()
    append = checkpoint.append if checkpoint.dtype == np.float32 else narrowing_append(checkpoint)
    if start:
        console.info(f"{kind} shard {shard}: resuming at frame {start} of {len(sequences)}")
    blocks = windows(costs, start, block_tokens or window_tokens)
    ends = np.cumsum(costs)
    started = time.perf_counter()
    computed_tokens = 0
    # Windows are written by one background thread while the next window computes; waiting for
    # the previous write before queueing the next keeps them in order.
    with contextlib.closing(checkpoint), console.progress(f"{kind} shard {shard}", len(sequences)) as advance, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind}-checkpoint") as writer:
        advance(start)
        pending = None
        # Two window buffers, reused: window k is computed into one while window k-1 is written
        # from the other (a fresh array per window page-faults ~10 KB a frame of new memory).
        # float32 rows are computed straight into the checkpoint's buffers, laid out as in the file.
        float32 = checkpoint.dtype == np.float32
        buffers = CongruentBuffers()
        first, number = 0, 0
        while first < len(blocks):
            if ctx.stop_requested():
                if pending is not None:
                    pending.result()
                raise ShardInterrupted({"resume_row": checkpoint.rows_done})
            a = blocks[first][0]
            # the most blocks this window may hold: window_tokens of them (at least one block)
            limit = first + 1
            while limit < len(blocks) and ends[blocks[limit][1] - 1] - (ends[a - 1] if a else 0) <= window_tokens:
                limit += 1
            capacity = blocks[limit - 1][1] - a
            out = checkpoint.window(number % 2, a, capacity) if float32 else \
                buffers.array(number % 2, capacity, dim, np.float32, 0)
            seconds, block = 0.0, first
            while block < limit:
                b0, b1 = blocks[block]
                view = out[b0 - a:b1 - a]
                clock = time.perf_counter()
                matrix = embed(sequences[b0:b1], out=view)
                took = time.perf_counter() - clock
                if matrix.shape != (b1 - b0, dim):
                    raise RuntimeError(f"{kind} engine returned {matrix.shape} for {b1 - b0} sequences")
                if matrix is not view:
                    view[...] = matrix
                require_finite(view, (attrs or {}).get("model", kind), f"{kind} shard {shard}", b0)
                seconds += took
                computed_tokens += int(costs[b0:b1].sum())
                advance(b1 - b0)
                block += 1
                if window_seconds is None or seconds + took > window_seconds or ctx.stop_requested():
                    break
            b = blocks[block - 1][1]
            if pending is not None:
                pending.result()
            pending = writer.submit(append, a, out[:b - a])
            first, number = block, number + 1
        if pending is not None:
            pending.result()
    checkpoint.finish()
    seconds = time.perf_counter() - started
    return {"frames": len(sequences), "tokens": int(costs.sum()), "computed_tokens": computed_tokens,
            "resumed_from": start, "compute_seconds": round(seconds, 3),
            "tokens_per_second": round(computed_tokens / seconds, 1) if seconds > 0 and computed_tokens else None}


def require_finite(values: np.ndarray, model, where: str, first_row: int = 0) -> None:
    """A NaN or infinite embedding or score fails the shard, naming the model that produced it
    (a NaN in a model file or its configuration would otherwise call every read 'others')."""
    if np.isfinite(values).all():  # one reduction per window
        return
    row = first_row + int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
    raise ShardError(f"{model}: {where}: frame {row} came out NaN or infinite; the model file holds NaN/inf weights "
                     "or settings, or is not a trained model: replace it (e.g. 'virnucpro-slurm models download')")


def narrowing_append(checkpoint: ShardCheckpoint) -> Callable[[int, np.ndarray], None]:
    """checkpoint.append for a narrower stored dtype (float16), the cast done by torch into one
    reused buffer, in the writer thread: bit-identical to numpy's (round to nearest even) and
    about 7x as fast here (10.5 against 1.4 GB/s), which keeps the writer ahead of the GPU."""
    import torch

    def append(start: int, matrix: np.ndarray) -> None:
        rows = checkpoint.window("narrow", start, len(matrix))
        torch.from_numpy(rows).copy_(torch.from_numpy(np.ascontiguousarray(matrix, np.float32)))
        checkpoint.append(start, rows)

    return append


def cuda_device_count() -> int:
    """GPUs this process sees (0 without CUDA): orchestration.task hands them out to the workers of a
    multi-GPU task where the site sets no CUDA_VISIBLE_DEVICES."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(requested: str) -> str:
    """The device a stage runs on. Called before a stage loads its engine, so it also warms up the
    CPU math library (engines.warm_up_cpu_math) before any threaded torch op runs."""
    import torch

    warm_up_cpu_math()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise VirnucproError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    return requested
