"""On-disk formats shared by stages: shard frame tables and HDF5 matrices (embeddings, scores).

A shard's frame ids are stored once, in its frame table (prepare). The workdir's HDF5 matrices
(embeddings, scores) hold one matrix [N, D] in shard order and refer to the table by two attributes:
`frames` (N) and `ids_sha256` (SHA-256 of the id column, one id per line). Every reader checks both
against the shard's frame table, so a partial, stale or shifted file is refused instead of
silently pairing ids with the wrong rows. (A standalone file of the `embed` command, and files of
earlier versions, carry a dataset `ids` instead, checked the same way.)

Every refusal of a file that an earlier (stage, shard) wrote is an `errors.StaleInputError` naming
that producer, so the runner can recompute it instead of failing the reader for good.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import xxhash

from .atomic import atomic_path, atomic_write_text, fsync_dir
from .direct_io import CongruentBuffers, DirectReader, DirectWriter
from .errors import ShardError, StaleInputError
from .json_files import read_json

FRAME_COLUMNS = ("input_index", "read_id", "chunk_id", "frame_id", "nucleotide", "protein")


# ---------------------------------------------------------------- frame tables

class ShardFrames:
    """The frames of one shard, each column split from the table's bytes when first asked for
    (an embedding stage needs the ids and one of the two sequence columns, predict the ids)."""

    def __init__(self, body: bytes, bounds: np.ndarray):
        # field c of row r is body[bounds[r, c] + 1:bounds[r, c + 1]] (bounds: the separators,
        # with each row's previous newline in front)
        self._body, self._bounds, self._columns = body, bounds, {}

    def __len__(self) -> int:
        return len(self._bounds)

    def joined(self, column: str) -> bytes:
        """The column's values, each followed by a newline (the id column: what its digest hashes)."""
        c = FRAME_COLUMNS.index(column)
        body = self._body
        fields = [body[a:b] for a, b in zip((self._bounds[:, c] + 1).tolist(), self._bounds[:, c + 1].tolist())]
        return b"\n".join(fields) + b"\n" if fields else b""

    def column(self, column: str) -> list[str]:
        if column not in self._columns:
            self._columns[column] = self.joined(column).decode("utf-8").split("\n")[:-1]
        return self._columns[column]

    @property
    def input_index(self) -> np.ndarray:
        return np.array(self.column("input_index"), dtype=np.int64).astype(np.int32)

    read_ids = property(lambda self: self.column("read_id"))
    chunk_ids = property(lambda self: self.column("chunk_id"))
    nucleotides = property(lambda self: self.column("nucleotide"))
    proteins = property(lambda self: self.column("protein"))

    @property
    def frame_ids(self) -> "ShardIds":
        if "frame_id" not in self._columns:
            joined = self.joined("frame_id")
            ids = ShardIds(joined.decode("utf-8").split("\n")[:-1])
            ids._digest = hashlib.sha256(joined).hexdigest()  # = ids_digest(ids), from the bytes already joined
            self._columns["frame_id"] = ids
        return self._columns["frame_id"]


def first_malformed_line(path: Path) -> int:
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if number > 1 and (not line.endswith("\n") or line.count("\t") != len(FRAME_COLUMNS) - 1
                               or not line.split("\t", 1)[0].isdigit()):
                return number
    return number


def _stale_table(message: str) -> StaleInputError:
    return StaleInputError(message, "prepare", 0)  # prepare writes every shard's table (one shard)


