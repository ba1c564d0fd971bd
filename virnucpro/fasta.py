"""Reading FASTA input: plain or gzipped files, validated, in blocks of whole records.

Input rules (README, "Input"): sequence letters are the IUPAC nucleotide codes in any case (a codon
holding an ambiguity code is dropped by the codon rule); RNA is read as DNA (U as T, here, so every
reader and every output sees T); '-', '*', digits and spaces inside a sequence are an error naming
the record; records without sequence or shorter than one codon yield no frame and are counted;
headers that are not UTF-8 are read as Latin-1 (every byte kept) and are at most
MAX_HEADER_CHARACTERS long; read ids must be unique within a file (the same id in two files is
fine: results are per input).
The same reader, with the protein alphabet, reads the proteins `embed esm2` is given.

Every FASTA the package reads goes through here: `fasta_blocks` + `parse_block` (what prepare's
workers run), `read_records` / `read_fasta` (streams with the duplicate-id check), and the inputs
list (`read_inputs_list`). Biopython's parser is not used: it does not validate, and the block
reader is what lets prepare parse in parallel worker processes.
"""

from __future__ import annotations

import array
import errno
import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import console
from .classifier_meta import CLASS_NAMES  # the two labels a LABELS file gives
from .errors import InputError
from .json_files import JsonFileError, not_regular_kind, read_file_bytes
from .sequences import Read, translate_stream

# IUPAC nucleotide codes: kept in sequences, and any codon holding one is dropped by the codon rule.
IUPAC_LETTERS = frozenset("ACGTNRYSWKMBDHV")
# A header line longer than this is refused: ids are copied into every table and output, and a
# 200 MB header once cost 8.8 GB of memory and 7.1 GB of disk before anything failed.
MAX_HEADER_CHARACTERS = 10_000
# A record longer than this (bytes in the file: sequence, line breaks and header) is refused as it
# is read. VirNucPro classifies reads and contigs cut into 300/500 bp chunks, and prepare holds a
# whole record and its six-frame translation in memory (one 500 Mbp read from a 1.7 MB .gz once
# took 7.8 GB). 32 MB keeps the largest bacterial chromosomes (~16 Mbp) and giant viruses; a
# record at the limit costs one prepare worker ~0.75 GB at worst (no stop codon: every frame kept).
MAX_RECORD_BYTES = 32_000_000


def _both_cases(letters: str) -> bytes:
    letters = "".join(sorted(letters))
    return letters.upper().encode() + letters.lower().encode()


@dataclass(frozen=True)
class Alphabet:
    """The letters a sequence may hold, and what the error says when it holds others."""

    letters: bytes
    described: str
    advice: str
    reads_rna: bool = False  # U is accepted and read as T


NUCLEOTIDE = Alphabet(_both_cases("".join(IUPAC_LETTERS) + "U"), "IUPAC nucleotide codes",
                      "remove gaps, stops, digits and spaces from the sequence", reads_rna=True)
# Protein letters for `embed esm2`: the ESM alphabet's one-letter residues (its tokenizer decides
# what it can encode), plus '*' and '-' which it rejects with its own message.
PROTEIN = Alphabet(_both_cases("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + b"*-.", "protein letters",
                   "remove digits and spaces from the sequence")
ESM_LETTERS = "ABCDEFGHIKLMNOPQRSTUVWXYZ.-"  # what fair-esm's ESM-2 alphabet encodes one letter at a time


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
    starts with '>'); a block holds about `block_bytes`, or one record if that is longer. Line ends
    are LF, CRLF or, in a file with no LF, CR alone (classic Mac OS): read as LF here."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: input file not found; check the path in your inputs list")
    try:
        handle = _open_bytes(path)
    except OSError as exc:
        raise _read_error(path, exc) from None
    parts: list[bytes] = []
    line, first = 1, True
    lone_cr = None  # classic Mac line ends (CR alone), decided on the first read
    try:
        with handle:
            header_open = False  # the pending record's header line has not ended yet
            while True:
                data = handle.read(block_bytes)
                if not data:
                    break
                if lone_cr is None:  # no LF at all, and a CR that is not the last byte (the half of a CRLF)
                    lone_cr = b"\n" not in data and b"\r" in data[:-1]
                if lone_cr:
                    data = data.replace(b"\r", b"\n")
                cut = data.rfind(b"\n>")
                if cut >= 0:
                    parts.append(data[:cut + 1])
                    rest = data[cut + 1:]
                elif data.startswith(b">") and parts and parts[-1].endswith(b"\n"):
                    rest = data
                else:
                    # inside a record longer than a block: keep reading, unless it is all header
                    header_open = (header_open or not parts) and b"\n" not in data
                    parts.append(data)
                    if sum(map(len, parts)) > MAX_RECORD_BYTES:
                        raise InputError(_long_record_message(path, line, parts[0]))
                    if header_open and sum(map(len, parts)) > 4 * MAX_HEADER_CHARACTERS:
                        # fail now, not after reading a header of gigabytes into memory
                        start = parts[0].find(b">")
                        if start >= 0 and not parts[0][:start].strip():
                            raise InputError(_long_header_message(path, line + parts[0][:start].count(b"\n"),
                                                                  parts[0][start + 1:start + 41]))
                    continue
                block = b"".join(parts)
                parts = [rest]
                header_open = b"\n" not in rest
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


