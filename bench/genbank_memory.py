"""Peak memory of the prepare stage of a training with a GenBank file, by prepare worker count.

Writes (once, seeded) a GenBank file of synthetic records, each with CDS features carrying their
translations, and a FASTA of the same records; then runs the prepare stage of a training run on
them (chunk length 300) with the given number of worker processes, sampling the resident memory
of this process and all its children every 20 ms. Prints the peak of the sum (what the node must
hold) and of the largest single process (what `/usr/bin/time -v` reports as its maximum resident
set size: the kernel keeps the largest of the process and its waited-for children, not the sum).

  /usr/bin/time -v python bench/genbank_memory.py --workers 1
  /usr/bin/time -v python bench/genbank_memory.py --workers 4
  /usr/bin/time -v python bench/genbank_memory.py --workers 4 --no-genbank   # the floor: the FASTA alone
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_inputs(folder: Path, records: int, bases: int, genes: int, frames: int, seed: int = 1) -> tuple[Path, Path]:
    """(GenBank file, FASTA file) of `records` records of `bases` bases, each with `genes` annotated CDS
    in each of its first `frames` reading frames (3 forward, then 3 reverse)."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    name = f"records-{records}x{bases}-{genes}x{frames}"
    genbank, fasta = folder / f"{name}.gbff", folder / f"{name}.fa"
    if genbank.exists() and fasta.exists():
        return genbank, fasta
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", np.uint8)
    length = (bases - 2) // genes // 3 * 3
    with open(genbank, "w") as gb, open(fasta, "w") as fa:
        for number in range(records):
            sequence = letters[rng.integers(0, 4, bases)].tobytes().decode()
            record = SeqRecord(Seq(sequence), id=f"rec{number:06d}.1", name=f"rec{number:06d}",
                               description="synthetic", annotations={"molecule_type": "DNA"})
            for frame, gene in itertools.product(range(frames), range(genes)):
                location = FeatureLocation(frame % 3 + gene * length, frame % 3 + (gene + 1) * length,
                                           strand=1 if frame < 3 else -1)
                protein = str(location.extract(record.seq).translate())
                record.features.append(SeqFeature(location, type="CDS", qualifiers={"translation": [protein]}))
            SeqIO.write(record, gb, "genbank")
            fa.write(f">{record.id}\n{sequence}\n")
    return genbank, fasta


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) resident bytes of `root` and its descendants."""
    children: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        sizes[int(entry)] = int(fields[21]) * PAGE
    pending, total, largest = [root], 0, 0
    while pending:
        pid = pending.pop()
        total += sizes.get(pid, 0)
        largest = max(largest, sizes.get(pid, 0))
        pending += children.get(pid, [])
    return total, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--records", type=int, default=800)
    parser.add_argument("--bases", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=16, help="CDS per reading frame of a record")
    parser.add_argument("--frames", type=int, default=6, help="reading frames with CDS (1-6)")
    parser.add_argument("--no-genbank", action="store_true", help="the same FASTA without its GenBank file: the floor")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "virnucpro-genbank-bench")
    args = parser.parse_args()

    from virnucpro.orchestration.config import ModelSpec, RunConfig
    from virnucpro.paths import Workdir
    from virnucpro.pipeline import StageContext
    from virnucpro.stages.prepare import prepare

    args.data.mkdir(parents=True, exist_ok=True)
    genbank, fasta = write_inputs(args.data, args.records, args.bases, args.genes, args.frames)
    other = args.data / "other.fa"
    other.write_text(">other\n" + "ATG" + "GCT" * 400 + "\n")
    os.environ["VIRNUCPRO_PREPARE_WORKERS"] = str(args.workers)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            total, largest = tree_rss(os.getpid())
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory(dir=args.data) as folder:
        config = RunConfig(inputs_list="labels.tsv", inputs=[str(fasta), str(other)], input_names=["virus", "other"],
                           chunk_length=300, shards=1, models=ModelSpec("esm", "dnabert", ""), kind="train",
                           labels=["virus", "other"], genbank=[None if args.no_genbank else str(genbank), None])
        started = time.perf_counter()
        sampler.start()
        result = prepare(StageContext(Workdir(Path(folder)), config))
        done.set()
        sampler.join()
    print(f"GenBank {'not used' if args.no_genbank else f'{genbank.stat().st_size / 1e6:.1f} MB'} ({args.records} records), FASTA "
          f"{fasta.stat().st_size / 1e6:.1f} MB; {args.workers} worker(s): {result['frames']} frames kept in "
          f"{time.perf_counter() - started:.1f} s; peak resident memory, all processes together "
          f"{peak[0] / 2**20:.0f} MiB, largest single process {peak[1] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
