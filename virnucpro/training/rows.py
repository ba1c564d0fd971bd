"""Training rows streamed from a workdir's shard files, never all in memory.

A row is one frame: its DNABERT-S and ESM-2 embeddings side by side (float16 or float32 on disk,
float32 here), its label (that of the frame's input) and its side of the split. Only two bytes per
row stay in memory (label, side); features are read when a batch needs them, in blocks of
BLOCK_ROWS consecutive rows of one shard, straight from the matrices' bytes (the files this
package writes are contiguous HDF5 datasets, checked once against the shard's frame table).

The split is by sequence content (virnucpro.holdout): prepare wrote each frame's key, the hash of
its read's (genome record's) sequence or of its window's, and a frame is held out when the key
mixed with the seed falls below the held-out fraction. So every frame of a read (or window) lies
on one side, identical sequences lie on one side whatever input holds them, and the split does
not depend on the shard count or order. The original split frames at random, which put frames of
one chunk on both sides.

The training order of an epoch is a pure function of (seed, epoch): the order of all blocks is
shuffled, consecutive groups of WINDOW_BLOCKS blocks form a window, and a window's training rows
are shuffled among themselves. Memory is bounded by a few windows whatever the row count, and a
resumed epoch skips to any batch without reading the windows before it (their row counts are
known).
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import hashlib

import h5py
import numpy as np
import torch

from ..classifier_meta import CLASS_NAMES
from ..direct_io import READS_IN_FLIGHT, DirectReader, staging_buffers
from ..errors import InputError, StaleInputError
from ..holdout import held_out, read_keys
from ..storage import first_non_finite_frame, first_non_finite_row, open_matrix, read_shard_frames

BLOCK_ROWS = 256  # rows read at once from one shard (3.4 MB at 3328 float32 values)
WINDOW_BLOCKS = 8  # blocks whose rows are shuffled together (2048 rows, 27 MB at 3328 float32)
HOLDOUT_GAP_ROWS = 8  # held-out runs closer than this are read as one (small reads beat reading the rest)
OPEN_FILES = 64  # file descriptors kept open between reads
EMBEDDINGS = ("dnabert", "esm2")


@dataclass(frozen=True)
class ShardSource:
    """One shard of a workdir: its frame table, its two embedding matrices and its split keys."""

    frames: Path  # Workdir.shard_frames(k)
    dnabert: Path  # Workdir.embeddings("dnabert", k)
    esm2: Path  # Workdir.embeddings("esm2", k)
    split_keys: Path  # Workdir.split_keys(k)
    shard: int = 0  # names the producer of a damaged file: ("dnabert", shard) ... (StaleInputError)


@dataclass
class _Matrix:
    """Where one shard's rows of one embedding lie."""

    path: Path
    offset: int | None  # of the contiguous data in the file; None: read through HDF5
    dtype: np.dtype
    width: int
    identity: tuple  # (size, mtime_ns): a recomputed file is other training data


@dataclass
class ShardRows:
    source: ShardSource
    labels: np.ndarray  # int8 per row
    held_out: np.ndarray  # bool per row
    matrices: dict  # kind -> _Matrix
    ids_sha256: str
    keys_sha256: str  # of the split keys: other keys are another split

    @property
    def rows(self) -> int:
        return len(self.labels)


def _open_shard(source: ShardSource, labels_by_input: np.ndarray, seed: int, fraction: float) -> ShardRows:
    table = read_shard_frames(source.frames)
    ids = table.frame_ids
    inputs = table.input_index
    if len(inputs) and int(inputs.max()) >= len(labels_by_input):
        raise StaleInputError(f"{source.frames}: frames of input {int(inputs.max())} but the run has "
                              f"{len(labels_by_input)} inputs; the prepare stage will run again", "prepare", 0)
    matrices = {}
    for kind in EMBEDDINGS:
        path = getattr(source, kind)
        with open_matrix(path, ids, producer=(kind, source.shard)) as (_, matrix):
            contiguous = matrix.chunks is None and matrix.compression is None
            offset = matrix.id.get_offset() if contiguous else None
            stat = os.stat(path)
            matrices[kind] = _Matrix(path, None if offset is None else int(offset), np.dtype(matrix.dtype),
                                     int(matrix.shape[1]), (stat.st_size, stat.st_mtime_ns))
    keys = read_keys(source.split_keys, len(inputs), source.shard)
    return ShardRows(source, labels_by_input[inputs].astype(np.int8), held_out(keys, seed, fraction), matrices,
                     ids.digest, hashlib.sha256(keys.tobytes()).hexdigest())


