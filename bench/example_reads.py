"""Cut the bundled example reads from two real public genomes (virnucpro/data/example/README.md).

    python bench/example_reads.py BIOPYTHON_SOURCE [OUT_DIR]   (OUT_DIR: virnucpro/data/example)

BIOPYTHON_SOURCE is an unpacked biopython source distribution (1.88 was used):
    pip download --no-deps --no-binary :all: biopython==1.88 -d SRC && tar xzf SRC/biopython-1.88.tar.gz -C SRC
Its test files carry the two genomes; their sequences are checked against the SHA-256 below, so
the same command always writes the same bytes (a seeded RNG, Python's `random`, chooses the reads).
It then prints how many reads of 150 bp have no stop-free frame: 2,000 drawn at random from each
genome and from random sequence, for comparison with the example's own share.

sample_a: reads of coliphage phiX174 (a virus); sample_b: reads of a Yersinia pestis plasmid (a
bacterium's DNA). Read lengths follow the example they replace: short-read lengths plus the chunk
edges of the default chunk length 500 (499, 500, 501, 1001) and a few long reads. Both genomes
are circular, so a read may run across the origin. As real files do, a few sample_a reads carry
IUPAC ambiguity codes where a sequencer was unsure of a base, and some sample_b reads are written
in lower case (soft-masked); both are handled like any other read.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from Bio import SeqIO

from virnucpro.sequences import Read, frames_of_read

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "virnucpro" / "data" / "example"
SEED = 30
LINE = 60
AMBIGUITY = "NRYKMSW"

# (output name, read id prefix, GenBank file in the biopython source, accession.version, length,
#  SHA-256 of the upper-case sequence, read lengths)
SOURCES = (
    ("sample_a", "sample_a_read", "Tests/GFF/NC_001422.gbk", "NC_001422.1", 5386,
     "97038c7e1edea2297667d7f0426ba942b322c74cb30e072ec66ba47f9c0448d0",
     [150] * 20 + [300, 499, 500, 501, 1001, 1200, 2500] + [150] * 5),
    ("sample_b", "read", "Tests/GenBank/NC_005816.gb", "NC_005816.1", 9609,
     "583303fb96a073c0ed01bac582e661bdf2f166adf4ad5f68dfa7aa87dd8bcb4e",
     [150] * 15 + [250, 800, 3000]),
)


def genome(source: Path, relative: str, accession: str, length: int, sha256: str) -> str:
    record = SeqIO.read(source / relative, "genbank")
    sequence = str(record.seq).upper()
    digest = hashlib.sha256(sequence.encode()).hexdigest()
    if record.id != accession or len(sequence) != length or digest != sha256:
        sys.exit(f"{source / relative}: expected {accession}, {length} bp, SHA-256 {sha256}; found {record.id}, "
                 f"{len(sequence)} bp, {digest}: use the biopython source named in this script's help")
    return sequence


def reverse_complement(sequence: str) -> str:
    return sequence[::-1].translate(str.maketrans("ACGT", "TGCA"))


def cut_read(sequence: str, length: int, rng: random.Random) -> tuple[str, str]:
    """A read of `length` bases from a random position and strand of the circular `sequence`,
    and its place ('start=S end=E strand=+', 1-based, inclusive; S > E: across the origin)."""
    start = rng.randrange(len(sequence))
    read = (sequence + sequence)[start:start + length]
    strand = rng.choice("+-")
    if strand == "-":
        read = reverse_complement(read)
    return read, f"start={start + 1} end={(start + length - 1) % len(sequence) + 1} strand={strand}"


def with_ambiguity_codes(read: str, count: int, rng: random.Random) -> str:
    bases = list(read)
    for position in rng.sample(range(len(bases)), count):
        bases[position] = rng.choice(AMBIGUITY)
    return "".join(bases)


def write_reads(out: Path, name: str, prefix: str, accession: str, sequence: str, lengths: list[int],
                rng: random.Random) -> None:
    lines = []
    for number, length in enumerate(lengths, 1):
        read, place = cut_read(sequence, length, rng)
        if name == "sample_a" and number % 7 == 4:  # reads 4, 11, 18, 25, 32
            read = with_ambiguity_codes(read, max(1, length // 100), rng)
        if name == "sample_b" and number % 5 == 1:  # reads 1, 6, 11, 16
            read = read.lower()
        lines.append(f">{prefix}{number} {accession} {place}\n")
        lines += [read[i:i + LINE] + "\n" for i in range(0, len(read), LINE)]
    (out / f"{name}.fasta").write_text("".join(lines))


def frameless_share(reads: list[str]) -> float:
    """The share of `reads` without a stop-free frame (chunk length 500, as the example runs)."""
    return sum(not frames_of_read(Read("r", read), 500) for read in reads) / len(reads)


def print_frame_statistics(genomes: dict[str, str], rng: random.Random, count: int = 2000) -> None:
    genomes = {**genomes, "random sequence": "".join(rng.choice("ACGT") for _ in range(10_000))}
    for name, sequence in genomes.items():
        reads = [cut_read(sequence, 150, rng)[0] for _ in range(count)]
        print(f"{name}: {100 * frameless_share(reads):.1f}% of {count} random 150-bp reads have no stop-free frame")


def main(argv: list[str]) -> None:
    if len(argv) not in (1, 2):
        sys.exit(__doc__)
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) == 2 else EXAMPLE_DIR
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    genomes = {}
    for name, prefix, relative, accession, length, sha256, lengths in SOURCES:
        genomes[accession] = genome(source, relative, accession, length, sha256)
        write_reads(out, name, prefix, accession, genomes[accession], lengths, rng)
    print_frame_statistics(genomes, rng)


if __name__ == "__main__":
    main(sys.argv[1:])
