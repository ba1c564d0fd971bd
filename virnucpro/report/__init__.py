"""The run report: W/report/index.html (self-contained) and its figures as PNG files beside it.

`write_report` is called by `virnucpro-slurm report` and at the end of the consensus stage (a
prediction or evaluation run) or of the train stage (a training run: loss per epoch, held-out
metrics, frames per class and input, the recipe); it also brings W/provenance.json up to date.
"""

from __future__ import annotations

from pathlib import Path

from .. import console
from ..atomic import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from ..orchestration.config import RunConfig
from ..orchestration.provenance import update_provenance
from ..orchestration.state import exclusive_lock
from ..paths import REPORT_INDEX as INDEX  # noqa: F401 (the page's name, for callers)
from ..paths import Workdir
from ..pipeline import PREDICTION, TRAINING
from . import page
from .data import FDR_BINS, gather, gather_training, load_state

STAGES_PNG = "stages.png"
RELIABILITY_PNG = "reliability.png"
LOSS_PNG, FRAMES_PNG = "training.loss.png", "training.frames.png"  # a training run's figures
# Past this many inputs the page keeps every input in its summary table but draws figures for the
# first ones only: a page of thousands of embedded figures helps nobody and takes long to draw.
MAX_INPUT_FIGURES = 50


def input_figure_names(input_name: str) -> tuple[str, str]:
    return f"{input_name}.scores.png", f"{input_name}.reads.png"


def write_report(workdir: Workdir, config: RunConfig | None = None, completing: dict[str, dict] | None = None,
                 event: str = "report") -> Path:
    """Gather, draw and write the report; `completing` names a stage (and its metrics) that is
    finishing in this very process, so the report does not show it as still running."""
    config = config or RunConfig.load(workdir)
    state = load_state(workdir, completing)
    training = getattr(config, "kind", PREDICTION) == TRAINING
    report = (gather_training if training else gather)(workdir, config, state)
    # report/ is written by the consensus or train stage and by `virnucpro-slurm report`, one at a
    # time under this lock (a file never unlinked), so the holder may clear temp files a killed writer left
    with exclusive_lock(workdir.report_lock):
        remove_stale_temp_files([workdir.report_dir])
        return (_write_training_files if training else _write_files)(workdir, config, state, report, event)


def finish_report(ctx, stage: str, metrics: dict) -> None:
    """The run's last stage (consensus, train) writes its report and provenance; the stage's results
    stand even if that fails."""
    try:
        write_report(ctx.workdir, ctx.config, completing={stage: metrics}, event=stage)
    except Exception as exc:  # a report problem (fonts, disk) must not fail a finished run's results
        console.warn(f"report not written ({type(exc).__name__}: {exc}); "
                     f"run 'virnucpro-slurm report --workdir {ctx.workdir.root}'")


def _write_files(workdir: Workdir, config: RunConfig, state, report, event: str) -> Path:
    from . import figures  # matplotlib: only when a report is drawn

    drawn: dict[int, dict[str, bytes]] = {}
    for stats in report.inputs[:MAX_INPUT_FIGURES]:
        scores_name, reads_name = input_figure_names(stats.name)
        scores, reads = figures.input_scores_figure(stats, report.min_score), figures.input_reads_figure(stats)
        atomic_write_bytes(workdir.report_file(scores_name), scores)
        atomic_write_bytes(workdir.report_file(reads_name), reads)
        drawn[stats.index] = {f"{stats.name}: virus scores per frame and per read": scores,
                              f"{stats.name}: read calls, frames lost to stop codons, chunks and frames per read": reads}
        if stats.fdr_counts is not None:
            fdr = figures.fdr_curve_figure(stats.name, stats.fdr_counts, FDR_BINS, page.share_text(stats).replace(
                "&ndash;", "-") if stats.virus_share else "share not estimated")
            atomic_write_bytes(workdir.report_file(f"{stats.name}.fdr.png"), fdr)
            drawn[stats.index][f"{stats.name}: reads called virus at each --max-fdr"] = fdr
    stage_png = figures.stages_figure(report)
    atomic_write_bytes(workdir.report_file(STAGES_PNG), stage_png)
    reliability = None
    if report.reliability is not None and report.reliability["rows"]:
        reliability = figures.reliability_figure({"read": report.reliability["rows"]}, "Reliability of the calibration")
        atomic_write_bytes(workdir.report_file(RELIABILITY_PNG), reliability)
    atomic_write_text(workdir.report_index, page.render(report, drawn, stage_png, max(0, len(report.inputs) - MAX_INPUT_FIGURES),
                                                        reliability))
    update_provenance(workdir, config, event, state)
    return workdir.report_index


def _write_training_files(workdir: Workdir, config: RunConfig, state, report, event: str) -> Path:
    from . import figures  # matplotlib: only when a report is drawn

    drawn = {name: draw(report) for name, draw in ((LOSS_PNG, figures.training_loss_figure),
                                                    (FRAMES_PNG, figures.training_frames_figure),
                                                    (STAGES_PNG, figures.stages_figure))}
    for name, png in drawn.items():
        atomic_write_bytes(workdir.report_file(name), png)
    atomic_write_text(workdir.report_index, page.render_training(report, drawn[LOSS_PNG], drawn[FRAMES_PNG], drawn[STAGES_PNG]))
    update_provenance(workdir, config, event, state)
    return workdir.report_index
