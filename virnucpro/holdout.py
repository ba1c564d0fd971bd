"""The held-out split of a training: which side each frame lies on, decided by sequence content.

A frame's unit of the split is its read (a genome record), or, with a window of W bases
(`--holdout-window W`), the W-base window of its record that its chunk starts in: with a few
complete genomes the whole-record split leaves a side without a class, windows give it many units.
A unit's key is the xxh64 of its sequence (upper case), so identical sequences (the same record in
two input files, or under two labels) have one key and lie on one side, whatever the input, its
order or the shard count. A unit is held out when mix(key, seed) falls below the held-out fraction
of 2**64. prepare writes each frame's key beside its shard (Workdir.split_keys) and refuses, before
any GPU work, a split whose side lacks a class; the train stage draws the sides from the keys with
the run's seed and fraction, so changing those retrains without preparing again. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import xxhash

from .atomic import atomic_open
from .errors import StaleInputError
from .sequences import chunk_starts

KEY_DTYPE = np.dtype("<u8")


def sequence_key(sequence: str) -> int:
    return xxhash.xxh64_intdigest(sequence.upper().encode("ascii", "replace"))


def chunk_keys(sequence: str, chunk_length: int, window: int = 0) -> list[int]:
    """The key of each chunk of a read (chunk k at index k - 1): the read's own key, or with a
    window, that of the window its chunk starts in. One key for the whole read when it has no
    windows (window 0, or a read no longer than one window)."""
    if not window or len(sequence) <= window:
        return [sequence_key(sequence)]
    windows: dict[int, int] = {}
    keys = []
    for start in chunk_starts(len(sequence), chunk_length):
        number = start // window
        if number not in windows:
            windows[number] = sequence_key(sequence[number * window:(number + 1) * window])
        keys.append(windows[number])
    return keys


class FrameKeys:
    """The keys of the frames of one block of reads (prepare): call it with a batch's read and
    chunk ids. A read's frames are consecutive, so its chunks' keys are computed once."""

    def __init__(self, reads: Iterable[tuple[str, str]], chunk_length: int, window: int = 0):
        self.sequences = dict(reads)
        self.chunk_length, self.window = chunk_length, window
        self.read_id, self.keys = None, [0]

    def __call__(self, read_ids: list[str], chunk_ids: list[str]) -> np.ndarray:
        out = np.empty(len(read_ids), KEY_DTYPE)
        for row, (read_id, chunk_id) in enumerate(zip(read_ids, chunk_ids)):
            if read_id != self.read_id:
                self.read_id = read_id
                self.keys = chunk_keys(self.sequences[read_id], self.chunk_length, self.window)
            keys = self.keys
            # chunk ids are f"{read_id}_chunk_{k}"
            out[row] = keys[0] if len(keys) == 1 else keys[int(chunk_id[len(read_id) + 7:]) - 1]
        return out


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every bit of a key moves every bit of the result (uint64 wraps)."""
    z = values.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def held_out(keys: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Per key, whether its unit is held out: mix(key xor mix(seed)) < fraction of 2**64, a pure
    function of the key, the seed and the fraction."""
    salt = _mix(np.array([seed], np.uint64))[0]
    with np.errstate(over="ignore"):
        return _mix(np.asarray(keys, np.uint64) ^ salt) < np.uint64(int(fraction * 2.0 ** 64))


def write_keys(path: Path, keys: np.ndarray) -> None:
    with atomic_open(path, "wb") as out:
        np.save(out, np.asarray(keys, KEY_DTYPE), allow_pickle=False)


def read_keys(path: Path, rows: int, shard: int) -> np.ndarray:
    """A shard's keys, one per frame of its table; a missing, damaged or other-length file is
    prepare's to write again (StaleInputError)."""
    try:
        keys = np.load(path, allow_pickle=False)
        if keys.dtype == KEY_DTYPE and keys.shape == (rows,):
            return keys
        problem = f"{keys.shape[0] if keys.ndim == 1 else keys.shape} {keys.dtype} keys for {rows} frames"
    except (OSError, ValueError, EOFError) as exc:
        problem = f"missing or unreadable: {exc}"
    raise StaleInputError(f"{path}: split keys of shard {shard} {problem}; the prepare stage will run again",
                          "prepare", 0)
