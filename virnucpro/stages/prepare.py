"""Stage 1, prepare (CPU): read every input, chunk, translate six frames, write balanced shards.

Inputs are cut into blocks of whole FASTA records; each block is parsed, validated, chunked and
translated (the vectorised `translate_stream`) into frame lines and reads-table lines, by a pool
of worker processes when the input is large. Results are consumed in block order, so the output
does not depend on the number of workers. Frames are spooled to disk, then cut into shards:
contiguous runs of frames in input order, cut where the cumulative ESM-2 token count (protein
length + BOS + EOS) crosses k/N of the total, so every shard costs the GPU about the same and the
split is a pure function of the inputs and N. Memory stays bounded by a few blocks (plus 2 bytes
per frame for the token costs and 8 bytes per read for the duplicate-id check).

Before writing the shards, the stage checks that the three models fit together (the
classifier's input width is DNABERT-S's plus ESM-2's), so a wrong model fails here, on the CPU,
and not after hours of GPU.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import console
from ..atomic import atomic_open, atomic_write_text
from ..errors import InputError
from ..orchestration.runner import StageContext
from ..modelstore.resolve import dnabert_width
from ..model_facts import KNOWN_WIDTHS
from ..fasta import BLOCK_BYTES, Block, DuplicateIds, empty_file_message, fasta_blocks, id_hashes, parse_block, rna_warning
from ..genbank import CodingFrames, cds_translations
from ..sequences import translate_stream
from ..storage import FRAME_COLUMNS

log = logging.getLogger("virnucpro.prepare")

READS_COLUMNS = ("read_id", "length", "chunks", "frames")
COUNT_KEYS = ("reads", "bases", "chunks", "frames", "reads_without_frames", "reads_shorter_than_codon",
              "records_without_sequence", "rna_records", "records_not_in_genbank")
TABLE_HEADER = ("\t".join(FRAME_COLUMNS) + "\n").encode()
PARALLEL_MIN_BYTES = 16 << 20  # below this much input, worker start-up costs more than it saves


def open_stage(ctx: StageContext):
    return lambda shard: prepare(ctx, before_shards=lambda: check_models(ctx.config))


# ---------------------------------------------------------------- one block of records

@dataclass
class BlockResult:
    input_index: int
    spool: bytes  # frame-table lines, UTF-8 (encoded by the worker, not the parent)
    reads: bytes  # reads-table lines
    costs: bytes  # ESM-2 tokens of each frame, uint16
    digests: bytes  # read-id digests for the duplicate check
    counts: dict


def prepare_block(task: tuple[Block, int, int, str | None]) -> BlockResult:
    """Parse, validate, chunk and translate one block (runs in a worker process); with the
    input's GenBank file, keep only the frames it annotates as coding (genbank.CodingFrames)."""
    block, input_index, chunk_length, genbank = task
    reads = parse_block(block)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["rna_records"] = reads.rna_records
    spool, table, costs = [], [], []
    prefix = f"{input_index}\t"
    coding = CodingFrames(cds_translations(genbank), reads, chunk_length) if genbank else None
    for batch in translate_stream(reads, chunk_length):
        if coding:
            batch = coding.select(batch)
        spool.append("".join([f"{prefix}{r}\t{c}\t{f}\t{n}\t{p}\n" for r, c, f, n, p in zip(
            batch.read_ids, batch.chunk_ids, batch.frame_ids, batch.nucleotides, batch.proteins)]))
        table.append("".join([f"{i}\t{length}\t{chunks}\t{frames}\n" for i, length, chunks, frames in zip(
            batch.finished_ids, batch.finished_lengths, batch.finished_chunks, batch.finished_frames)]))
        costs.append(np.fromiter(map(len, batch.proteins), np.uint16, len(batch.proteins)) + 2)
        lengths = np.asarray(batch.finished_lengths)
        frames = np.asarray(batch.finished_frames)
        counts["reads"] += len(lengths)
        counts["bases"] += int(lengths.sum())
        counts["chunks"] += sum(batch.finished_chunks)
        counts["frames"] += len(batch.frame_ids)
        counts["reads_without_frames"] += int((frames == 0).sum())
        counts["reads_shorter_than_codon"] += int((lengths < 3).sum())
        counts["records_without_sequence"] += int((lengths == 0).sum())
    counts["records_not_in_genbank"] = len(coding.records_without_cds) if coding else 0
    cost_bytes = np.concatenate(costs).tobytes() if costs else b""
    digests = id_hashes(read_id for read_id, _ in reads)
    return BlockResult(input_index, "".join(spool).encode(), "".join(table).encode(), cost_bytes, digests, counts)


# ---------------------------------------------------------------- the stage

def prepare_workers(total_bytes: int) -> int:
    """Worker processes for this much input: none for small inputs or one CPU, else one per CPU
    but the parent's (it reads the blocks and writes the results), and two on 2 or 3 CPUs: the
    parent mostly waits on the disk, and on 2 CPUs two workers took prepare from 9.1 to 5.4 s per
    1M reads (bench/host_overhead.py) where one process did everything before.
    (SLURM_CPUS_PER_TASK on a cluster; VIRNUCPRO_PREPARE_WORKERS overrides.)"""
    forced = os.environ.get("VIRNUCPRO_PREPARE_WORKERS")
    if forced:
        return max(1, int(forced))
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or len(os.sched_getaffinity(0))
    if total_bytes < PARALLEL_MIN_BYTES or cpus < 2:
        return 1
    return min(max(cpus - 1, 2), 32)


