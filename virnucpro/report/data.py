"""What the report shows, gathered from a workdir's files with bounded memory.

Tables are read in blocks of rows and folded into fixed-bin histograms (scores) or growing integer
counts (chunks and frames per read), so a run of millions of reads is summarised without holding
its rows. Everything works on a run in progress: what is not there yet is reported as missing.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..calibration_meta import CalibrationFileError, read_calibration
from ..errors import StateError
from ..json_files import read_json
from ..orchestration.config import RunConfig
from ..orchestration.state import DONE, ShardState, StateFile
from ..paths import COMPRESSED_SUFFIX, PREDICTION_RESULTS, READS_TABLE, Workdir
from ..orchestration.provenance import stage_timings, submissions, submitted_container
from ..pipeline import is_done

SCORE_BINS = np.linspace(0.0, 1.0, 41)
# A float32 score is binned as the number its text in prediction_results.txt reads back as
# (float64 of str(np.float32)). That differs from float64(score) only across a bin edge e where
# float32(e) == score (str round-trips in float32, so e is within the score's float32 rounding
# interval): those few values are formatted; all others are binned as they are.
_EDGES32 = SCORE_BINS.astype(np.float32)
BLOCK_ROWS = 65536
FRAMES_PER_CHUNK = 6
CALLS = ("virus", "others", "no_frames")
TOP_READS = 25  # rows of the report's table of the best-scoring reads (of the whole run)
FDR_BINS = np.r_[0.0, np.logspace(-4, 0, 81)]  # reads.tsv's fdr, for each input's curve of calls against --max-fdr


class ScoreHistogram:
    """Counts of scores in [0, 1] over SCORE_BINS, filled block by block."""

    def __init__(self):
        self.counts = np.zeros(len(SCORE_BINS) - 1, dtype=np.int64)
        self.total = 0

    def add(self, scores: np.ndarray) -> None:
        self.counts += np.histogram(np.clip(scores, 0.0, 1.0), bins=SCORE_BINS)[0]
        self.total += len(scores)


class IntegerCounts:
    """How many rows have value 0, 1, 2, ...: a bincount that grows with the largest value seen."""

    def __init__(self):
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        block = np.bincount(values)
        if len(block) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(block) - len(self.counts)))
        self.counts[: len(block)] += block

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def mean(self) -> float | None:
        return float((self.counts * np.arange(len(self.counts))).sum() / self.total) if self.total else None


def table_blocks(path: Path, columns: tuple[str, ...], block_rows: int = BLOCK_ROWS) -> Iterator[list[list[str]]]:
    """The named columns of a tab-separated table with a header (gzipped when named .gz), `block_rows`
    rows at a time."""
    opened = gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(COMPRESSED_SUFFIX) else \
        open(path, encoding="utf-8")
    with opened as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        missing = [c for c in columns if c not in header]
        if missing:
            raise StateError(f"{path}: no column {', '.join(missing)}; re-run its stage (or the run with --restart)")
        wanted = [header.index(c) for c in columns]
        while True:
            # whole blocks of lines split at once (one split per block, not one per line)
            lines = list(itertools.islice(handle, block_rows))
            if not lines:
                return
            if not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            fields = "".join(lines).replace("\n", "\t").split("\t")[:-1]
            if len(fields) == len(header) * len(lines):
                yield [fields[index::len(header)] for index in wanted]
            else:  # some line has more or fewer fields than the header: line by line, as written
                rows = [line.rstrip("\r\n").split("\t") for line in lines]
                yield [[row[index] for row in rows] for index in wanted]


@dataclass
class InputStats:
    index: int
    name: str
    path: str
    prepared: bool = False
    reads: int = 0
    bases: int = 0
    chunks: int = 0
    frames: int = 0
    reads_without_frames: int = 0
    reads_too_short: int = 0  # shorter than one codon: no frame at all, not a stop-codon loss
    possible_frames: int = 0  # six per chunk of every read long enough to translate
    chunks_per_read: IntegerCounts = field(default_factory=IntegerCounts)
    frames_per_read: IntegerCounts = field(default_factory=IntegerCounts)
    has_results: bool = False
    frame_scores: ScoreHistogram = field(default_factory=ScoreHistogram)
    frame_labels: dict = field(default_factory=lambda: {"virus": 0, "others": 0})
    read_scores: ScoreHistogram = field(default_factory=ScoreHistogram)
    calls: dict = field(default_factory=lambda: {call: 0 for call in CALLS})
    # the TOP_READS best-scoring reads of this input: (max_virus_score, -row, read_id, chunks, call)
    top_reads: list = field(default_factory=list)
    fdr_counts: np.ndarray | None = None  # reads per FDR_BINS bin of reads.tsv's fdr (None: no calibration)
    virus_share: tuple | None = None  # (estimated_virus_share, low, high) as the MultiQC summary gives them

    @property
    def frames_lost_to_stops(self) -> int:
        return self.possible_frames - self.frames

    def share(self, call: str) -> float | None:
        return self.calls[call] / self.reads if self.has_results and self.reads else None


@dataclass
class RunReport:
    workdir: Workdir
    config: RunConfig
    generated: float
    stages: dict[str, dict]
    inputs: list[InputStats]
    min_score: float | None
    container: dict | None = None  # the image the latest submission's tasks run in
    reliability: dict | None = None  # the run calibration's reliability rows and where they come from

    @property
    def complete(self) -> bool:
        return all(s["shards"] and s["done"] == s["shards"] for s in self.stages.values())

    def top_reads(self) -> list[tuple[InputStats, float, str, int, str]]:
        """The run's TOP_READS best-scoring reads, best first (ties: input order, then read order):
        (input, max_virus_score, read id, chunks, call)."""
        candidates = ((stats, read) for stats in self.inputs for read in stats.top_reads)
        ranked = heapq.nlargest(TOP_READS, candidates, key=lambda item: (item[1][0], -item[0].index, item[1][1]))
        return [(stats, score, read_id, chunks, call) for stats, (score, _, read_id, chunks, call) in ranked]


def read_prepare_summary(workdir: Workdir) -> dict | None:
    """Prepare's summary (every input, every shard), read once per report (None: prepare has not finished)."""
    try:
        summary = read_json(workdir.prepare_summary)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_prepare(workdir: Workdir, stats: InputStats, block_rows: int, prepared: dict | None) -> None:
    try:
        summary = prepared["inputs"][stats.index]
    except (TypeError, KeyError, IndexError):
        return  # prepare has not finished
    stats.prepared = True
    stats.reads, stats.bases = summary["reads"], summary["bases"]
    stats.chunks, stats.frames = summary["chunks"], summary["frames"]
    stats.reads_without_frames = summary["reads_without_frames"]
    table, rows = workdir.reads_table(stats.index), 0
    try:
        for lengths, chunks, frames in table_blocks(table, ("length", "chunks", "frames"), block_rows):
            lengths = np.asarray(lengths, dtype=np.int64)
            chunks = np.asarray(chunks, dtype=np.int64)
            stats.chunks_per_read.add(chunks)
            stats.frames_per_read.add(np.asarray(frames, dtype=np.int64))
            translatable = lengths >= 3
            stats.reads_too_short += int((~translatable).sum())
            stats.possible_frames += int(chunks[translatable].sum()) * FRAMES_PER_CHUNK
            rows += len(lengths)
    except FileNotFoundError:
        rows = None
    except (StateError, ValueError, IndexError):  # a bad header, a malformed line
        rows = -1
    if rows != stats.reads:  # planning recomputes a missing prepare file; consensus refuses a damaged one
        fix = "run" if rows is None else "delete it and run"
        raise StateError(f"{table}: prepare's read table is {'missing' if rows is None else 'damaged'}; {fix} the same "
                         "run/submit command again (prepare and consensus are recomputed)")


