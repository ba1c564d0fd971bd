"""Reading FASTA, chunking reads and six-frame translation: the VirNucPro contract.

The semantics follow the original VirNucPro exactly (see README, "Method"):
- chunking: n = ceil(L / c) chunks of length c with overlaps spread evenly, the remainder R = n*c - L
  divided by n (not n - 1), so the last chunk may be shorter than c;
- translation: standard code, a codon holding anything but A/C/G/T is dropped (not 'X');
  frames F1-F3 on the chunk, R1-R3 on its reverse complement; a frame is kept iff its protein
  is non-empty and has no stop codon '*';
- the nucleotide paired with a frame is s[f : f + 3*len(protein) + 1].

Two implementations of the translation live here. `six_frames` / `frames_of_read` spell the rules
out codon by codon with a dict: they are the reference (the test oracle and the benchmark's
baseline). `translate_stream` is the one the pipeline uses: it translates thousands of chunks per
numpy call and must produce byte-identical frames.

Input rules (README, "Input"): sequence letters are the IUPAC nucleotide codes in any case (a codon
holding an ambiguity code is dropped by the codon rule); '-', '*', digits and spaces inside a
sequence are an error naming the record; records without sequence or shorter than one codon
yield no frame and are counted; headers that are not UTF-8 are read as Latin-1 (every byte kept);
read ids must be unique within a file (the same id in two files is fine: results are per input).
"""

from __future__ import annotations

import array
import gzip
import io
import itertools
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

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
_IUPAC_BYTES = "".join(sorted(IUPAC_LETTERS)).encode() + "".join(sorted(IUPAC_LETTERS)).lower().encode()
_COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")
_COMPLEMENT_STR = str.maketrans("ACGT", "TGCA")


class Read(NamedTuple):
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


# ---------------------------------------------------------------- reference translation (codon by codon)

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
    """The reference implementation, one codon at a time (slow; the pipeline uses translate_stream)."""
    frames = []
    for chunk in chunk_read(read, chunk_length):
        for name, nucleotide, protein in six_frames(chunk.sequence):
            frames.append(FrameRecord(input_index, read.id, chunk.id, chunk.id + name, nucleotide, protein))
    return frames


# ---------------------------------------------------------------- fast translation (numpy, many chunks per call)
#
# Chunks are laid end to end in one buffer, each followed by 2-4 filler bytes so that every chunk
# starts at a multiple of 3: position p of the buffer is then row p // 3, column p % 3 of a
# (rows, 3) view. The codon starting at every position is computed once (a value 0..124 from the
# base codes). For a chunk of length m, the codons of frame F(f) are column f of the chunk's rows,
# and those of frame R(r), read right to left, are column (m - r) % 3 of the same rows. Codons that
# run into the filler are "dropped" codons, which the translation rule ignores anyway, so a stop
# anywhere in a chunk's rows of a column is a stop in that frame: one OR-reduction per chunk finds
# them. Only the kept frames are then cut into strings, each with one slice.

_BASE_CODES = bytes(b"TCAG".index(c) if c in b"TCAG" else 4 for c in bytes(range(256)).upper())
_NO_CODON = 124  # 25*4 + 5*4 + 4; a codon value holding a 4 (not A/C/G/T) is dropped; fits uint8
_DROPPED, _FORWARD_STOP, _REVERSE_STOP = 4, 1, 2


def _codon_tables() -> tuple[bytes, bytes, bytes]:
    """Lookup tables over codon values v = 25a + 5b + c (base codes a, b, c at positions q..q+2):
    forward amino acid, reverse-strand amino acid (complement, read right to left; "\0" when
    dropped), and flags (forward stop, reverse stop, or dropped)."""
    complement = (2, 3, 0, 1)
    forward, reverse, flags = bytearray(256), bytearray(256), bytearray(256)
    for value in range(256):
        a, b, c = value // 25, value // 5 % 5, value % 5
        if value > _NO_CODON or max(a, b, c) == 4:
            flags[value] = _DROPPED
            continue
        forward[value] = ord(AMINO_ACIDS[16 * a + 4 * b + c])
        reverse[value] = ord(AMINO_ACIDS[16 * complement[c] + 4 * complement[b] + complement[a]])
        flags[value] = _FORWARD_STOP * (forward[value] == ord("*")) + _REVERSE_STOP * (reverse[value] == ord("*"))
    return bytes(forward), bytes(reverse), bytes(flags)