def ordered_map(function: Callable, tasks: Iterable, workers: int) -> Iterator:
    """map(function, tasks) in order, over `workers` processes with at most 2 tasks per worker
    in flight (so memory stays bounded however long `tasks` is)."""
    if workers <= 1:
        yield from map(function, tasks)
        return
    # spawn: the parent may hold torch and threads; a forked copy of those is not safe
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.submit(function, task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _die_with_parent(parent: int) -> None:
    """Worker start-up: die with the parent, even when it is killed with kill -9 (an orphaned
    worker would otherwise wait for tasks forever). Linux's PR_SET_PDEATHSIG; a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


class InputTotals:
    """What prepare learns about one input file while its blocks go by."""

    def __init__(self, name: str, path: Path):
        self.counts = {"name": name, "path": str(path), **dict.fromkeys(COUNT_KEYS, 0)}
        self.duplicates = DuplicateIds(path)
        self.path = path

    def add(self, result: BlockResult) -> None:
        for key in COUNT_KEYS:
            self.counts[key] += result.counts[key]
        self.duplicates.add(result.digests)

    def finish(self) -> dict:
        if self.counts["reads"] == 0:
            raise InputError(empty_file_message(self.path))
        self.duplicates.check()
        rna_warning(self.path, self.counts["rna_records"])
        short, empty = self.counts["reads_shorter_than_codon"], self.counts["records_without_sequence"]
        if short:
            console.warn(f"{self.path}: skipped {short} read(s) shorter than one codon"
                         + (f" ({empty} with no sequence at all)" if empty else ""))
        missing = self.counts["records_not_in_genbank"]
        if missing:
            console.warn(f"{self.path}: {missing} record(s) have no record of the same id in its GenBank file; "
                         "none of their frames is kept")
        if self.counts["frames"] == 0:
            console.warn(f"{self.path}: no read yields a stop-free frame; its results will be header-only")
        return self.counts


def prepare(ctx: StageContext, before_shards: Callable[[], None] = lambda: None) -> dict:
    """Spool the frames of every input, call `before_shards` (the model check: after the inputs,
    so a bad input fails in seconds), then write the shards."""
    workdir, config = ctx.workdir, ctx.config
    inputs = [Path(p) for p in config.inputs]
    workers = prepare_workers(sum(p.stat().st_size for p in inputs))
    log.info("prepare: %d input(s), %d worker process(es)", len(inputs), workers)
    genbank = config.genbank or [None] * len(inputs)
    tasks = ((block, index, config.chunk_length, genbank[index]) for index, path in enumerate(inputs)
             for block in fasta_blocks(path, BLOCK_BYTES))
    results = ordered_map(prepare_block, tasks, workers)
    # results come in block order, so each input's results are one run (none for an empty file)
    runs = itertools.groupby(results, key=lambda result: result.input_index)
    costs = bytearray()
    summary = {"inputs": [], "shards": []}
    with contextlib.closing(results), atomic_open(workdir.frames_spool, "wb") as spool, \
            console.progress("prepare", len(inputs)) as advance:
        spool.write(TABLE_HEADER)
        run_index, run = next(runs, (None, iter(())))
        for index, path in enumerate(inputs):
            totals = InputTotals(config.input_names[index], path)
            with atomic_open(workdir.reads_table(index), "wb") as reads_out:
                reads_out.write(("\t".join(READS_COLUMNS) + "\n").encode())
                if run_index == index:
                    for result in run:
                        spool.write(result.spool)
                        reads_out.write(result.reads)
                        costs += result.costs
                        totals.add(result)
                    run_index, run = next(runs, (None, iter(())))
                summary["inputs"].append(totals.finish())
            advance(1)
        check_classes_have_frames(config, summary["inputs"])
        check_shard_count(config.shards, len(costs) // 2)
        before_shards()  # inside: if it refuses the models, the spool is never committed
    token_costs = np.frombuffer(bytes(costs), np.uint16)
    summary["shards"] = split_spool(workdir, config.shards, token_costs)
    summary["total_tokens"] = int(token_costs.sum(dtype=np.int64))
    summary["total_frames"] = len(token_costs)
    summary["workers"] = workers
    atomic_write_text(workdir.prepare_summary, json.dumps(summary, indent=1) + "\n")
    workdir.frames_spool.unlink()
    return {"frames": summary["total_frames"], "tokens": summary["total_tokens"],
            "reads": sum(i["reads"] for i in summary["inputs"]), "workers": workers}


def check_classes_have_frames(config, inputs: list[dict]) -> None:
    """A training needs examples of both classes: refuse one whose inputs of a class yield no frame."""
    if config.kind != "train":
        return
    for label in sorted(set(config.labels)):
        named = [counts for counts, given in zip(inputs, config.labels) if given == label]
        if not any(counts["frames"] for counts in named):
            where = ("; only frames inside annotated CDS are kept" if any(
                config.genbank[i] for i, given in enumerate(config.labels) if given == label) else "")
            raise InputError(f"{named[0]['path']}: no input labelled {label!r} yields a stop-free frame{where}; "
                             f"a training needs examples of both classes: add {label} sequences to {config.inputs_list}")


def check_shard_count(shards: int, frames: int) -> None:
    """More shards than frames would be empty array tasks, each loading a 3B model for nothing
    (and 100,000 of them flood the scheduler). No frames at all still runs one shard: the
    results are header-only."""
    if shards > max(frames, 1):
        raise InputError(f"--shards {shards} is more than the {frames} frame(s) these inputs yield; "
                         f"use --shards {max(frames, 1)} or fewer")


def shard_boundaries(token_costs: np.ndarray, shards: int) -> list[int]:
    """Frame index where each shard starts (plus the end): frame i goes to shard
    min(shards - 1, tokens_before_i * shards // total), a pure function of the frames and N."""
    total = int(token_costs.sum(dtype=np.int64))
    if total == 0:
        return [0] * shards + [len(token_costs)]
    before = np.concatenate([[0], np.cumsum(token_costs, dtype=np.int64)[:-1]])
    # first frame of shard k: the first with tokens_before * shards >= k * total
    firsts = [int(np.searchsorted(before, -(-k * total // shards), side="left")) for k in range(1, shards)]
    return [0] + firsts + [len(token_costs)]


def split_spool(workdir, shards: int, token_costs: np.ndarray) -> list[dict]:
    """Cut the spooled frames into `shards` contiguous, token-balanced frame tables."""
    bounds = shard_boundaries(token_costs, shards)
    stats = []
    with open(workdir.frames_spool, "rb") as frames:
        frames.readline()
        for shard in range(shards):
            count = bounds[shard + 1] - bounds[shard]
            with atomic_open(workdir.shard_frames(shard), "wb") as out:
                out.write(TABLE_HEADER)
                out.writelines(itertools.islice(frames, count))
            stats.append({"frames": count,
                          "tokens": int(token_costs[bounds[shard]:bounds[shard + 1]].sum(dtype=np.int64))})
        if frames.readline():
            raise RuntimeError(f"{workdir.frames_spool}: frames left after the last shard")
    return stats


# ---------------------------------------------------------------- do the models fit together?

def esm_width(spec: str, trust_pickles: bool = False) -> int | None:
    path = Path(spec)
    if path.stem in KNOWN_WIDTHS:
        return KNOWN_WIDTHS[path.stem]
    if not path.is_file():
        return None
    # torch and fair-esm: only for a checkpoint not known by name
    from ..engines.esm2 import ESM_ALLOWED_GLOBALS, check_checkpoint
    from ..engines.safe_load import UnsafeModelFileError, load

    try:  # memory-mapped: only the pickled configuration is read, not the weights
        data = load(path, ESM_ALLOWED_GLOBALS, trust=trust_pickles, mmap=True)
    except UnsafeModelFileError:
        raise
    except Exception:
        if path.stat().st_size > (512 << 20):
            return None  # an old-format large checkpoint: checked when the esm2 stage loads it
        try:
            data = load(path, ESM_ALLOWED_GLOBALS, trust=trust_pickles)
        except UnsafeModelFileError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: not a readable ESM-2 checkpoint ({type(exc).__name__}); "
                             "give an esm2_*.pt file from fair-esm or a fair-esm model name") from None
    check_checkpoint(path, data, None)  # the cfg's sizes against the weights, before any GPU work
    return int(data["cfg"]["model"].encoder_embed_dim)


def check_models(config) -> None:
    """Fail before any GPU work when the classifier cannot take DNABERT-S + ESM-2 features (a
    training has none yet: its classifier takes whatever widths the models give)."""
    from ..engines.classifier import load_classifier  # torch: only in the prepare stage, not its module's importers

    models = config.models
    if not models.classifier:
        return
    classifier = load_classifier(models.classifier, trust_pickles=config.trust_model_pickles)  # one-line InputError if not one
    expects = classifier.hidden_layer.in_features
    classes = classifier.output_layer.out_features
    if classes != 2:
        raise InputError(f"{models.classifier}: the classifier has {classes} output classes, VirNucPro's has 2 "
                         "(others, virus); give 300_model.pth or 500_model.pth")
    dnabert, esm = dnabert_width(models.dnabert), esm_width(models.esm, config.trust_model_pickles)
    if dnabert is None or esm is None:
        log.info("model widths not checked before the run (%s, %s): checked when the models load",
                 models.dnabert, models.esm)
        return
    if dnabert + esm != expects:
        raise InputError(
            f"{models.classifier}: the classifier takes {expects} features but DNABERT-S ({models.dnabert}) gives "
            f"{dnabert} and ESM-2 ({models.esm}) gives {esm}, {dnabert + esm} together; use the classifier "
            "trained with these models (VirNucPro: DNABERT-S 768 + ESM-2 3B 2560 = 3328)")
