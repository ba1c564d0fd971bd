"""Stage 1, prepare (CPU): read every input, chunk, translate six frames, write balanced shards.

Inputs are cut into blocks of whole FASTA records; each block is parsed, validated, chunked and
translated (the vectorised `translate_stream`) into frame lines and reads-table lines, by a pool
of worker processes when the input is large. Results are consumed in block order, so the output
does not depend on the number of workers. Frames are spooled to disk, then cut into shards:
contiguous runs of frames in input order, cut where the cumulative ESM-2 token count (protein
length + BOS + EOS) crosses k/N of the total, so every shard costs the GPU about the same and the
split is a pure function of the inputs and N. Memory stays bounded by a few blocks (plus 2 bytes
per frame for the token costs and 8 bytes per read for the duplicate-id check).

A training's prepare also writes each frame's key of the held-out split beside its shard
(virnucpro.holdout: a hash of its record's, or its window's, sequence) and refuses a split with
a side that lacks a class, naming a --holdout-window that works: here, not after the GPU arrays.
Only a training selects frames by a GenBank file (RunConfig.frame_selection).

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
from ..model_facts import KNOWN_WIDTHS, seed_problem
from ..fasta import BLOCK_BYTES, Block, DuplicateIds, empty_file_message, fasta_blocks, id_hashes, parse_block, rna_warning
from ..genbank import CodingFrames, build_cds_index, cds_lookup
from ..holdout import KEY_DTYPE, FrameKeys, held_out, write_keys
from ..orchestration.labels import LABELS
from ..pipeline import TRAINING
from ..sequences import translate_stream
from ..storage import FRAME_COLUMNS

log = logging.getLogger("virnucpro.prepare")

READS_COLUMNS = ("read_id", "length", "chunks", "frames")
COUNT_KEYS = ("reads", "bases", "chunks", "frames", "reads_without_frames", "reads_shorter_than_codon",
              "records_without_sequence", "rna_records", "records_not_in_genbank", "frames_outside_cds")
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
    split_keys: bytes = b""  # a training's: each frame's unit of the held-out split (holdout.py), uint64


def prepare_block(task: tuple[Block, int, int, str | None, int | None]) -> BlockResult:
    """Parse, validate, chunk and translate one block (runs in a worker process); with the index of
    the input's GenBank file (genbank.build_cds_index), keep only the frames it annotates as coding
    (genbank.CodingFrames), looking up only the block's records; with a held-out window (a
    training: 0 for whole records), the key of each frame's unit of the split."""
    block, input_index, chunk_length, cds_index, split_window = task
    reads = parse_block(block)
    frame_keys = FrameKeys(reads, chunk_length, split_window) if split_window is not None else None
    keys = []
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["rna_records"] = reads.rna_records
    spool, table, costs = [], [], []
    prefix = f"{input_index}\t"
    coding = CodingFrames(cds_lookup(cds_index, (i for i, _ in reads)), reads, chunk_length) if cds_index else None
    for batch in translate_stream(reads, chunk_length):
        if coding:
            batch = coding.select(batch)
        if frame_keys:
            keys.append(frame_keys(batch.read_ids, batch.chunk_ids))
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
    counts["frames_outside_cds"] = coding.outside if coding else 0
    cost_bytes = np.concatenate(costs).tobytes() if costs else b""
    digests = id_hashes(read_id for read_id, _ in reads)
    return BlockResult(input_index, "".join(spool).encode(), "".join(table).encode(), cost_bytes, digests, counts,
                       np.concatenate(keys).tobytes() if keys else b"")


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

    def __init__(self, name: str, path: Path, genbank: str | None = None, training: bool = False):
        self.counts = {"name": name, "path": str(path), **dict.fromkeys(COUNT_KEYS, 0)}
        self.duplicates = DuplicateIds(path)
        self.path, self.genbank, self.training = path, genbank, training

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
            console.warn(self.no_frame_message())
        return self.counts

    def no_frame_message(self) -> str:
        if self.counts["frames_outside_cds"]:  # GenBank mode: stop-free frames, none of them coding
            return (f"{self.path}: no stop-free frame lies inside a CDS annotated in {self.genbank} "
                    f"({self.counts['frames_outside_cds']} lie outside); a training keeps only those, so this input "
                    "gives no example")
        return f"{self.path}: no read yields a stop-free frame; " + (
            "it adds no example to the training" if self.training else "its results will be header-only")