_AA_FORWARD, _AA_REVERSE, _CODON_FLAGS = _codon_tables()
_FILLER = ("---", "--", "----")  # after a chunk of length m: _FILLER[m % 3] (at least 2, to a multiple of 3)
_COMPLEMENT_BYTES = bytes.maketrans(b"ACGT", b"TGCA")
BATCH_BASES = 1 << 20  # bases translated per numpy pass: keeps the work arrays within a few MB


@dataclass
class TranslatedChunks:
    """The stop-free frames of a list of chunks, in chunk order then F1..R3."""

    chunk: np.ndarray  # index of the chunk of each frame
    kind: np.ndarray  # 0..5 = F1..R3
    nucleotides: list[str]
    proteins: list[str]


def translate_chunks(sequences: list[str]) -> TranslatedChunks:
    """Six-frame translate chunk sequences (any case, each non-empty); equal to six_frames() on
    each uppercased chunk, many times faster."""
    count = len(sequences)
    lengths = np.fromiter(map(len, sequences), np.int64, count)
    residue = lengths % 3
    if count and (residue == residue[0]).all():
        filler = _FILLER[int(residue[0])]
        text = filler.join(sequences) + filler
    else:
        text = "".join([x for s in sequences for x in (s, _FILLER[len(s) % 3])])
    text = text.upper().encode("ascii")
    padded = lengths + np.array([3, 2, 4])[residue]
    starts = np.zeros(count, np.int64)
    np.cumsum(padded[:-1], out=starts[1:])
    codes = np.frombuffer(text.translate(_BASE_CODES), np.uint8)
    value = np.full(len(codes), _NO_CODON, np.uint8)  # value of the codon starting at each position
    value[:-2] = codes[:-2] * 25 + codes[1:-1] * 5 + codes[2:]
    value = value.tobytes()

    # stops: OR of the flags over each chunk's rows, per column
    flags = value.translate(_CODON_FLAGS)
    rows = np.frombuffer(flags, np.uint8).reshape(-1, 3)
    per_column = np.bitwise_or.reduceat(rows, starts // 3, axis=0) if count else np.zeros((0, 3), np.uint8)
    m = lengths[:, None]
    frame = np.arange(3)
    reverse_column = (m - frame) % 3  # the column holding R(r)
    has_stop = np.concatenate([(per_column & _FORWARD_STOP) > 0,
                               (np.take_along_axis(per_column, reverse_column, 1) & _REVERSE_STOP) > 0], axis=1)
    codons = np.maximum((m - frame) // 3, 0)  # in F(f), and in R(f)
    codons = np.concatenate([codons, codons], axis=1)
    residues = codons.copy()
    # dropped codons beyond those running into the filler after each chunk: ambiguity codes (rare)
    if flags.count(_DROPPED) > int((padded - lengths + np.minimum(lengths, 2)).sum()):
        residues -= _dropped_codons(np.frombuffer(flags, np.uint8), starts, lengths, 6 * count).reshape(-1, 6)
    kept = np.flatnonzero((~has_stop & (residues > 0)).ravel())
    chunk_of, kind_of = kept // 6, kept % 6

    # cut the kept frames. Proteins: the amino-acid strings of the 3 columns, forward then reverse
    # (the reverse ones reversed, so R frames read left to right); nucleotides: the text followed
    # by its reverse complement, where chunk [start, start+m) has its reverse complement at
    # [2N - start - m, 2N - start).
    total = len(value)
    by_column = np.frombuffer(value, np.uint8).reshape(-1, 3).T.copy()
    columns = [by_column[c].tobytes().translate(_AA_FORWARD) for c in range(3)] + \
              [by_column[c, ::-1].tobytes().translate(_AA_REVERSE) for c in range(3)]
    start, m, n, length = starts[chunk_of], lengths[chunk_of], codons.ravel()[kept], residues.ravel()[kept]
    is_forward = kind_of < 3
    f = kind_of % 3
    column = np.where(is_forward, f, 3 + (m - f) % 3)
    first_row = np.where(is_forward, start // 3, total // 3 - 1 - (start + m - 3 - f) // 3)
    protein_of = [c.decode("ascii") for c in columns]
    proteins = [protein_of[c][a:a + k] for c, a, k in zip(column.tolist(), first_row.tolist(), n.tolist())]
    for i in np.flatnonzero(length != n).tolist():
        proteins[i] = proteins[i].replace("\0", "")
    both = (text + text.translate(_COMPLEMENT_BYTES)[::-1]).decode("ascii")
    nt_start = np.where(is_forward, start + f, 2 * total - start - m + f)
    nt_end = nt_start + np.minimum(3 * length + 1, m - f)
    nucleotides = [both[a:b] for a, b in zip(nt_start.tolist(), nt_end.tolist())]
    return TranslatedChunks(chunk_of, kind_of, nucleotides, proteins)


def _dropped_codons(flags: np.ndarray, starts: np.ndarray, lengths: np.ndarray, frame_count: int) -> np.ndarray:
    """Dropped codons per frame (flat chunk * 6 + kind), not counting those that run into the filler."""
    at = np.flatnonzero(flags == _DROPPED)
    chunk = np.searchsorted(starts, at, side="right") - 1
    rel = at - starts[chunk]
    m = lengths[chunk]
    inside = rel + 3 <= m
    chunk, rel, m = chunk[inside], rel[inside], m[inside]
    return (np.bincount(chunk * 6 + rel % 3, minlength=frame_count)
            + np.bincount(chunk * 6 + 3 + (m - 3 - rel) % 3, minlength=frame_count))


@dataclass
class FrameBatch:
    """Stop-free frames of consecutive reads (one entry per frame, in output order), and the
    reads that ended in this batch with their totals (a long read's chunks may span batches)."""

    read_ids: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    frame_ids: list[str] = field(default_factory=list)
    nucleotides: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)
    # reads whose last chunk is in this batch, as columns
    finished_ids: list[str] = field(default_factory=list)
    finished_lengths: list[int] = field(default_factory=list)
    finished_chunks: list[int] = field(default_factory=list)
    finished_frames: list[int] = field(default_factory=list)


def _short_reads_batch(ids: list[str], sequences: list[str], lengths: list[int]) -> FrameBatch:
    """The common case: every read is one chunk (0 < length <= chunk length)."""
    done = translate_chunks(sequences)
    read_ids = [ids[i] for i in done.chunk.tolist()]
    chunk_ids = [i + "_chunk_1" for i in read_ids]
    frame_ids = [c + FRAME_NAMES[k] for c, k in zip(chunk_ids, done.kind.tolist())]
    frames = np.bincount(done.chunk, minlength=len(ids)).tolist()
    return FrameBatch(read_ids, chunk_ids, frame_ids, done.nucleotides, done.proteins,
                      ids, lengths, [1] * len(ids), frames)


def translate_stream(reads: Iterable[Read], chunk_length: int, batch_bases: int = BATCH_BASES) -> Iterator[FrameBatch]:
    """Chunk and six-frame translate reads in batches of about `batch_bases`; memory stays bounded
    by the batch (plus the longest read), whatever the number or length of the reads."""
    reads = iter(reads)
    group_size = 1024  # reads pulled at once, adapted so a group holds about batch_bases
    while True:
        group = list(itertools.islice(reads, group_size))
        if not group:
            return
        ids = [r[0] for r in group]
        sequences = [r[1] for r in group]
        lengths = list(map(len, sequences))
        bases = sum(lengths)
        group_size = max(1, min(1 << 16, group_size * batch_bases // max(bases, 1)))
        if min(lengths) > 0 and max(lengths) <= chunk_length:
            yield _short_reads_batch(ids, sequences, lengths)
        else:
            yield from _mixed_reads_batches(ids, sequences, chunk_length, batch_bases)


def _mixed_reads_batches(ids: list[str], sequences: list[str], chunk_length: int,
                         batch_bases: int) -> Iterator[FrameBatch]:
    """Reads of any length (empty, or many chunks); a long read's chunks are split over batches."""
    pieces: list[str] = []  # chunk sequences of the pending batch
    chunk_read: list[int] = []  # slot (in `open_reads`) of each chunk's read
    chunk_number: list[int] = []  # k of each chunk (chunk id = read id + "_chunk_" + k)
    open_reads: list[list] = []  # [id, length, chunks, frames, chunks still to come]
    batched = 0

    def flush() -> FrameBatch:
        nonlocal pieces, chunk_read, chunk_number, open_reads, batched
        batch = FrameBatch()
        if pieces:
            done = translate_chunks(pieces)
            for slot, frames in zip(chunk_read, np.bincount(done.chunk, minlength=len(pieces)).tolist()):
                open_reads[slot][3] += frames
            for ci, kind in zip(done.chunk.tolist(), done.kind.tolist()):
                read_id = open_reads[chunk_read[ci]][0]
                chunk_id = f"{read_id}_chunk_{chunk_number[ci]}"
                batch.read_ids.append(read_id)
                batch.chunk_ids.append(chunk_id)
                batch.frame_ids.append(chunk_id + FRAME_NAMES[kind])
            batch.nucleotides, batch.proteins = done.nucleotides, done.proteins
        for read_id, length, chunks, frames, to_come in open_reads:
            if not to_come:
                batch.finished_ids.append(read_id)
                batch.finished_lengths.append(length)
                batch.finished_chunks.append(chunks)
                batch.finished_frames.append(frames)
        pieces, chunk_read, chunk_number, batched = [], [], [], 0
        open_reads = [e for e in open_reads if e[4]]
        return batch

    for read_id, sequence in zip(ids, sequences):
        length = len(sequence)
        starts = chunk_starts(length, chunk_length)
        entry = [read_id, length, len(starts), 0, len(starts) if length else 0]
        open_reads.append(entry)
        if not length:
            continue
        for k, start in enumerate(starts, start=1):
            pieces.append(sequence[start:start + chunk_length])
            chunk_read.append(len(open_reads) - 1)
            chunk_number.append(k)
            entry[4] -= 1
            batched += len(pieces[-1])
            if batched >= batch_bases:
                yield flush()
    if open_reads:
        yield flush()


def frames_fast(reads: Iterable[Read], chunk_length: int, input_index: int = 0) -> Iterator[FrameRecord]:
    """translate_stream as FrameRecords (convenient; the pipeline writes the batches directly)."""
    for batch in translate_stream(reads, chunk_length):
        yield from map(FrameRecord, [input_index] * len(batch.frame_ids), batch.read_ids, batch.chunk_ids,
                       batch.frame_ids, batch.nucleotides, batch.proteins)


def write_translation(fasta: str | Path, chunk_length: int, nucleotide_out, protein_out) -> int:
    """The original's _identified_nucleotide / _identified_protein FASTA files; returns frames written."""
    total = 0
    for batch in translate_stream(read_records(fasta), chunk_length):
        nucleotide_out.write("".join(f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.nucleotides)))
        protein_out.write("".join(f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.proteins)))
        total += len(batch.frame_ids)
    return total


# ---------------------------------------------------------------- FASTA input

BLOCK_BYTES = 4 << 20  # FASTA is read in blocks of whole records of about this size


def _open_bytes(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_error(path: Path, exc: BaseException) -> InputError:
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return InputError(f"{path}: the compressed file is truncated or corrupt ({exc}); re-copy or re-compress it")
    if isinstance(exc, PermissionError):
        return InputError(f"{path}: cannot read the file (permission denied); fix its permissions")
    if isinstance(exc, IsADirectoryError):
        return InputError(f"{path}: is a directory, not a FASTA file; list the FASTA files inside it")
    reason = getattr(exc, "strerror", None) or str(exc)
    return InputError(f"{path}: cannot read the file ({reason}); check the file and the disk it is on")


@dataclass
class Block:
    """Whole FASTA records read from one file (`first_line` = line number of its first byte)."""

    path: Path
    data: bytes
    first_line: int
    is_first: bool


def fasta_blocks(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """Cut a plain or gzipped FASTA file into blocks of whole records (each block but the first
    starts with '>'); a block holds about `block_bytes`, or one record if that is longer."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: input file not found; check the path in your inputs list")
    try:
        handle = _open_bytes(path)
    except OSError as exc:
        raise _read_error(path, exc) from None
    parts: list[bytes] = []
    line, first = 1, True
    try:
        with handle:
            while True:
                data = handle.read(block_bytes)
                if not data:
                    break
                cut = data.rfind(b"\n>")
                if cut >= 0:
                    parts.append(data[:cut + 1])
                    rest = data[cut + 1:]
                elif data.startswith(b">") and parts and parts[-1].endswith(b"\n"):
                    rest = data
                else:
                    parts.append(data)  # inside a record longer than a block: keep reading
                    continue
                block = b"".join(parts)
                parts = [rest]
                yield Block(path, block, line, first)
                line += block.count(b"\n")
                first = False
            block = b"".join(parts)
            if block:
                yield Block(path, block, line, first)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_error(path, exc) from None


def _decode_header(raw: bytes) -> str:
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


def _bad_letters_message(path: Path, record_id: str, sequence: bytes) -> str:
    bad = sorted(set(sequence.translate(None, _IUPAC_BYTES).decode("latin-1")))
    shown = ", ".join(repr(c) for c in bad[:8]) + (", ..." if len(bad) > 8 else "")
    return (f"{path}: record '{record_id}' has characters that are not IUPAC nucleotide codes ({shown}); "
            "remove gaps, stops, digits and spaces from the sequence")


def _clean_lines(body: bytes) -> bytes:
    """Sequence lines joined, trailing blanks of each line dropped (whitespace inside stays, an error)."""
    return b"".join(line.rstrip() for line in body.split(b"\n"))


def parse_block(block: Block) -> list[tuple[str, str]]:
    """The validated records of a block as (id, sequence) pairs (the fields of a `Read`, without
    the cost of building one per record); errors name the file and the record (or line)."""
    path, data = block.path, block.data
    if b"\x00" in data:
        line = block.first_line + data[:data.index(b"\x00")].count(b"\n")
        raise InputError(f"{path}: line {line} holds binary data; this is not a FASTA file")
    text = data.lstrip() if block.is_first else data
    if not text.startswith(b">"):
        if text:
            raise InputError(_not_fasta_message(path, text.split(b"\n", 1)[0]))
        return []
    return _one_line_records(text) or _records(path, text)


def _one_line_records(text: bytes) -> list[Read] | None:
    """The common layout, fast: UTF-8, LF, one sequence line per record, valid letters; None
    for anything else (then `_records` parses it one record at a time, and reports problems)."""
    if b"\r" in text:
        return None
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if lines[-1] == "":
        lines.pop()
    headers, sequences = lines[0::2], lines[1::2]
    if len(headers) != len(sequences) or "".join([h[:1] for h in headers]) != ">" * len(headers):
        return None
    joined = "".join(sequences)
    if not joined.isascii() or joined.encode("ascii").translate(None, _IUPAC_BYTES):
        return None  # a '>' line where a sequence should be, blank or bad letters: the slow path
    if _WHITESPACE.search("".join(headers)):
        names = [h[1:].split(None, 1) for h in headers]  # id = up to the first whitespace
        if not all(names):
            return None
        ids = [n[0] for n in names]
    else:
        ids = [h[1:] for h in headers]
        if not all(ids):
            return None
    return list(zip(ids, sequences))


_WHITESPACE = re.compile(r"\s")


def _records(path: Path, text: bytes) -> list[tuple[str, str]]:
    reads = []
    for record in text[1:].split(b"\n>"):
        header, _, body = record.partition(b"\n")
        name = _decode_header(header)
        record_id = name.split(maxsplit=1)[0] if name else ""
        if not record_id:
            raise InputError(f"{path}: a record has an empty header; give every record an id after '>'")
        sequence = body.translate(None, b"\r\n")
        if sequence.translate(None, _IUPAC_BYTES):
            sequence = _clean_lines(body.replace(b"\r", b""))
            if sequence.translate(None, _IUPAC_BYTES):
                raise InputError(_bad_letters_message(path, record_id, sequence))
        reads.append((record_id, sequence.decode("ascii")))
    return reads


_PRIME = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_PRIME_INVERSE = pow(_PRIME, -1, 1 << 64)


def _powers(base: int, count: int) -> np.ndarray:
    powers = np.full(count, base, np.uint64)
    powers[0] = 1
    return np.cumprod(powers, out=powers)  # wraps modulo 2**64, as intended


def id_hashes(ids: Iterable[str]) -> bytes:
    """64-bit digests of read ids, packed for `DuplicateIds`; the same in every process (workers
    hash their blocks). A polynomial hash of each id's UTF-8 bytes computed for all ids at once
    from prefix sums, then mixed (splitmix64) so that similar ids spread over all 64 bits."""
    ids = list(ids)
    if not ids:
        return b""
    data = np.frombuffer(("\n".join(ids) + "\n").encode("utf-8", "surrogatepass"), np.uint8)
    ends = np.flatnonzero(data == 10)  # ids never hold a newline
    starts = np.zeros_like(ends)
    starts[1:] = ends[:-1] + 1
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * _powers(_PRIME, len(data)), out=prefix[1:])
    digest = (prefix[ends] - prefix[starts]) * _powers(_PRIME_INVERSE, len(data))[starts]
    digest ^= (ends - starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        digest ^= digest >> np.uint64(shift)
        digest *= np.uint64(multiplier)
    digest ^= digest >> np.uint64(31)
    return digest.tobytes()


class DuplicateIds:
    """Duplicate read ids of one file, found with 8 bytes per read instead of a set of strings
    (10 M reads: 80 MB, not ~1 GB). Colliding digests are confirmed by re-reading the file."""

    def __init__(self, path: Path):
        self.path = path
        self.digests = array.array("Q")

    def add(self, packed_digests: bytes) -> None:
        self.digests.frombytes(packed_digests)

    def check(self) -> None:
        values = np.sort(np.frombuffer(self.digests, np.uint64))
        repeated = values[1:][values[1:] == values[:-1]]
        if not len(repeated):
            return
        seen: set[str] = set()
        for block in fasta_blocks(self.path):
            ids = [read_id for read_id, _ in parse_block(block)]
            digests = np.frombuffer(id_hashes(ids), np.uint64)
            for index in np.flatnonzero(np.isin(digests, repeated)).tolist():
                read_id = ids[index]
                if read_id in seen:
                    raise InputError(f"{self.path}: duplicate read id '{read_id}'; read ids must be unique "
                                     "within a file (rename or remove the repeated record)")
                seen.add(read_id)


def read_fasta(path: str | Path) -> Iterator[Read]:
    """Stream the records of a plain or gzipped FASTA file, validating as it goes.

    Errors are `InputError`s naming the file and record. Sequence letters are the IUPAC
    nucleotide codes (any case); anything else (gaps, '*', digits, spaces) is an error.
    A duplicated id is reported after the last record (the check keeps 8 bytes per read).
    """
    return map(Read._make, read_records(path))


def read_records(path: str | Path) -> Iterator[tuple[str, str]]:
    """read_fasta's records as (id, sequence) pairs, cheaper than Reads by the million."""
    path = Path(path)
    duplicates = DuplicateIds(path)
    records = 0
    for block in fasta_blocks(path):
        reads = parse_block(block)
        duplicates.add(id_hashes(read_id for read_id, _ in reads))
        records += len(reads)
        yield from reads
    if not records:
        raise InputError(empty_file_message(path))
    duplicates.check()


def empty_file_message(path: Path) -> str:
    return f"{path}: no FASTA records (the file is empty); remove it from the inputs list or fix it"


def sniff_fasta(path: Path) -> None:
    """Cheap checks of the first bytes, so an obviously wrong file fails when the run is planned."""
    try:
        with _open_bytes(path) as handle:
            head = handle.read(4096)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_error(path, exc) from None
    if not head.strip():
        if len(head) < 4096:
            raise InputError(empty_file_message(path))
        return
    if b"\x00" in head:
        raise InputError(f"{path}: holds binary data; this is not a FASTA file")
    first = head.lstrip(b"\r\n\t ").split(b"\n", 1)[0]
    if not first.startswith(b">"):
        raise InputError(_not_fasta_message(path, first))


def read_inputs_list(list_path: str | Path) -> list[Path]:
    """Paths listed one per line; relative ones resolve against the list's folder; '#' comments.

    Paths are kept as listed (made absolute, not resolved through symlinks) so messages name what
    the user wrote; the same file listed twice (even through a symlink) is one input.
    """
    list_path = Path(list_path)
    if list_path.is_dir():
        raise InputError(f"{list_path}: is a directory; give a text file with one FASTA path per line")
    if not list_path.is_file():
        raise InputError(f"{list_path}: inputs list not found; give a text file with one FASTA path per line")
    try:
        text = list_path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{list_path}: cannot read the inputs list ({exc.__class__.__name__}); "
                         "give a UTF-8 text file") from None
    if text.startswith(">"):
        raise InputError(f"{list_path}: looks like a FASTA file, not an inputs list; write a text file that lists it")
    paths: list[Path] = []
    seen: set[Path] = set()
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not entry:
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_path.absolute().parent / path
        path = Path(os.path.normpath(path))
        key = path.resolve()
        if key in seen:
            continue  # listed twice: one input, never counted twice
        seen.add(key)
        paths.append(path)
    if not paths:
        raise InputError(f"{list_path}: the inputs list names no files; add one FASTA path per line")
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a FASTA file (listed in {list_path}); "
                             "list the files inside it")
        if not path.is_file():
            broken = " (a broken symbolic link)" if path.is_symlink() else ""
            raise InputError(f"{path}: input file not found{broken} (listed in {list_path}); fix the path")
        sniff_fasta(path)
    return paths
