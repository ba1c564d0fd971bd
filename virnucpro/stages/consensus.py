"""Stage 5, consensus: per input file, the original's two result files plus a per-read table.

- prediction_results.txt: one row per frame, `Sequence_ID\tPrediction\tscore1\tscore2`, scores
  printed as numpy float32 str() exactly like the original;
- prediction_results_highestscore.csv (tab-separated, as the original): one row per chunk,
  `Is_Virus = max(score2) >= max(score1)` over the chunk's frames, sorted by Modified_ID;
- reads.tsv: one row per read, including reads that yielded no frame; with a calibration (the run's
  --calibration, else the classifier's own) each read's virus probability at its input's own
  virus share and its fdr (evaluation.calibration), and with --max-fdr Q the calls are exactly
  the reads whose fdr (as printed) is at most Q;
- viral.fna: the input's records of the reads called virus as they are in the input (whole
  header, line breaks, letters; CRLF line ends as LF), ready for CheckV and other downstream tools.
With --compress each of them is gzipped (+ .gz). Beside the folders, for the whole run:
- results/index.tsv: each input's path and its result folder (names are made unique and safe);
- results/virnucpro_mqc.tsv: the per-input summary as MultiQC custom content.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .. import console
from ..atomic import _is_out_of_space, atomic_open, fsync_dir, make_temp_file
from ..calibration_meta import file_sha256
from ..errors import InputError, OutputError, ShardError, StaleInputError
from ..evaluation.calibration import Calibration, InputCalibration, ShareEstimate, calibrate_input, load_calibration
from ..fasta import _decode_header, fasta_blocks
from ..json_files import read_json
from ..orchestration.runner import StageContext
from ..paths import COMPRESSED_SUFFIX, HIGHEST_SCORE, PREDICTION_RESULTS, READS_TABLE, VIRAL_FASTA
from ..report import finish_report
from ..storage import read_frame_ids, read_matrix
from .prepare import READS_COLUMNS

PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
HIGHEST_HEADER = "Modified_ID\tIs_Virus\n"
READS_HEADER = ("read_id", "length", "chunks", "frames", "viral_chunks", "max_virus_score", "call", "virus_probability",
                "fdr")
NO_CALIBRATION = ("no calibration: reads.tsv's virus_probability and fdr are NA; fit one with 'virnucpro-slurm evaluate' "
                  "on labelled reads like these and pass --calibration E/evaluation/NAME/calibration.json")


def labels(score_others: np.ndarray, score_virus: np.ndarray) -> np.ndarray:
    # torch.max picks the first index on an exact tie, so a tie is 'others' (class 0).
    return np.where(score_virus > score_others, "virus", "others")


def group_starts(keys: list[str]) -> np.ndarray:
    """Start of every run of equal consecutive keys (keys non-empty)."""
    keys = np.asarray(keys, dtype=object)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def blocks(values: np.ndarray, size: int = 1 << 16):
    """`values` in slices of `size`: as text or Python ints a whole input at once would cost
    more memory than everything else consensus holds."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def read_of_chunk(chunk_id: str) -> str:
    return chunk_id[:chunk_id.rindex("_chunk_")]  # chunk ids are f"{read_id}_chunk_{k}"


