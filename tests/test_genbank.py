"""Issue 33 items 3 and 4: a GenBank file is parsed once per prepare (not by every worker), one
record at a time and bounded; Biopython's errors are one line naming the file and the record, its
warnings go through the tool's console, counted (nothing with --quiet)."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import console, genbank
from virnucpro.errors import InputError, VirnucproError
from virnucpro.genbank import build_cds_index, cds_lookup, read_cds


def genbank_text(records: int = 3, bases: int = 120) -> str:
    """Biopython's own writing of `records` records, each with two CDS and their translations."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    rng = random.Random(records)
    out = io.StringIO()
    for number in range(records):
        sequence = "".join(rng.choice("ACGT") for _ in range(bases))
        record = SeqRecord(Seq(sequence), id=f"rec{number}.1", name=f"rec{number}", description="synthetic",
                           annotations={"molecule_type": "DNA"})
        for start, end, strand in ((0, 60, 1), (30, 90, -1)):
            location = FeatureLocation(start, end, strand=strand)
            record.features.append(SeqFeature(location, type="CDS", qualifiers={
                "translation": [str(location.extract(record.seq).translate()).replace("*", "")]}))
        SeqIO.write(record, out, "genbank")
    return out.getvalue()


def test_translations_by_record_and_only_those_asked_for(tmp_path):
    text = genbank_text()
    path = tmp_path / "g.gbff"
    path.write_text("GenBank release notes before the first LOCUS are skipped\n" + text)
    records = dict(read_cds(path))
    assert list(records) == ["rec0.1", "rec1.1", "rec2.1"] and all(len(p) == 2 for p in records.values())
    index = build_cds_index(path, tmp_path / "cds.sqlite")
    assert cds_lookup(index, ["rec1.1", "nope", "rec1.1"]) == {"rec1.1": "\n".join(records["rec1.1"])}


WORKER = """
import sys
from pathlib import Path
from virnucpro.fasta import Block
from virnucpro.stages.prepare import prepare_block
fasta = Path(sys.argv[1])
result = prepare_block((Block(fasta, fasta.read_bytes(), 1, True), 0, 60, sys.argv[2], None))
assert result.counts["reads"] == 3, result.counts
assert "Bio" not in sys.modules, "a prepare worker parsed the GenBank file"
"""


def test_a_prepare_worker_reads_the_index_and_never_parses_the_genbank_file(tmp_path):
    """Item 3: every worker parsed the whole file and kept every translation (75 MB .gb: 261 MB at
    1 worker, 798 MB at 4); now the parent parses it once and a worker looks up its block's records."""
    from Bio import SeqIO

    path = tmp_path / "g.gbff"
    path.write_text(genbank_text())
    fasta = tmp_path / "g.fa"
    fasta.write_text("".join(f">{r.id}\n{r.seq}\n" for r in SeqIO.parse(path, "genbank")))
    index = build_cds_index(path, tmp_path / "cds.sqlite")
    subprocess.run([sys.executable, "-c", WORKER, str(fasta), str(index)], check=True, timeout=120)


def test_a_record_or_a_translation_beyond_the_bounds_is_refused_naming_it(tmp_path, monkeypatch):
    text = genbank_text(records=2)
    long = text.replace('/translation="', '/translation="' + "M" * 5000, 1)  # record 1's first CDS
    path = tmp_path / "g.gbff"
    path.write_text(long)
    monkeypatch.setattr(genbank, "MAX_TRANSLATION_CHARACTERS", 1000)
    with pytest.raises(InputError, match=r"record 1 \('rec0.1'\) has a CDS translation of 5,0\d\d residues"):
        build_cds_index(path, tmp_path / "cds.sqlite")
    monkeypatch.setattr(genbank, "MAX_GENBANK_RECORD_BYTES", 3000)
    one_line = text.replace('/translation="', '/translation="' + "M" * 100_000 + '"\n', 1)  # one line, read no further
    path.write_text(one_line)
    with pytest.raises(InputError, match=r"record 1 \('rec0', line 1\) is longer than 3,000 characters") as caught:
        build_cds_index(path, tmp_path / "cds.sqlite")
    assert "\n" not in str(caught.value) and not (tmp_path / "cds.sqlite").exists()


# ------------------------------------------------------------------ item 4

def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    kind = rng.randrange(8)
    at = rng.randrange(len(lines))
    if kind == 0:  # a character changed
        line = lines[at]
        spot = rng.randrange(max(len(line), 1))
        lines[at] = line[:spot] + rng.choice('0123456789 .<>()"/=,:-ACGTacgtxyz\t') + line[spot + 1:]
    elif kind == 1:
        del lines[at]
    elif kind == 2:
        lines.insert(at, lines[rng.randrange(len(lines))])
    elif kind == 3:
        j = rng.randrange(len(lines))
        lines[at], lines[j] = lines[j], lines[at]
    elif kind == 4:
        return "".join(lines)[:rng.randrange(len(text))]
    else:  # a line of the kinds that broke Biopython's parser, mostly inside the feature table
        features = [n for n, line in enumerate(lines) if line.startswith(("     CDS", "                     /"))]
        at = rng.choice(features) + 1 if features and rng.random() < 0.7 else at
        lines.insert(at, rng.choice(["LOCUS\n", "     CDS             join(1..\n", "ORIGIN\n", "//\n",
                                     "                     /translation=\"\n", "FEATURES\n", "        1 acgt n\n",
                                     "     CDS             complement(<5..>2)\n", "VERSION\n",
                                     "                     continued, with no qualifier before\n",
                                     "                     /note=\n"]))
    return "".join(lines)


def test_fuzzed_genbank_files_give_one_line_errors_only(tmp_path):
    """3,000 mutations once gave 170 AssertionErrors and an IndexError with no file, record or reason;
    300 seeded ones here: whatever is read or refused, only a one-line VirnucproError escapes."""
    text = genbank_text(records=3)
    rng = random.Random(33)
    refused = 0
    path = tmp_path / "fuzz.gbff"
    for trial in range(300):
        path.write_text(_mutate(_mutate(text, rng), rng))
        try:
            build_cds_index(path, tmp_path / "cds.sqlite")
        except VirnucproError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ") and "record" in message and "\n" not in message, (trial, message)
            refused += 1
        # any other exception fails the test here, with the trial's mutation in the traceback
    assert 20 < refused < 300  # the mutations do break records, and not all of them


def test_biopython_warnings_are_counted_through_the_console_and_quiet_hides_them(tmp_path, capsys):
    path = tmp_path / "g.gbff"
    text = genbank_text(records=3)
    path.write_text(text.replace("120 bp", "125 bp", 2))  # two records whose LOCUS length is wrong
    try:
        build_cds_index(path, tmp_path / "a.sqlite")
        err = capsys.readouterr().err
        assert "warnings.warn" not in err and "BiopythonParserWarning:" not in err  # no raw Python warning
        warned = [line for line in err.splitlines() if "Biopython reported" in line]
        assert len(warned) == 1 and "2 problem(s)" in warned[0] and "2 BiopythonParserWarning" in warned[0]
        assert "record 1 ('rec0.1'): Expected sequence length 125, found 120" in warned[0]
        console.configure(quiet=True)
        build_cds_index(path, tmp_path / "b.sqlite")
        assert capsys.readouterr().err == ""
    finally:
        console.configure(quiet=False)
