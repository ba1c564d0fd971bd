"""Chunking reads and six-frame translation: the VirNucPro method contract.

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

Reading FASTA (validation, the inputs list, duplicate ids) is `virnucpro.fasta`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

import numpy as np

BASES = "TCAG"
AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {
    a + b + c: AMINO_ACIDS[16 * i + 4 * j + k]
    for i, a in enumerate(BASES)
    for j, b in enumerate(BASES)
    for k, c in enumerate(BASES)
}
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
_COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")


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
    both = (text + text.translate(_COMPLEMENT)[::-1]).decode("ascii")
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
