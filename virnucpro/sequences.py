"""Reading FASTA, chunking reads and six-frame translation: the VirNucPro contract.

The semantics follow the original VirNucPro exactly (see README, "Method"):
- chunking: n = ceil(L / c) chunks of length c with overlaps spread evenly, the remainder R = n*c - L
  divided by n (not n - 1), so the last chunk may be shorter than c;
- translation: standard code, a codon holding anything but A/C/G/T is dropped (not 'X');
  frames F1-F3 on the chunk, R1-R3 on its reverse complement; a frame is kept iff its protein
  is non-empty and has no stop codon '*';
- the nucleotide paired with a frame is s[f : f + 3*len(protein) + 1].
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import InputError

BASES = "TCAG"
AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {
    a + b + c: AMINO_ACIDS[16 * i + 4 * j + k]
    for i, a in enumerate(BASES)
    for j, b in enumerate(BASES)
    for k, c in enumerate(BASES)
}
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
# IUPAC nucleotide codes: kept in sequences, and any codon holding one is dropped by the codon rule.
IUPAC_LETTERS = frozenset("ACGTUNRYSWKMBDHV")
_COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")


@dataclass(frozen=True)
class Read:
    """One FASTA record; `id` is the header up to the first whitespace (Biopython's record.id)."""

    id: str
    sequence: str


@dataclass(frozen=True)
class Chunk:
    id: str
    read_id: str
    sequence: str


@dataclass(frozen=True)
class FrameRecord:
    """A stop-free translated frame of one chunk, tagged with where it came from."""

    input_index: int
    read_id: str
    chunk_id: str
    frame_id: str
    nucleotide: str
    protein: str


# ---------------------------------------------------------------- chunking

def chunk_starts(length: int, chunk_length: int) -> list[int]:
    """Start offsets of the chunks of a sequence of `length` (each chunk is s[start:start+c])."""
    if length <= chunk_length:
        return [0]
    n = math.ceil(length / chunk_length)
    remainder = n * chunk_length - length
    base = remainder // n
    wide = remainder - base * (n - 1)
    # The original builds this list and consumes it pairwise with range(0, L, c); when `wide`
    # exceeds n - 1 only its first n entries are ever used, so the list is only built that far.
    overlaps = ([base + 1] * wide + [base] * max(0, n - 1 - wide) + [0])[:n]
    starts, shift = [], 0
    for k in range(n):
        starts.append(k * chunk_length - shift)
        shift += overlaps[k]
    return starts


def chunk_read(read: Read, chunk_length: int) -> list[Chunk]:
    seq = read.sequence.upper()
    return [
        Chunk(f"{read.id}_chunk_{k}", read.id, seq[start:start + chunk_length])
        for k, start in enumerate(chunk_starts(len(seq), chunk_length), start=1)
    ]


# ---------------------------------------------------------------- translation

def reverse_complement(seq: str) -> str:
    """Complement A/C/G/T only (other letters stay as they are), then reverse."""
    return seq.encode("ascii").translate(_COMPLEMENT)[::-1].decode("ascii")


def translate_frame(seq: str, offset: int) -> str:
    table = CODON_TABLE
    return "".join(
        table.get(seq[i:i + 3], "") for i in range(offset, len(seq) - 2, 3)
    )


def six_frames(chunk_seq: str) -> Iterator[tuple[str, str, str]]:
    """Yield (frame name, nucleotide slice, protein) for the stop-free frames of an uppercase chunk."""
    strands = (chunk_seq, reverse_complement(chunk_seq))
    for index, name in enumerate(FRAME_NAMES):
        strand = strands[index // 3]
        offset = index % 3
        protein = translate_frame(strand, offset)
        if protein and "*" not in protein:
            yield name, strand[offset:offset + 3 * len(protein) + 1], protein


def frames_of_read(read: Read, chunk_length: int, input_index: int = 0) -> list[FrameRecord]:
    frames = []
    for chunk in chunk_read(read, chunk_length):
        for name, nucleotide, protein in six_frames(chunk.sequence):
            frames.append(FrameRecord(input_index, read.id, chunk.id, chunk.id + name, nucleotide, protein))
    return frames


# ---------------------------------------------------------------- FASTA input

def _open_bytes(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_fasta(path: str | Path) -> Iterator[Read]:
    """Stream the records of a plain or gzipped FASTA file, validating as it goes.

    Errors are `InputError`s naming the file and record. Sequence letters are the IUPAC
    nucleotide codes (any case); anything else (gaps, '*', digits, spaces) is an error.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: input file not found; check the path in your inputs list")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FASTA file")
    try:
        handle = _open_bytes(path)
    except PermissionError:
        raise InputError(f"{path}: cannot read the file (permission denied); fix its permissions") from None
    seen: set[str] = set()
    header: str | None = None
    parts: list[str] = []
    line_no = 0
    any_record = False
    try:
        with handle:
            for raw in handle:
                line_no += 1
                if b"\x00" in raw:
                    raise InputError(f"{path}: line {line_no} holds binary data; this is not a FASTA file")
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if line.startswith(b">"):
                    if header is not None:
                        yield _finish_record(path, header, parts, seen)
                    header = _decode_header(path, line[1:], line_no)
                    parts = []
                    any_record = True
                    continue
                if header is None:
                    raise InputError(_not_fasta_message(path, line))
                text = line.decode("ascii", errors="replace").rstrip()
                parts.append(text)
            if header is not None:
                yield _finish_record(path, header, parts, seen)
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: the compressed file is truncated or corrupt ({exc}); re-copy or re-compress it") from None
    if not any_record:
        raise InputError(f"{path}: no FASTA records (the file is empty); remove it from the inputs list or fix it")


def _decode_header(path: Path, raw: bytes, line_no: int) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        # Headers are identifiers we copy to the outputs: keep every byte, never guess an encoding.
        return raw.decode("latin-1").strip()


def _not_fasta_message(path: Path, first_line: bytes) -> str:
    if first_line.startswith(b"@"):
        kind = "looks like FASTQ; convert it to FASTA (e.g. seqtk seq -A)"
    elif first_line.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        kind = "looks like HTML/XML (a failed download?); fetch the FASTA again"
    else:
        kind = "does not start with a '>' header; give a nucleotide FASTA file"
    return f"{path}: not a FASTA file: {kind}"


def _finish_record(path: Path, header: str, parts: list[str], seen: set[str]) -> Read:
    record_id = header.split(maxsplit=1)[0] if header.split() else ""
    if not record_id:
        raise InputError(f"{path}: a record has an empty header; give every record an id after '>'")
    if record_id in seen:
        raise InputError(f"{path}: duplicate read id '{record_id}'; read ids must be unique within a file")
    seen.add(record_id)
    sequence = "".join(parts)
    bad = set(sequence.upper()) - IUPAC_LETTERS
    if bad:
        shown = "".join(sorted(repr(c)[1:-1] for c in bad))
        raise InputError(
            f"{path}: record '{record_id}' has characters that are not IUPAC nucleotide codes ({shown}); "
            "remove gaps, stops, digits and spaces from the sequence"
        )
    return Read(record_id, sequence)


def read_inputs_list(list_path: str | Path) -> list[Path]:
    """Paths listed one per line; relative ones resolve against the list's folder; '#' comments."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise InputError(f"{list_path}: inputs list not found; give a text file with one FASTA path per line")
    try:
        text = list_path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, PermissionError) as exc:
        raise InputError(f"{list_path}: cannot read the inputs list ({exc.__class__.__name__}); give a UTF-8 text file") from None
    paths: list[Path] = []
    seen: set[Path] = set()
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not entry:
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_path.resolve().parent / path
        path = path.resolve()
        if path in seen:
            continue  # listed twice: one input, never counted twice
        seen.add(path)
        paths.append(path)
    if not paths:
        raise InputError(f"{list_path}: the inputs list names no files; add one FASTA path per line")
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: input file not found (listed in {list_path}); fix the path")
    return paths


def write_fasta_lines(handle, records: Iterable[tuple[str, str]]) -> None:
    """One-line FASTA, the way the original writes its _identified_* files."""
    for name, seq in records:
        handle.write(f">{name}\n{seq}\n")