@dataclass
class InputTally:
    """Per-chunk score maxima of one input, as compact arrays, built while its frames stream past.

    A chunk's frames are consecutive (prepare writes them chunk by chunk and shards are
    contiguous), and so are a read's chunks, so maxima are reduced run by run and a
    chunk cut by a shard boundary is merged with its other part. Per chunk it keeps the id, two
    float32 maxima and whether a new read starts there (~100 bytes); only one input is held at a
    time, written out as soon as the next input's frames begin.
    """

    chunk_ids: list[str] = field(default_factory=list)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # max s1, max s2, new read
    last_read: str | None = None
    rows: int = 0

    def add(self, frame_ids: list[str], s1: np.ndarray, s2: np.ndarray) -> None:
        self.rows += len(frame_ids)
        if not frame_ids:
            return
        chunk_ids = [frame_id[:-2] for frame_id in frame_ids]  # frame ids are chunk id + F1..R3
        starts = group_starts(chunk_ids)
        m1, m2 = np.maximum.reduceat(s1, starts), np.maximum.reduceat(s2, starts)
        ids = [chunk_ids[i] for i in starts]
        if self.chunk_ids and ids[0] == self.chunk_ids[-1]:  # a chunk cut by a shard boundary
            last1, last2, _ = self.parts[-1]
            last1[-1], last2[-1] = max(last1[-1], m1[0]), max(last2[-1], m2[0])
            ids, starts, m1, m2 = ids[1:], starts[1:], m1[1:], m2[1:]
        if not ids:  # every frame belonged to that cut chunk
            return
        reads = np.asarray([read_of_chunk(chunk_id) for chunk_id in ids], dtype=object)
        new_read = np.r_[reads[0] != self.last_read, reads[1:] != reads[:-1]]
        self.last_read = reads[-1]
        self.chunk_ids += ids
        self.parts.append((m1, m2, new_read))

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per chunk, in input order: max score1, max score2, new read starts here."""
        if not self.parts:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
        return tuple(np.concatenate(column) for column in zip(*self.parts))


def open_stage(ctx: StageContext):
    def process(shard: int) -> dict:
        totals = consensus(ctx, ctx.config.min_score)
        finish_report(ctx, "consensus", totals)
        return totals
    return process


GZIP_LEVEL = 6  # gzip's own default: most of level 9's size at a fraction of its time


class ResultFiles:
    """The result files of every input, replaced together at the end of the stage.

    Each is written to a temp file beside its target (`.NAME.*.tmp`, what the next owner of the
    stage clears after a kill) without a flush of its own; `commit()` makes them all durable at
    once (one syncfs of the file system, not one fsync per file: with 10,000 inputs the 30,000
    fsyncs were most of the stage) and only then renames them over their targets and flushes the
    folders. A reader therefore still sees the previous complete file or the new complete file.
    """

    def __init__(self):
        self.written: list[tuple[Path, Path]] = []

    @contextlib.contextmanager
    def open(self, path: Path, binary: bool = False):
        """A text (or `binary`) handle on the temp file of `path`, gzipped when its name ends in .gz."""
        path = Path(path)
        fd, tmp = make_temp_file(path)
        self.written.append((tmp, path))
        try:
            with contextlib.ExitStack() as stack:
                raw = stack.enter_context(open(fd, "wb"))
                if path.name.endswith(COMPRESSED_SUFFIX):
                    # no name and no time in the gzip header: the same results give the same bytes
                    raw = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                            compresslevel=GZIP_LEVEL))
                # surrogateescape: a path or id read as bytes that are not UTF-8 goes out as those bytes
                yield raw if binary else stack.enter_context(
                    io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline=""))
        except OSError as exc:
            if _is_out_of_space(exc):
                raise OutputError(exc.errno, f"{path}: {exc.strerror or 'write failed'} while writing it; free space "
                                             "and run the same command again (the previous version is untouched)") from None
            raise

    def commit(self) -> None:
        if not self.written:
            return
        _syncfs(self.written[0][0])
        for tmp, target in self.written:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        for folder in sorted({target.parent for _, target in self.written}):
            fsync_dir(folder)
        self.written = []

    def discard(self) -> None:
        for tmp, _ in self.written:
            tmp.unlink(missing_ok=True)
        self.written = []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _syncfs(path: Path) -> None:
    """Flush the file system holding `path` (Linux syncfs; sync() elsewhere)."""
    try:
        import ctypes

        fd = os.open(path, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def read_summary(workdir) -> dict:
    try:
        return read_json(workdir.prepare_summary)
    except (OSError, ValueError) as exc:
        raise StaleInputError(f"{workdir.prepare_summary}: missing or unreadable ({exc}); the prepare stage will run "
                              "again", "prepare", 0) from None


def consensus(ctx: StageContext, min_score: float | None = None) -> dict:
    files = ResultFiles()
    try:
        totals = _consensus(ctx, files, min_score)
        files.commit()
    finally:
        files.discard()
    remove_other_variant(ctx.workdir, ctx.config)
    return totals


def remove_other_variant(workdir, config) -> None:
    """The result files as the other --compress setting wrote them, left from an earlier consensus."""
    for name in config.input_names:
        for path in workdir.result_files(name, not config.compress):
            path.unlink(missing_ok=True)


def run_calibration(config) -> Calibration | None:
    """The calibration the run's read calls use, as planning checked it (None: none, said once)."""
    if not getattr(config, "calibration", None):
        console.info(NO_CALIBRATION)
        return None
    path = Path(config.calibration)
    try:
        changed = file_sha256(path) != config.calibration_sha256
    except OSError as exc:
        raise InputError(f"{path}: the run's calibration is unreadable ({exc.strerror or exc}); restore it, or run the "
                         "same command with another --calibration") from None
    if changed:
        raise InputError(f"{path}: the calibration changed after the run was planned; run the same command again "
                         "(it re-runs consensus with the new one)")
    return load_calibration(path)


