"""Bulk rows to and from files without the page cache (O_DIRECT), where the file system allows.

Embedding rows are gigabytes per shard, written once and read once. Through the page cache every
4 KiB page costs the kernel an allocation and a copy (measured on a 2-core VM: 0.36 GB/s buffered
write plus the final fsync, 0.44 GB/s cold buffered read, against 2.0 / 1.7 GB/s direct), host time
taken from the threads that feed the GPU. O_DIRECT wants file offsets, lengths and memory aligned
to the logical block size, so the aligned middle of a range goes through a reused page-aligned
staging buffer and the unaligned ends (shared with neighbouring ranges or HDF5's own bytes) go
through the page cache. The kernel keeps the two coherent: a direct read first writes back dirty
cached pages of its range, a direct write drops the cached pages it overlaps. A file system that
refuses O_DIRECT (tmpfs, some FUSE) gets plain buffered I/O.

Rows that sit in memory at the same offset within a page as their place in the file (a
`CongruentBuffers` array) need no staging: their aligned middle is written straight from them in
one request (measured here: ~2.4 GB/s against ~1.5 through the staging buffer, and no copy).
"""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np

ALIGN = 4096  # a multiple of every logical block size in use, so valid wherever O_DIRECT is
PIECE = 8 << 20  # direct writes go through the staging buffer in pieces of this size
# Direct reads: several large requests in flight keep this VM's virtual disk busier than one at a
# time (measured with 3 GB of embeddings: ~1.5 GB/s for one or two 8 MiB reads in flight, ~2.0 for
# four of 32 MiB)
READ_PIECE = 32 << 20
READS_IN_FLIGHT = 4
# A direct write waits for the device; below this it costs more than the page cache saves (and
# small windows, as on CPU runs, keep the timing they always had)
DIRECT_MIN_WRITE = 1 << 20
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def _open_direct(path, flags: int) -> int | None:
    try:
        return os.open(path, flags | os.O_DIRECT)
    except AttributeError:  # no O_DIRECT on this platform
        return None
    except OSError as exc:
        if exc.errno in _REFUSED:
            return None
        raise