def prepare(ctx: StageContext, before_shards: Callable[[], None] = lambda: None) -> dict:
    """Spool the frames of every input, call `before_shards` (the model check: after the inputs,
    so a bad input fails in seconds), then write the shards."""
    workdir, config = ctx.workdir, ctx.config
    inputs = [Path(p) for p in config.inputs]
    workers = prepare_workers(sum(p.stat().st_size for p in inputs))
    log.info("prepare: %d input(s), %d worker process(es)", len(inputs), workers)
    genbank = config.frame_selection  # a training's GenBank files only
    training = config.kind == TRAINING
    check_split_options(config)
    split_window = config.holdout_window if training else None
    costs = bytearray()
    summary = {"inputs": [], "shards": []}
    split = SplitTally(config) if training else None
    with genbank_indexes(workdir, genbank) as cds_indexes:  # removed after the spool
        tasks = ((block, index, config.chunk_length, cds_indexes[index], split_window) for index, path in enumerate(inputs)
                 for block in fasta_blocks(path, BLOCK_BYTES))
        results = ordered_map(prepare_block, tasks, workers)
        # results come in block order, so each input's results are one run (none for an empty file)
        runs = itertools.groupby(results, key=lambda result: result.input_index)
        with contextlib.closing(results), atomic_open(workdir.frames_spool, "wb") as spool, \
                (atomic_open(workdir.split_keys_spool, "wb") if training else contextlib.nullcontext()) as key_spool, \
                console.progress("prepare", len(inputs)) as advance:
            spool.write(TABLE_HEADER)
            run_index, run = next(runs, (None, iter(())))
            for index, path in enumerate(inputs):
                totals = InputTotals(config.input_names[index], path, genbank[index], training)
                with atomic_open(workdir.reads_table(index), "wb") as reads_out:
                    reads_out.write(("\t".join(READS_COLUMNS) + "\n").encode())
                    if run_index == index:
                        for result in run:
                            spool.write(result.spool)
                            reads_out.write(result.reads)
                            costs += result.costs
                            totals.add(result)
                            if split:
                                key_spool.write(result.split_keys)
                                split.add(index, result.split_keys)
                        run_index, run = next(runs, (None, iter(())))
                    summary["inputs"].append(totals.finish())
                advance(1)
            check_classes_have_frames(config, summary["inputs"])
            if split:
                split.check(summary["inputs"])
            check_shard_count(config.shards, len(costs) // 2)
            before_shards()  # inside: if it refuses the models, the spool is never committed
    token_costs = np.frombuffer(bytes(costs), np.uint16)
    summary["shards"] = split_spool(workdir, config.shards, token_costs)
    if training:
        split_key_spool(workdir, shard_boundaries(token_costs, config.shards))
    summary["total_tokens"] = int(token_costs.sum(dtype=np.int64))
    summary["total_frames"] = len(token_costs)
    summary["workers"] = workers
    atomic_write_text(workdir.prepare_summary, json.dumps(summary, indent=1) + "\n")
    workdir.frames_spool.unlink()
    return {"frames": summary["total_frames"], "tokens": summary["total_tokens"],
            "reads": sum(i["reads"] for i in summary["inputs"]), "workers": workers}


@contextlib.contextmanager
def genbank_indexes(workdir, genbank: list[str | None]) -> Iterator[list[str | None]]:
    """Per input, the index of its GenBank file, or None: each file parsed once, here, whatever the
    number of workers (genbank.build_cds_index); the indexes are removed when the block ends."""
    built: dict[str, str] = {}
    try:
        for path in filter(None, genbank):
            if path not in built:
                built[path] = str(build_cds_index(path, workdir.prepare_dir / f"cds-{len(built):04d}.sqlite"))
        yield [built[path] if path else None for path in genbank]
    finally:
        for index in built.values():
            Path(index).unlink(missing_ok=True)


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


def check_split_options(config) -> None:
    """A training's seed and held-out window, before any input is read."""
    if config.kind != TRAINING:
        return
    problem = seed_problem(config.seed)
    if problem:
        raise InputError(f"--seed: {problem}")
    window = config.holdout_window
    if window and window < config.chunk_length:
        raise InputError(f"--holdout-window {window} is shorter than a chunk ({config.chunk_length} bases); "
                         f"give at least --holdout-window {config.chunk_length}, e.g. {20 * config.chunk_length}")


class SplitTally:
    """Frames of each class on each side of a training's held-out split, counted as prepare
    reads them, so that a side without a class is refused before any GPU work."""

    def __init__(self, config):
        self.config = config
        self.counts = {(side, label): 0 for side in (False, True) for label in LABELS}

    def add(self, input_index: int, keys: bytes) -> None:
        sides = held_out(np.frombuffer(keys, KEY_DTYPE), self.config.seed, self.config.holdout)
        label = self.config.labels[input_index]
        held = int(np.count_nonzero(sides))
        self.counts[(True, label)] += held
        self.counts[(False, label)] += len(sides) - held

    def check(self, inputs: list[dict]) -> None:
        config = self.config
        for side, name in ((True, "held-out"), (False, "training")):
            for label in LABELS:
                if self.counts[(side, label)]:
                    continue
                named = [counts for counts, given in zip(inputs, config.labels) if given == label]
                window = suggested_window(sum(c["bases"] for c in named), config.holdout, config.chunk_length)
                if config.holdout_window:
                    how = (f"its '{label}' records, in {config.holdout_window}-base windows, each lie wholly on one "
                           f"side; use smaller windows (--holdout-window {min(window, config.holdout_window // 2)})")
                else:
                    how = (f"its {sum(c['reads'] for c in named)} '{label}' record(s) each lie wholly on one side; "
                           f"split records into windows for the split (--holdout-window {window}, in bases)")
                raise InputError(f"{config.inputs_list}: the {name} side of the split (--holdout {config.holdout}, "
                                 f"--seed {config.seed}) has no '{label}' frame: {how}, or change --holdout or --seed, "
                                 f"or add '{label}' sequences")


def suggested_window(bases: int, holdout: float, chunk_length: int) -> int:
    """A window (a whole number of chunks) that cuts a class's `bases` into about 10 held-out
    windows: the chance that none is held out is then about e^-10."""
    return max(chunk_length, int(bases * holdout / 10) // chunk_length * chunk_length)


def split_key_spool(workdir, bounds: list[int]) -> None:
    """Cut the spooled split keys into one file per shard, as split_spool cut the frames."""
    spool = workdir.split_keys_spool
    if spool.stat().st_size != bounds[-1] * KEY_DTYPE.itemsize:
        raise RuntimeError(f"{spool}: {spool.stat().st_size} bytes of keys for {bounds[-1]} frames")
    for shard in range(len(bounds) - 1):  # one shard's keys in memory at a time
        keys = np.fromfile(spool, KEY_DTYPE, count=bounds[shard + 1] - bounds[shard],
                           offset=bounds[shard] * KEY_DTYPE.itemsize)
        write_keys(workdir.split_keys(shard), keys)
    spool.unlink()


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
