#!/usr/bin/env python
"""The host-side floor of a GPU run: the real pipeline with engines that cost nothing.

    PYTHONPATH=$PWD python bench/host_overhead.py                      # 200,000 reads, 4 input files
    PYTHONPATH=$PWD python bench/host_overhead.py --compare a87dfb6    # the same inputs through REV too
    PYTHONPATH=$PWD python bench/host_overhead.py --reads 1000000 --compare a87dfb6 --rounds 2
    PYTHONPATH=$PWD python bench/host_overhead.py --files 10000 --reads 200000   # per-input cost

Simulated 150-bp reads of coding genomes (bench/prepare_throughput.py's generator, so reads yield
stop-free frames as real reads do: ~1.49 frames a read) go through the real pipeline: prepare ->
dnabert -> esm2 -> predict -> consensus (with the report), real files, real checkpoints, the real
local runner (`run_locally`, one stage at a time so each is timed). Only the model math is gone:
  - DNABERT-S and ESM-2 are the real engines (native DNABERT-S, packed ESM-2) loaded from demo
    models, with only their forward replaced by a constant matrix of the real width (768, 2560),
    through `virnucpro.stages.embedding.ENGINE_OVERRIDES` (the one hook the stages consult before
    loading a model). Tokenization, length grouping, pack building in the prefetch thread and the
    scatter of pooled rows are timed as in a GPU run, with the GPU token budgets (65,536 each).
    The DNABERT-S folder gets a tokenizer.json made the way DNABERT-2/S made theirs (the
    `tokenizers` BpeTrainer on genome text, Whitespace pre-tokenizer, 4096 tokens, their five
    special tokens, [CLS] $A [SEP]), trained on another simulated genome: ~33 tokens per 150-nt
    frame, so the packs are as many as the real tokenizer's. (The demo's 45-token one cuts a frame
    into ~83 tokens. One Encoding per sequence, both cost ~20 us a frame on 2 cores; grouped
    (engines.dnabert_tokens), ~13 us with this one and ~17 us with the demo's.)
  - the classifier is a real demo classifier of width 3328 (loaded and width-checked), whose forward
    is replaced by scores made from each frame's position (varied and deterministic), since an MLP
    forward over 3328 features is GPU math that would dominate on this CPU.
Checkpoint windows are the GPU defaults (DNABERT-S 1M tokens, ESM-2 400K tokens).

Prints a table per stage (wall s, s per 1M reads, share, and the process's CPU seconds, all threads:
steadier than wall time where the disk's speed varies) and `host seconds per 1M reads: X`.
With `--compare REV`, REV is checked out into a temporary git worktree and the same inputs run
there first, each revision in a fresh process; the outputs (the three result files of every input
and the report's numbers) must be identical, and the table gains before/after columns.
`--rounds N` runs each revision N times in alternating order (REV, this tree, this tree, REV, ...)
and takes each stage's fastest time: on this VM a run that follows another is slower (the same
code measured ~1 s slower in the ESM-2 stage as the second run), which favours the first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
STAGE_NAMES = ("prepare", "dnabert", "esm2", "predict", "consensus")
WIDTHS = {"dnabert": 768, "esm2": 2560}


# ---------------------------------------------------------------- inputs (parent)

def make_inputs(folder: Path, reads: int, files: int, read_length: int) -> Path:
    import numpy as np

    sys.path.insert(0, str(BENCH_DIR))
    from prepare_throughput import COMPLEMENT, simulate_genome

    rng = np.random.default_rng(1)
    genome = simulate_genome(rng, max(1_000_000, 10 * read_length))
    windows = np.lib.stride_tricks.sliding_window_view(genome, read_length)
    picked = windows[rng.integers(0, len(windows), reads)].copy()
    flip = rng.random(reads) < 0.5
    picked[flip] = COMPLEMENT[picked[flip, ::-1]]
    lines = [f">read{i}\n{row.tobytes().decode()}\n" for i, row in enumerate(picked)]
    names = []
    for k in range(files):
        name = f"sample{k:05d}.fa"
        (folder / name).write_text("".join(lines[k::files]))
        names.append(name)
    (folder / "inputs.txt").write_text("\n".join(names) + "\n")
    return folder / "inputs.txt"


def dnabert_s_sized_tokenizer() -> str:
    """tokenizer.json of a BPE trained as DNABERT-2/S's was, on 1 Mbp of another simulated genome."""
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    sys.path.insert(0, str(BENCH_DIR))
    from prepare_throughput import simulate_genome

    genome = simulate_genome(np.random.default_rng(7), 1_000_000).tobytes().decode()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([genome[i:i + 2000] for i in range(0, len(genome), 2000)], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return tokenizer.to_str()


def make_models(folder: Path) -> None:
    """The demo models, the DNABERT-S folder with a tokenizer of the real size (its manifest too)."""
    from virnucpro.engines.demo import write_demo_models

    write_demo_models(folder, dnabert_tokenizer=dnabert_s_sized_tokenizer())


def make_classifier(folder: Path) -> Path:
    """A demo classifier pickled like the released ones, of the real input width 3328."""
    from virnucpro.engines import demo

    path = folder / "300_model.pth"
    path.write_bytes(demo._classifier_pickle(300, sum(WIDTHS.values())))
    return path


# ---------------------------------------------------------------- null forwards (child)

GPU_TOKEN_BUDGETS = {"dnabert": 65536, "esm2": 65536}  # what the engines pick on an 80 GB GPU


class ConstantRows:
    """A forward of no cost: a view of one constant [n, dim] tensor, grown to the largest pack
    asked for (allocating 64K rows up front cost 0.8 s of page faults, charged to the stage)."""

    def __init__(self, dim: int):
        import torch

        self.dim = dim
        self.rows = torch.zeros((0, dim), dtype=torch.float32)

    def __call__(self, n: int):
        import torch

        if n > len(self.rows):
            self.rows = torch.linspace(-1, 1, self.dim, dtype=torch.float32).repeat(max(n, 2 * len(self.rows)), 1)
        return self.rows[:n]


def null_forward_engines(models: Path) -> dict:
    """The real engines (native DNABERT-S, packed ESM-2) on the demo models, with only the model
    math replaced: tokenization, length grouping, pack building, the prefetch thread, the scatter
    of pooled rows into the output all run as in a GPU run. The widths are the real ones."""
    from virnucpro.engines.dnabert import load_dnabert_engine
    from virnucpro.stages import esm2 as esm2_stage

    def dnabert(ctx):
        engine = load_dnabert_engine(str(models / "dnabert-s-demo"), "cpu", token_budget=GPU_TOKEN_BUDGETS["dnabert"])
        constant = ConstantRows(WIDTHS["dnabert"])
        engine.dim = constant.dim
        engine._forward = lambda pack: constant(pack.batch)
        return engine

    def esm2(ctx):
        engine = esm2_stage.load_engine(str(models / "esm2_t2_demo.pt"), "cpu", "fp32", True, GPU_TOKEN_BUDGETS["esm2"])
        constant = ConstantRows(WIDTHS["esm2"])
        engine.dim = constant.dim
        engine._forward_pack = lambda pk: constant(pk.B)
        engine.prefetch = True  # as on a GPU: packs built in a background thread (CPU runs build them inline)
        return engine

    return {"dnabert": dnabert, "esm2": esm2}


def install_null_engines(models: Path) -> str:
    import numpy as np

    from virnucpro.engines import classifier
    from virnucpro.stages import embedding

    embedding.ENGINE_OVERRIDES.update(null_forward_engines(models))
    how = "real engines, null forward"
    seen = [0]

    def null_classify(model, features):
        # checks the width like the real one; scores from the global row position, so they do not
        # depend on how predict blocks its rows
        if features.shape[1] != model.hidden_layer.in_features:
            raise ValueError(f"features have dimension {features.shape[1]}")
        rows = np.arange(seen[0], seen[0] + len(features), dtype=np.float64)
        seen[0] += len(features)
        virus = ((rows * 0.6180339887498949) % 1.0).astype(np.float32)
        return np.stack([np.float32(1) - virus, virus], axis=1)

    classifier.classify = null_classify
    return how


def results_digest(workdir) -> str:
    digest = hashlib.sha256()
    for path in sorted(workdir.results.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(workdir.results).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def report_numbers(workdir, config, state) -> str:
    from virnucpro.report.data import gather

    report = gather(workdir, config, state.load())
    numbers = [[s.reads, s.frames, s.chunks, s.frame_scores.counts.tolist(), s.frame_labels, s.read_scores.counts.tolist(),
                s.calls, s.chunks_per_read.counts.tolist(), s.frames_per_read.counts.tolist()] for s in report.inputs]
    return hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()


def child(args) -> None:
    """One measured run with the virnucpro on PYTHONPATH; prints one JSON line."""
    import virnucpro
    from virnucpro import report as report_module
    from virnucpro.orchestration.plan import RunRequest, plan_run
    from virnucpro.orchestration.runner import StageContext, run_locally
    from virnucpro.paths import Workdir

    folder = Path(args.child)
    how = install_null_engines(folder / "models")
    request = dict(inputs_list=folder / "inputs.txt", workdir=Path(args.workdir), esm_model="esm2_t36_3B_UR50D",
                   dnabert_model="zhihan1996/DNABERT-S", classifier=str(folder / "300_model.pth"),
                   chunk_length=300, shards=args.shards, device="cpu", checkpoint_tokens=None)
    if args.embedding_dtype != "float32":
        request["embedding_dtype"] = args.embedding_dtype
    seconds, cpu = {}, {}
    started, started_cpu = time.perf_counter(), time.process_time()
    workdir, config, state = plan_run(RunRequest(**request))
    seconds["plan"], cpu["plan"] = time.perf_counter() - started, time.process_time() - started_cpu
    ctx = StageContext(workdir=workdir, config=config, device="cpu")
    # GPU checkpoint windows; the CPU defaults would checkpoint 20x as often as a GPU run does
    from virnucpro.stages import dnabert as dnabert_stage, esm2 as esm2_stage  # noqa: F401

    report_seconds, report_cpu = [0.0], [0.0]
    real_write_report = report_module.write_report

    def timed_report(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return real_write_report(*a, **k)
        finally:
            report_seconds[0] += time.perf_counter() - t
            report_cpu[0] += time.process_time() - c

    report_module.write_report = timed_report
    windows = {"dnabert": 1_000_000, "esm2": 400_000}
    for stage in STAGE_NAMES:
        config.checkpoint_tokens = windows.get(stage)
        t, c = time.perf_counter(), time.process_time()
        run_locally(ctx, state, (stage,))
        seconds[stage] = time.perf_counter() - t
        cpu[stage] = time.process_time() - c
    seconds["consensus"] -= report_seconds[0]
    seconds["report"] = report_seconds[0]
    cpu["consensus"] -= report_cpu[0]
    cpu["report"] = report_cpu[0]
    summary = json.loads(workdir.prepare_summary.read_text())
    sizes = {kind: sum(p.stat().st_size for p in (workdir.root / "embeddings" / kind).glob("*.h5"))
             for kind in WIDTHS}
    print(json.dumps({"seconds": seconds, "cpu": cpu, "frames": summary["total_frames"], "shards": config.shards,
                      "results": results_digest(Workdir(workdir.root)), "report": report_numbers(workdir, config, state),
                      "hook": how, "code": str(Path(virnucpro.__file__).parent.parent), "embedding_bytes": sizes}))


# ---------------------------------------------------------------- parent

def run_child(tree: Path, folder: Path, workdir: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [sys.executable, str(BENCH_DIR / "host_overhead.py"), "--child", str(folder), "--workdir", str(workdir),
            "--embedding-dtype", args.embedding_dtype]
    if args.shards:
        argv += ["--shards", str(args.shards)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"the run in {tree} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--read-length", type=int, default=150)
    parser.add_argument("--inputs", type=int, default=4, help="input files the reads are dealt into (default 4)")
    parser.add_argument("--files", type=int, help="per-input mode: this many input files (e.g. 10000)")
    parser.add_argument("--shards", type=int, help="default: sized from the inputs, as `run` does")
    parser.add_argument("--embedding-dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--compare", metavar="REV", help="also run git revision REV (e.g. a87dfb6) on the same inputs")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each revision this many times, in alternating order; each stage's fastest counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    files = args.files or args.inputs
    here = BENCH_DIR.parent
    with tempfile.TemporaryDirectory(prefix="host-overhead-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        started = time.perf_counter()
        make_inputs(tmp / "in", args.reads, files, args.read_length)
        sys.path.insert(0, str(here))
        make_classifier(tmp / "in")
        make_models(tmp / "in" / "models")
        print(f"{args.reads:,} reads of {args.read_length} bp in {files:,} input file(s) "
              f"(made in {time.perf_counter() - started:.0f} s); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
              flush=True)
        trees = {"this tree": here}
        if args.compare:
            base = tmp / "base"
            subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", str(base), args.compare],
                           check=True, capture_output=True)
            trees = {args.compare: base, **trees}
        rounds: dict[str, list] = {name: [] for name in trees}
        try:
            for number in range(args.rounds):
                # the order alternates: on this VM a run right after another is slower (the shared
                # disk's speed drops after a few minutes of writing), which would favour the first
                for name in (list(trees) if number % 2 == 0 else list(trees)[::-1]):
                    workdir = tmp / "w"
                    shutil.rmtree(workdir, ignore_errors=True)
                    rounds[name].append(run_child(trees[name], tmp / "in", workdir, args))
                    print(f"round {number + 1}: {name} {sum(rounds[name][-1]['seconds'].values()):.1f} s "
                          f"({rounds[name][-1]['hook']})", flush=True)
            shutil.rmtree(tmp / "w", ignore_errors=True)
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(base)], capture_output=True)
        runs = {name: fastest(results) for name, results in rounds.items()}
        disk = disk_speed(tmp / "disk-probe.bin")
    show(runs, args.reads, files)
    show_disk_floor(runs["this tree"], disk, args.reads)
    digests = {(r["results"], r["report"]) for r in runs.values()}
    if len(digests) > 1:
        print("OUTPUTS DIFFER between the revisions (results files or report numbers)")
        return 1
    if len(runs) > 1:
        print("outputs identical: the three result files of every input and the report's numbers")
    return 0


def fastest(results: list[dict]) -> dict:
    """One run's record with each stage's least-disturbed (fastest) wall time of the rounds, and
    that round's CPU seconds; the outputs of every round must be the same."""
    if len({(r["results"], r["report"]) for r in results}) > 1:
        raise SystemExit("OUTPUTS DIFFER between rounds of the same revision")
    best = dict(results[0], seconds={}, cpu={})
    for stage in results[0]["seconds"]:
        quickest = min(results, key=lambda r: r["seconds"][stage])
        best["seconds"][stage], best["cpu"][stage] = quickest["seconds"][stage], quickest["cpu"][stage]
    return best


def disk_speed(path: Path, size: int = 2 << 30) -> dict:
    """GB/s of this file system for what the embedding stages and predict do, the way they do it
    (direct_io: rows laid out as in the file written straight, reads through the staging buffers)."""
    from virnucpro.direct_io import CongruentBuffers, DirectReader, DirectWriter

    window = 64 << 20
    with open(path, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    rows = CongruentBuffers().array(0, window // 4096, 1024, "float32", 2048)
    rows[:] = 1.0
    writer, started = DirectWriter(path), time.perf_counter()
    for position in range(2048, size - window, window):
        writer.write(memoryview(rows), position)
    os.fsync(writer.fd)
    written = time.perf_counter() - started
    writer.close()
    reader, started = DirectReader(path), time.perf_counter()
    positions = range(0, size - DirectReader.LONGEST, DirectReader.LONGEST)
    with ThreadPoolExecutor(max_workers=DirectReader.STAGINGS) as pool:  # as many in flight as RowReader keeps
        for first in range(0, len(positions), DirectReader.STAGINGS):
            batch = positions[first:first + DirectReader.STAGINGS]
            list(pool.map(lambda n: reader.read(batch[n], DirectReader.LONGEST, n), range(len(batch))))
    read = time.perf_counter() - started
    done = len(positions) * DirectReader.LONGEST
    reader.close()
    path.unlink()
    return {"write": (size - window - 2048) / written / 1e9, "read": done / read / 1e9}


def show_disk_floor(run: dict, disk: dict, reads: int) -> None:
    """What the disk alone costs: every embedding byte is written once (dnabert, esm2) and read
    once (predict); no host work can go below that on this machine."""
    total = sum(run["embedding_bytes"].values()) / 1e9
    floor = total / disk["write"] + total / disk["read"]
    print(f"disk: {disk['write']:.2f} GB/s direct write, {disk['read']:.2f} GB/s direct read; the embeddings "
          f"({total:.1f} GB) written once and read once take {floor:.1f} s, {floor * 1e6 / reads:.1f} s per 1M reads "
          f"of the host seconds")


def show(runs: dict, reads: int, files: int) -> None:
    first = next(iter(runs.values()))
    print(f"\n{first['frames']:,} frames, {first['shards']} shard(s)")
    rows = ["plan", *STAGE_NAMES, "report"]
    names = list(runs)
    header = "| stage |" + "".join(f" {n}: wall s | s per 1M reads | share | CPU s |" for n in names)
    if len(names) > 1:
        header += " ratio |"
    print(header)
    print("|---|" + "---:|---:|---:|---:|" * len(names) + ("---:|" if len(names) > 1 else ""))
    totals = {n: sum(runs[n]["seconds"].values()) for n in names}
    cpu_totals = {n: sum(runs[n]["cpu"].values()) for n in names}
    for row in rows + ["total"]:
        line = f"| {row} |"
        for n in names:
            s = totals[n] if row == "total" else runs[n]["seconds"].get(row, 0.0)
            c = cpu_totals[n] if row == "total" else runs[n]["cpu"].get(row, 0.0)
            line += f" {s:.2f} | {s * 1e6 / reads:.1f} | {100 * s / totals[n]:.0f}% | {c:.1f} |"
        if len(names) > 1:
            a = totals[names[0]] if row == "total" else runs[names[0]]["seconds"].get(row, 0.0)
            b = totals[names[-1]] if row == "total" else runs[names[-1]]["seconds"].get(row, 0.0)
            line += f" {a / b:.1f}x |" if b > 0 else " - |"
        print(line)
    for n in names:
        sizes = ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in runs[n]["embedding_bytes"].items())
        print(f"{n}: embeddings on disk {sizes}")
        if files >= 100:
            print(f"{n}: {totals[n] * 1000 / files:.2f} s per 1000 input files ({files:,} files)")
    from virnucpro.pipeline import GPU_STAGES  # the others run on CPU nodes: no GPU waits for them

    gpu_stages = [stage for stage in GPU_STAGES if stage in STAGE_NAMES]  # a prediction's

    for n in names:
        beside_gpu = sum(runs[n]["seconds"].get(stage, 0.0) for stage in gpu_stages)
        print(f"{n}: host seconds per 1M reads: {totals[n] * 1e6 / reads:.1f} "
              f"(in the GPU stages {', '.join(gpu_stages)}: {beside_gpu * 1e6 / reads:.1f})")
    print(f"host seconds per 1M reads: {totals[names[-1]] * 1e6 / reads:.1f}")


if __name__ == "__main__":
    sys.exit(main())
