"""On-disk formats shared by stages: shard frame tables and HDF5 matrices (embeddings, scores).

HDF5 layout: dataset `ids` (UTF-8 strings) and one float32 matrix [N, D], rows in shard order.
Every reader checks the row count and the ids against the shard's frame table, so a partial or
stale file is refused instead of silently shifting ids against rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .atomic import atomic_path, atomic_write_text
from .errors import ShardError
from .sequences import FrameRecord

FRAME_COLUMNS = ("input_index", "read_id", "chunk_id", "frame_id", "nucleotide", "protein")


# ---------------------------------------------------------------- frame tables

def frame_line(frame: FrameRecord) -> str:
    return (f"{frame.input_index}\t{frame.read_id}\t{frame.chunk_id}\t{frame.frame_id}\t"
            f"{frame.nucleotide}\t{frame.protein}\n")


@dataclass
class ShardFrames:
    """The frames of one shard as columns (what the embedding stages need)."""

    input_index: np.ndarray
    read_ids: list[str]
    chunk_ids: list[str]
    frame_ids: list[str]
    nucleotides: list[str]
    proteins: list[str]

    def __len__(self) -> int:
        return len(self.frame_ids)


def first_malformed_line(path: Path) -> int:
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if number > 1 and (not line.endswith("\n") or line.count("\t") != len(FRAME_COLUMNS) - 1
                               or not line.split("\t", 1)[0].isdigit()):
                return number
    return number


def read_shard_frames(path: Path) -> ShardFrames:
    """A shard's frame table as columns; a truncated or malformed table is refused.

    Read whole and split once (every stage reads its shards' tables, consensus all of them):
    a complete table ends with a newline and has exactly five tabs per line.
    """
    if not path.exists():
        raise ShardError(f"{path}: shard frame table missing; the prepare stage must run first")
    with open(path, encoding="utf-8", newline="") as handle:
        if handle.readline().rstrip("\n").split("\t") != list(FRAME_COLUMNS):
            raise ShardError(f"{path}: not a frame table (bad header); re-run with --restart")
        text = handle.read()
    rows, complete = text.count("\n"), not text or text.endswith("\n")
    text = text.replace("\n", "\t")  # rebinding frees the original: a shard's table can be ~1 GB
    fields = text.split("\t")
    del text
    width = len(FRAME_COLUMNS)
    try:
        if not complete or len(fields) != width * rows + 1:
            raise ValueError
        input_index = np.array(fields[0:-1:width]).astype(np.int32) if rows else np.zeros(0, np.int32)
        if (input_index < 0).any():
            raise ValueError
    except ValueError:
        raise ShardError(f"{path}: line {first_malformed_line(path)} is truncated or malformed, so the file is "
                         "incomplete; re-run the same command (or add --restart)") from None
    return ShardFrames(input_index, *(fields[column::width] for column in range(1, width)))


# ---------------------------------------------------------------- HDF5 matrices

_STR = h5py.string_dtype("utf-8")


def write_matrix(path: Path, ids: list[str], matrix: np.ndarray, name: str = "embeddings", attrs: dict | None = None) -> None:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"{path}: {len(ids)} ids but matrix of shape {matrix.shape}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
            h5.create_dataset(name, data=matrix)
            for key, value in (attrs or {}).items():
                h5.attrs[key] = value


@contextlib.contextmanager
def open_matrix(path: Path, expected_ids: list[str] | None = None, name: str = "embeddings",
                dim: int | None = None) -> Iterator[tuple[list[str], h5py.Dataset]]:
    """Open an HDF5 matrix after checking it: ids, row count and width; rows are read lazily."""
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise ShardError(f"{path}: missing; its stage has not finished for this shard") from None
    except OSError as exc:
        raise ShardError(f"{path}: unreadable or incomplete HDF5 ({exc}); the shard will be recomputed") from None
    with h5:
        try:
            ids = [x.decode("utf-8") if isinstance(x, bytes) else x for x in h5["ids"][:]]
            matrix = h5[name]
        except (OSError, KeyError) as exc:
            raise ShardError(f"{path}: unreadable or incomplete HDF5 ({exc}); the shard will be recomputed") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ShardError(f"{path}: {len(ids)} ids but {matrix.shape[0]} rows; the shard will be recomputed")
        if dim is not None and matrix.shape[1] != dim:
            raise ShardError(f"{path}: rows have {matrix.shape[1]} values, expected {dim}")
        if expected_ids is not None and ids != expected_ids:
            missing = len(expected_ids) - len(ids)
            detail = f"{abs(missing)} frame(s) {'missing' if missing > 0 else 'extra'}" if missing else "ids in a different order"
            raise ShardError(f"{path}: does not match the shard's frames ({detail}); refusing to pair ids with the wrong rows")
        yield ids, matrix


def read_matrix(path: Path, expected_ids: list[str] | None = None, name: str = "embeddings",
                dim: int | None = None) -> tuple[list[str], np.ndarray]:
    with open_matrix(path, expected_ids, name, dim) as (ids, matrix):
        try:
            return ids, matrix[:]
        except OSError as exc:
            raise ShardError(f"{path}: unreadable rows ({exc}); the shard will be recomputed") from None


# ---------------------------------------------------------------- checkpointed embedding

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardCheckpoint:
    """Embeddings of one shard written as they are computed, so a killed task loses little.

    Each window of rows is written as its own HDF5 piece (atomically) and then recorded in
    `progress.json` (atomically) with its row range and SHA-256. A piece that is not recorded,
    or whose hash or ids disagree, is never trusted: resumption starts after the last good piece.
    `finish()` concatenates the pieces into the final file by atomic rename.
    """

    def __init__(self, folder: Path, final_path: Path, frame_ids: list[str], dim: int):
        self.folder = folder
        self.final_path = final_path
        self.frame_ids = frame_ids
        self.dim = dim
        self.pieces: list[dict] = []

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    def resume(self) -> int:
        """Rows already safely on disk (0 when starting fresh or when the record is unusable)."""
        self.pieces = []
        try:
            record = json.loads(self.progress_path.read_text())
            pieces = record["pieces"]
            if record.get("rows_total") != len(self.frame_ids) or record.get("dim") != self.dim:
                raise ValueError("different shard")
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            self.discard()
            return 0
        row = 0
        for piece in pieces:
            path = self.folder / piece["file"]
            try:
                ok = piece["start"] == row and _sha256(path) == piece["sha256"]
                if ok:
                    read_matrix(path, self.frame_ids[row:row + piece["rows"]], dim=self.dim)
            except (OSError, ShardError):
                ok = False
            if not ok:
                break  # everything from a bad piece on is recomputed
            self.pieces.append(piece)
            row += piece["rows"]
        return row

    def append(self, start: int, matrix: np.ndarray) -> None:
        rows = matrix.shape[0]
        name = f"rows-{start:09d}-{start + rows:09d}.h5"
        path = self.folder / name
        write_matrix(path, self.frame_ids[start:start + rows], matrix)
        self.pieces.append({"file": name, "start": start, "rows": rows, "sha256": _sha256(path)})
        atomic_write_text(self.progress_path, json.dumps(
            {"rows_total": len(self.frame_ids), "dim": self.dim, "pieces": self.pieces}, indent=1))

    @property
    def rows_done(self) -> int:
        return sum(p["rows"] for p in self.pieces)

    def finish(self, attrs: dict | None = None) -> None:
        if self.rows_done != len(self.frame_ids):
            raise ShardError(f"{self.folder}: {self.rows_done} of {len(self.frame_ids)} rows embedded")
        # Stream piece by piece: a shard's ESM-2 matrix can be several GB.
        with atomic_path(self.final_path) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.create_dataset("ids", data=np.array(self.frame_ids, dtype=object), dtype=_STR)
                out = h5.create_dataset("embeddings", shape=(len(self.frame_ids), self.dim), dtype=np.float32)
                for piece in self.pieces:
                    _, rows = read_matrix(self.folder / piece["file"], dim=self.dim)
                    out[piece["start"]:piece["start"] + piece["rows"]] = rows
                for key, value in (attrs or {}).items():
                    h5.attrs[key] = value
        self.discard()

    def discard(self) -> None:
        # Drop the record first: a kill while the pieces are being deleted must never leave a
        # progress record that names pieces which are gone.
        self.progress_path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
