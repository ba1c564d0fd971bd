"""The report's PNG figures, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np

# matplotlib logs a WARNING at import when its config folder ($MPLCONFIGDIR, else
# ~/.config/matplotlib) is not writable, as on compute nodes with a read-only home, and then uses
# a temporary folder, which is all a report needs: two lines of console noise per run, silenced here.
logging.getLogger("matplotlib").setLevel(logging.ERROR)
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .data import CALLS, SCORE_BINS, InputStats, IntegerCounts, RunReport, TrainingReport

COLOURS = {"virus": "#c0392b", "others": "#2e86c1", "no_frames": "#95a5a6", "kept": "#27ae60", "lost": "#e67e22",
           "bar": "#34495e", "requeues": "#f39c12", "failed": "#c0392b"}
MAX_INTEGER_BARS = 40
DPI = 100


def png_bytes(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # An input name in a script the bundled font lacks (CJK, a tab) is drawn as boxes; the page
        # beside the figure gives the name exactly, so the per-glyph warnings are only noise.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _title(figure: Figure, name: str) -> None:
    # parse_math=False: an input named like 'a$\foo$b' is text, not mathtext (which failed to parse)
    figure.suptitle(name, fontsize=11, fontweight="bold", parse_math=False)


def _nothing_yet(ax, title: str, why: str = "no data yet") -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#7f8c8d")
    ax.set_xticks([])
    ax.set_yticks([])


def _score_histogram(ax, counts: np.ndarray, total: int, title: str, xlabel: str, threshold: float | None,
                     threshold_label: str) -> None:
    """Bars at or above `threshold` in the virus colour; one neutral colour when there is no threshold."""
    if total == 0:
        _nothing_yet(ax, title, "no scores (no results yet, or no stop-free frame)")
        return
    centres = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    width = SCORE_BINS[1] - SCORE_BINS[0]
    if threshold is None:
        colours = [COLOURS["bar"]] * len(centres)
    else:
        colours = [COLOURS["virus"] if c >= threshold else COLOURS["others"] for c in centres]
    ax.bar(centres, counts, width=width, color=colours, edgecolor="white", linewidth=0.5)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=threshold_label)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_ylim(0, counts.max() * 1.2)
    ax.set_xlim(0, 1)
    ax.set_title(f"{title} (n={total:,})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")


def _integer_bars(ax, counts: IntegerCounts, title: str, xlabel: str, colour: str) -> None:
    if counts.total == 0:
        _nothing_yet(ax, title)
        return
    values = np.arange(len(counts.counts))
    if len(values) <= MAX_INTEGER_BARS:
        ax.bar(values, counts.counts, color=colour, width=0.8)
        ax.set_xticks(values[:: max(1, len(values) // 12)])
    else:  # very long reads: group neighbouring values so the bars stay readable
        heights, edges = np.histogram(values, bins=MAX_INTEGER_BARS, weights=counts.counts)
        ax.bar(edges[:-1], heights, width=np.diff(edges), align="edge", color=colour)
    ax.set_title(f"{title} (mean {counts.mean():.2f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reads")


def input_scores_figure(stats: InputStats, min_score: float | None) -> bytes:
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2, gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.15, "top": 0.8, "wspace": 0.22})
    _score_histogram(left, stats.frame_scores.counts, stats.frame_scores.total, "Virus score per frame",
                     "score2 = P(virus)", 0.5, "0.5: frame label boundary")
    # the default read call is per chunk, not a threshold on this score: no colours then
    _score_histogram(right, stats.read_scores.counts, stats.read_scores.total, "Best virus score per read",
                     "max_virus_score over the read's frames", min_score,
                     f"--min-score {min_score:g}: virus at or above" if min_score is not None else "")
    _title(figure, stats.name)
    return png_bytes(figure)


def read_calls(ax, stats: InputStats) -> None:
    """Share of reads per call, on an axis that ends at 100% (the largest share there is)."""
    if not (stats.has_results and stats.reads):
        _nothing_yet(ax, "Read calls")
        return
    shares = [stats.calls[c] / stats.reads * 100 for c in CALLS]
    bars = ax.barh(list(CALLS)[::-1], shares[::-1], color=[COLOURS[c] for c in CALLS][::-1])
    for bar, call in zip(bars, list(CALLS)[::-1]):
        inside = bar.get_width() > 60  # the count inside a long bar, beside a short one
        ax.text(bar.get_width() + (-1 if inside else 1), bar.get_y() + bar.get_height() / 2,
                f"{stats.calls[call]:,} ({stats.calls[call] / stats.reads:.1%})", va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black")
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of reads")
    ax.set_title("Read calls")


def input_reads_figure(stats: InputStats) -> bytes:
    figure = Figure(figsize=(10, 6.4))
    (calls_ax, frames_ax), (chunks_ax, kept_ax) = figure.subplots(2, 2, gridspec_kw={
        "left": 0.09, "right": 0.98, "bottom": 0.08, "top": 0.9, "wspace": 0.25, "hspace": 0.6})
    read_calls(calls_ax, stats)
    if stats.prepared and stats.possible_frames:
        kept, lost = stats.frames, stats.frames_lost_to_stops
        frames_ax.barh([0], [kept], height=0.6, color=COLOURS["kept"], label=f"kept: {kept:,} ({kept / stats.possible_frames:.1%})")
        frames_ax.barh([0], [lost], height=0.6, left=[kept], color=COLOURS["lost"],
                       label=f"stop codon: {lost:,} ({lost / stats.possible_frames:.1%})")
        frames_ax.set_ylim(-0.5, 1.3)
        frames_ax.set_xlim(0, stats.possible_frames)
        frames_ax.set_xlabel(f"of {stats.possible_frames:,} possible frames (6 per chunk)")
        frames_ax.set_title("Frames lost to stop codons")
        frames_ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
        frames_ax.set_yticks([])
    else:
        _nothing_yet(frames_ax, "Frames lost to stop codons")
    _integer_bars(chunks_ax, stats.chunks_per_read, "Chunks per read", "chunks", COLOURS["bar"])
    _integer_bars(kept_ax, stats.frames_per_read, "Stop-free frames per read", "frames kept", COLOURS["kept"])
    _title(figure, stats.name)
    return png_bytes(figure)


def stages_figure(report: RunReport) -> bytes:
    figure = Figure(figsize=(12, 3.6))
    time_ax, speed_ax, trouble_ax = figure.subplots(1, 3, gridspec_kw={
        "left": 0.06, "right": 0.98, "bottom": 0.2, "top": 0.9, "wspace": 0.3})
    stages = list(report.stages)  # the stages of the run's kind
    elapsed = [report.stages[s]["elapsed_seconds"] or 0 for s in stages]
    machine = [report.stages[s]["shard_seconds"] or 0 for s in stages]
    x = np.arange(len(stages))
    time_ax.bar(x - 0.2, elapsed, width=0.4, color=COLOURS["bar"], label="elapsed (first start to last finish)")
    time_ax.bar(x + 0.2, machine, width=0.4, color="#85c1e9", label="sum over shards")
    time_ax.set_xticks(x, stages, rotation=20)
    time_ax.set_ylabel("seconds")
    time_ax.set_title("Wall time per stage")
    time_ax.set_ylim(0, max(elapsed + machine + [1e-3]) * 1.35)
    time_ax.legend(loc="upper left", fontsize=7, frameon=False)
    gpu_stages = [s for s in stages if report.stages[s]["tokens_per_second"]]
    if gpu_stages:
        rates = [report.stages[s]["tokens_per_second"] for s in gpu_stages]
        bars = speed_ax.bar(gpu_stages, rates, color=COLOURS["kept"])
        for bar, rate in zip(bars, rates):
            speed_ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{rate:,.0f}", ha="center", va="bottom", fontsize=8)
        speed_ax.set_ylim(0, max(rates) * 1.15)
        speed_ax.set_ylabel("tokens / s per task")
        speed_ax.set_title("Embedding throughput")
    else:
        _nothing_yet(speed_ax, "Embedding throughput", "no embedding stage finished yet")
    requeues = [report.stages[s]["requeues"] for s in stages]
    failed = [report.stages[s]["failed"] for s in stages]
    trouble_ax.bar(x - 0.2, requeues, width=0.4, color=COLOURS["requeues"], label="requeues")
    trouble_ax.bar(x + 0.2, failed, width=0.4, color=COLOURS["failed"], label="failed shards")
    trouble_ax.set_xticks(x, stages, rotation=20)
    trouble_ax.set_ylim(0, max(requeues + failed + [1]) * 1.35)
    trouble_ax.yaxis.get_major_locator().set_params(integer=True)
    trouble_ax.set_title("Requeues and failures")
    if not any(requeues + failed):
        trouble_ax.text(0.5, 0.45, "no requeues, no failures", ha="center", transform=trouble_ax.transAxes, color=COLOURS["kept"])
    trouble_ax.legend(loc="upper left", fontsize=7, frameon=False)
    return png_bytes(figure)


# ---------------------------------------------------------------- a training run's figures

def training_loss_figure(report: TrainingReport) -> bytes:
    """Mean training loss and held-out loss per epoch; the best epoch (the weights kept) marked."""
    figure = Figure(figsize=(10, 3.8))
    ax = figure.add_subplot()
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88)
    history = report.history
    if not history:
        _nothing_yet(ax, "Loss per epoch", "no epoch finished yet")
        return png_bytes(figure)
    epochs = [entry["epoch"] for entry in history]
    marker = "o" if len(epochs) <= 30 else None
    ax.plot(epochs, [entry["train_loss"] for entry in history], color=COLOURS["bar"], marker=marker, markersize=3,
            label="training loss (mean over the epoch's batches)")
    ax.plot(epochs, [entry["held_out_loss"] for entry in history], color=COLOURS["virus"], marker=marker, markersize=3,
            label="held-out loss (after the epoch)")
    if report.best_epoch:
        ax.axvline(report.best_epoch, color="black", linestyle="--", linewidth=1,
                   label=f"best epoch {report.best_epoch}: its weights are the classifier's")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Loss per epoch ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''})")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return png_bytes(figure)


def training_frames_figure(report: TrainingReport) -> bytes:
    """Frames per input coloured by its label; with a finished training, frames per class on each side of the split."""
    figure = Figure(figsize=(10, 3.6))
    inputs_ax, split_ax = figure.subplots(1, 2, gridspec_kw={"left": 0.12, "right": 0.98, "bottom": 0.16, "top": 0.88,
                                                              "wspace": 0.35})
    shown = [item for item in report.inputs[:MAX_INTEGER_BARS] if item.stats.prepared]
    if shown:
        names = [item.stats.name for item in shown][::-1]
        colours = [COLOURS["virus" if item.label == "virus" else "others"] for item in shown][::-1]
        inputs_ax.barh(names, [item.stats.frames for item in shown][::-1], color=colours)
        inputs_ax.set_xlabel("stop-free frames (training examples)")
        inputs_ax.set_title("Frames per input (red: virus, blue: other)")
    else:
        _nothing_yet(inputs_ax, "Frames per input", "not prepared yet")
    rows = (report.classifier or {}).get("rows") or {}
    if rows:
        sides = ["training", "held_out"]
        for offset, name in ((-0.2, "virus"), (0.2, "other")):
            counts = [rows.get(f"{side}_{name}", 0) for side in sides]
            bars = split_ax.bar(np.arange(2) + offset, counts, width=0.4,
                                color=COLOURS["virus" if name == "virus" else "others"], label=name)
            for bar, count in zip(bars, counts):
                split_ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{count:,}", ha="center",
                              va="bottom", fontsize=8)
        split_ax.set_xticks(np.arange(2), ["training", "held out"])
        split_ax.set_ylabel("frames")
        split_ax.set_ylim(0, max(rows.get(f"{s}_{n}", 0) for s in sides for n in ("virus", "other")) * 1.2 + 1)
        split_ax.set_title("Frames per class and side of the split")
        split_ax.legend(loc="upper right", fontsize=8, frameon=False)
    else:
        _nothing_yet(split_ax, "Frames per class and side of the split", "known when the training has finished")
    return png_bytes(figure)


def reliability_figure(rows_by_level: dict[str, list[dict]], title: str = "Reliability diagram") -> bytes:
    """Calibration's reliability diagram: per probability bin, the mean calibrated probability
    against the observed virus share of the labelled reads in it (cross-validated); the diagonal
    is a perfect calibration. Point area follows the bin's reads."""
    figure = Figure(figsize=(5.2, 4.6))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="#95a5a6", linestyle="--", linewidth=1, label="perfect")
    for colour, (level, rows) in zip(("#c0392b", "#2e86c1"), rows_by_level.items()):
        if not rows:
            continue
        reads = np.array([r["reads"] for r in rows], dtype=np.float64)
        x = [r["mean_probability"] for r in rows]
        y = [r["virus_share"] for r in rows]
        ax.plot(x, y, color=colour, linewidth=1.2, label=f"per {level}")
        ax.scatter(x, y, s=12 + 120 * reads / reads.max(), color=colour, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("calibrated P(virus), at the labelled share")
    ax.set_ylabel("virus share of the labelled reads")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    figure.tight_layout()
    return png_bytes(figure)


def fdr_curve_figure(name: str, fdr_counts: np.ndarray, edges: np.ndarray, share: str) -> bytes:
    """Reads called against --max-fdr Q: the reads whose fdr is at most Q (fdr_counts: reads per
    fdr bin between `edges`)."""
    figure = Figure(figsize=(5.2, 3.6))
    ax = figure.add_subplot()
    called = np.r_[0, np.cumsum(fdr_counts)]
    ax.step(edges, called, where="post", color=COLOURS["virus"], linewidth=1.4)
    for target in (0.01, 0.05, 0.1):
        ax.axvline(target, color="#95a5a6", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(max(edges[1], 1e-4), 1)
    ax.set_xlabel("--max-fdr Q (log scale)")
    ax.set_ylabel("reads called virus")
    ax.set_title(f"{name}: reads called at each --max-fdr ({share})", fontsize=9, parse_math=False)
    figure.tight_layout()
    return png_bytes(figure)