def _table_body(path: Path) -> bytes:
    """The table's bytes after its header (checked); any invalid UTF-8 in them is refused."""
    try:
        with open(path, "rb") as handle:
            if handle.readline().decode("utf-8").rstrip("\n").split("\t") != list(FRAME_COLUMNS):
                raise _stale_table(f"{path}: not a frame table (bad header); the prepare stage will run again")
            body = handle.read()
        if not body.isascii():
            body.decode("utf-8")
        return body
    except FileNotFoundError:
        raise _stale_table(f"{path}: shard frame table missing; the prepare stage must run first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _stale_table(f"{path}: unreadable frame table ({exc}); the prepare stage will run again") from None


def _malformed(path: Path) -> StaleInputError:
    return _stale_table(f"{path}: line {first_malformed_line(path)} is truncated or malformed, so the file is "
                        "incomplete; re-run the same command (or add --restart)")


_ROW_SEPARATORS = np.array([9] * (len(FRAME_COLUMNS) - 1) + [10], np.uint8)  # five tabs, then the newline


def read_shard_frames(path: Path) -> ShardFrames:
    """A shard's frame table; a truncated or malformed one is refused.

    Read whole as bytes and checked at once: every line has exactly five tabs, then its newline,
    and an input index of digits. The separators are found by numpy (~0.05 s a 330K-frame table);
    a column becomes strings only when a stage asks for it (splitting all six cost ~0.5 s)."""
    body = _table_body(path)
    data = np.frombuffer(body, np.uint8)
    separators = np.flatnonzero((data == 9) | (data == 10))
    width = len(FRAME_COLUMNS)
    rows = len(separators) // width
    if body[-1:] not in (b"", b"\n") or len(separators) != rows * width or \
            not (data[separators].reshape(rows, width) == _ROW_SEPARATORS).all():
        raise _malformed(path)
    bounds = np.empty((rows, width + 1), np.int64)
    bounds[:, 1:] = separators.reshape(rows, width)
    bounds[:, 0] = np.r_[-1, bounds[:-1, width]] if rows else []
    starts, lengths = bounds[:, 0] + 1, bounds[:, 1] - bounds[:, 0] - 1
    if (lengths < 1).any():
        raise _malformed(path)
    for k in range(int(lengths.max()) if rows else 0):  # the input index: digits, byte k of every row at once
        letters = data[starts[lengths > k] + k]
        if ((letters < 48) | (letters > 57)).any():
            raise _malformed(path)
    return ShardFrames(body, bounds)


def read_frame_ids(path: Path, expected_rows: int | None = None) -> "ShardIds":
    """Only the frame-id column of a shard's frame table (what predict and consensus need), with
    the checks of `read_shard_frames` and the row count prepare recorded when it is given."""
    ids = read_shard_frames(path).frame_ids
    if expected_rows is not None and len(ids) != expected_rows:
        raise _stale_table(f"{path}: {len(ids)} frames, prepare recorded {expected_rows}; the prepare stage will run again")
    return ids


class _ReadAhead:
    """One shard table parsed ahead by a helper thread: predict reads the next shard's ids
    (~0.4 s a 330K-frame table) while its threads wait on this shard's embedding reads. A result
    is taken only while its file is the one it was read from (same inode, size, mtime): prepare
    replaces a table by renaming a new file over it, so a changed table is read again.
    Not used by the embedding stages: the parse holds the GIL for tenths of a second at a time,
    which stalls the threads that feed the GPU (no gain measured there: esm2 10.2 -> 11.5 s)."""

    def __init__(self):
        self.key, self.future, self.pool = None, None, None

    @staticmethod
    def _key(load: Callable, path: Path, args: tuple):
        try:
            info = os.stat(path)
        except OSError:
            return None  # let load() raise its own error
        return load, str(path), args, info.st_ino, info.st_size, info.st_mtime_ns

    def __call__(self, load: Callable, path: Path, *args, then: tuple | None = None):
        """load(path, *args); then, when given, starts load(*then) in the background for the next call."""
        key, (ahead_key, future) = self._key(load, path, args), (self.key, self.future)
        self.key = self.future = None
        if key is not None and future is not None and ahead_key == key:
            result = future.result()  # its error, if it failed, is the one reading it now gives
        else:
            result = load(path, *args)
        if then is not None:
            ahead = self._key(load, then[0], tuple(then[1:]))
            if ahead is not None:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-read-ahead")
                self.key, self.future = ahead, self.pool.submit(load, *then)
        return result


read_ahead = _ReadAhead()


# ---------------------------------------------------------------- frame references

class ShardIds(list):
    """A shard's frame ids (a list) that remembers its digest, computed once however many files
    are checked against it."""

    _digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = ids_digest(self)
        return self._digest


def ids_digest(ids: list[str]) -> str:
    """SHA-256 of the id column, one id per line: what a matrix file records of its rows' ids."""
    if isinstance(ids, ShardIds) and ids._digest is not None:
        return ids._digest
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- HDF5 matrices

_STR = h5py.string_dtype("utf-8")
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}  # stored little-endian, whatever the host


