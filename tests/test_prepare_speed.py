"""The vectorised prepare path against the codon-by-codon reference: same bytes, bounded memory,
independent of the number of workers, and much faster."""

from __future__ import annotations

import gzip
import random
import time
import tracemalloc
from pathlib import Path

import pytest

from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir
from virnucpro.fasta import read_fasta
from virnucpro.sequences import FrameRecord, Read, chunk_starts, frames_fast, frames_of_read, translate_stream
from virnucpro.stages import prepare
from virnucpro.storage import FRAME_COLUMNS


def frame_line(frame: FrameRecord) -> str:
    """A frame table row, written the plain way (the reference for prepare's vectorised writer)."""
    return (f"{frame.input_index}\t{frame.read_id}\t{frame.chunk_id}\t{frame.frame_id}\t"
            f"{frame.nucleotide}\t{frame.protein}\n")

ALPHABETS = ("ACGT", "ACGTacgt", "ACGTNRYKMSWBDHVU", "acgtn", "ATGAAACCCGGGTTT", "ACGT" * 20 + "N")


def random_reads(rng: random.Random, count: int) -> list[Read]:
    reads = []
    for i in range(count):
        length = rng.choice([0, 1, 2, 3, 4, 5, 149, 150, 151, 299, 300, 301, 499, 500, 501, rng.randint(0, 2000)])
        alphabet = rng.choice(ALPHABETS)
        reads.append(Read(f"r{i}", "".join(rng.choice(alphabet) for _ in range(length))))
    return reads


@pytest.mark.parametrize("seed", range(40))
def test_fast_translation_equals_the_reference(seed):
    rng = random.Random(seed)
    reads = random_reads(rng, rng.randint(1, 40))
    chunk_length = rng.choice([300, 500])
    batch_bases = rng.choice([1, 97, 2000, 1 << 20])  # tiny batches split long reads across batches
    expected = [f for read in reads for f in frames_of_read(read, chunk_length, 3)]
    produced, finished = [], []
    for batch in translate_stream(reads, chunk_length, batch_bases):
        produced += map(FrameRecord, [3] * len(batch.frame_ids), batch.read_ids, batch.chunk_ids, batch.frame_ids,
                        batch.nucleotides, batch.proteins)
        finished += zip(batch.finished_ids, batch.finished_lengths, batch.finished_chunks, batch.finished_frames)
    assert produced == expected
    assert finished == [(r.id, len(r.sequence), len(chunk_starts(len(r.sequence), chunk_length)),
                         len(frames_of_read(r, chunk_length))) for r in reads]


def write_inputs(folder: Path, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    paths = []
    for index, count in enumerate((300, 0, 120)):  # the middle file has only records without frames
        reads = random_reads(rng, count) if count else [Read("empty", ""), Read("short", "AC")]
        text = "".join(f">{r.id} some description\n"
                       + "\n".join(r.sequence[i:i + 70] for i in range(0, len(r.sequence), 70)) + "\n" for r in reads)
        path = folder / (f"in{index}.fa.gz" if index == 2 else f"in{index}.fa")
        path.write_bytes(gzip.compress(text.encode()) if index == 2 else text.encode())
        paths.append(str(path))
    return paths


def run_prepare(folder: Path, inputs: list[str], shards: int) -> Workdir:
    config = RunConfig(inputs_list="", inputs=inputs, input_names=[f"i{n}" for n in range(len(inputs))],
                       chunk_length=500, shards=shards, models=ModelSpec("esm", "dnabert", "classifier"))
    workdir = Workdir(folder)
    prepare.prepare(StageContext(workdir=workdir, config=config))
    return workdir


def files_of(workdir: Workdir) -> dict[str, bytes]:
    return {str(p.relative_to(workdir.root)): p.read_bytes() for p in sorted(workdir.root.rglob("*")) if p.is_file()
            and p.name != "summary.json"}


def test_prepare_writes_the_reference_shards(tmp_path):
    """Shards = the reference frames, in input order, cut where tokens before * N // total changes."""
    inputs = write_inputs(tmp_path)
    frames = [f for index, path in enumerate(inputs)
              for read in read_fasta(path) for f in frames_of_read(read, 500, index)]
    total = sum(len(f.protein) + 2 for f in frames)
    for shards in (1, 3, 8):
        expected, before = [[] for _ in range(shards)], 0
        for frame in frames:
            expected[min(shards - 1, before * shards // total)].append(frame_line(frame))
            before += len(frame.protein) + 2
        workdir = run_prepare(tmp_path / f"w{shards}", inputs, shards)
        for shard in range(shards):
            assert workdir.shard_frames(shard).read_text() == "\t".join(FRAME_COLUMNS) + "\n" + "".join(expected[shard])
        reads_table = workdir.reads_table(1).read_text().splitlines()
        assert reads_table[1:] == ["empty\t0\t1\t0", "short\t2\t1\t0"]


def test_workers_and_blocks_do_not_change_the_output(tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path)
    monkeypatch.setenv("VIRNUCPRO_PREPARE_WORKERS", "1")
    single = files_of(run_prepare(tmp_path / "single", inputs, 4))
    monkeypatch.setattr(prepare, "BLOCK_BYTES", 5000)  # many blocks per file, spread over the workers
    monkeypatch.setenv("VIRNUCPRO_PREPARE_WORKERS", "2")
    pooled = files_of(run_prepare(tmp_path / "pooled", inputs, 4))
    assert pooled == single


def test_translate_command_writes_the_reference_files(tmp_path):
    from virnucpro.cli import main

    (path,) = write_inputs(tmp_path)[:1]
    assert main(["translate", path, "--chunk-length", "300", "--nucleotide-out", str(tmp_path / "n.fa"),
                 "--protein-out", str(tmp_path / "p.faa")]) == 0
    frames = [f for read in read_fasta(path) for f in frames_of_read(read, 300)]
    assert (tmp_path / "n.fa").read_text() == "".join(f">{f.frame_id}\n{f.nucleotide}\n" for f in frames)
    assert (tmp_path / "p.faa").read_text() == "".join(f">{f.frame_id}\n{f.protein}\n" for f in frames)


def peak_memory(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_batch():
    """A 10 Mbp contig translates in a few tens of MB, and 4x more reads take no more memory."""
    rng = random.Random(5)
    unit = "".join(rng.choice("ACGT") for _ in range(100_000))
    contig = Read("contig", unit * 100)  # 10 Mbp
    assert peak_memory(lambda: sum(len(b.frame_ids) for b in translate_stream([contig], 500))) < 48 << 20

    def reads_peak(count: int) -> int:
        reads = (Read(f"r{i}", unit[i % 99_000:i % 99_000 + 150]) for i in range(count))  # generated lazily
        return peak_memory(lambda: sum(len(b.frame_ids) for b in translate_stream(reads, 500)))

    assert reads_peak(40_000) < 1.5 * reads_peak(10_000)


def test_fast_path_is_much_faster_than_the_reference():
    """A loose floor (CPU time, so a busy machine does not fail it): bench/prepare_throughput.py
    measures the real ratio."""
    rng = random.Random(9)
    reads = [Read(f"r{i}", "".join(rng.choice("ACGT") for _ in range(150))) for i in range(3000)]
    started = time.process_time()
    expected = [f for read in reads for f in frames_of_read(read, 500)]
    reference = time.process_time() - started
    started = time.process_time()
    produced = list(frames_fast(reads, 500))
    fast = time.process_time() - started
    assert produced == expected
    assert reference / fast > 5, (reference, fast)
