"""CPU prepare throughput: codon-by-codon baseline vs the vectorised translation, in one run.

Workloads (the issue's defaults; scale down with --reads / --genome-mbp):
  reads    1 M simulated 150-bp reads (sampled from simulated genomes, both strands)
  genomes  10 Mbp of simulated genomes, chunked into 500-bp chunks
The genomes are built from genes of random sense codons (the way real genomes are mostly coding),
so reads and chunks yield stop-free frames as real data does; uniform random DNA would have
almost none, which would flatter the vectorised code (its cost grows with the frames kept).

For each workload the same reads go through
  baseline  sequences.frames_of_read: the original VirNucPro method, a dict lookup per codon
  fast      sequences.translate_stream: numpy over thousands of chunks per call
and both write the `translate` command's two FASTA files (nucleotide, protein) into memory;
the outputs must be byte-identical. Times are wall clock (CPU time in brackets).

`--prepare` also times the whole prepare stage (FASTA file on disk -> token-balanced shards)
with 1 worker and with one per CPU.

  python bench/prepare_throughput.py                      # the issue's sizes (baseline takes minutes)
  python bench/prepare_throughput.py --reads 100000 --genome-mbp 2 --prepare
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.sequences import Read, chunk_starts, frames_of_read, translate_stream

SENSE = np.array([list(a + b + c) for a in "TCAG" for b in "TCAG" for c in "TCAG"
                  if a + b + c not in ("TAA", "TAG", "TGA")], dtype="S1").view(np.uint8).reshape(-1, 3)
COMPLEMENT = np.zeros(256, np.uint8)
for _x, _y in zip(b"ACGT", b"TGCA"):
    COMPLEMENT[_x] = _y


def simulate_genome(rng: np.random.Generator, length: int) -> np.ndarray:
    """Genes of ~300 random sense codons on either strand, separated by short random spacers."""
    parts, total = [], 0
    while total < length:
        gene = SENSE[rng.integers(0, len(SENSE), int(rng.integers(100, 500)))].ravel()
        if rng.random() < 0.5:
            gene = COMPLEMENT[gene[::-1]]
        spacer = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, int(rng.integers(20, 200)))]
        parts += [gene, spacer]
        total += len(gene) + len(spacer)
    return np.concatenate(parts)[:length]


def simulate(reads: int, genome_mbp: float, seed: int = 1) -> tuple[list[Read], list[Read]]:
    rng = np.random.default_rng(seed)
    genomes, total = [], int(genome_mbp * 1e6)
    while sum(len(g) for g in genomes) < total:
        genomes.append(simulate_genome(rng, min(int(rng.integers(20_000, 2_000_000)), total - sum(map(len, genomes)))))
    genome_reads = [Read(f"genome{i}", g.tobytes().decode()) for i, g in enumerate(genomes)]
    source = np.concatenate(genomes)
    windows = np.lib.stride_tricks.sliding_window_view(source, 150)
    picked = windows[rng.integers(0, len(windows), reads)]
    flip = rng.random(reads) < 0.5
    picked[flip] = COMPLEMENT[picked[flip, ::-1]]
    short_reads = [Read(f"read{i}", row.tobytes().decode()) for i, row in enumerate(picked)]
    return short_reads, genome_reads


def baseline(reads: list[Read], chunk_length: int) -> tuple[bytes, bytes]:
    nucleotide, protein = [], []
    for read in reads:
        for frame in frames_of_read(read, chunk_length):
            nucleotide.append(f">{frame.frame_id}\n{frame.nucleotide}\n")
            protein.append(f">{frame.frame_id}\n{frame.protein}\n")
    return "".join(nucleotide).encode(), "".join(protein).encode()


def fast(reads: list[Read], chunk_length: int) -> tuple[bytes, bytes]:
    nucleotide, protein = [], []
    for batch in translate_stream(reads, chunk_length):
        nucleotide.append("".join([f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.nucleotides)]))
        protein.append("".join([f">{i}\n{s}\n" for i, s in zip(batch.frame_ids, batch.proteins)]))
    return "".join(nucleotide).encode(), "".join(protein).encode()


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare(name: str, reads: list[Read], units: int, unit: str, chunk_length: int) -> dict:
    expected, base_wall, base_cpu = timed(baseline, reads, chunk_length)
    produced, fast_wall, fast_cpu = timed(fast, reads, chunk_length)
    frames = expected[1].count(b">")
    return {"workload": name, "units": units, "unit": unit, "frames": frames,
            "baseline": (base_wall, base_cpu), "fast": (fast_wall, fast_cpu),
            "identical": expected == produced,
            "sha256": hashlib.sha256(produced[0] + produced[1]).hexdigest()[:16]}


def prepare_stage(reads: list[Read], workers: int, folder: Path) -> tuple[float, int]:
    """The prepare stage end to end on a FASTA file of `reads`, with `workers` processes."""
    from virnucpro.orchestration.config import ModelSpec, RunConfig
    from virnucpro.orchestration.runner import StageContext
    from virnucpro.paths import Workdir
    from virnucpro.stages import prepare

    fasta = folder / "reads.fa"
    if not fasta.exists():
        with open(fasta, "w") as out:
            for read in reads:
                out.write(f">{read.id}\n{read.sequence}\n")
    config = RunConfig(inputs_list="", inputs=[str(fasta)], input_names=["reads"], chunk_length=500, shards=8,
                       models=ModelSpec("esm", "dnabert", "classifier"))
    os.environ["VIRNUCPRO_PREPARE_WORKERS"] = str(workers)
    ctx = StageContext(workdir=Workdir(folder / f"w{workers}"), config=config)
    started = time.perf_counter()
    metrics = prepare.prepare(ctx)
    return time.perf_counter() - started, metrics["frames"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000, help="simulated 150-bp reads (default 1,000,000)")
    parser.add_argument("--genome-mbp", type=float, default=10.0, help="Mbp of simulated genomes (default 10)")
    parser.add_argument("--chunk-length", type=int, default=500, choices=(300, 500))
    parser.add_argument("--prepare", action="store_true", help="also time the prepare stage with 1 and N workers")
    args = parser.parse_args()

    started = time.perf_counter()
    reads, genomes = simulate(args.reads, args.genome_mbp)
    chunks = sum(len(chunk_starts(len(g.sequence), args.chunk_length)) for g in genomes)
    print(f"simulated {len(reads):,} reads and {len(genomes)} genomes ({args.genome_mbp:g} Mbp, {chunks:,} chunks of "
          f"{args.chunk_length}) in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = [compare(f"{len(reads):,} reads of 150 bp", reads, len(reads), "reads", args.chunk_length),
            compare(f"{args.genome_mbp:g} Mbp of genomes", genomes, chunks, "chunks", args.chunk_length)]

    print("\n| workload | frames | baseline s | baseline /s | fast s | fast /s | speed-up | byte-identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        (bw, bc), (fw, fc) = r["baseline"], r["fast"]
        print(f"| {r['workload']} | {r['frames']:,} | {bw:.2f} ({bc:.2f} cpu) | {r['units'] / bw:,.0f} {r['unit']}/s "
              f"| {fw:.2f} ({fc:.2f} cpu) | {r['units'] / fw:,.0f} {r['unit']}/s | {bw / fw:.1f}x ({bc / fc:.1f}x cpu) "
              f"| {'yes' if r['identical'] else 'NO'} ({r['sha256']}) |")

    if args.prepare:
        cpus = len(os.sched_getaffinity(0))
        print("\n| prepare stage (FASTA file -> 8 shards) | workers | seconds | reads/s | frames |")
        print("|---|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as folder:
            for workers in sorted({1, cpus}):
                seconds, frames = prepare_stage(reads, workers, Path(folder))
                print(f"| {len(reads):,} reads | {workers} | {seconds:.2f} | {len(reads) / seconds:,.0f} "
                      f"| {frames:,} |")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