def _stored_dtype(dtype) -> np.dtype:
    key = np.dtype(dtype).name
    if key not in DTYPES:
        raise ValueError(f"embedding dtype must be one of {sorted(DTYPES)}, got {key}")
    return DTYPES[key]


def write_matrix(path: Path, ids: list[str], matrix: np.ndarray, name: str = "embeddings", attrs: dict | None = None) -> None:
    """A standalone matrix file with its `ids` dataset (the `embed` command's output)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but matrix of shape {matrix.shape}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
            h5.create_dataset(name, data=matrix)
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value


def _reference_attrs(ids: list[str]) -> dict:
    return {"frames": len(ids), "ids_sha256": ids_digest(ids)}


def write_shard_matrix(path: Path, ids: list[str], matrix: np.ndarray, name: str = "embeddings",
                       attrs: dict | None = None, dtype="float32") -> None:
    """A workdir matrix: the rows of a shard's frames, referring to its frame table (no ids stored)."""
    matrix = np.ascontiguousarray(matrix, dtype=_stored_dtype(dtype))
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but matrix of shape {matrix.shape}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset(name, data=matrix)
            for key, value in {**_reference_attrs(ids), **(attrs or {})}.items():
                h5.attrs[key] = value


def _refuse(message: str, producer: tuple[str, int] | None) -> ShardError:
    return StaleInputError(message, *producer) if producer else ShardError(message)


@contextlib.contextmanager
def open_matrix(path: Path, expected_ids: list[str] | None = None, name: str = "embeddings",
                dim: int | None = None, producer: tuple[str, int] | None = None
                ) -> Iterator[tuple[list[str] | None, h5py.Dataset]]:
    """Open an HDF5 matrix after checking it: ids (or their count and digest), row count and
    width; rows are read lazily. `producer` (stage, shard) makes every refusal a StaleInputError
    naming it. The ids returned are the file's own, or `expected_ids` for a file that refers to them."""
    redo = f"the {producer[0]} stage will run again for shard {producer[1]}" if producer else "the shard will be recomputed"
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise _refuse(f"{path}: missing; its stage has not finished for this shard"
                      + (f" ({redo})" if producer else ""), producer) from None
    except OSError as exc:
        raise _refuse(f"{path}: unreadable or incomplete HDF5 ({exc}); {redo}", producer) from None
    with h5:
        try:
            matrix = h5[name]
            if "ids" in h5:  # a standalone file, or one of an earlier version
                ids = [x.decode("utf-8") if isinstance(x, bytes) else x for x in h5["ids"][:]]
                count, digest = len(ids), None
            else:
                ids, count, digest = None, int(h5.attrs["frames"]), str(h5.attrs["ids_sha256"])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise _refuse(f"{path}: unreadable or incomplete HDF5 ({exc}); {redo}", producer) from None
        if matrix.ndim != 2 or matrix.shape[0] != count:
            raise _refuse(f"{path}: {count} ids but {matrix.shape[0]} rows; {redo}", producer)
        if dim is not None and matrix.shape[1] != dim:
            raise _refuse(f"{path}: rows have {matrix.shape[1]} values, expected {dim}; {redo}", producer)
        if matrix.dtype.name not in DTYPES:
            raise _refuse(f"{path}: {matrix.dtype} values, expected float32 or float16; {redo}", producer)
        if expected_ids is not None:
            missing = len(expected_ids) - count
            if missing:
                detail = f"{abs(missing)} frame(s) {'missing' if missing > 0 else 'extra'}"
            elif ids is not None and ids != expected_ids or ids is None and digest != ids_digest(expected_ids):
                detail = "ids in a different order" if ids is not None and sorted(ids) == sorted(expected_ids) else \
                    "other frames' ids"
            else:
                detail = None
            if detail:
                raise _refuse(f"{path}: does not match the shard's frames ({detail}); refusing to pair ids with the "
                              f"wrong rows; {redo}", producer)
        yield (ids if ids is not None else expected_ids), matrix


def first_non_finite_row(values: np.ndarray) -> int | None:
    """The first row of a matrix holding a NaN or an infinite value; None when every value is finite
    (then one reduction over the whole matrix, the common case)."""
    if np.isfinite(values).all():
        return None
    return int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])


def first_non_finite_frame(path: Path, name: str = "embeddings", block_rows: int = 8192) -> int | None:
    """The first row of a stored matrix holding a NaN or an infinite value (read in blocks); None if none."""
    with h5py.File(path, "r") as h5:
        matrix = h5[name]
        for start in range(0, matrix.shape[0], block_rows):
            row = first_non_finite_row(matrix[start:start + block_rows])
            if row is not None:
                return start + row
    return None


def read_matrix(path: Path, expected_ids: list[str] | None = None, name: str = "embeddings",
                dim: int | None = None, producer: tuple[str, int] | None = None) -> tuple[list[str] | None, np.ndarray]:
    with open_matrix(path, expected_ids, name, dim, producer) as (ids, matrix):
        try:
            return ids, matrix[:]
        except OSError as exc:
            raise _refuse(f"{path}: unreadable rows ({exc}); the shard will be recomputed", producer) from None


class RowReader:
    """Rows of an open HDF5 matrix copied into a caller's float32 array (a block of columns of a
    wider one is fine). A contiguous uncompressed dataset (what this package writes) is read
    straight from its file, past the page cache (direct_io), in pieces of up to 32 MiB, several at
    once by helper threads (one per staging buffer) while the earliest is copied; any other layout
    through HDF5. Use as a context manager. `copy(destination, source)` moves each piece into `out`
    (default numpy's; predict passes torch's, which widens float16 about 4x as fast)."""

    def __init__(self, matrix: h5py.Dataset, copy: Callable[[np.ndarray, np.ndarray], None] | None = None):
        self.matrix = matrix
        self.copy = copy or np.copyto
        offset = matrix.id.get_offset() if matrix.chunks is None and matrix.compression is None else None
        self.offset = None if offset is None else int(offset)
        self.source = DirectReader(matrix.file.filename) if self.offset is not None else None
        self.row_bytes = matrix.shape[1] * matrix.dtype.itemsize
        self.piece_rows = max(1, DirectReader.LONGEST // max(self.row_bytes, 1))
        if self.source is not None and self.row_bytes > DirectReader.LONGEST:
            self.source.close()
            self.source = None  # rows wider than a piece: not worth a special case
        self.reader = ThreadPoolExecutor(max_workers=DirectReader.STAGINGS, thread_name_prefix="row-reader") \
            if self.source else None

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows [start, stop) into out[0:stop - start]."""
        if self.source is None:  # (numpy widens float16: HDF5's own conversion is slow)
            out[0:stop - start] = self.matrix[start:stop]
            return
        pieces = [(a, min(a + self.piece_rows, stop)) for a in range(start, stop, self.piece_rows)]
        depth = DirectReader.STAGINGS

        def fetch(number: int):
            a, b = pieces[number]  # piece n goes into staging buffer n % depth, free once n - depth is copied
            return self.reader.submit(self.source.read, self.offset + a * self.row_bytes, (b - a) * self.row_bytes,
                                      number % depth)

        pending = collections.deque(fetch(n) for n in range(min(depth, len(pieces))))
        for number, (a, b) in enumerate(pieces):
            data = pending.popleft().result()
            self.copy(out[a - start:b - start], np.frombuffer(data, self.matrix.dtype).reshape(b - a, -1))
            if number + depth < len(pieces):
                pending.append(fetch(number + depth))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.reader is not None:
            self.reader.shutdown()
        if self.source is not None:
            self.source.close()


# ---------------------------------------------------------------- checkpointed embedding

def _checksum(data) -> int:
    """XXH3-64 of the bytes: about 17 GB/s here against zlib CRC-32's 2.4, where every embedding
    byte is checksummed once as it is written (it releases the GIL: computed beside the write)."""
    return xxhash.xxh3_64_intdigest(data)


class ShardCheckpoint:
    """Embeddings of one shard written once, into the final file's layout, as they are computed.

    `<shard>.partial/embeddings.h5` is created up front with everything but the rows: the
    dataset [N, D] (contiguous, allocated at creation, never filled) and the attributes that
    refer to the frame table. Each window of rows is written in place at its offset and then
    recorded in `progress.json` (atomically, fsynced) with its row range and XXH3-64 checksum; the
    record also holds the checksum of the file's non-row bytes. On resume, a window that is not
    recorded, or whose bytes disagree with its checksum, is never trusted: resumption starts
    after the last good window. Rows are written past the page cache where the file system allows (direct_io: most
    of a window goes to the device, its unaligned ends to the page cache) but not flushed window by
    window (a kill -9 leaves the ends in the page cache; after a power loss a record may reach the
    disk before its rows, and then their checksum fails and they are recomputed). `finish()` fsyncs the file and renames it to the final path (atomic), so the
    final path only ever holds a complete file, written once: no piece files, no re-read and
    re-write of the rows at the end. The file's bytes are the same however often the shard was
    interrupted.
    """

    FILE = "embeddings.h5"
    FORMAT = 3  # 3: XXH3-64 checksums (2 had CRC-32: a partial shard of format 2 is recomputed)

    def __init__(self, folder: Path, final_path: Path, frame_ids: list[str], dim: int, dtype="float32",
                 attrs: dict | None = None, name: str = "embeddings"):
        self.folder = folder
        self.final_path = final_path
        self.frame_ids = frame_ids
        self.dim = dim
        self.dtype = _stored_dtype(dtype)
        self.attrs = dict(attrs or {})
        self.name = name
        self.windows: list[dict] = []
        self.record: dict | None = None
        self.writer: DirectWriter | None = None
        self.hasher: ThreadPoolExecutor | None = None
        self.buffers = CongruentBuffers()

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    @property
    def file_path(self) -> Path:
        return self.folder / self.FILE

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def _identity(self) -> dict:
        return {"format": self.FORMAT, "rows_total": len(self.frame_ids), "dim": self.dim, "dtype": self.dtype.name,
                "ids_sha256": ids_digest(self.frame_ids), "attrs": {k: str(v) for k, v in self.attrs.items()}}

    def _skeleton_checksum(self, offset: int, size: int) -> int:
        """Checksum of everything in the file but the rows (HDF5 superblock, headers, attributes)."""
        end = offset + len(self.frame_ids) * self.row_bytes
        with open(self.file_path, "rb") as handle:
            head = handle.read(offset)
            handle.seek(end)
            tail = handle.read(size - end)
        return _checksum(head + tail)

    def verify(self) -> tuple[dict | None, list[dict]]:
        """The progress record and the windows of it that check (in order, up to the first bad one),
        without changing anything on disk; (None, []) when there is no usable record."""
        try:
            record = read_json(self.progress_path)
            if any(record.get(key) != value for key, value in self._identity().items()):
                return None, []  # another shard, model, dtype or format
            size = self.file_path.stat().st_size
            if size != record["file_bytes"] or self._skeleton_checksum(record["offset"], size) != record["skeleton_xxh3_64"]:
                return None, []  # the file's headers are damaged
            windows, good, row = list(record["windows"]), [], 0
            with open(self.file_path, "rb") as handle:
                for window in windows:
                    if window["start"] != row or window["rows"] <= 0:
                        break
                    handle.seek(record["offset"] + row * self.row_bytes)
                    data = handle.read(window["rows"] * self.row_bytes)
                    if len(data) != window["rows"] * self.row_bytes or _checksum(data) != window["xxh3_64"]:
                        break  # everything from a bad window on is recomputed
                    good.append(window)
                    row += window["rows"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, []
        return record, good

    def resume(self) -> int:
        """Rows already safely on disk (0 when starting fresh or when the record is unusable)."""
        record, self.windows = self.verify()
        if record is None:
            self.discard()  # nothing usable: start again from an empty folder
            return 0
        self.record = record
        return self.rows_done

    def _create(self) -> None:
        """The final file with everything but its rows, and an empty progress record."""
        self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = len(self.frame_ids)
        with h5py.File(self.file_path, "w") as h5:
            # allocated at creation and never filled: the rows' place is fixed before any is written
            # (a sparse region until then), and writing them changes no other byte of the file
            dataset = h5.create_dataset(self.name, shape=(rows, self.dim), dtype=self.dtype, fillvalue=None,
                                        dcpl=self._dcpl())
            for key, value in {**_reference_attrs(self.frame_ids), **self.attrs}.items():
                h5.attrs[key] = value
            offset = dataset.id.get_offset()
        with open(self.file_path, "rb+") as handle:
            # Reserve the rows' blocks now: flushing rows into a sparse region costs ~4x as much
            # here (block allocation at every fdatasync). Where the file system cannot, no matter.
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fallocate(handle.fileno(), int(offset), rows * self.row_bytes)
            os.fsync(handle.fileno())
        size = self.file_path.stat().st_size
        self.record = {**self._identity(), "offset": int(offset), "file_bytes": size,
                       "skeleton_xxh3_64": self._skeleton_checksum(int(offset), size), "windows": []}
        self.windows = []
        atomic_write_text(self.progress_path, json.dumps(self.record, indent=1))

    @staticmethod
    def _dcpl():
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        return dcpl

    def window(self, slot, start: int, rows: int) -> np.ndarray:
        """A reused buffer (one per slot) for rows [start, start + rows) in the stored dtype, laid
        out in memory as they lie in the file: append() writes it without a staging copy."""
        if self.record is None:
            self._create()
        return self.buffers.array(slot, rows, self.dim, self.dtype, self.record["offset"] + start * self.row_bytes)

    def append(self, start: int, matrix: np.ndarray) -> None:
        """Write rows [start, start + len(matrix)) in place, make them durable, then record them."""
        if start != self.rows_done:
            raise ValueError(f"{self.folder}: window at row {start}, expected {self.rows_done}")
        rows = matrix.shape[0]
        if matrix.shape != (rows, self.dim) or start + rows > len(self.frame_ids):
            raise ValueError(f"{self.folder}: window of shape {matrix.shape} at row {start}")
        if self.record is None:
            self._create()
        data = np.ascontiguousarray(matrix, dtype=self.dtype)  # float16 is cast here, off the GPU's thread
        view = memoryview(data).cast("B")
        if self.writer is None:
            self.writer = DirectWriter(self.file_path)  # past the page cache: see direct_io
        if self.hasher is None:
            self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-checksum")
        checksum = self.hasher.submit(_checksum, view)  # computed while the rows are written
        self.writer.write(view, self.record["offset"] + start * self.row_bytes)
        # Not flushed here: a kill leaves the rows in the page cache, and after a power loss a
        # recorded window whose rows did not reach the disk fails its checksum and is recomputed.
        self.windows.append({"start": start, "rows": rows, "xxh3_64": checksum.result()})
        self.record["windows"] = self.windows
        atomic_write_text(self.progress_path, json.dumps(self.record, indent=1))

    @property
    def rows_done(self) -> int:
        return sum(w["rows"] for w in self.windows)

    def close(self) -> None:
        """Release the file (a stopped shard keeps its folder for the next run)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.hasher is not None:
            self.hasher.shutdown()
            self.hasher = None

    def finish(self) -> None:
        if self.rows_done != len(self.frame_ids):
            raise ShardError(f"{self.folder}: {self.rows_done} of {len(self.frame_ids)} rows embedded")
        if self.writer is not None:
            os.fsync(self.writer.fd)  # every row on disk before the rename makes the file visible
        self.close()
        if not self.frame_ids:  # nothing to write window by window
            write_shard_matrix(self.final_path, self.frame_ids, np.zeros((0, self.dim), self.dtype), self.name,
                               self.attrs, self.dtype)
        else:
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.file_path, self.final_path)  # every row was made durable before it was recorded
            fsync_dir(self.final_path.parent)
        self.discard()

    def discard(self) -> None:
        # Drop the record first: a kill while the file is being deleted must never leave a
        # progress record that names rows which are gone.
        self.close()
        self.record = None
        self.progress_path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
