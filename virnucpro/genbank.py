"""Training frames as the original chose them, from a GenBank file beside the FASTA.

REFERENCE.md §1 "Training": a chunk holding any ambiguity code (N R Y M K S W H B V D) is dropped
whole; of the stop-free frames of the others, only those whose protein is a substring of one of
the record's annotated CDS translations (feature CDS, qualifier `translation`, looked up by the
chunk's record id) are kept: the true coding frames. Without a GenBank file every stop-free
frame is kept (the prediction rule).

The GenBank file is parsed once per prepare, by the parent process, one record at a time (cut at
its `//` line and refused beyond MAX_GENBANK_RECORD_BYTES before Biopython sees it), into an
SQLite index of record id -> translations (`build_cds_index`). Each prepare worker looks up only
the records of the block it translates, so memory does not grow with the worker count or with the
file. Biopython's errors become one line naming the file and the record; its warnings are counted
and shown through the tool's console (so --quiet hides them).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import sqlite3
import urllib.parse
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from . import console
from .atomic import atomic_path
from .errors import InputError
from .fasta import MAX_RECORD_BYTES
from .sequences import FrameBatch, chunk_starts

AMBIGUITY = re.compile("[NRYMKSWHBVDnrymkswhbvd]")
_SEPARATOR = "\n"  # never in a protein: a match cannot span two translations
# A GenBank record holds its sequence (~1.3 characters a base with the ORIGIN numbering), its
# features and their translations: four times the longest FASTA record accepted (fasta.MAX_RECORD_BYTES)
# keeps the largest bacterial chromosome's record, and bounds what one parse costs (a 400 MB one-line
# translation once took 1.3 GB).
MAX_GENBANK_RECORD_BYTES = 4 * MAX_RECORD_BYTES
# A translation longer than the longest FASTA record accepted could never hold a chunk's protein.
MAX_TRANSLATION_CHARACTERS = MAX_RECORD_BYTES // 3
_LOOKUP_BATCH = 500  # record ids per query (SQLite's limit on parameters is far higher)


def _record_texts(path: Path, handle) -> Iterator[tuple[int, int, str]]:
    """(number from 1, line of its LOCUS, text) of each record: from a LOCUS line to the next `//`
    line (what Biopython's scanner reads; text before the first LOCUS is skipped, as it does)."""
    lines: list[str] = []
    size, number, first, line = 0, 0, 0, 0
    while True:
        text = handle.readline(MAX_GENBANK_RECORD_BYTES + 1)  # a line of gigabytes stops at the cap
        if not text:
            break
        line += 1
        if not lines:
            if not text.startswith("LOCUS"):
                continue
            number, first = number + 1, line
        lines.append(text)
        size += len(text)
        if size > MAX_GENBANK_RECORD_BYTES:
            name = lines[0].split()[1] if len(lines[0].split()) > 1 else "?"
            raise InputError(f"{path}: record {number} ('{name[:40]}', line {first}) is longer than "
                             f"{MAX_GENBANK_RECORD_BYTES:,} characters (the limit: four times the longest FASTA "
                             "record accepted); give the GenBank file of the FASTA's records, without it")
        if text.startswith("//"):
            yield number, first, "".join(lines)
            lines, size = [], 0
    if lines:  # no `//`: cut short; Biopython says what is missing
        yield number, first, "".join(lines)


def _parse_record(path: Path, number: int, first: int, text: str):
    from Bio import SeqIO

    try:
        return SeqIO.read(io.StringIO(text), "genbank")
    except MemoryError:
        raise
    except Exception as exc:  # Biopython raises AssertionError, IndexError, ValueError, ... for malformed text
        name = text.split(None, 2)[1] if len(text.split(None, 2)) > 1 else "?"
        reason = " ".join(str(exc).split())[:160] or "no reason given"
        raise InputError(f"{path}: record {number} ('{name[:40]}', line {first}) is not readable GenBank "
                         f"({type(exc).__name__}: {reason}); fix or remove that record") from None


def read_cds(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """(record id, its CDS translations) of each record of a plain or gzipped GenBank file, parsed
    one record at a time. Biopython's warnings are counted and shown once the file is read."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    warned: Counter = Counter()
    first_warning = ""
    records = 0
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            for number, first, text in _record_texts(path, handle):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    record = _parse_record(path, number, first, text)
                for warning in caught:
                    warned[warning.category.__name__] += 1
                    first_warning = first_warning or (f"record {number} ('{record.id}'): "
                                                      + " ".join(str(warning.message).split())[:160])
                records += 1
                yield record.id, _translations(path, number, record)
    except (OSError, EOFError, UnicodeError) as exc:
        raise InputError(f"{path}: not a readable GenBank file ({type(exc).__name__}: {str(exc)[:120]}); "
                         "give the .gbff/.gbk file of the FASTA's records, plain or .gz") from None
    if not records:
        raise InputError(f"{path}: holds no GenBank record (no LOCUS); give the .gbff/.gbk file of the FASTA's records")
    if warned:
        console.warn(f"{path}: Biopython reported {sum(warned.values())} problem(s) while reading it "
                     f"({', '.join(f'{n} {kind}' for kind, n in sorted(warned.items()))}), the first in {first_warning}; "
                     "those records were read as Biopython understood them")


def _translations(path: Path, number: int, record) -> list[str]:
    proteins = []
    for feature in record.features:
        if feature.type != "CDS":
            continue
        for translation in feature.qualifiers.get("translation", ()):
            protein = translation.replace(" ", "")
            if len(protein) > MAX_TRANSLATION_CHARACTERS:
                raise InputError(f"{path}: record {number} ('{record.id}') has a CDS translation of {len(protein):,} "
                                 f"residues, more than the longest FASTA record accepted could encode; fix that record")
            proteins.append(protein)
    return proteins


def build_cds_index(genbank: str | Path, index: Path) -> Path:
    """Parse a GenBank file once into an SQLite file of record id -> its translations joined by a
    separator (records of one id joined too); written atomically. Returns `index`."""
    with atomic_path(index) as temporary, contextlib.closing(sqlite3.connect(temporary)) as db:
        db.execute("PRAGMA journal_mode = OFF")  # a temp file: a killed build is thrown away whole
        db.execute("CREATE TABLE cds (id TEXT PRIMARY KEY, proteins TEXT NOT NULL)")
        for record_id, proteins in read_cds(genbank):
            db.execute("INSERT INTO cds VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET proteins = "
                       "cds.proteins || ? || excluded.proteins", (record_id, _SEPARATOR.join(proteins), _SEPARATOR))
        db.commit()
    return index


_opened: tuple[tuple, sqlite3.Connection] | None = None  # a worker's index, opened once per process


def cds_lookup(index: str | Path, record_ids: Iterable[str]) -> dict[str, str]:
    """{record id: its translations joined} of those of these ids the index holds."""
    global _opened
    info = os.stat(index)
    identity = (str(index), info.st_ino, info.st_mtime_ns)  # an index built again at the same path is another
    if _opened is None or _opened[0] != identity:
        if _opened is not None:
            _opened[1].close()
        uri = f"file:{urllib.parse.quote(str(Path(index).resolve()))}?mode=ro&immutable=1"  # never written again
        _opened = (identity, sqlite3.connect(uri, uri=True))
    ids = list(dict.fromkeys(record_ids))
    found: dict[str, str] = {}
    for start in range(0, len(ids), _LOOKUP_BATCH):
        batch = ids[start:start + _LOOKUP_BATCH]
        found.update(_opened[1].execute(f"SELECT id, proteins FROM cds WHERE id IN ({','.join('?' * len(batch))})",
                                        batch))
    return found


class CodingFrames:
    """Keeps, of a block's frame batches, the frames the GenBank file annotates as coding."""

    def __init__(self, translations: dict[str, str], reads, chunk_length: int):
        self.translations = translations
        self.ambiguous_chunks: set[str] = set()
        for read_id, sequence in reads:
            positions = [m.start() for m in AMBIGUITY.finditer(sequence)]
            if positions:
                for k, start in enumerate(chunk_starts(len(sequence), chunk_length), start=1):
                    if any(start <= p < start + chunk_length for p in positions):
                        self.ambiguous_chunks.add(f"{read_id}_chunk_{k}")
        self.dropped: Counter = Counter()  # read id -> frames dropped so far (a read's chunks span batches)
        self.outside = 0  # stop-free frames dropped in all
        # every FASTA record the GenBank file lacks, with a stop-free frame or not
        self.records_without_cds: set[str] = {read_id for read_id, _ in reads if read_id not in translations}

    def keep(self, read_id: str, chunk_id: str, protein: str) -> bool:
        if chunk_id in self.ambiguous_chunks:
            return False
        annotated = self.translations.get(read_id)
        return annotated is not None and protein in annotated

    def select(self, batch: FrameBatch) -> FrameBatch:
        """The batch with only the coding frames (its reads' frame counts lowered to match)."""
        out = FrameBatch(finished_ids=batch.finished_ids, finished_lengths=batch.finished_lengths,
                         finished_chunks=batch.finished_chunks)
        for row in zip(batch.read_ids, batch.chunk_ids, batch.frame_ids, batch.nucleotides, batch.proteins):
            if self.keep(row[0], row[1], row[4]):
                for column, value in zip((out.read_ids, out.chunk_ids, out.frame_ids, out.nucleotides, out.proteins), row):
                    column.append(value)
            else:
                self.dropped[row[0]] += 1
                self.outside += 1
        out.finished_frames = [frames - self.dropped.pop(read_id, 0)
                               for read_id, frames in zip(batch.finished_ids, batch.finished_frames)]
        return out