class RowIndex:
    """Labels and sides of every row of the training shards, and how to read their features."""

    def __init__(self, sources: Sequence[ShardSource], labels_by_input: Sequence[int], seed: int, fraction: float):
        if not 0 < fraction < 1:
            raise InputError(f"held-out fraction {fraction}: must lie between 0 and 1 (e.g. 0.1)")
        labels = np.asarray(labels_by_input, dtype=np.int8)
        self.seed = seed
        self.shards = [_open_shard(source, labels, seed, fraction) for source in sources]
        self.widths = self._widths()
        # blocks: (shard number, first row, end row), and the training rows in each
        self.blocks = [(number, start, min(start + BLOCK_ROWS, shard.rows))
                       for number, shard in enumerate(self.shards) for start in range(0, shard.rows, BLOCK_ROWS)]
        self.block_training_rows = np.array([int((~self.shards[s].held_out[a:b]).sum()) for s, a, b in self.blocks],
                                            dtype=np.int64)
        self.counts = {(side, label): sum(int(((shard.held_out == side) & (shard.labels == label)).sum())
                                          for shard in self.shards)
                       for side in (False, True) for label in (0, 1)}
        self._check_classes(labels, fraction)

    def _widths(self) -> dict:
        """Width of each embedding, the same in every shard (float16 and float32 may mix)."""
        widths = {}
        for shard in self.shards:
            for kind, matrix in shard.matrices.items():
                if widths.setdefault(kind, matrix.width) != matrix.width:
                    raise StaleInputError(f"{matrix.path}: rows of {matrix.width} values, other shards have "
                                          f"{widths[kind]}; the {kind} stage will run again for shard "
                                          f"{shard.source.shard}", kind, shard.source.shard)
        return widths

    def _check_classes(self, labels: np.ndarray, fraction: float) -> None:
        present = set(labels.tolist())
        if len(present) < 2:
            only = CLASS_NAMES[present.pop()] if present else "no input"
            raise InputError(f"every input is labelled '{only}': training needs inputs labelled 'virus' and 'other'")
        for label, name in enumerate(CLASS_NAMES):
            if self.counts[(False, label)] + self.counts[(True, label)] == 0:
                raise InputError(f"the inputs labelled '{name}' gave no frame to train on (no stop-free frame of "
                                 f"the chunk length); add '{name}' sequences longer than the chunk length")
        for side, split in ((True, "held-out"), (False, "training")):
            for label, name in enumerate(CLASS_NAMES):
                if self.counts[(side, label)] == 0:
                    raise InputError(f"the {split} side of the split (--holdout {fraction}, --seed {self.seed}) has no "
                                     f"'{name}' frame: split records into windows for the split (--holdout-window), "
                                     f"change --holdout or --seed, or add '{name}' sequences")

    @property
    def width(self) -> int:
        return sum(self.widths[kind] for kind in EMBEDDINGS)

    @property
    def training_rows(self) -> int:
        return self.counts[(False, 0)] + self.counts[(False, 1)]

    @property
    def held_out_rows(self) -> int:
        return self.counts[(True, 0)] + self.counts[(True, 1)]

    def identity(self) -> list:
        """What the rows are made of: a checkpoint of other rows is never resumed."""
        return [[shard.rows, shard.ids_sha256, shard.keys_sha256, *(list(shard.matrices[k].identity) for k in EMBEDDINGS)]
                for shard in self.shards]

    # ------------------------------------------------------------ the order of an epoch

    def epoch_windows(self, epoch: int) -> list[list[int]]:
        """Block numbers of each window of this epoch, in training order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks)).tolist()
        return [order[start:start + WINDOW_BLOCKS] for start in range(0, len(order), WINDOW_BLOCKS)]

    def window_order(self, epoch: int, window: int, rows: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, window]).permutation(rows)


class _Files:
    """Readers of the matrices' bytes past the page cache (direct_io: the files are read once per
    epoch and are far larger than memory), READS_IN_FLIGHT reads at once (this VM's virtual disk
    serves several requests faster than one), each through one of as many shared staging buffers;
    the least recently used file is closed beyond OPEN_FILES."""

    def __init__(self):
        self.open: collections.OrderedDict[Path, DirectReader] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.stagings = staging_buffers(READS_IN_FLIGHT)
        self.free_stagings: queue.SimpleQueue[int] = queue.SimpleQueue()
        for number in range(READS_IN_FLIGHT):
            self.free_stagings.put(number)
        self.pool = ThreadPoolExecutor(max_workers=READS_IN_FLIGHT, thread_name_prefix="training-reads")

    def _reader(self, path: Path) -> DirectReader:
        with self.lock:
            reader = self.open.pop(path, None)
            if reader is None:
                reader = DirectReader(path, self.stagings)
                if len(self.open) >= OPEN_FILES:  # far more than the files of one window: none in use
                    self.open.popitem(last=False)[1].close()
            self.open[path] = reader
            return reader

    def read_all(self, reads: list) -> None:
        """Every (matrix, start row, end row, out array, kind, shard source) read, READS_IN_FLIGHT at once."""
        for done in [self.pool.submit(self._read, *read) for read in reads]:
            done.result()

    def _read(self, matrix: _Matrix, start: int, stop: int, out: np.ndarray, kind: str, source: ShardSource) -> None:
        """Rows [start, stop) into `out` (float32, the embedding's columns of wider rows: float16
        is widened as it is copied out of the staging buffer). A NaN or infinite value is refused
        before any batch holds it (a NaN loss would be kept as the best epoch's)."""
        producer = (kind, source.shard)
        self._read_rows(matrix, start, stop, out, producer)
        if first_non_finite_row(out) is not None:
            raise non_finite_rows(matrix.path, kind, source)

    def _read_rows(self, matrix: _Matrix, start: int, stop: int, out: np.ndarray, producer: tuple) -> None:
        try:
            if matrix.offset is None:  # not written by this package: through HDF5
                with h5py.File(matrix.path, "r") as h5:
                    out[:] = h5["embeddings"][start:stop]
                return
            reader = self._reader(matrix.path)
            row_bytes = matrix.width * matrix.dtype.itemsize
            piece_rows = max(1, DirectReader.LONGEST // row_bytes)
            staging = self.free_stagings.get()
            try:
                for first in range(start, stop, piece_rows):
                    last = min(first + piece_rows, stop)
                    data = reader.read(matrix.offset + first * row_bytes, (last - first) * row_bytes, staging)
                    rows = np.frombuffer(data, matrix.dtype).reshape(last - first, matrix.width)
                    torch.from_numpy(out[first - start:last - start]).copy_(torch.from_numpy(rows))
            finally:
                self.free_stagings.put(staging)
        except OSError as exc:
            raise StaleInputError(f"{matrix.path}: unreadable rows ({exc}); the {producer[0]} stage will run "
                                  f"again for shard {producer[1]}", *producer) from None

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        while self.open:
            self.open.popitem()[1].close()
        for staging in self.stagings:
            staging.close()


class RowStream:
    """Batches of (features float32 [n, width], labels int64 [n]) read from the shard files. A
    helper thread reads a group of blocks (a window; its blocks' files several at once) into a
    reused float32 buffer of whole rows (each embedding into its columns, float16 widened on the
    way) and gathers the rows of one side, in order, into another, while the batches of the
    previous window (views of its buffer) are used. Use as a context manager."""

    SLOTS = 2  # window k + 2 is read into k's buffers only once k's last batch has been used

    def __init__(self, index: RowIndex):
        self.index = index
        self.files = _Files()
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-rows")
        rows = BLOCK_ROWS * WINDOW_BLOCKS
        # per slot: the window's rows as they lie, side by side in float32, and those of one side in order
        self.buffers = [{"rows": torch.empty((rows, index.width), dtype=torch.float32),
                         "features": torch.empty((rows, index.width), dtype=torch.float32)}
                        for _ in range(self.SLOTS)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.reader.shutdown(cancel_futures=True)
        self.files.close()

    def _read(self, slot: int, pieces: list[tuple[int, int, int]], held_out: bool, order: np.ndarray | None):
        """The rows of these (shard, start, end) pieces on one side of the split, in `order` (of
        those rows) or as they lie: (features, labels), views of buffer `slot`."""
        buffers = self.buffers[slot]
        total = sum(b - a for _, a, b in pieces)
        side, labels = np.empty(total, bool), np.empty(total, np.int8)
        row, reads = 0, []
        window = buffers["rows"][:total].numpy()
        for number, start, stop in pieces:
            shard = self.index.shards[number]
            side[row:row + stop - start] = shard.held_out[start:stop]
            labels[row:row + stop - start] = shard.labels[start:stop]
            column = 0
            for kind in EMBEDDINGS:
                width = self.index.widths[kind]
                reads.append((shard.matrices[kind], start, stop, window[row:row + stop - start, column:column + width],
                              kind, shard.source))
                column += width
            row += stop - start
        self.files.read_all(reads)
        chosen = np.flatnonzero(side == held_out)
        if order is not None:
            chosen = chosen[order]
        chosen = torch.from_numpy(chosen)
        features = buffers["features"][:len(chosen)]
        torch.index_select(buffers["rows"][:total], 0, chosen, out=features)
        return features, torch.from_numpy(labels).index_select(0, chosen).long()

    def _windows(self, jobs: list):
        """The jobs' windows in order, job n read into slot n % SLOTS while window n - 1 is used."""
        pending = self.reader.submit(jobs[0], 0) if jobs else None
        for number in range(len(jobs)):
            window = pending.result()
            if number + 1 < len(jobs):
                pending = self.reader.submit(jobs[number + 1], (number + 1) % self.SLOTS)
            yield window

    def training_batches(self, epoch: int, batch_size: int, first_batch: int = 0) -> Iterator:
        """The epoch's training batches from batch `first_batch` on (a resumed epoch reads no
        window before it). A last batch of one row is left out (BatchNorm cannot train on it).
        A batch is valid until the next one is asked for (a view of a reused buffer)."""
        index = self.index
        windows = index.epoch_windows(epoch)
        counts = [int(index.block_training_rows[w].sum()) for w in windows]
        skip, first_window = first_batch * batch_size, 0
        while first_window < len(windows) and skip >= counts[first_window]:
            skip -= counts[first_window]
            first_window += 1

        def job(number: int):
            pieces = [index.blocks[block] for block in windows[number]]
            return lambda slot: self._read(slot, pieces, False, index.window_order(epoch, number, counts[number]))

        carry = None  # the rows of a batch that straddles two windows (a copy: its buffer is reused)
        for features, labels in self._windows([job(n) for n in range(first_window, len(windows))]):
            features, labels, skip, start = features[skip:], labels[skip:], 0, 0
            if carry is not None:
                start = min(batch_size - len(carry[1]), len(labels))
                carry = (torch.cat([carry[0], features[:start]]), torch.cat([carry[1], labels[:start]]))
                if len(carry[1]) < batch_size:
                    continue
                yield carry
                carry = None
            for begin in range(start, len(labels), batch_size):
                if begin + batch_size <= len(labels):
                    yield features[begin:begin + batch_size], labels[begin:begin + batch_size]
                else:
                    carry = (features[begin:].clone(), labels[begin:].clone())
        if carry is not None and len(carry[1]) > 1:
            yield carry

    def held_out_batches(self, rows_per_batch: int) -> Iterator:
        """The held-out rows in shard order, at most `rows_per_batch` a batch (only their runs
        are read); valid until the next batch is asked for."""
        most = BLOCK_ROWS * WINDOW_BLOCKS
        groups, group, rows = [], [], 0
        for number, shard in enumerate(self.index.shards):
            for start, stop in _runs(shard.held_out):
                for a in range(start, stop, most):
                    piece = (number, a, min(a + most, stop))
                    if group and rows + piece[2] - piece[1] > most:
                        groups.append(group)
                        group, rows = [], 0
                    group.append(piece)
                    rows += piece[2] - piece[1]
        if group:
            groups.append(group)
        jobs = [lambda slot, g=g: self._read(slot, g, True, None) for g in groups]
        for features, labels in self._windows(jobs):
            for begin in range(0, len(labels), rows_per_batch):
                yield features[begin:begin + rows_per_batch], labels[begin:begin + rows_per_batch]


def non_finite_rows(path: Path, kind: str, source: ShardSource) -> StaleInputError:
    """The refusal of an embedding file holding a NaN or infinite value, naming its first such frame.
    The embedding stages refuse such values as they compute them, so the file was changed since:
    that stage runs again for the shard."""
    row = first_non_finite_frame(path)
    frame = read_shard_frames(source.frames).frame_ids[row] if row is not None else "?"
    return StaleInputError(f"{path}: frame {frame} (row {row}) holds NaN or infinite values, which no training can "
                           f"use; the {kind} stage will run again for shard {source.shard}", kind, source.shard)


def _runs(held_out: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) ranges covering the held-out rows, runs closer than HOLDOUT_GAP_ROWS merged."""
    edges = np.flatnonzero(np.diff(np.r_[False, held_out, False].astype(np.int8)))
    runs = []
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        if runs and start - runs[-1][1] <= HOLDOUT_GAP_ROWS:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs
