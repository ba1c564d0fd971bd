"""Training frames as the original chose them, from a GenBank file beside the FASTA.

REFERENCE.md §1 "Training": a chunk holding any ambiguity code (N R Y M K S W H B V D) is dropped
whole; of the stop-free frames of the others, only those whose protein is a substring of one of
the record's annotated CDS translations (feature CDS, qualifier `translation`, looked up by the
chunk's record id) are kept: the true coding frames. Without a GenBank file every stop-free
frame is kept (the prediction rule). Biopython parses the GenBank file.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

from .errors import InputError
from .sequences import FrameBatch, chunk_starts

AMBIGUITY = re.compile("[NRYMKSWHBVDnrymkswhbvd]")
_SEPARATOR = "\n"  # never in a protein: a match cannot span two translations

_loaded: tuple[str, dict[str, str]] | None = None  # one GenBank file per process, the last one read


def cds_translations(path: str | Path) -> dict[str, str]:
    """{record id: its CDS translations joined by a separator} of a plain or gzipped GenBank file."""
    global _loaded
    if _loaded is not None and _loaded[0] == str(path):
        return _loaded[1]
    from Bio import SeqIO

    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    out: dict[str, list[str]] = {}
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            for record in SeqIO.parse(handle, "genbank"):
                proteins = out.setdefault(record.id, [])
                for feature in record.features:
                    if feature.type == "CDS":
                        proteins += [t.replace(" ", "") for t in feature.qualifiers.get("translation", ())]
    except (OSError, EOFError, ValueError) as exc:  # Biopython's parse errors are ValueErrors
        raise InputError(f"{path}: not a readable GenBank file ({type(exc).__name__}: {str(exc)[:120]}); "
                         "give the .gbff/.gbk file of the FASTA's records, plain or .gz") from None
    if not out:
        raise InputError(f"{path}: holds no GenBank record (no LOCUS); give the .gbff/.gbk file of the FASTA's records")
    joined = {record_id: _SEPARATOR.join(proteins) for record_id, proteins in out.items()}
    _loaded = (str(path), joined)
    return joined


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