def _long_header_message(path: Path, line: int, start: bytes) -> str:
    shown = _decode_header(start[:40])
    return (f"{path}: line {line}: the header of record '{shown}...' is longer than {MAX_HEADER_CHARACTERS:,} "
            f"characters (the limit); shorten the read ids and descriptions")


def _long_record_message(path: Path, line: int, start: bytes) -> str:
    at = max(start.find(b">"), 0)
    line += start[:at].count(b"\n")
    words = start[at + 1:at + 200].split(maxsplit=1)
    name = _decode_header(words[0][:40]) if words else "?"
    return (f"{path}: line {line}: record '{name}' is longer than "
            f"{MAX_RECORD_BYTES:,} bytes (the limit: VirNucPro classifies reads and contigs in 300/500 bp chunks, and "
            f"a longer record is held whole in memory); split it into pieces (e.g. seqkit sliding) or leave it out")


def _bad_letters_message(path: Path, record_id: str, sequence: bytes, alphabet: Alphabet) -> str:
    bad = sorted(set(sequence.translate(None, alphabet.letters).decode("latin-1")))
    shown = ", ".join(repr(c) for c in bad[:8]) + (", ..." if len(bad) > 8 else "")
    return (f"{path}: record '{record_id}' has characters that are not {alphabet.described} ({shown}); "
            f"{alphabet.advice}")


def _clean_lines(body: bytes) -> bytes:
    """Sequence lines joined, trailing blanks of each line dropped (whitespace inside stays, an error)."""
    return b"".join(line.rstrip() for line in body.split(b"\n"))


class Records(list):
    """parse_block's (id, sequence) pairs, and how many of those records were RNA (held U)."""

    rna_records = 0


def parse_block(block: Block, alphabet: Alphabet = NUCLEOTIDE) -> Records:
    """The validated records of a block as (id, sequence) pairs (the fields of a `Read`, without
    the cost of building one per record); errors name the file and the record (or line). RNA is
    turned into DNA here, the one place every reader goes through (U -> T, u -> t)."""
    path, data = block.path, block.data
    if b"\x00" in data:
        line = block.first_line + data[:data.index(b"\x00")].count(b"\n")
        raise InputError(f"{path}: line {line} holds binary data; this is not a FASTA file")
    text = data.lstrip() if block.is_first else data
    if not text.startswith(b">"):
        if text:
            raise InputError(_not_fasta_message(path, text.split(b"\n", 1)[0]))
        return Records()
    records = Records(_one_line_records(text, alphabet.letters) or _records(block, text, alphabet))
    if alphabet.reads_rna:
        _rna_to_dna(records, data)
    return records


_U_TO_T = str.maketrans("Uu", "Tt")


def _rna_to_dna(records: Records, data: bytes) -> None:
    if b"U" not in data and b"u" not in data:
        return  # DNA, the common case: two scans of the block, no copy
    for index, (read_id, sequence) in enumerate(records):
        if "U" in sequence or "u" in sequence:
            records[index] = (read_id, sequence.translate(_U_TO_T))
            records.rna_records += 1


