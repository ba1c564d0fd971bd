"""Synthetic training shards written with the project's writers (frame table as prepare writes it,
embedding matrices by storage.write_shard_matrix, split keys by holdout.write_keys): tests of training and bench/train_throughput.py.

Input i is labelled i % 2 (1 = virus). Each row's features are a row of a fixed random pool plus
`separation` times the class sign along one direction, so the classes differ learnably."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from virnucpro.holdout import sequence_key, write_keys
from virnucpro.storage import FRAME_COLUMNS, write_shard_matrix
from virnucpro.training import ShardSource

POOL_ROWS = 4096


def shard_paths(folder: Path, shard: int) -> ShardSource:
    return ShardSource(folder / f"frames-{shard}.tsv", folder / f"dnabert-{shard}.h5", folder / f"esm2-{shard}.h5",
                       folder / f"split-keys-{shard}.npy", shard)


def write_training_shards(folder: Path, shards: int = 2, reads: int = 300, frames_per_read: int = 3,
                          inputs: int = 4, widths: tuple[int, int] = (8, 12), dtype: str = "float32",
                          separation: float = 2.5, seed: int = 0, input_of_read=None) -> tuple[list, list]:
    """(sources, labels_by_input): reads spread in order over the inputs, then over the shards
    (as prepare cuts them); `input_of_read(r)` overrides which input read r belongs to."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = sum(widths)
    pool = rng.standard_normal((POOL_ROWS, width)).astype(np.float32)
    direction = rng.standard_normal(width).astype(np.float32)
    direction /= np.linalg.norm(direction)
    input_of_read = input_of_read or (lambda read: read * inputs // reads)
    sources, row = [], 0
    for shard in range(shards):
        first, last = shard * reads // shards, (shard + 1) * reads // shards
        read_inputs = np.repeat([input_of_read(r) for r in range(first, last)], frames_per_read)
        lines, ids = [], []
        for r in range(first, last):
            for frame in range(frames_per_read):
                frame_id = f"read{r}_1F{frame + 1}"
                ids.append(frame_id)
                lines.append(f"{input_of_read(r)}\tread{r}\tread{r}_1\t{frame_id}\tACGTAC\tMK\n")
        source = shard_paths(folder, shard)
        source.frames.write_text("\t".join(FRAME_COLUMNS) + "\n" + "".join(lines))
        rows = len(ids)
        sign = np.where(read_inputs % 2 == 1, 1.0, -1.0).astype(np.float32)
        features = pool[(np.arange(rows) + row) % POOL_ROWS] + separation * sign[:, None] * direction
        write_shard_matrix(source.dnabert, ids, features[:, :widths[0]], dtype=dtype)
        write_shard_matrix(source.esm2, ids, features[:, widths[0]:], dtype=dtype)
        # read r's sequence stands for itself: its key is that of a sequence unique to it
        write_keys(source.split_keys, np.repeat([sequence_key(f"read{r}") for r in range(first, last)], frames_per_read)
                   .astype(np.uint64))
        sources.append(source)
        row += rows
    return sources, [i % 2 for i in range(inputs)]