def as_printed(scores: np.ndarray) -> np.ndarray:
    """float64 of each float32 score's printed text, as table_blocks would read it back."""
    values = scores.astype(np.float64)
    near_edge = np.isin(scores, _EDGES32)
    if near_edge.any():
        values[near_edge] = [float(str(v)) for v in scores[near_edge]]
    return values


class PredictionScores:
    """The frames' scores straight from the predictions (float32), for consecutive frame ranges of
    the run (inputs in order), one shard held at a time: no re-parsing of prediction_results.txt.
    `columns` returns None when the predictions are not all there or do not fit prepare's counts;
    the caller then reads the text results."""

    def __init__(self, workdir: Workdir, config: RunConfig, prepared: dict | None):
        self.workdir, self.usable = workdir, True
        try:
            shards = prepared["shards"]
            self.starts = np.cumsum([0] + [int(entry["frames"]) for entry in shards])
            self.usable = len(shards) == config.shards and all(workdir.predictions(s).exists() for s in range(len(shards)))
        except (OSError, ValueError, KeyError, TypeError):
            self.usable = False
        self.loaded: tuple[int, np.ndarray] | None = None

    def _shard(self, shard: int) -> np.ndarray:
        if self.loaded is None or self.loaded[0] != shard:
            import h5py

            with h5py.File(self.workdir.predictions(shard), "r") as h5:
                scores = h5["scores"][:]
            if scores.shape != (self.starts[shard + 1] - self.starts[shard], 2):
                raise ValueError("predictions do not fit prepare's frame counts")
            self.loaded = (shard, scores)
        return self.loaded[1]

    def columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.usable or stop > self.starts[-1]:
            return None
        parts = []
        try:
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            for shard in range(max(first, 0), len(self.starts) - 1):
                a, b = max(start, self.starts[shard]), min(stop, self.starts[shard + 1])
                if a >= b:
                    if self.starts[shard] >= stop:
                        break
                    continue
                parts.append(self._shard(shard)[a - self.starts[shard]:b - self.starts[shard]])
        except (OSError, ValueError, KeyError):
            self.usable = False
            return None
        scores = np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)
        return scores[:, 0], scores[:, 1]