def rna_warning(path: Path, rna_records: int) -> None:
    """One warning per input file that held RNA (called once the whole file has been read)."""
    if rna_records:
        console.warn(f"{path}: {rna_records} record(s) are RNA (hold U); read as DNA with U as T, "
                     "so the outputs show T")


def _one_line_records(text: bytes, letters: bytes) -> list[tuple[str, str]] | None:
    """The common layout, fast: UTF-8, LF, one sequence line per record, valid letters, short
    headers; None for anything else (then `_records` parses it one record at a time, and reports
    problems)."""
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
    if max(map(len, headers)) > MAX_HEADER_CHARACTERS:
        return None
    joined = "".join(sequences)
    if not joined.isascii() or joined.encode("ascii").translate(None, letters):
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


def _records(block: Block, text: bytes, alphabet: Alphabet) -> list[tuple[str, str]]:
    path = block.path
    reads = []
    offset = len(block.data) - len(text)  # of the record's '>' in the block
    for record in text[1:].split(b"\n>"):
        header, _, body = record.partition(b"\n")
        name = _decode_header(header)
        if len(name) > MAX_HEADER_CHARACTERS:
            line = block.first_line + block.data[:offset].count(b"\n")
            raise InputError(_long_header_message(path, line, header[:40]))
        offset += len(record) + 2
        record_id = name.split(maxsplit=1)[0] if name else ""
        if not record_id:
            raise InputError(f"{path}: a record has an empty header; give every record an id after '>'")
        sequence = body.translate(None, b"\r\n")
        if sequence.translate(None, alphabet.letters):
            sequence = _clean_lines(body.replace(b"\r", b""))
            if sequence.translate(None, alphabet.letters):
                raise InputError(_bad_letters_message(path, record_id, sequence, alphabet))
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

    def __init__(self, path: Path, alphabet: Alphabet = NUCLEOTIDE):
        self.path = path
        self.alphabet = alphabet
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
            ids = [read_id for read_id, _ in parse_block(block, self.alphabet)]
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


def read_records(path: str | Path, alphabet: Alphabet = NUCLEOTIDE) -> Iterator[tuple[str, str]]:
    """read_fasta's records as (id, sequence) pairs, cheaper than Reads by the million; with
    `alphabet=PROTEIN` the same reader (and messages) for protein FASTA."""
    path = Path(path)
    duplicates = DuplicateIds(path, alphabet)
    records = 0
    rna_records = 0
    for block in fasta_blocks(path):
        reads = parse_block(block, alphabet)
        duplicates.add(id_hashes(read_id for read_id, _ in reads))
        records += len(reads)
        rna_records += reads.rna_records
        yield from reads
    if not records:
        raise InputError(empty_file_message(path))
    duplicates.check()
    rna_warning(path, rna_records)


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
    """Paths listed one per line (UTF-8, a leading BOM ignored, LF or CRLF); relative ones resolve
    against the list's folder. '#' starts a comment at the start of a line or after whitespace, so
    `run#1.fa` is a file name and `reads.fa  # old run` is `reads.fa`.

    Paths are kept as listed (made absolute, not resolved through symlinks) so messages name what
    the user wrote; the same file listed twice (even through a symlink or a hard link) is one input.
    """
    list_path = Path(list_path)
    text = read_list_text(list_path, "inputs list", "one FASTA path per line")
    if text.startswith(">"):
        raise InputError(f"{list_path}: looks like a FASTA file, not an inputs list; write a text file that lists it")
    listed = [path for path in map(_listed_path, text.splitlines()) if path is not None]
    if not listed:
        raise InputError(f"{list_path}: the inputs list names no files; add one FASTA path per line")
    paths: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for entry in listed:
        try:
            path, identity = listed_file(entry, list_path)
        except InputError:
            refuse_labels_file(list_path, str(entry))
            raise
        if identity in seen:
            continue  # listed twice: one input, never counted twice
        seen.add(identity)
        paths.append(path)
    for path in paths:
        sniff_fasta(path)
    return paths


MAX_LIST_BYTES = 64 << 20  # a list of paths: a million lines fit


