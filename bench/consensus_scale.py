#!/usr/bin/env python
"""Consensus stage at scale: wall time and peak memory against the dict-per-chunk baseline.

    python bench/consensus_scale.py                    # 1 M reads in 4 input files
    python bench/consensus_scale.py --reads 4000000 --inputs 8

Simulated 150-bp reads of coding genomes (as in prepare_throughput.py) go through the real
prepare stage (default shard size: 50 Mbp); random classifier scores
stand in for the predict stage. Then, each in a fresh process (peak RSS is per process):
  baseline  the first implementation: one dict entry per chunk and per read for every input,
            all kept until the end, a Python loop per frame;
  stage     virnucpro's consensus stage: reads the predictions only (not the frame tables),
            compact per-chunk arrays, one input held at a time; it also writes viral.fna (the
            input read again for the viral reads' records), index.tsv and the MultiQC table;
  stage --compress   the same, its per-input files gzipped.
All must write the same three original result files (byte-identical once gunzipped).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from virnucpro.orchestration.config import ModelSpec, RunConfig  # noqa: E402
from virnucpro.orchestration.runner import StageContext  # noqa: E402
from virnucpro.paths import HIGHEST_SCORE, PREDICTION_RESULTS, READS_TABLE, Workdir  # noqa: E402
from virnucpro.storage import read_matrix, read_shard_frames, write_matrix  # noqa: E402

READS_PER_SHARD = 333_333  # the default shard size (50 Mbp) in 150-bp reads


def baseline_consensus(workdir: Workdir, config: RunConfig) -> None:
    """The dict-based consensus virnucpro shipped first (same outputs, kept here as the baseline);
    it re-read every shard's frame table (with the faster reader the stages now share)."""
    chunk_max = [dict() for _ in config.inputs]
    read_chunks = [dict() for _ in config.inputs]
    handles = [open(workdir.result_dir(n) / PREDICTION_RESULTS, "w") for n in config.input_names]
    for handle in handles:
        handle.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
    for shard in range(config.shards):
        frames = read_shard_frames(workdir.shard_frames(shard))
        _, scores = read_matrix(workdir.predictions(shard), frames.frame_ids, name="scores", dim=2)
        for i, frame_id in enumerate(frames.frame_ids):
            index = int(frames.input_index[i])
            s1, s2 = scores[i, 0], scores[i, 1]
            handles[index].write(f"{frame_id}\t{'virus' if s2 > s1 else 'others'}\t{str(s1)}\t{str(s2)}\n")
            entry = chunk_max[index].get(frames.chunk_ids[i])
            if entry is None:
                chunk_max[index][frames.chunk_ids[i]] = [s1, s2]
                read_chunks[index].setdefault(frames.read_ids[i], []).append(frames.chunk_ids[i])
            else:
                entry[0], entry[1] = max(entry[0], s1), max(entry[1], s2)
    for handle in handles:
        handle.close()
    for index, name in enumerate(config.input_names):
        out = workdir.result_dir(name)
        with open(out / HIGHEST_SCORE, "w") as handle:
            handle.write("Modified_ID\tIs_Virus\n")
            for chunk_id in sorted(chunk_max[index]):
                s1, s2 = chunk_max[index][chunk_id]
                handle.write(f"{chunk_id}\t{bool(s2 >= s1)}\n")
        with open(workdir.reads_table(index)) as source, open(out / READS_TABLE, "w") as handle:
            source.readline()
            handle.write("read_id\tlength\tchunks\tframes\tviral_chunks\tmax_virus_score\tcall\n")
            for line in source:
                read_id, length, chunks, frames = line.rstrip("\n").split("\t")
                ids = read_chunks[index].get(read_id, [])
                if not ids:
                    handle.write(f"{read_id}\t{length}\t{chunks}\t0\t0\tNA\tno_frames\n")
                    continue
                best = max(chunk_max[index][c][1] for c in ids)
                viral = sum(bool(chunk_max[index][c][1] >= chunk_max[index][c][0]) for c in ids)
                handle.write(f"{read_id}\t{length}\t{chunks}\t{frames}\t{viral}\t{str(best)}\t{'virus' if viral else 'others'}\n")