def _consensus(ctx: StageContext, files: "ResultFiles", min_score: float | None = None) -> dict:
    workdir, config = ctx.workdir, ctx.config
    summary = read_summary(workdir)
    expected = [s["frames"] for s in summary["shards"]]
    totals = {"frames": 0, "chunks": 0, "reads": 0, "viral_reads": 0}
    tally, current, viral_reads, estimates = InputTally(), 0, [], []
    calibration = run_calibration(config)

    def finish_inputs_before(index: int) -> None:
        """Write the per-chunk and per-read files of every input before `index` (all its frames seen)."""
        nonlocal tally, current
        while current < index:
            viral, estimate = write_input_results(ctx, current, tally, min_score, summary, totals, files, calibration)
            viral_reads.append(viral)
            estimates.append(estimate)
            tally, current = InputTally(), current + 1

    # Frames are in input order across the shards, so a frame's input follows from its position;
    # the frame ids come from the id column of the frame tables (stored once per shard), the scores
    # from the predictions (which refer to those ids by count and digest); chunk and read ids are
    # made from the frame ids.
    input_ends = np.cumsum([entry["frames"] for entry in summary["inputs"]])
    if input_ends[-1] != sum(expected):
        raise ShardError(f"{workdir.prepare_summary}: inputs hold {input_ends[-1]} frames, shards {sum(expected)}; "
                         "re-run with --restart")
    first = 0  # position of the shard's first frame in the run
    with PerInputWriter(workdir, config.input_names, files, config.compress) as writer:
        for shard in range(config.shards):
            frame_ids = read_frame_ids(workdir.shard_frames(shard), expected[shard])
            _, scores = read_matrix(workdir.predictions(shard), frame_ids, name="scores", dim=2,
                                    producer=("predict", shard))
            s1, s2 = scores[:, 0], scores[:, 1]
            bounds = np.clip(input_ends - first, 0, len(frame_ids))
            for index, (a, b) in enumerate(zip(np.r_[0, bounds[:-1]].tolist(), bounds.tolist())):
                if a == b:
                    continue
                finish_inputs_before(index)
                # str() of numpy float32 (astype(str) prints the same), as the original prints scores;
                # formatted from Python lists (numpy str_ elements format ~3x slower)
                writer.handle(index).write("".join(map("{}\t{}\t{}\t{}\n".format, frame_ids[a:b],
                                                       labels(s1[a:b], s2[a:b]).tolist(), s1[a:b].astype(str).tolist(),
                                                       s2[a:b].astype(str).tolist())))
                tally.add(frame_ids[a:b], s1[a:b], s2[a:b])
            first += len(frame_ids)
        finish_inputs_before(len(config.inputs))
    write_run_tables(workdir, config, summary["inputs"], viral_reads, files, estimates)
    return totals


