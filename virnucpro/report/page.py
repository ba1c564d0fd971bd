"""index.html: one self-contained page (inline CSS, figures as data URIs, no script) that opens offline."""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path

from .. import __version__
from ..modelstore.demo import models_are_demo
from ..paths import RESULT_FILES
from .data import TOP_READS, InputStats, RunReport, TrainingReport

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #1f3a4d; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0 0 .3em 0; font-size: 1.6em; }
header p { margin: .15em 0; opacity: .9; }
header code { background: rgba(255, 255, 255, .15); color: #fff; }
main { padding: 1em 2em 3em; max-width: 1300px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .8em 1.4em 1.2em; margin: 1.2em 0; }
h2 { border-bottom: 2px solid #1f3a4d; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #eef2f5; }
td.text, th.text { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
.banner { padding: .7em 1em; border-radius: 4px; margin: 1em 0; font-weight: bold; }
.demo { background: #fdecea; border: 2px solid #c0392b; color: #922b21; }
.progress { background: #fef5e7; border: 1px solid #f39c12; }
.ok { background: #e9f7ef; border: 1px solid #27ae60; }
.failed { color: #c0392b; }
code { background: #f0f0f0; padding: 0 .25em; border-radius: 3px; font-size: .9em; word-break: break-all; }
.muted { color: #777; }
.virus { color: #c0392b; font-weight: bold; }
"""


def e(value) -> str:
    return html.escape(str(value), quote=True)


def number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else ("-" if value is None else e(value))


def percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else time.strftime("%H:%M:%S", time.gmtime(value))


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    def cells(values, tag):
        return "".join(f'<{tag}{" class=text" if i < text_columns else ""}>{v}</{tag}>' for i, v in enumerate(values))
    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    return f"<table><thead><tr>{cells(headers, 'th')}</tr></thead><tbody>{body}</tbody></table>"


def call_rule(min_score: float | None) -> str:
    if min_score is None:
        return ("a read is <b>virus</b> when at least one of its chunks is viral by the original per-chunk rule "
                "(max P(virus) &ge; max P(others) over the chunk's frames)")
    return f"a read is <b>virus</b> when its max_virus_score &ge; {min_score:g} (<code>--min-score</code>)"


def summary_rows(report: RunReport) -> list[list[str]]:
    rows = []
    for s in report.inputs:
        rows.append([
            f'<a href="#input-{s.index}">{e(s.name)}</a>', number(s.reads if s.prepared else None),
            number(s.bases if s.prepared else None), number(s.chunks if s.prepared else None),
            f"{number(s.frames)} / {number(s.possible_frames)}" if s.prepared else "-",
            percent(s.frames_lost_to_stops, s.possible_frames) if s.prepared else "-",
            number(s.calls["virus"]) if s.has_results else "-",
            percent(s.calls["virus"], s.reads) if s.has_results else "-",
            number(s.calls["others"]) if s.has_results else "-",
            number(s.calls["no_frames"]) if s.has_results else "-",
            share_text(s),
        ])
    return rows


def share_text(s: InputStats) -> str:
    """The input's estimated virus share with its 95% interval; a given share (--virus-share) alone."""
    if s.virus_share is None:
        return "-"
    share, low, high = s.virus_share
    return e(share) if low == "NA" else f"{e(share)} ({e(low)}&ndash;{e(high)})"


def calibration_section(report: RunReport, figure: bytes | None) -> str:
    """The calibration the run's probabilities come from, and its reliability diagram."""
    if report.reliability is None:
        return ""
    r = report.reliability
    return (f'<section id="calibration"><h2>Calibration</h2><p>reads.tsv\'s <code>virus_probability</code> and '
            f'<code>fdr</code> come from <code>{e(r["path"])}</code> ({e(r["method"])}, fitted on '
            f'{number(r["reads"])} labelled reads at a virus share of {r["labelled_share"]:.3f}), adapted to each '
            "input's own virus share (summary above; 95% interval). The diagram shows how well its probabilities "
            "matched the labelled reads (out-of-fold): points on the diagonal are right. They hold where the reads "
            "score like the labelled ones given their class.</p>"
            + (image(figure, "reliability diagram") if figure else "") + "</section>")


def link(report: RunReport, path: Path) -> str:
    """A link from the report's folder to a file of the workdir, named by its file name."""
    return f'<a href="{e(Path(os.path.relpath(path, report.workdir.report_dir)).as_posix())}">{e(path.name)}</a>'


def result_links(report: RunReport, name: str) -> str:
    compress = getattr(report.config, "compress", False)
    return " · ".join(link(report, report.workdir.result_file(name, f, compress)) for f in RESULT_FILES)


def top_reads_section(report: RunReport) -> str:
    """The best-scoring reads of the run: what a biologist looks at first."""
    rows = [[e(read_id), f'<a href="#input-{s.index}">{e(s.name)}</a>', f"{score}", number(chunks),  # as reads.tsv prints it
             f'<span class="{"virus" if call == "virus" else ""}">{e(call)}</span>']
            for s, score, read_id, chunks, call in report.top_reads()]
    viral = sum(s.calls["virus"] for s in report.inputs if s.has_results)
    if not rows:
        body = '<p class="muted">No read has a score yet.</p>'
    else:
        body = (table(["read id", "input", "max virus score", "chunks", "call"], rows, text_columns=2)
                + (f"<p>The {TOP_READS} best-scoring reads of the run" if len(rows) == TOP_READS else
                   f"<p>All {len(rows)} reads with a score") + ", best first (max_virus_score: the best P(virus) "
                "of any of the read's frames). "
                f"{number(viral)} read(s) are called virus in all; each input's <code>viral.fna</code> holds their "
                "records as they are in the input, <code>reads.tsv</code> every read.</p>")
    return f'<section id="top-reads"><h2>Top-scoring reads</h2>{body}</section>'


def input_section(report: RunReport, s: InputStats, figures: dict[str, bytes]) -> str:
    links = result_links(report, s.name)
    facts = table(["", "value"], [
        ["file", f"<code>{e(s.path)}</code>"],
        ["reads / bases", f"{number(s.reads)} / {number(s.bases)}" if s.prepared else "not prepared yet"],
        ["chunks (mean per read)", f"{number(s.chunks)} ({s.chunks_per_read.mean() or 0:.2f})" if s.prepared else "-"],
        ["stop-free frames kept / possible", f"{number(s.frames)} / {number(s.possible_frames)}" if s.prepared else "-"],
        ["frames lost to stop codons", f"{number(s.frames_lost_to_stops)} ({percent(s.frames_lost_to_stops, s.possible_frames)})" if s.prepared else "-"],
        ["reads without any stop-free frame", number(s.reads_without_frames) if s.prepared else "-"],
        ["reads shorter than one codon", number(s.reads_too_short) if s.prepared else "-"],
        ["frames labelled virus / others", f"{number(s.frame_labels['virus'])} / {number(s.frame_labels['others'])}" if s.has_results else "no results yet"],
        ["reads called virus / others / no_frames", " / ".join(f"{number(s.calls[c])} ({percent(s.calls[c], s.reads)})" for c in ("virus", "others", "no_frames")) if s.has_results else "no results yet"],
        *([["estimated virus share (95% interval)", share_text(s)]] if s.virus_share else []),
    ], text_columns=2)
    pictures = "".join(image(png, alt) for alt, png in figures.items())
    return (f'<section id="input-{s.index}"><h2>{e(s.name)}</h2>{facts}'
            f'<p>Results: {links}</p>{pictures}</section>')


def stages_section(report: RunReport, figure: bytes) -> str:
    rows, failures = [], []
    for stage, t in report.stages.items():
        state = "done" if t["shards"] and t["done"] == t["shards"] else ("failed" if t["failed"] else "running" if t["running"] else "pending")
        rows.append([e(stage), f'<span class="{"failed" if state == "failed" else ""}">{state}</span>',
                     f'{t["done"]} / {t["shards"]}', seconds(t["elapsed_seconds"]), seconds(t["shard_seconds"]),
                     number(t["computed_tokens"]), f'{t["tokens_per_second"]:,.0f}' if t["tokens_per_second"] else "-",
                     number(t["attempts"]), number(t["requeues"]), number(t["failed"]),
                     e(", ".join(t["job_ids"])) or "-", e(", ".join(t["hosts"])) or "-"])
        for failure in t["failures"]:
            failures.append(f'<li class="failed">{e(stage)} shard {failure["shard"]}: {e(failure["error"])}'
                            + (f' (log <code>{e(failure["log"])}</code>)' if failure["log"] else "") + "</li>")
    listing = f"<h3>Failures</h3><ul>{''.join(failures)}</ul>" if failures else ""
    return ('<section id="stages"><h2>Stages</h2>'
            + table(["stage", "state", "shards done", "elapsed", "shard time", "tokens", "tokens/s per task",
                     "attempts", "requeues", "failed", "SLURM jobs", "hosts"], rows, text_columns=2)
            + listing + image(figure, "wall time, throughput, requeues and failures per stage") + "</section>")


def what_ran(report: RunReport, stages: tuple[str, ...], key: str, requested: str) -> str:
    """The devices or precisions the stages' finished shards recorded; the request until one has."""
    ran = [f"{stage} {', '.join(report.stages[stage][key])}" for stage in stages if report.stages.get(stage, {}).get(key)]
    return e("; ".join(ran)) if ran else f"{e(requested)} <span class=muted>(requested; nothing has run yet)</span>"


def container_rows(container: dict | None) -> list[list[str]]:
    """The image the SLURM tasks ran in (submit --container), as the latest submission recorded it."""
    if not container:
        return []
    runtime = " ".join(str(container.get(k) or "") for k in ("runtime", "runtime_version")).strip()
    digest = container.get("digest")
    inside = ", ".join(f"{name} {container[name]}" for name in ("virnucpro", "submitit") if container.get(name))
    return [["container image", f"<code>{e(str(container.get('image')))}</code>"],
            ["image digest", f"<code>{e(str(digest))}</code> ({e(str(container.get('digest_of')))})" if digest
             else e(str(container.get("digest_of") or "unknown"))],
            ["container runtime", e(runtime or "unknown") + (f" <span class=muted>(image: {e(inside)})</span>" if inside else "")]]


def run_section(report: RunReport) -> str:
    config = report.config
    fingerprint = config.fingerprint.get("models", {}) if config.fingerprint else {}

    def identity(kind: str) -> str:
        ident = fingerprint.get(kind, {})
        if "sha256" in ident:
            return f"sha256 <code>{e(ident['sha256'][:16])}…</code>"
        if "files" in ident:
            return f"{len(ident['files'])} files hashed"
        return "hub name"
    kinds = ("esm", "dnabert", "classifier") if config.models.classifier else ("esm", "dnabert")  # a training makes one
    rows = [[e(kind), f"<code>{e(getattr(config.models, kind))}</code>", identity(kind)] for kind in kinds]
    provenance = os.path.relpath(report.workdir.provenance, report.workdir.report_dir)
    return ('<section id="run"><h2>Run</h2>'
            + table(["parameter", "value"], [["chunk length", str(config.chunk_length)], ["shards", str(config.shards)],
                                             ["precision", what_ran(report, ("dnabert", "esm2"), "precisions", config.precision)],
                                             ["packed ESM-2", str(config.packing)],
                                             ["device", what_ran(report, ("dnabert", "esm2", "predict", "train"), "devices", config.device)],
                                             ["LABELS file" if config.labels else "inputs list",
                                              f"<code>{e(config.inputs_list)}</code>"],
                                             *container_rows(report.container)],
                    text_columns=2)
            + table(["model", "spec", "identity"], rows, text_columns=3)
            + f'<p>Versions, hashes, timings and job ids: <a href="{e(provenance)}">provenance.json</a>.</p></section>')


def render(report: RunReport, input_figures: dict[int, dict[str, bytes]], stage_figure: bytes,
           omitted_inputs: int = 0, reliability_figure: bytes | None = None) -> str:
    state = ('<div class="banner ok">Run complete.</div>' if report.complete else
             '<div class="banner progress">Run in progress or stopped: figures show what is finished so far.</div>')
    sections = "".join(input_section(report, s, input_figures[s.index]) for s in report.inputs if s.index in input_figures)
    if omitted_inputs:
        sections += f'<p class="muted">Figures of {omitted_inputs} more input(s) are left out; the summary table lists them all.</p>'
    summary = table(["input", "reads", "bases", "chunks", "frames kept / possible", "lost to stops",
                     "virus reads", "share called virus", "others", "no frames", "estimated virus share (95%)"],
                    summary_rows(report))
    return document(report, "VirNucPro report", state, f"""<section id="summary"><h2>Summary</h2>
{summary}
<p>Call rule: {call_rule(report.min_score)}. Reads with no stop-free frame in any chunk are <b>no_frames</b>.</p>
<p>Result folders by input: {link(report, report.workdir.results_index)}; this table for MultiQC:
{link(report, report.workdir.multiqc_summary)}.</p>
</section>
{top_reads_section(report)}
{calibration_section(report, reliability_figure)}
{sections}
{stages_section(report, stage_figure)}
{run_section(report)}""")


def document(report, title: str, state: str, body: str, meaningless: str = "these predictions are") -> str:
    """The page around `body`: header, demo banner (demo models or a demo-trained classifier), state banner."""
    root = report.workdir.root
    demo = (f'<div class="banner demo">DEMO MODELS: random weights, so {meaningless} MEANINGLESS.</div>'
            if models_are_demo(report.config.models) else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{e(title)}: {e(root.name)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{e(title)}: {e(root.name)}</h1>
<p>workdir <code>{e(root)}</code></p>
<p>generated {e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.generated)))} by virnucpro {e(__version__)}</p>
</header>
<main>
{demo}{state}
{body}
</main>
</body>
</html>
"""


# ---------------------------------------------------------------- a training run's page

METRIC_NAMES = ("n", "positives", "accuracy", "precision", "recall", "f1", "mcc", "auroc", "auprc")


def fraction(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def training_summary(report: TrainingReport) -> str:
    workdir, meta, history = report.workdir, report.classifier, report.history
    if meta:
        rows = meta.get("rows", {})
        stopped = ("early stopping: no better held-out loss in {} epochs".format(report.recipe.get("patience"))
                   if meta.get("epochs", 0) < report.recipe.get("max_epochs", 0) else "the recipe's last epoch")
        facts = [["classifier", f"{link(report, workdir.classifier_weights)} · {link(report, workdir.classifier_meta)}"],
                 ["epochs trained", f"{number(meta.get('epochs'))} (stopped by {e(stopped)})"],
                 ["best epoch (its weights kept)", number(meta.get("best_epoch"))],
                 ["held-out loss of the best epoch", fraction(meta.get("held_out_metrics", {}).get("loss"))],
                 ["frames: training / held out", f"{number(rows.get('training'))} / {number(rows.get('held_out'))}"]]
        return table(["", "value"], facts, text_columns=2)
    if history:
        best = next((h for h in history if h["epoch"] == report.best_epoch), history[-1])
        return (f"<p>Training in progress or stopped: {len(history)} epoch(s) finished, the best so far epoch "
                f"{best['epoch']} (held-out loss {best['held_out_loss']:.4f}). The same command resumes it from "
                f"{link(report, workdir.training_checkpoint)}.</p>")
    why = f" ({e(report.problem)})" if report.problem else ""
    return f'<p class="muted">No epoch has finished yet{why}.</p>'


def held_out_section(report: TrainingReport) -> str:
    metrics = (report.classifier or {}).get("held_out_metrics")
    if not metrics:
        return '<section id="held-out"><h2>Held-out metrics</h2><p class="muted">Known when the training has finished.</p></section>'
    rows = [[e(name), number(metrics.get(name)) if name in ("n", "positives") else fraction(metrics.get(name))]
            for name in METRIC_NAMES]
    rows += [[e(k.upper()), number(metrics.get("confusion", {}).get(k))] for k in ("tp", "fp", "tn", "fn")]
    return ('<section id="held-out"><h2>Held-out metrics</h2>'
            "<p>Per frame, of the best epoch's weights on the held-out frames (a frame is called virus when its "
            "virus score is at least 0.5). The split is by read: every frame of a read or genome record is on one "
            "side. For the metrics a user quotes, per read and with <code>--min-score</code> advice, run "
            "<code>virnucpro-slurm evaluate</code> on a labelled set the training never saw.</p>"
            + table(["metric", "value"], rows) + "</section>")


def training_data_section(report: TrainingReport, figure: bytes) -> str:
    rows = []
    for item in report.inputs:
        s = item.stats
        rows.append([f"<code>{e(s.name)}</code>", f'<span class="{"virus" if item.label == "virus" else ""}">{e(item.label)}</span>',
                     f"<code>{e(Path(item.genbank).name)}</code>" if item.genbank else "-",
                     number(s.reads if s.prepared else None), number(s.chunks if s.prepared else None),
                     number(s.frames if s.prepared else None), number(s.reads_without_frames if s.prepared else None),
                     number(item.records_not_in_genbank) if item.genbank and s.prepared else "-"])
    totals = {label: sum(i.stats.frames for i in report.inputs if i.label == label) for label in ("virus", "other")}
    split = (report.classifier or {}).get("rows") or {}
    by_class = [[e(label), number(totals[label]), number(split.get(f"training_{label}")), number(split.get(f"held_out_{label}"))]
                for label in ("virus", "other")]
    return ('<section id="training-data"><h2>Training data</h2>'
            "<p>Frames are the training examples: the stop-free frames of every chunk (with a GenBank file, only "
            "those inside an annotated CDS).</p>"
            + table(["input", "label", "GenBank", "reads", "chunks", "frames", "reads without frames",
                     "records not in GenBank"], rows, text_columns=3)
            + table(["class", "frames", "training", "held out"], by_class)
            + image(figure, "frames per input and per class on each side of the split") + "</section>")


def recipe_section(report: TrainingReport) -> str:
    config, meta = report.config, report.classifier or {}
    rows = [[e(key), f"<code>{e(value)}</code>"] for key, value in report.recipe.items()]
    rows += [["seed", f"<code>{e(config.seed)}</code>"], ["held-out fraction", f"<code>{e(config.holdout)}</code>"],
             ["split", e(meta.get("split", "by read: every frame of a read (or genome record) on one side"))],
             ["chunk length", f"<code>{e(config.chunk_length)}</code>"],
             ["embedding dtype", f"<code>{e(config.embedding_dtype)}</code>"]]
    return ('<section id="recipe"><h2>Recipe</h2><p>The original VirNucPro training recipe, as recorded in '
            + (link(report, report.workdir.classifier_meta) if meta else "the checkpoint")
            + ".</p>" + table(["setting", "value"], rows, text_columns=2) + "</section>")


def render_training(report: TrainingReport, loss_figure: bytes, frames_figure: bytes, stage_figure: bytes) -> str:
    state = ('<div class="banner ok">Training complete.</div>' if report.complete and report.classifier else
             '<div class="banner progress">Training in progress or stopped: the figures show what is finished so far.</div>')
    body = (f'<section id="summary"><h2>Summary</h2>{training_summary(report)}</section>'
            f'<section id="loss"><h2>Loss per epoch</h2>{image(loss_figure, "training and held-out loss per epoch")}'
            "<p>Early stopping on the held-out loss: the classifier keeps the weights of the best epoch.</p></section>"
            f"{held_out_section(report)}\n{training_data_section(report, frames_figure)}\n{recipe_section(report)}\n"
            f"{stages_section(report, stage_figure)}\n{run_section(report)}")
    return document(report, "VirNucPro training report", state, body, meaningless="this classifier and its metrics are")
