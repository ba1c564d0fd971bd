"""What the report shows, gathered from a workdir's files with bounded memory.

Tables are read in blocks of rows and folded into fixed-bin histograms (scores) or growing integer
counts (chunks and frames per read), so a run of millions of reads is summarised without holding
its rows. Everything works on a run in progress: what is not there yet is reported as missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import StateError
from ..orchestration.config import RunConfig
from ..orchestration.state import DONE, ShardState, StateFile
from ..paths import PREDICTION_RESULTS, READS_TABLE, Workdir
from ..provenance import stage_timings

SCORE_BINS = np.linspace(0.0, 1.0, 41)
BLOCK_ROWS = 65536
FRAMES_PER_CHUNK = 6
CALLS = ("virus", "others", "no_frames")


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
    """The named columns of a tab-separated table with a header, `block_rows` rows at a time."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        missing = [c for c in columns if c not in header]
        if missing:
            raise StateError(f"{path}: no column {', '.join(missing)}; re-run its stage (or the run with --restart)")
        wanted = [header.index(c) for c in columns]
        block: list[list[str]] = [[] for _ in columns]
        for line in handle:
            fields = line.rstrip("\r\n").split("\t")
            for out, index in zip(block, wanted):
                out.append(fields[index])
            if len(block[0]) >= block_rows:
                yield block
                block = [[] for _ in columns]
        if block[0]:
            yield block


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

    @property
    def complete(self) -> bool:
        return all(s["shards"] and s["done"] == s["shards"] for s in self.stages.values())


def read_prepare(workdir: Workdir, stats: InputStats, block_rows: int) -> None:
    try:
        summary = json.loads(workdir.prepare_summary.read_text(encoding="utf-8"))["inputs"][stats.index]
    except (FileNotFoundError, ValueError, KeyError, IndexError):
        return  # prepare has not finished
    stats.prepared = True
    stats.reads, stats.bases = summary["reads"], summary["bases"]
    stats.chunks, stats.frames = summary["chunks"], summary["frames"]
    stats.reads_without_frames = summary["reads_without_frames"]
    for lengths, chunks, frames in table_blocks(workdir.reads_table(stats.index), ("length", "chunks", "frames"), block_rows):
        lengths = np.asarray(lengths, dtype=np.int64)
        chunks = np.asarray(chunks, dtype=np.int64)
        stats.chunks_per_read.add(chunks)
        stats.frames_per_read.add(np.asarray(frames, dtype=np.int64))
        translatable = lengths >= 3
        stats.reads_too_short += int((~translatable).sum())
        stats.possible_frames += int(chunks[translatable].sum()) * FRAMES_PER_CHUNK


def read_results(workdir: Workdir, stats: InputStats, block_rows: int) -> None:
    folder = workdir.result_dir(stats.name)
    frames_file, reads_file = folder / PREDICTION_RESULTS, folder / READS_TABLE
    if not (frames_file.exists() and reads_file.exists()):
        return
    stats.has_results = True
    for labels, virus_scores in table_blocks(frames_file, ("Prediction", "score2"), block_rows):
        stats.frame_scores.add(np.asarray(virus_scores, dtype=np.float64))
        viral = sum(label == "virus" for label in labels)
        stats.frame_labels["virus"] += viral
        stats.frame_labels["others"] += len(labels) - viral
    for calls, best in table_blocks(reads_file, ("call", "max_virus_score"), block_rows):
        for call in CALLS:
            stats.calls[call] += calls.count(call)
        stats.read_scores.add(np.asarray([s for s in best if s != "NA"], dtype=np.float64))


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
    inputs = []
    for index, (name, path) in enumerate(zip(config.input_names, config.inputs)):
        stats = InputStats(index=index, name=name, path=path)
        read_prepare(workdir, stats, block_rows)
        read_results(workdir, stats, block_rows)
        inputs.append(stats)
    return RunReport(workdir=workdir, config=config, generated=time.time(), stages=stage_timings(state),
                     inputs=inputs, min_score=getattr(config, "min_score", None))