def write_input_results(ctx: StageContext, index: int, tally: InputTally, min_score: float | None, summary: dict,
                        totals: dict, files: "ResultFiles",
                        calibration: Calibration | None = None) -> tuple[int, ShareEstimate | None]:
    """The per-chunk, per-read and viral-read files of one input; returns how many reads are viral
    and, with a calibration, the input's virus share."""
    workdir, config = ctx.workdir, ctx.config
    name, compress = config.input_names[index], config.compress
    max_others, max_virus, new_read = tally.columns()
    chunk_is_virus = max_virus >= max_others  # the original's per-chunk rule: a tie is viral
    with files.open(workdir.result_file(name, HIGHEST_SCORE, compress)) as handle:
        handle.write(HIGHEST_HEADER)
        virus = chunk_is_virus.tolist()  # Python bools print True / False, as the original's
        # str order, as sorted() gives; an object array keeps the sort at 16 bytes a chunk
        order = np.argsort(np.asarray(tally.chunk_ids, dtype=object), kind="stable")
        for block in blocks(order):
            handle.writelines(f"{tally.chunk_ids[i]}\t{virus[i]}\n" for i in block.tolist())
    calibrated = None
    if calibration is not None:
        best, _, _ = read_calls(max_virus, chunk_is_virus, np.flatnonzero(new_read), None)
        calibrated = read_probabilities(calibration, read_table_frames(workdir.reads_table(index)), best,
                                        config.virus_share, config.max_fdr)
        report_share(config.inputs[index], calibrated.estimate)
    viral = write_reads_table(workdir.reads_table(index), workdir.result_file(name, READS_TABLE, compress),
                              tally.chunk_ids, new_read, max_virus, chunk_is_virus, min_score,
                              summary["inputs"][index]["reads"], files.open, calibrated)
    with files.open(workdir.result_file(name, VIRAL_FASTA, compress), binary=True) as handle:
        write_viral_records(Path(config.inputs[index]), viral, handle)
    if tally.rows == 0:
        console.warn(f"{config.inputs[index]}: no stop-free frame; wrote header-only results in {workdir.result_dir(name)}")
    totals["frames"] += tally.rows
    totals["chunks"] += len(tally.chunk_ids)
    totals["viral_reads"] += len(viral)
    totals["reads"] += summary["inputs"][index]["reads"]
    return len(viral), None if calibrated is None else calibrated.estimate


def read_probabilities(calibration: Calibration, frames: np.ndarray, best: np.ndarray, virus_share: float | None,
                       max_fdr: float | None) -> InputCalibration:
    """Every read's (prepare's table order; frames: its frame count) virus probability at the
    input's share and its fdr, both as printed (6 significant digits), and with `max_fdr` the calls:
    exactly the reads whose printed fdr is at most it, so the table checks against itself. `best`:
    the max_virus_score of each read with frames, in order; the others score 0 (their band ignores it)."""
    framed = frames > 0
    if int(framed.sum()) != len(best):
        raise ShardError(f"prepare's read table lists {int(framed.sum())} reads with frames, the predictions "
                         f"{len(best)}; re-run with --restart")
    scores = np.zeros(len(frames))
    scores[framed] = best
    result = calibrate_input(calibration, scores, frames, virus_share)
    probability, fdr = as_printed(result.probability), as_printed(result.fdr)
    return InputCalibration(probability, fdr, None if max_fdr is None else fdr <= max_fdr, result.estimate)


def as_printed(values: np.ndarray) -> np.ndarray:
    """The values as reads.tsv prints them (6 significant digits) and reads back."""
    return np.asarray([float(f"{v:.6g}") for v in values.tolist()], dtype=np.float64)