def read_results(workdir: Workdir, stats: InputStats, block_rows: int, scores: PredictionScores | None = None,
                 first_frame: int = 0, compress: bool = False) -> None:
    frames_file = workdir.result_file(stats.name, PREDICTION_RESULTS, compress)
    reads_file = workdir.result_file(stats.name, READS_TABLE, compress)
    if not (frames_file.exists() and reads_file.exists()):
        return
    stats.has_results = True
    columns = scores.columns(first_frame, first_frame + stats.frames) if scores is not None and stats.prepared else None
    if columns is not None:  # the same numbers the text gives (labels: score2 > score1, as consensus prints them)
        others, virus = columns
        stats.frame_scores.add(as_printed(virus))
        viral = int((virus > others).sum())
        stats.frame_labels["virus"] += viral
        stats.frame_labels["others"] += len(virus) - viral
    for labels, virus_scores in (() if columns is not None else
                                 table_blocks(frames_file, ("Prediction", "score2"), block_rows)):
        stats.frame_scores.add(np.asarray(virus_scores, dtype=np.float64))
        viral = sum(label == "virus" for label in labels)
        stats.frame_labels["virus"] += viral
        stats.frame_labels["others"] += len(labels) - viral
    read_fdr(stats, reads_file, block_rows)
    row = 0
    for read_ids, chunks, calls, best in table_blocks(reads_file, ("read_id", "chunks", "call", "max_virus_score"),
                                                      block_rows):
        for call in CALLS:
            stats.calls[call] += calls.count(call)
        values = np.asarray([-1.0 if s == "NA" else s for s in best], dtype=np.float64)
        stats.read_scores.add(values[values >= 0])
        keep_best_reads(stats, values, read_ids, chunks, calls, row)
        row += len(read_ids)


def read_fdr(stats: InputStats, reads_file: Path, block_rows: int) -> None:
    """The fdr column of reads.tsv folded into FDR_BINS (left None where it is NA or absent)."""
    opened = gzip.open(reads_file, "rt", encoding="utf-8") if reads_file.name.endswith(COMPRESSED_SUFFIX) else \
        open(reads_file, encoding="utf-8")
    with opened as handle:
        if "fdr" not in handle.readline().rstrip("\r\n").split("\t"):
            return  # written before the column existed
    counts = np.zeros(len(FDR_BINS) - 1, np.int64)
    for (fdr,) in table_blocks(reads_file, ("fdr",), block_rows):
        if fdr and fdr[0] == "NA":
            return
        counts += np.histogram(np.asarray(fdr, dtype=np.float64), bins=FDR_BINS)[0]
    stats.fdr_counts = counts


def read_shares(workdir: Workdir, inputs: list[InputStats]) -> None:
    """Each input's estimated virus share and interval from the MultiQC summary (when it has them)."""
    try:
        lines = [line.rstrip("\n").split("\t") for line in workdir.multiqc_summary.read_text(encoding="utf-8").splitlines()
                 if not line.startswith("#")]
    except OSError:
        return
    if not lines or "estimated_virus_share" not in lines[0]:
        return
    columns = [lines[0].index(c) for c in ("estimated_virus_share", "virus_share_low", "virus_share_high")]
    by_name = {row[0]: tuple(row[c] for c in columns) for row in lines[1:] if len(row) == len(lines[0])}
    for stats in inputs:
        share = by_name.get(stats.name)
        stats.virus_share = share if share and share[0] != "NA" else None


def read_reliability(config: RunConfig) -> dict | None:
    """The reliability diagram of the calibration the run uses, and where it is (None: none, or unreadable)."""
    path = getattr(config, "calibration", None)
    if not path:
        return None
    try:
        document = read_calibration(path)
    except CalibrationFileError:
        return None
    return {"path": path, "rows": document.get("reliability", []), "method": document["method"],
            "labelled_share": document["labelled_virus_share"], "reads": document.get("counts", {}).get("reads")}


def keep_best_reads(stats: InputStats, values: np.ndarray, read_ids: list[str], chunks: list[str], calls: list[str],
                    first_row: int) -> None:
    """Fold a block of reads.tsv into the input's TOP_READS best-scoring reads (reads with a score)."""
    candidates = np.flatnonzero(values >= 0)
    candidates = candidates[np.argsort(-values[candidates], kind="stable")[:TOP_READS]]  # ties: the earlier read
    rows = [(float(values[i]), -(first_row + i), read_ids[i], int(chunks[i]), calls[i]) for i in candidates.tolist()]
    stats.top_reads = heapq.nlargest(TOP_READS, stats.top_reads + rows)


