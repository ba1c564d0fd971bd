"""direct_io: embedding rows written and read past the page cache must be byte-for-byte what a
buffered pwrite/pread gives, at any offset and length (O_DIRECT needs 4 KiB alignment, so the
ends of every range take the buffered path), and a file system that refuses O_DIRECT gets
buffered I/O with the same bytes."""

from __future__ import annotations

import os
import random

import h5py
import numpy as np
import pytest

from virnucpro import direct_io
from virnucpro.direct_io import ALIGN, PIECE, DirectReader, DirectWriter
from virnucpro.storage import RowReader


def ranges(size: int, rng: random.Random) -> list[tuple[int, int]]:
    """Adjacent ranges of awkward lengths covering [0, size): tiny, unaligned, over one PIECE."""
    out, position = [], 0
    lengths = [1, 3, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 7, PIECE + 5 * ALIGN + 3, 100_003]
    while position < size:
        length = min(rng.choice(lengths), size - position)
        out.append((position, length))
        position += length
    return out


@pytest.fixture(params=["direct", "refused"])
def mode(request, monkeypatch):
    if request.param == "refused":  # tmpfs on older kernels, some FUSE: open(O_DIRECT) says EINVAL
        monkeypatch.setattr(direct_io, "_open_direct", lambda path, flags: None)
    return request.param


def test_writes_in_any_order_give_the_buffered_bytes(tmp_path, mode):
    rng = random.Random(1)
    size = 2 * PIECE + 12_345
    data = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\0" * size)  # preallocated, as the checkpoint's HDF5 file is
    pieces = ranges(size, rng)
    rng.shuffle(pieces)  # neighbours share a 4 KiB page whichever is written first
    writer = DirectWriter(path)
    assert (writer.direct is not None) == (mode == "direct")
    for position, length in pieces:
        writer.write(memoryview(data)[position:position + length], position)
    os.fsync(writer.fd)
    writer.close()
    assert path.read_bytes() == data


def test_reads_at_any_offset_give_the_file_bytes(tmp_path, mode):
    size = PIECE + 3 * ALIGN + 11
    data = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "rows.bin"
    path.write_bytes(data)
    reader = DirectReader(path)
    try:
        assert (reader.direct is not None) == (mode == "direct")
        longest = DirectReader.LONGEST
        cases = [(p, min(n, longest)) for p, n in ranges(size, random.Random(4))]
        cases += [(size - 5, 5), (7, longest), (ALIGN - 1, longest), (size - longest, longest)]
        for number, (position, length) in enumerate(cases):
            got = reader.read(position, length, number % 2)
            assert bytes(got) == data[position:position + length], (position, length)
        kept = reader.read(0, 100, 0)  # a view of staging buffer 0 stays valid while 1 is read into
        reader.read(ALIGN * 3, 100, 1)
        assert bytes(kept) == data[:100]
        with pytest.raises(OSError, match="ends before byte"):
            reader.read(size - 5, 10, 0)  # past the end: an error, not zeros
    finally:
        reader.close()


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "float16"])
def test_row_reader_fills_a_block_of_columns_like_h5py(tmp_path, mode, layout):
    rng = np.random.default_rng(5)
    dtype = np.float16 if layout == "float16" else np.float32
    matrix = rng.standard_normal((3001, 257)).astype(dtype)  # rows of 1028 bytes: never page-aligned
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["note"] = "x" * 1000  # the dataset does not start on a page either
        h5.create_dataset("embeddings", data=matrix, chunks=(64, 257) if layout == "chunked" else None)
    features = np.full((1000, 300), np.nan, np.float32)  # the predict block: DNABERT and ESM columns side by side
    with h5py.File(path, "r") as h5, RowReader(h5["embeddings"]) as rows:
        assert (rows.source is not None) == (layout != "chunked")
        for start, stop in [(0, 1000), (999, 1999), (2500, 3001), (17, 18)]:
            block = features[:, 20:277]
            rows.read(start, stop, block)
            assert np.array_equal(block[:stop - start], matrix[start:stop].astype(np.float32))
            assert np.isnan(features[:, :20]).all() and np.isnan(features[:, 277:]).all()