def read_table_frames(reads_in: Path) -> np.ndarray:
    """The frames column of prepare's read table (every read, in order)."""
    try:
        with open(reads_in, encoding="utf-8", newline="") as source:
            if source.readline() != "\t".join(READS_COLUMNS) + "\n":
                raise ValueError("not its header")
            return np.asarray([int(line.rsplit("\t", 1)[1]) for line in source], dtype=np.int64)
    except (OSError, ValueError, IndexError) as exc:
        raise StaleInputError(f"{reads_in}: prepare's read table is missing or damaged ({exc}); the prepare stage will "
                              "run again", "prepare", 0) from None


def report_share(path: str, estimate: ShareEstimate) -> None:
    if estimate.method == "given":
        console.info(f"{path}: virus share {estimate.share:g} (--virus-share)")
        return
    if estimate.share is not None:
        console.info(f"{path}: estimated virus share {estimate.share:.4f} (95% interval {estimate.low:.4f}-"
                     f"{estimate.high:.4f}) over {estimate.reads:,} reads")
    if estimate.warning:
        console.warn(f"{path}: {estimate.warning}")


def write_viral_records(path: Path, viral: set[str], out) -> None:
    """The records of `path` whose read id is in `viral`, in input order, byte for byte but for
    carriage returns (dropped, as prepare drops them: downstream tools expect LF line ends).
    The input is read again only when some read is viral."""
    if not viral:
        return
    found = 0
    for block in fasta_blocks(path):
        data = block.data.lstrip() if block.is_first else block.data
        for record in data[1:].split(b"\n>"):
            header = record[:record.find(b"\n")] if b"\n" in record else record
            name = _decode_header(header)  # the read id as prepare parsed it: up to the first white space
            if name and name.split(maxsplit=1)[0] in viral:
                record = record.replace(b"\r", b"")
                out.write(b">" + record + (b"" if record.endswith(b"\n") else b"\n"))
                found += 1
    if found != len(viral):
        raise InputError(f"{path}: holds {found} of the {len(viral)} reads called virus; the file changed after "
                         "the run read it: re-run the same command with --restart")


def write_run_tables(workdir, config, inputs: list[dict], viral_reads: list[int], files: "ResultFiles",
                     estimates: list | None = None) -> None:
    """results/index.tsv (input path -> result folder) and the MultiQC summary of every input."""
    estimates = estimates or [None] * len(inputs)
    with files.open(workdir.results_index) as handle:
        handle.write("input\tresults\n")
        handle.writelines(f"{tsv_field(path)}\t{name}\n" for path, name in zip(config.inputs, config.input_names))
    with files.open(workdir.multiqc_summary) as handle:
        handle.write(MULTIQC_HEADER)
        handle.write("\t".join(MULTIQC_COLUMNS) + "\n")
        for name, counts, viral, estimate in zip(config.input_names, inputs, viral_reads, estimates):
            share = f"{100 * viral / counts['reads']:.2f}" if counts["reads"] else "0.00"
            handle.write(f"{name}\t{counts['reads']}\t{counts['bases']}\t{counts['chunks']}\t{counts['frames']}\t"
                         f"{counts['reads_without_frames']}\t{viral}\t{share}\t{share_fields(estimate)}\n")


def share_fields(estimate: ShareEstimate | None) -> str:
    """estimated_virus_share, its 95% interval's ends: NA without a calibration, a given share without one."""
    if estimate is None or estimate.share is None:
        return "NA\tNA\tNA"
    if estimate.method == "given":
        return f"{estimate.share:g}\tNA\tNA"
    return f"{estimate.share:.4f}\t{estimate.low:.4f}\t{estimate.high:.4f}"