def refuse_labels_file(list_path: Path, entry: str) -> None:
    """An inputs list line that is no file but a FASTA path and its label: the user gave a LABELS
    file where an inputs list goes (`run`, or `submit` without --kind); say so, and what to type."""
    columns = entry.split("\t") if "\t" in entry else entry.split()
    if len(columns) in (2, 3) and columns[1].strip().lower() in CLASS_NAMES:
        raise InputError(f"{list_path}: a LABELS file (FASTA, label{', GenBank' if len(columns) == 3 else ''} per "
                         "line), not an inputs list of FASTA files; train or evaluate with it: 'virnucpro-slurm "
                         "train|evaluate LABELS', or 'submit LABELS --kind train' (or --kind evaluate)")


def read_list_text(list_path: Path, noun: str, lines: str) -> str:
    """A list file's text (UTF-8, a leading BOM ignored), or one line saying why it cannot be read;
    `noun` names the list ("inputs list"), `lines` what it holds ("one FASTA path per line").
    A FIFO or a device is refused without being opened for reading (it would block, or never end)."""
    try:
        kind = not_regular_kind(os.stat(list_path).st_mode)
    except FileNotFoundError:
        raise InputError(f"{list_path}: {noun} not found; give a text file with {lines}") from None
    except OSError as exc:
        raise InputError(f"{list_path}: cannot reach the {noun} ({exc.strerror or exc}); check the path") from None
    if kind == "a folder":
        raise InputError(f"{list_path}: is a directory; give a text file with {lines}")
    if kind:
        raise InputError(f"{list_path}: is {kind}, not a text file; write the {noun} to a file with {lines} and "
                         "give that")
    try:
        return read_file_bytes(list_path, MAX_LIST_BYTES).decode("utf-8-sig")  # -sig: a BOM is not part of a path
    except (UnicodeDecodeError, OSError, JsonFileError) as exc:
        reason = exc.reason if isinstance(exc, JsonFileError) else exc.__class__.__name__
        raise InputError(f"{list_path}: cannot read the {noun} ({reason}); give a UTF-8 text file") from None


def strip_comment(line: str) -> str:
    """A list line without its comment: '#' at the start of the line or after whitespace."""
    return _COMMENT.split(line, maxsplit=1)[0].strip()


def listed_file(entry: Path, list_path: Path, kind: str = "FASTA file") -> tuple[Path, tuple[int, int]]:
    """A path as a list file names it (relative to the list's folder), made absolute but not
    resolved through symlinks, and its (device, inode): the same file listed twice is one. `kind`:
    what the list says it is ("FASTA file", "GenBank file"), for the messages."""
    path = entry.expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else list_path.absolute().parent / path))
    return path, _input_file_identity(path, list_path, kind)


_COMMENT = re.compile(r"(?:^|\s)#")


def _listed_path(line: str) -> Path | None:
    entry = strip_comment(line)
    return Path(entry) if entry else None


def _input_file_identity(path: Path, list_path: Path, noun: str) -> tuple[int, int]:
    """(device, inode) of a listed input, or a one-line error saying why it cannot be one; never
    opens the file (a FIFO would block the run right here)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: is a symbolic link loop (listed in {list_path}); point the link at the "
                             f"{noun}") from None
        if isinstance(exc, PermissionError):
            raise InputError(f"{path}: cannot be reached (permission denied on a folder above it; listed in "
                             f"{list_path}); fix the folder's permissions") from None
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise InputError(f"{path}: input file not found{broken} (listed in {list_path}); fix the path") from None
    kind = not_regular_kind(info.st_mode)
    if kind == "a folder":
        raise InputError(f"{path}: is a directory, not a {noun} (listed in {list_path}); "
                         f"list the {noun} inside it")
    if kind:
        raise InputError(f"{path}: is not a regular file ({kind}), listed in {list_path}; write it to a file "
                         "and list that (inputs are read more than once)")
    return info.st_dev, info.st_ino


def write_translation(fasta: str | Path, chunk_length: int, nucleotide_out, protein_out) -> int:
    """The original's _identified_nucleotide / _identified_protein FASTA files; returns frames written."""
    total = 0
    for batch in translate_stream(read_records(fasta), chunk_length):
        nucleotide_out.write("".join(f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.nucleotides)))
        protein_out.write("".join(f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.proteins)))
        total += len(batch.frame_ids)
    return total
