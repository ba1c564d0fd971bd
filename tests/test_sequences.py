"""Chunk maths and six-frame translation against cases derived by hand from the VirNucPro rules."""

import gzip

import pytest

from virnucpro.errors import InputError
from virnucpro.fasta import read_fasta, read_inputs_list
from virnucpro.sequences import Read, chunk_read, chunk_starts, frames_of_read, reverse_complement, six_frames, translate_frame


@pytest.mark.parametrize("length, expected", [
    # L <= c: one chunk, the whole read
    (150, [(0, 150)]),
    (500, [(0, 500)]),
    # n=2, R=499, q=249: overlap 250 -> [0:500], [250:501]
    (501, [(0, 500), (250, 501)]),
    # n=3, R=499, q=166: overlaps 167 -> starts 0, 333, 666; the last chunk is 335 nt
    (1001, [(0, 500), (333, 833), (666, 1001)]),
    # n=3, R=300, q=100: overlaps 101 -> starts 0, 399, 798; lengths 500, 500, 402
    (1200, [(0, 500), (399, 899), (798, 1200)]),
    (1000, [(0, 500), (500, 1000)]),
    # n=6, R=1, q=0: one overlap of 1 then none -> starts 0, 499, 999, ...
    (2999, [(0, 500), (499, 999), (999, 1499), (1499, 1999), (1999, 2499), (2499, 2999)]),
])
def test_chunk_ranges_500(length, expected):
    starts = chunk_starts(length, 500)
    assert [(s, min(s + 500, length)) for s in starts] == expected


def test_chunk_ranges_300():
    # n=2, R=299, q=149, overlap 150: [0:300], [150:301]
    assert chunk_starts(301, 300) == [0, 150]


def test_chunk_ids_and_uppercase():
    chunks = chunk_read(Read("read7", "acgt" * 300), 500)
    assert [c.id for c in chunks] == ["read7_chunk_1", "read7_chunk_2", "read7_chunk_3"]
    assert all(c.sequence == c.sequence.upper() for c in chunks)
    assert [len(c.sequence) for c in chunks] == [500, 500, 402]


def test_reverse_complement_leaves_iupac_codes():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("ARYG") == "CYRT"


def test_translate_drops_ambiguous_codons():
    # ATG AAN CCC -> 'M', (dropped), 'P'
    assert translate_frame("ATGAANCCC", 0) == "MP"
    assert translate_frame("ATGRAACCC", 0) == "MP"


def test_six_frames_by_hand():
    chunk = "ATGAAACCCGGGTTTAAACCCGGG"
    frames = list(six_frames(chunk))
    # F1 ATG AAA CCC GGG TTT AAA CCC GGG -> MKPGFKPG (8 aa, slice [0:25] capped at 24)
    # F2 TGA ... -> stop, F3 GAA ACC CGG GTT TAA -> stop: both dropped
    # reverse complement: CCCGGGTTTAAACCCGGGTTTCAT
    # R1 CCC GGG TTT AAA CCC GGG TTT CAT -> PGFKPGFH; R2 CCG GGT TTA AAC CCG GGT TTC -> PGLNPGF
    # R3 CGG GTT TAA -> stop
    assert frames == [
        ("F1", "ATGAAACCCGGGTTTAAACCCGGG", "MKPGFKPG"),
        ("R1", "CCCGGGTTTAAACCCGGGTTTCAT", "PGFKPGFH"),
        ("R2", "CCGGGTTTAAACCCGGGTTTCA", "PGLNPGF"),
    ]


def test_nucleotide_slice_is_one_base_longer_than_the_codons():
    # F1 of a 10-nt chunk: 3 codons, slice [0:10]; F2: 3 codons -> [1:11] capped at 10
    frames = dict((name, (nt, prot)) for name, nt, prot in six_frames("GCTGCTGCTG"))
    assert frames["F1"] == ("GCTGCTGCTG", "AAA")
    assert frames["F2"] == ("CTGCTGCTG", "LLL")
    # an ambiguous codon shortens the protein, and so the paired slice
    frames = dict((name, (nt, prot)) for name, nt, prot in six_frames("GCTNNNGCTG"))
    assert frames["F1"] == ("GCTNNNG", "AA")


def test_frame_ids_and_empty_proteins():
    frames = frames_of_read(Read("r", "ACGTACGTACG"), 500)
    assert all(f.frame_id.startswith("r_chunk_1") and f.frame_id[-2:] in {"F1", "F2", "F3", "R1", "R2", "R3"} for f in frames)
    # a read of NNNN translates to empty proteins in every frame: no frame kept
    assert frames_of_read(Read("n", "NNNNNN"), 500) == []
    # shorter than one codon: nothing
    assert frames_of_read(Read("s", "AC"), 500) == []