def make_run(folder: Path, reads: int, inputs: int) -> tuple[Workdir, RunConfig]:
    from virnucpro.stages import prepare

    from prepare_throughput import simulate  # reads from simulated coding genomes, as that benchmark uses

    rng = np.random.default_rng(0)
    simulated, _ = simulate(reads, 1.0)
    paths = []
    for k in range(inputs):
        path = folder / f"sample{k}.fa"
        with open(path, "w") as out:
            out.writelines(f">{read.id}\n{read.sequence}\n" for read in simulated[k::inputs])
        paths.append(str(path))
    del simulated
    config = RunConfig(inputs_list="", inputs=paths, input_names=[f"sample{k}" for k in range(inputs)], chunk_length=500,
                       shards=-(-reads // READS_PER_SHARD), models=ModelSpec("esm", "dnabert", "classifier"))
    workdir = Workdir(folder / "w")
    prepare.prepare(StageContext(workdir=workdir, config=config))
    for shard in range(config.shards):
        ids = read_shard_frames(workdir.shard_frames(shard)).frame_ids
        p = rng.random((len(ids), 1), dtype=np.float32)
        write_matrix(workdir.predictions(shard), ids, np.hstack([p, 1 - p]), name="scores")
    (folder / "config.json").write_text(config.to_json())
    return workdir, config


def results_digest(workdir: Workdir, config: RunConfig) -> str:
    """Of the three files the baseline writes too, gunzipped where --compress gzipped them."""
    digest = hashlib.sha256()
    for name in config.input_names:
        for file in (PREDICTION_RESULTS, HIGHEST_SCORE, READS_TABLE):
            path = workdir.result_file(name, file, config.compress)
            data = gzip.decompress(path.read_bytes()) if config.compress else path.read_bytes()
            digest.update(f"{name}/{file}".encode() + data)
    return digest.hexdigest()


def peak_rss_mb() -> float:
    # VmHWM, not getrusage: Linux carries ru_maxrss over exec, so a child would report its parent's peak
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str, folder: Path) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    import shutil

    from virnucpro.stages import consensus

    config = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    config.compress = method == "stage --compress"
    workdir = Workdir(folder / "w")
    shutil.rmtree(workdir.results, ignore_errors=True)
    for name in config.input_names:
        workdir.result_dir(name).mkdir(parents=True)
    before = peak_rss_mb()
    started = time.perf_counter()
    if method == "baseline":
        baseline_consensus(workdir, config)
    else:
        consensus.consensus(StageContext(workdir=workdir, config=config))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "start_mb": before,
                      "digest": results_digest(workdir, config)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        workdir, config = make_run(folder, args.reads, args.inputs)
        frames = sum(len(read_shard_frames(workdir.shard_frames(s))) for s in range(config.shards))
        print(f"{args.reads:,} reads of 150 bp in {args.inputs} inputs -> {frames:,} frames in {config.shards} shards "
              f"(set up in {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
        rows = {}
        for method in ("baseline", "stage", "stage --compress"):
            done = subprocess.run([sys.executable, __file__, "--child", method, str(folder)], capture_output=True,
                                  text=True, check=True)
            rows[method] = json.loads(done.stdout.strip().splitlines()[-1])
        base, stage = rows["baseline"], rows["stage"]
        print("\n| consensus | seconds | frames/s | peak RSS MB (process) | identical |")
        print("|---|---:|---:|---:|---|")
        for method, r in rows.items():
            print(f"| {method} | {r['seconds']:.1f} | {frames / r['seconds']:,.0f} | {r['peak_mb']:,.0f} "
                  f"| {'yes' if r['digest'] == base['digest'] else 'NO'} |")
        grown = {m: r["peak_mb"] - r["start_mb"] for m, r in rows.items()}
        print(f"\nstage vs baseline: {base['seconds'] / stage['seconds']:.2f}x faster; memory the stage adds "
              f"{grown['stage']:,.0f} MB vs {grown['baseline']:,.0f} MB ({grown['baseline'] / grown['stage']:.1f}x less; "
              f"the ~{base['start_mb']:.0f} MB of interpreter and libraries excluded)")
        return 0 if all(r["digest"] == base["digest"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
