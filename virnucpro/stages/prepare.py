"""Stage 1, prepare (CPU): read every input, chunk, translate six frames, write balanced shards.

Shards are contiguous runs of frames in input order, cut where the cumulative ESM-2 token count
(protein length + BOS + EOS) crosses k/N of the total, so every shard costs the GPU about the same
and the split is a pure function of the inputs and N. Frames are spooled to disk first, so memory
stays bounded however many reads come in.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import console
from ..atomic import atomic_open, atomic_write_text
from ..orchestration.runner import StageContext
from ..sequences import chunk_starts, frames_of_read, read_fasta
from ..storage import FRAME_COLUMNS, frame_line, iter_frame_lines

READS_COLUMNS = ("read_id", "length", "chunks", "frames")


def open_stage(ctx: StageContext):
    return lambda shard: prepare(ctx)


def esm_tokens(protein: str) -> int:
    return len(protein) + 2


def prepare(ctx: StageContext) -> dict:
    workdir, config = ctx.workdir, ctx.config
    inputs = [Path(p) for p in config.inputs]
    summary = {"inputs": [], "shards": []}
    total_tokens = 0
    with atomic_open(workdir.frames_spool) as spool, console.progress("prepare", len(inputs)) as advance:
        spool.write("\t".join(FRAME_COLUMNS) + "\n")
        for index, path in enumerate(inputs):
            counts = {"name": config.input_names[index], "path": str(path), "reads": 0, "bases": 0,
                      "chunks": 0, "frames": 0, "reads_without_frames": 0, "reads_shorter_than_codon": 0}
            with atomic_open(workdir.reads_table(index)) as reads_out:
                reads_out.write("\t".join(READS_COLUMNS) + "\n")
                for read in read_fasta(path):
                    frames = frames_of_read(read, config.chunk_length, index)
                    chunk_count = len(chunk_starts(len(read.sequence), config.chunk_length))
                    for frame in frames:
                        spool.write(frame_line(frame))
                        total_tokens += esm_tokens(frame.protein)
                    counts["reads"] += 1
                    counts["bases"] += len(read.sequence)
                    counts["chunks"] += chunk_count
                    counts["frames"] += len(frames)
                    counts["reads_without_frames"] += not frames
                    counts["reads_shorter_than_codon"] += len(read.sequence) < 3
                    reads_out.write(f"{read.id}\t{len(read.sequence)}\t{chunk_count}\t{len(frames)}\n")
            if counts["reads_shorter_than_codon"]:
                console.warn(f"{path}: skipped {counts['reads_shorter_than_codon']} read(s) shorter than one codon")
            if counts["frames"] == 0:
                console.warn(f"{path}: no read yields a stop-free frame; its results will be header-only")
            summary["inputs"].append(counts)
            advance(1)
    summary["shards"] = split_spool(workdir, config.shards, total_tokens)
    summary["total_tokens"] = total_tokens
    summary["total_frames"] = sum(s["frames"] for s in summary["shards"])
    atomic_write_text(workdir.prepare_summary, json.dumps(summary, indent=1) + "\n")
    workdir.frames_spool.unlink()
    return {"frames": summary["total_frames"], "tokens": total_tokens,
            "reads": sum(i["reads"] for i in summary["inputs"])}


def shard_of(tokens_before: int, total_tokens: int, shards: int) -> int:
    if total_tokens == 0:
        return 0
    return min(shards - 1, tokens_before * shards // total_tokens)


def split_spool(workdir, shards: int, total_tokens: int) -> list[dict]:
    """Cut the spooled frames into `shards` contiguous, token-balanced frame tables."""
    stats = [{"frames": 0, "tokens": 0} for _ in range(shards)]
    frames = iter_frame_lines(workdir.frames_spool)
    pending = next(frames, None)
    tokens_before = 0
    for shard in range(shards):
        with atomic_open(workdir.shard_frames(shard)) as out:
            out.write("\t".join(FRAME_COLUMNS) + "\n")
            while pending is not None and shard_of(tokens_before, total_tokens, shards) == shard:
                out.write(frame_line(pending))
                cost = esm_tokens(pending.protein)
                stats[shard]["frames"] += 1
                stats[shard]["tokens"] += cost
                tokens_before += cost
                pending = next(frames, None)
    assert pending is None, "frames left after the last shard"
    return stats
