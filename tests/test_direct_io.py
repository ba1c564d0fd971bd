"""direct_io: embedding rows written and read past the page cache must be byte-for-byte what a
buffered pwrite/pread gives, at any offset and length (O_DIRECT needs 4 KiB alignment, so the
ends of every range take the buffered path), and a file system that refuses O_DIRECT gets
buffered I/O with the same bytes."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from virnucpro import direct_io
from virnucpro.direct_io import ALIGN, DIRECT_MIN_WRITE, PIECE, READ_PIECE, CongruentBuffers, DirectReader, DirectWriter
from virnucpro.storage import RowReader, ShardCheckpoint


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


@pytest.mark.parametrize("refused_at_write", [False, True])
def test_rows_laid_out_as_in_the_file_are_written_without_staging(tmp_path, mode, refused_at_write, monkeypatch):
    """A CongruentBuffers array goes to the device straight from its memory (the staging buffer is
    never touched), at any unaligned file position, with the bytes a buffered write gives."""
    rng = np.random.default_rng(6)
    size = 3 * DIRECT_MIN_WRITE + 5 * PIECE
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\0" * size)
    expected = bytearray(size)
    buffers = CongruentBuffers()
    writer = DirectWriter(path)
    staging = writer.staging.view if writer.staging is not None else None
    if staging is not None:
        writer.staging.view = None  # a staged write would fail on this
    if refused_at_write and writer.direct is not None:  # accepted at open, refused at write (some FUSE)
        real_pwrite, direct = os.pwrite, writer.direct

        def pwrite(fd, data, position):
            if fd == direct:
                raise OSError(22, "Invalid argument")
            return real_pwrite(fd, data, position)
        monkeypatch.setattr(os, "pwrite", pwrite)
    position = 2048 + 12  # a dataset offset, then rows of awkward width
    for slot, rows in enumerate([700, 3, 2500, 1800]):
        array = buffers.array(slot % 2, rows, 1031, np.float32, position)
        assert array.flags.c_contiguous and array.shape == (rows, 1031)
        assert (array.ctypes.data - position) % ALIGN == 0
        array[:] = rng.standard_normal(array.shape, dtype=np.float32)
        writer.write(memoryview(array), position)
        expected[position:position + array.nbytes] = array.tobytes()
        position += array.nbytes
    assert refused_at_write == (writer.direct is None) or mode == "refused"
    os.fsync(writer.fd)
    if staging is not None:
        writer.staging.view = staging
    writer.close()
    assert path.read_bytes() == bytes(expected)


def test_a_checkpoint_window_lies_in_memory_as_in_its_file(tmp_path):
    checkpoint = ShardCheckpoint(tmp_path / "parts", tmp_path / "final.h5", [f"f{i}" for i in range(5000)], 2560)
    first, again = checkpoint.window(0, 0, 1000), checkpoint.window(0, 1000, 900)
    offset = checkpoint.record["offset"]
    for start, window in [(0, first), (1000, again), (77, checkpoint.window(1, 77, 3))]:
        assert (window.ctypes.data - (offset + start * checkpoint.row_bytes)) % ALIGN == 0
    assert np.shares_memory(first, again)  # one slot's memory is reused, not allocated per window
    checkpoint.close()


def test_reads_at_any_offset_give_the_file_bytes(tmp_path, mode):
    size = READ_PIECE + 3 * ALIGN + 11
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
            got = reader.read(position, length, number % DirectReader.STAGINGS)
            assert bytes(got) == data[position:position + length], (position, length)
        # a view of one staging buffer stays valid while the others are read into, from other threads
        kept = reader.read(0, 100, 0)
        with ThreadPoolExecutor(DirectReader.STAGINGS) as pool:
            others = list(pool.map(lambda n: bytes(reader.read(n * ALIGN + 5, longest, n)), range(1, DirectReader.STAGINGS)))
        assert bytes(kept) == data[:100]
        assert others == [data[n * ALIGN + 5:n * ALIGN + 5 + longest] for n in range(1, DirectReader.STAGINGS)]
        with pytest.raises(OSError, match="ends before byte"):
            reader.read(size - 5, 10, 0)  # past the end: an error, not zeros
    finally:
        reader.close()


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "float16", "many pieces"])
def test_row_reader_fills_a_block_of_columns_like_h5py(tmp_path, mode, layout, monkeypatch):
    if layout == "many pieces":  # a block of more pieces than staging buffers: each reused in turn
        monkeypatch.setattr(DirectReader, "LONGEST", 3 * ALIGN + 5)
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
        if layout == "many pieces":
            assert rows.piece_rows * 3 < 1000 // DirectReader.STAGINGS