def tsv_field(text: str) -> str:
    """A path as one tab-separated field: a tab or line break in it written as \\t, \\n, \\r (and \\ as \\\\)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# MultiQC custom content: YAML in '#' comment lines, then a table whose first column is the sample.
# MultiQC shows only the columns its `headers:` block names, so every column has an entry here.
COUNT = {"format": "{:,.0f}", "min": 0}
SHARE = {"format": "{:,.4f}", "min": 0, "max": 1}
MULTIQC_COLUMN_HEADERS = {
    "reads": {"title": "Reads", "description": "records read from the input", **COUNT},
    "bases": {"title": "Bases", "description": "nucleotides in the reads", **COUNT},
    "chunks": {"title": "Chunks", "description": "chunks the reads were cut into (--chunk-length)", **COUNT},
    "frames": {"title": "Frames", "description": "stop-free six-frame translations of the chunks, scored", **COUNT},
    "reads_without_frames": {"title": "Reads without frames",
                             "description": "reads with no stop-free frame: never called virus", **COUNT},
    "viral_reads": {"title": "Viral reads", "description": "reads called virus", **COUNT},
    "viral_percent": {"title": "% viral", "description": "share of the reads called virus", "suffix": "%",
                      "max": 100, "min": 0, "format": "{:,.2f}"},
    "estimated_virus_share": {"title": "Virus share", "description": "the share of viral reads estimated from the "
                              "calibrated scores (NA without a calibration)", **SHARE},
    "virus_share_low": {"title": "Share, 95% low", "description": "lower end of the share's 95% interval", **SHARE},
    "virus_share_high": {"title": "Share, 95% high", "description": "upper end of the share's 95% interval", **SHARE},
}
MULTIQC_COLUMNS = ("Sample", *MULTIQC_COLUMN_HEADERS)
MULTIQC_HEADER = "".join(f"# {line}\n" for line in yaml.safe_dump({
    "id": "virnucpro",
    "section_name": "VirNucPro",
    "description": "reads called virus per input by VirNucPro (virnucpro-slurm); frames are stop-free six-frame "
                   "translations of each chunk",
    "plot_type": "table",
    "pconfig": {"id": "virnucpro_table", "title": "VirNucPro: reads called virus", "namespace": "VirNucPro"},
    "headers": MULTIQC_COLUMN_HEADERS,
}, sort_keys=False, width=1000).splitlines())


class PerInputWriter(contextlib.ExitStack):
    """prediction_results.txt of each input, opened in input order (frames arrive in input
    order), so only one is open at a time; inputs without frames get the header alone."""

    def __init__(self, workdir, names: list[str], files: "ResultFiles", compress: bool = False):
        super().__init__()
        self.workdir, self.names, self.files, self.compress = workdir, names, files, compress
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
        self.file = self.closer.enter_context(self.files.open(
            self.workdir.result_file(self.names[self.current], PREDICTION_RESULTS, self.compress)))
        self.file.write(PREDICTION_HEADER)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            while self.current < len(self.names) - 1:
                self._advance()
        if self.closer is not None:
            self.closer.__exit__(exc_type, exc, tb)
        return super().__exit__(exc_type, exc, tb)


def read_calls(chunk_max_virus: np.ndarray, chunk_is_virus: np.ndarray, starts: np.ndarray,
               min_score: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per read (its chunks start at `starts`): the best virus score, the viral chunks and the call.

    Default call (the original's rule lifted to reads): 'virus' when at least one chunk of the
    read is viral by the per-chunk rule. With `min_score`: 'virus' when max_virus_score >= it, in
    float32 (the precision max_virus_score is printed in), so a threshold copied from reads.tsv
    includes that read."""
    if not len(starts):
        return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
    best = np.maximum.reduceat(chunk_max_virus, starts)
    viral_chunks = np.add.reduceat(chunk_is_virus.astype(np.int64), starts)
    return best, viral_chunks, (best >= np.float32(min_score) if min_score is not None else viral_chunks > 0)


