"""Stage 5, consensus: per input file, the original's two result files plus a per-read table.

- prediction_results.txt: one row per frame, `Sequence_ID\tPrediction\tscore1\tscore2`, scores
  printed as numpy float32 str() exactly like the original;
- prediction_results_highestscore.csv (tab-separated, as the original): one row per chunk,
  `Is_Virus = max(score2) >= max(score1)` over the chunk's frames, sorted by Modified_ID;
- reads.tsv: one row per read, including reads that yielded no frame.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import console
from ..atomic import atomic_open
from ..errors import ShardError
from ..orchestration.runner import StageContext
from ..paths import HIGHEST_SCORE, PREDICTION_RESULTS, READS_TABLE
from ..storage import read_matrix, read_shard_frames

PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"
READS_HEADER = ("read_id", "length", "chunks", "frames", "viral_chunks", "max_virus_score", "call")


def label(score_others: np.float32, score_virus: np.float32) -> str:
    # torch.max picks the first index on an exact tie, so a tie is 'others' (class 0).
    return "virus" if score_virus > score_others else "others"


@dataclass
class InputTally:
    """Per-chunk and per-read maxima of one input, gathered while its frames stream past."""

    chunk_max: dict[str, list] = field(default_factory=dict)  # chunk id -> [max score1, max score2]
    read_chunks: dict[str, list[str]] = field(default_factory=dict)
    rows: int = 0

    def add(self, read_id: str, chunk_id: str, s1: np.float32, s2: np.float32) -> None:
        entry = self.chunk_max.get(chunk_id)
        if entry is None:
            self.chunk_max[chunk_id] = [s1, s2]
            self.read_chunks.setdefault(read_id, []).append(chunk_id)
        else:
            entry[0] = max(entry[0], s1)
            entry[1] = max(entry[1], s2)
        self.rows += 1

    def chunk_is_virus(self, chunk_id: str) -> bool:
        s1, s2 = self.chunk_max[chunk_id]
        return bool(s2 >= s1)


def open_stage(ctx: StageContext):
    def process(shard: int) -> dict:
        totals = consensus(ctx, ctx.config.min_score)
        finish_report(ctx, totals)
        return totals
    return process


def finish_report(ctx: StageContext, totals: dict) -> None:
    """The final stage writes the run's report and provenance; the results stand even if that fails."""
    from ..report import write_report

    try:
        write_report(ctx.workdir, ctx.config, completing={"consensus": totals}, event="consensus")
    except Exception as exc:  # a report problem (fonts, disk) must not fail a finished run's results
        console.warn(f"report not written ({type(exc).__name__}: {exc}); "
                     f"run 'virnucpro-slurm report --workdir {ctx.workdir.root}'")


def consensus(ctx: StageContext, min_score: float | None = None) -> dict:
    workdir, config = ctx.workdir, ctx.config
    summary = json.loads(workdir.prepare_summary.read_text())
    expected = [s["frames"] for s in summary["shards"]]
    tallies = [InputTally() for _ in config.inputs]
    with PerInputWriter(workdir, config.input_names) as writer:
        for shard in range(config.shards):
            frames = read_shard_frames(workdir.shard_frames(shard))
            if len(frames) != expected[shard]:
                raise ShardError(f"{workdir.shard_frames(shard)}: {len(frames)} frames, prepare wrote {expected[shard]}")
            _, scores = read_matrix(workdir.predictions(shard), frames.frame_ids, name="scores", dim=2)
            for i, frame_id in enumerate(frames.frame_ids):
                index = int(frames.input_index[i])
                s1, s2 = scores[i, 0], scores[i, 1]
                # str() of numpy float32, as the original prints it (an f-string would widen to float64)
                writer.handle(index).write(f"{frame_id}\t{label(s1, s2)}\t{str(s1)}\t{str(s2)}\n")
                tallies[index].add(frames.read_ids[i], frames.chunk_ids[i], s1, s2)

    totals = {"frames": 0, "chunks": 0, "reads": 0, "viral_reads": 0}
    for index, name in enumerate(config.input_names):
        tally = tallies[index]
        out = workdir.result_dir(name)
        with atomic_open(out / HIGHEST_SCORE) as handle:
            handle.write(HIGHEST_HEADER)
            for chunk_id in sorted(tally.chunk_max):
                handle.write(f"{chunk_id}\t{tally.chunk_is_virus(chunk_id)}\n")
        viral = write_reads_table(workdir.reads_table(index), out / READS_TABLE, tally, min_score)
        if tally.rows == 0:
            console.warn(f"{config.inputs[index]}: no stop-free frame; wrote header-only results in {out}")
        totals["frames"] += tally.rows
        totals["chunks"] += len(tally.chunk_max)
        totals["viral_reads"] += viral
        totals["reads"] += summary["inputs"][index]["reads"]
    return totals


class PerInputWriter(contextlib.ExitStack):
    """prediction_results.txt of each input, opened in input order (frames arrive in input
    order), so only one is open at a time; inputs without frames get the header alone."""

    def __init__(self, workdir, names: list[str]):
        super().__init__()
        self.workdir, self.names = workdir, names
        self.current, self.file, self.closer = -1, None, None

    def handle(self, index: int):
        while self.current < index:
            self._advance()
        return self.file

    def _advance(self) -> None:
        if self.closer is not None:
            self.closer.close()
        self.current += 1
        self.closer = contextlib.ExitStack()
        self.file = self.closer.enter_context(atomic_open(self.workdir.result_dir(self.names[self.current]) / PREDICTION_RESULTS))
        self.file.write(PREDICTION_HEADER)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            while self.current < len(self.names) - 1:
                self._advance()
        if self.closer is not None:
            self.closer.__exit__(exc_type, exc, tb)
        return super().__exit__(exc_type, exc, tb)


def write_reads_table(reads_in: Path, reads_out: Path, tally: InputTally, min_score: float | None) -> int:
    """reads.tsv: per read, the best virus score of any of its frames and the call.

    Default call (the original's rule lifted to reads): 'virus' when at least one chunk of the
    read is viral by the per-chunk rule. With `min_score`: 'virus' when max_virus_score >= it.
    """
    viral_reads = 0
    with open(reads_in, encoding="utf-8") as source, atomic_open(reads_out) as out:
        source.readline()
        out.write("\t".join(READS_HEADER) + "\n")
        for line in source:
            read_id, length, chunks, frames = line.rstrip("\n").split("\t")
            chunk_ids = tally.read_chunks.get(read_id, [])
            if not chunk_ids:
                out.write(f"{read_id}\t{length}\t{chunks}\t0\t0\tNA\tno_frames\n")
                continue
            best = max(tally.chunk_max[c][1] for c in chunk_ids)
            viral_chunks = sum(tally.chunk_is_virus(c) for c in chunk_ids)
            # in float32 (the precision max_virus_score is printed in; numpy < 2 would widen to float64),
            # so a threshold copied from reads.tsv includes that read; bool(): numpy bools break json
            is_virus = bool(best >= np.float32(min_score)) if min_score is not None else viral_chunks > 0
            viral_reads += is_virus
            out.write(f"{read_id}\t{length}\t{chunks}\t{frames}\t{viral_chunks}\t{str(best)}\t{'virus' if is_virus else 'others'}\n")
    return viral_reads