def apply_completion(state: dict[str, dict[int, ShardState]], completing: dict[str, dict] | None) -> None:
    """The stage writing the report (consensus) is still 'running' in state.json: show it as
    finished now with its metrics, which is what state.json will say a moment later."""
    now = time.time()
    for stage, metrics in (completing or {}).items():
        for entry in state.get(stage, {}).values():
            entry.status, entry.finished = DONE, now
            entry.seconds = now - entry.started if entry.started else entry.seconds
            entry.metrics = {**entry.metrics, **metrics}


def load_state(workdir: Workdir, completing: dict[str, dict] | None = None) -> dict[str, dict[int, ShardState]]:
    state = StateFile(workdir.state, workdir.state_lock).load()
    apply_completion(state, completing)
    return state


def gather(workdir: Workdir, config: RunConfig, state: dict[str, dict[int, ShardState]],
           block_rows: int = BLOCK_ROWS) -> RunReport:
    prepared = read_prepare_summary(workdir)  # once: it holds every input (once per input was quadratic)
    inputs, scores, first_frame = [], PredictionScores(workdir, config, prepared), 0
    for index, (name, path) in enumerate(zip(config.input_names, config.inputs)):
        stats = InputStats(index=index, name=name, path=path)
        read_prepare(workdir, stats, block_rows, prepared)
        read_results(workdir, stats, block_rows, scores, first_frame, getattr(config, "compress", False))
        first_frame += stats.frames
        inputs.append(stats)
    read_shares(workdir, inputs)
    return RunReport(workdir=workdir, config=config, generated=time.time(), stages=stage_timings(state, config),
                     inputs=inputs, min_score=getattr(config, "min_score", None),
                     container=submitted_container(submissions(workdir)), reliability=read_reliability(config))


# ---------------------------------------------------------------- a training run's report

@dataclass
class TrainingInput:
    stats: InputStats  # prepare's counts (no results: a training has none)
    label: str  # virus or other
    genbank: str | None
    records_not_in_genbank: int = 0


@dataclass
class TrainingReport:
    """What a training run's report shows: its inputs, and the training as classifier.json (when
    the train stage is done) or the checkpoint (while it runs, or stopped) describes it."""

    workdir: Workdir
    config: RunConfig
    generated: float
    stages: dict[str, dict]
    inputs: list[TrainingInput]
    classifier: dict | None  # classifier.json of a finished training
    progress: dict | None  # training/checkpoint.json: the epochs done so far
    problem: str | None = None  # why neither tells what the training did
    container: dict | None = None  # the image the latest submission's tasks run in

    @property
    def complete(self) -> bool:
        return all(s["shards"] and s["done"] == s["shards"] for s in self.stages.values())

    @property
    def history(self) -> list[dict]:
        return (self.classifier or self.progress or {}).get("history") or []

    @property
    def recipe(self) -> dict:
        return (self.classifier or {}).get("recipe") or (self.progress or {}).get("data", {}).get("recipe") or {}

    @property
    def best_epoch(self) -> int | None:
        return (self.classifier or self.progress or {}).get("best_epoch") or None


def read_json_file(path: Path) -> tuple[dict | None, str | None]:
    """(its object, None), or (None, why not) for a missing or damaged file."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({type(exc).__name__})"
    return (data, None) if isinstance(data, dict) else (None, f"{path} is not a JSON object")


def gather_training(workdir: Workdir, config: RunConfig, state: dict[str, dict[int, ShardState]],
                    block_rows: int = BLOCK_ROWS) -> TrainingReport:
    prepared = read_prepare_summary(workdir)
    inputs = []
    for index, (name, path) in enumerate(zip(config.input_names, config.inputs)):
        stats = InputStats(index=index, name=name, path=path)
        read_prepare(workdir, stats, block_rows, prepared)
        genbank = config.genbank[index] if index < len(config.genbank) else None
        missing = prepared["inputs"][index].get("records_not_in_genbank", 0) if stats.prepared else 0
        inputs.append(TrainingInput(stats, config.labels[index], genbank, missing))
    trained = all(is_done(entry) for entry in state.get("train", {}).values()) and bool(state.get("train"))
    classifier, problem = read_json_file(workdir.classifier_meta) if trained else (None, None)
    progress = None
    if classifier is None:
        progress, unread = read_json_file(workdir.training_state)
        problem = problem or (unread if workdir.training_state.exists() else None)
    return TrainingReport(workdir=workdir, config=config, generated=time.time(), stages=stage_timings(state, config),
                          inputs=inputs, classifier=classifier, progress=progress, problem=problem,
                          container=submitted_container(submissions(workdir)))