def write_reads_table(reads_in: Path, reads_out: Path, chunk_ids: list[str], new_read: np.ndarray,
                      chunk_max_virus: np.ndarray, chunk_is_virus: np.ndarray, min_score: float | None,
                      expected_reads: int, opener=atomic_open, calibrated: InputCalibration | None = None) -> set[str]:
    """reads.tsv: per read, the best virus score of any of its frames and the call; returns the
    ids of the reads called virus.

    The call is `read_calls`', or with `calibrated` calls (--max-fdr) theirs, a read without frames
    included. Reads with frames come in the order of prepare's read table, which also lists the
    others. A damaged read table (bad header, a malformed or cut line, rows missing or out of order,
    not the `expected_reads` prepare recorded) is prepare's to redo: a StaleInputError.
    """
    starts = np.flatnonzero(new_read)
    best, viral_chunks, is_virus = read_calls(chunk_max_virus, chunk_is_virus, starts, min_score)
    is_virus, viral_chunks = is_virus.tolist(), viral_chunks.tolist()
    best_text = (text for block in blocks(best) for text in block.astype(str).tolist())
    tails, fdr_calls = calibrated_fields(calibrated, expected_reads)

    def read_with_frames(j: int) -> str | None:
        return read_of_chunk(chunk_ids[starts[j]]) if j < len(starts) else None

    def damaged(what: str) -> StaleInputError:
        return StaleInputError(f"{reads_in}: prepare's read table is damaged ({what}); the prepare stage will run again",
                               "prepare", 0)

    found, expected, rows, viral = 0, read_with_frames(0), 0, set()
    try:
        source = open(reads_in, encoding="utf-8", newline="")
    except OSError as exc:
        raise StaleInputError(f"{reads_in}: prepare's read table is missing or unreadable ({exc.strerror or exc}); "
                              "the prepare stage will run again", "prepare", 0) from None
    with source, opener(reads_out) as out:
        try:
            if source.readline() != "\t".join(READS_COLUMNS) + "\n":
                raise damaged("not its header")
            out.write("\t".join(READS_HEADER) + "\n")
            for rows, line in enumerate(source, start=1):
                fields = line[:-1].split("\t")  # (a last line without its newline is refused just below)
                if (len(fields) != len(READS_COLUMNS) or line[-1:] != "\n" or not fields[1].isdigit()
                        or not fields[2].isdigit() or not fields[3].isdigit()):  # unrolled: run once per read
                    raise damaged(f"line {rows + 1} is malformed or cut short")
                read_id, length, chunks, frames = fields
                tail = tails[rows - 1] if tails is not None and rows <= len(tails) else "NA\tNA"
                if read_id != expected:
                    call = "virus" if fdr_calls is not None and fdr_calls[rows - 1] else "no_frames"
                    if call == "virus":
                        viral.add(read_id)
                    out.write(f"{read_id}\t{length}\t{chunks}\t0\t0\tNA\t{call}\t{tail}\n")
                    continue
                call = "others"
                if (is_virus[found] if fdr_calls is None else fdr_calls[rows - 1]):
                    call = "virus"
                    viral.add(read_id)
                out.write(f"{read_id}\t{length}\t{chunks}\t{frames}\t{viral_chunks[found]}\t{next(best_text)}\t{call}"
                          f"\t{tail}\n")
                found += 1
                expected = read_with_frames(found)
        except UnicodeDecodeError:
            raise damaged("not UTF-8 text") from None
    if found != len(starts):
        raise damaged(f"read {expected!r} has frames but is not in it, in order")
    if rows != expected_reads:
        raise damaged(f"{rows} reads, prepare recorded {expected_reads}")
    return viral


def calibrated_fields(calibrated: InputCalibration | None, reads: int) -> tuple[list[str] | None, list[bool] | None]:
    """Per read: the text of its virus_probability and fdr columns, and its --max-fdr call."""
    if calibrated is None:
        return None, None
    if len(calibrated.probability) != reads:
        raise ShardError(f"{len(calibrated.probability)} calibrated reads for {reads} in prepare's table; re-run with "
                         "--restart")
    tails = [f"{q:.6g}\t{f:.6g}" for q, f in zip(calibrated.probability.tolist(), calibrated.fdr.tolist())]
    return tails, None if calibrated.calls is None else calibrated.calls.tolist()