def _round_up(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


class _Staging:
    def __init__(self, size: int = PIECE):
        self.buffer = mmap.mmap(-1, size)  # anonymous mmap: page-aligned, reused (no new page faults)
        self.view = memoryview(self.buffer)

    def close(self) -> None:
        try:
            self.view.release()
            self.buffer.close()
        except BufferError:  # a view of it still exists: the garbage collector frees it
            pass


class DirectWriter:
    """pwrite of byte ranges into an existing file: the aligned middle direct, the ends buffered.
    The caller still fsyncs `fd` before relying on the bytes (buffered ends, file metadata)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY)
        self.direct = _open_direct(path, os.O_WRONLY)
        self.staging = _Staging() if self.direct is not None else None

    def write(self, data: memoryview, position: int) -> None:
        data = memoryview(data).cast("B")
        end = position + len(data)
        first, last = _round_up(position), end // ALIGN * ALIGN
        if self.direct is None or last - first < DIRECT_MIN_WRITE:
            _pwrite_all(self.fd, data, position)
            return
        _pwrite_all(self.fd, data[:first - position], position)
        _pwrite_all(self.fd, data[last - position:], last)
        if (_address(data) - position) % ALIGN == 0:  # the middle is aligned in memory too: no staging
            middle = data[first - position:last - position]
            try:
                _pwrite_all(self.direct, middle, first)
                return
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                os.close(self.direct)
                self.direct = None
            _pwrite_all(self.fd, middle, first)  # all of it again, buffered: the same bytes
            return
        for piece in range(first, last, PIECE):
            size = min(PIECE, last - piece)
            self.staging.view[:size] = data[piece - position:piece - position + size]
            if self.direct is not None:
                try:
                    _pwrite_all(self.direct, self.staging.view[:size], piece)
                    continue
                except OSError as exc:
                    if exc.errno not in _REFUSED:
                        raise
                    os.close(self.direct)
                    self.direct = None  # accepted at open, refused at write: buffered from here on
            _pwrite_all(self.fd, data[piece - position:piece - position + size], piece)

    def close(self) -> None:
        for fd in (self.direct, self.fd):
            if fd is not None:
                os.close(fd)
        self.direct = self.fd = None
        if self.staging is not None:
            self.staging.close()
            self.staging = None


class CongruentBuffers:
    """Reused arrays, one per slot, each placed in page-aligned memory at the offset within a page
    that its rows will have in the file, so DirectWriter writes them without staging. A slot's
    memory is kept and grows only when a larger array is asked for (fresh memory page-faults)."""

    def __init__(self):
        self.maps: dict = {}

    def array(self, slot, rows: int, dim: int, dtype, position: int) -> np.ndarray:
        """An uninitialised C-contiguous [rows, dim] array for the file bytes at `position`."""
        dtype = np.dtype(dtype)
        shift, nbytes = position % ALIGN, rows * dim * dtype.itemsize
        if shift % dtype.itemsize:  # would misalign the elements themselves: an ordinary array
            return np.empty((rows, dim), dtype)
        memory = self.maps.get(slot)
        if memory is None or len(memory) < shift + nbytes:
            # dropped, not closed: arrays made from the old memory free it when they go
            memory = self.maps[slot] = mmap.mmap(-1, max(_round_up(shift + nbytes), ALIGN))
        return np.frombuffer(memory, dtype, count=rows * dim, offset=shift).reshape(rows, dim)


def _address(data: memoryview) -> int:
    return np.frombuffer(data, np.uint8).ctypes.data if len(data) else 0


def _pwrite_all(fd: int, data: memoryview, position: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], position + written)


class DirectReader:
    """Byte ranges of a file as views of one of READS_IN_FLIGHT reused staging buffers (so
    several can be read, from several threads, while another is used), the aligned range around
    them read direct."""

    LONGEST = READ_PIECE - ALIGN  # the longest range one call gives
    STAGINGS = READS_IN_FLIGHT

    def __init__(self, path, stagings: list | None = None):
        """`stagings` (from `staging_buffers`): buffers shared by readers of many files, used by
        one thread at a time and closed by their owner; by default the reader's own STAGINGS."""
        self.path = path
        self.direct = _open_direct(path, os.O_RDONLY)
        self.fd = os.open(path, os.O_RDONLY)
        self.own_stagings = stagings is None
        self.stagings = (staging_buffers(self.STAGINGS) if stagings is None else stagings) \
            if self.direct is not None else []

    def read(self, position: int, length: int, staging: int) -> memoryview:
        """Bytes [position, position + length) as a view of staging buffer `staging` (0 to
        STAGINGS - 1; valid until the next read into that buffer); length <= LONGEST."""
        if self.direct is not None:
            first = position // ALIGN * ALIGN
            view, done, needed = self.stagings[staging].view, 0, position + length - first
            try:
                while done < needed:
                    count = os.preadv(self.direct, [view[done:_round_up(position + length) - first]], first + done)
                    if count == 0:
                        raise OSError(errno.EIO, f"{self.path}: ends before byte {position + length}")
                    done += count
                return view[position - first:position - first + length]
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                os.close(self.direct)
                self.direct = None  # accepted at open, refused at read: buffered from here on
        out = memoryview(bytearray(length))
        _pread_exact(self.fd, out, position, self.path)
        return out

    def close(self) -> None:
        for fd in (self.direct, self.fd):
            if fd is not None:
                os.close(fd)
        self.direct = self.fd = None
        if self.own_stagings:
            for staging in self.stagings:
                staging.close()
        self.stagings = []


def staging_buffers(count: int) -> list:
    """Page-aligned buffers for DirectReader (READ_PIECE each; memory is touched as it is used)."""
    return [_Staging(READ_PIECE) for _ in range(count)]


def _pread_exact(fd: int, out: memoryview, position: int, path) -> None:
    done = 0
    while done < len(out):
        count = os.preadv(fd, [out[done:]], position + done)
        if count == 0:
            raise OSError(errno.EIO, f"{path}: ends before byte {position + len(out)}")
        done += count