def test_read_fasta_plain_gz_crlf(tmp_path):
    text = ">a first\r\nACGT\r\nacgn\r\n>b\r\nTTT\r\n"
    plain = tmp_path / "x.fa"
    plain.write_bytes(text.encode())
    gz = tmp_path / "x.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        assert [(r.id, r.sequence) for r in read_fasta(path)] == [("a", "ACGTacgn"), ("b", "TTT")]


@pytest.mark.parametrize("block_bytes", [4 << 20, 97], ids=["one block", "many blocks"])
def test_classic_mac_line_ends_are_line_ends(tmp_path, block_bytes):
    """Issue 33 item 8: a CR-only FASTA of 20 reads was read as one header-only record, exit 0."""
    from virnucpro.fasta import fasta_blocks, parse_block

    reads = [(f"r{n}", "ACGT" * (5 + n)) for n in range(20)]
    lf = "".join(f">{name} read {n}\n{seq[:10]}\n{seq[10:]}\n" for n, (name, seq) in enumerate(reads))
    for name, text in (("cr.fa", lf.replace("\n", "\r")), ("cr.fa.gz", lf.replace("\n", "\r"))):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        assert [(r.id, r.sequence) for r in read_fasta(path)] == reads
        assert [pair for block in fasta_blocks(path, block_bytes) for pair in parse_block(block)] == reads
    # a CRLF file whose first read ends between the CR and the LF is not taken for a CR-only one
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(lf.replace("\n", "\r\n").encode())
    first = lf.index("\n") + 1  # the header's CR is the last byte of a first read of this size
    assert [pair for block in fasta_blocks(crlf, first) for pair in parse_block(block)] == reads


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"@r1\nACGT\n+\nIIII\n", "FASTQ"),
    (b"<html><body>404</body></html>\n", "HTML"),
    (b">a\nACGT\n>a\nACGT\n", "duplicate read id 'a'"),
    (b">a\nAC-GT\n", "record 'a'"),
    (b">a\nACGT*\n", "record 'a'"),
    (b">a\nAC GT\n", "record 'a'"),
    (b">a\nAC\x00GT\n", "binary"),
])
def test_read_fasta_errors_name_file_and_record(tmp_path, content, fragment):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        list(read_fasta(path))
    assert str(path) in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b">a\n" + b"ACGT" * 10000 + b"\n")
    path = tmp_path / "t.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(read_fasta(path))


def test_inputs_list(tmp_path):
    (tmp_path / "a.fa").write_text(">a\nACGT\n")
    (tmp_path / "dir with space").mkdir()
    (tmp_path / "dir with space" / "b'q.fa").write_text(">b\nACGT\n")
    listing = tmp_path / "inputs.txt"
    listing.write_text("# comment\n\na.fa\n a.fa \ndir with space/b'q.fa\n")
    assert read_inputs_list(listing) == [tmp_path / "a.fa", tmp_path / "dir with space" / "b'q.fa"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="names no files"):
        read_inputs_list(empty)
    missing = tmp_path / "missing.txt"
    missing.write_text("nope.fa\n")
    with pytest.raises(InputError, match="nope.fa"):
        read_inputs_list(missing)


def test_protein_fasta_goes_through_the_same_reader(tmp_path):
    """`embed esm2` reads proteins with the nucleotide reader's rules: Latin-1 headers, unique ids,
    one-line errors naming the file and record."""
    from virnucpro.fasta import PROTEIN, read_records

    path = tmp_path / "p.faa"
    path.write_bytes(b">caf\xe9 x\nMKV\nLW\n>b\nmkq*\n")
    assert list(read_records(path, PROTEIN)) == [("caf\u00e9", "MKVLW"), ("b", "mkq*")]
    path.write_bytes(b">a\nMKV\n>a\nMK\n")
    with pytest.raises(InputError, match="duplicate read id 'a'"):
        list(read_records(path, PROTEIN))
    path.write_bytes(b">a\nMK1V\n")
    with pytest.raises(InputError, match=r"p.faa: record 'a' has characters that are not protein letters \('1'\)"):
        list(read_records(path, PROTEIN))
    with pytest.raises(InputError, match="not IUPAC nucleotide codes"):
        list(read_records(path))
