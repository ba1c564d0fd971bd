"""What `evaluate` writes: metrics.json, one threshold table per level, ROC and precision-recall
figures, and a self-contained index.html. Every file atomic; the page opens offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes, atomic_write_text
from ..json_files import JsonFileError, read_json
from ..modelstore.demo import DEMO_KEY, DEMO_VALUE
from ..report.figures import png_bytes
from ..report.page import CSS, e, image
from . import metrics
from .metrics import LevelScores

METRICS_FILE = "metrics.json"
ROC_FIGURE = "roc.png"
PR_FIGURE = "precision-recall.png"
PAGE = "index.html"
LEVEL_COLOURS = ("#c0392b", "#2e86c1", "#27ae60", "#8e44ad")
THRESHOLD_COLUMNS = ("min_score", "precision", "recall", "fdr", "called_virus", "tp", "fp", "tn", "fn")


def thresholds_file(level: str) -> str:
    return f"thresholds-{level}.tsv"


def score_text(value: float) -> str:
    """A score as the shortest text that reads back as the same float32: the scores are float32,
    and `--min-score` compares float32 scores with float32(min-score)."""
    return str(np.float32(value))


def evaluate_level(level: LevelScores, target_fdr: float) -> tuple[dict, list[dict]]:
    """(metrics of one level, its threshold table): the calls' metrics, the min-score reaching
    the target FDR and the table's rows (the default grid plus that min-score), each row the calls
    `--min-score` with its value makes."""
    truth, scores = level.truth, level.scores
    summary = metrics.binary_metrics(truth, scores, called=level.calls)
    chosen = metrics.min_score_for_fdr(truth, scores, target_fdr, level.scored)
    grid = list(metrics.DEFAULT_THRESHOLDS) + ([chosen] if chosen is not None else [])
    table = metrics.threshold_table(truth, scores, grid, level.call_at)
    summary["target_fdr"] = target_fdr
    summary["min_score_for_target_fdr"] = None if chosen is None else float(np.float32(chosen))
    summary["at_target_fdr"] = (None if chosen is None else
                                {k: v for k, v in metrics.threshold_row(truth, level.call_at(chosen), chosen).items()
                                 if k != "min_score"})
    if level.scored is not None:
        summary["without_score"] = int(np.count_nonzero(~np.asarray(level.scored, dtype=bool)))
    if level.left_out is not None:
        summary["left_out"] = level.left_out
    return summary, table


def unscored_notes(summaries: dict) -> list[str]:
    """What each level does with the items that have no score of their own, in words."""
    notes = []
    for level, s in summaries.items():
        if s.get("left_out"):
            notes.append(f"{s['left_out']:,} {level}(s) without a stop-free frame are left out of the per-{level} "
                         "metrics (they have no score)")
        if s.get("without_score"):
            notes.append(f"{s['without_score']:,} {level}(s) without a stop-free frame count as scored 0 and never "
                         "called virus (as the tool treats them)")
    return notes


def summary_lines(result: dict, page: Path) -> list[str]:
    """What `evaluate` prints when it ends: per level AUROC, F1 and the --min-score to use."""
    lines = []
    for level, s in result["levels"].items():
        auroc = "-" if s["auroc"] is None else f"{s['auroc']:.3f}"
        chosen = s["min_score_for_target_fdr"]
        use = ("no --min-score reaches FDR <= {:g}".format(result["target_fdr"]) if chosen is None else
               f"--min-score {score_text(chosen)} for FDR <= {result['target_fdr']:g} "
               f"(recall {s['at_target_fdr']['recall']:.3f})")
        lines.append(f"per {level}: AUROC {auroc}, F1 {s['f1']:.3f} (precision {s['precision']:.3f}, "
                     f"recall {s['recall']:.3f}); {use}")
    return lines + [f"evaluation: {page}"]


def _table_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(THRESHOLD_COLUMNS)]
    for row in rows:
        lines.append("\t".join(score_text(row[c]) if c == "min_score" else
                               (str(row[c]) if isinstance(row[c], int) else f"{row[c]:.6f}") for c in THRESHOLD_COLUMNS))
    return "\n".join(lines) + "\n"


def _curves_figure(levels: dict, curve, title: str, xlabel: str, ylabel: str, diagonal: bool) -> bytes:
    figure = Figure(figsize=(5.2, 4.6))
    ax = figure.add_subplot()
    for colour, (level, scored) in zip(LEVEL_COLOURS, levels.items()):
        if scored.truth.all() or not scored.truth.any():
            continue  # one class: no curve
        x, y = curve(scored.truth, scored.scores)
        ax.plot(x, y, color=colour, linewidth=1.6, label=f"per {level}", drawstyle="steps-post" if not diagonal else "default")
    if diagonal:
        ax.plot([0, 1], [0, 1], color="#95a5a6", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right" if diagonal else "lower left", fontsize=8, frameon=False)
    figure.tight_layout()
    return png_bytes(figure)


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


DEMO_BANNER = ('<div class="banner demo">DEMO MODELS: random weights (or a classifier trained on their embeddings), '
               'so these metrics are MEANINGLESS.</div>')


def _page(summaries: dict, tables: dict, figures: dict, target_fdr: float, context: dict, call_rule: str,
          demo: bool, extra_sections: str = "") -> str:
    names = ("n", "positives", "accuracy", "precision", "recall", "f1", "mcc", "auroc", "auprc")
    head = "".join(f"<th>{e(level)}</th>" for level in summaries)
    rows = "".join(f"<tr><th class=text>{e(name)}</th>" + "".join(f"<td>{_number(s[name])}</td>" for s in summaries.values())
                   + "</tr>" for name in names)
    rows += "".join(f"<tr><th class=text>{e(k.upper())}</th>" + "".join(f"<td>{s['confusion'][k]:,}</td>" for s in summaries.values())
                    + "</tr>" for k in ("tp", "fp", "tn", "fn"))
    advice = []
    for level, s in summaries.items():
        if s["min_score_for_target_fdr"] is None:
            why = ("this set holds one class, so its FDR says nothing of the classifier" if not 0 < s["positives"] < s["n"]
                   else f"no min-score reaches FDR &le; {target_fdr:g} on this set")
            advice.append(f"<li>per {e(level)}: {why}</li>")
        else:
            at = s["at_target_fdr"]
            advice.append(f"<li>per {e(level)}: <code>--min-score {e(score_text(s['min_score_for_target_fdr']))}</code> "
                          f"&rarr; precision {at['precision']:.3f}, recall {at['recall']:.3f}, FDR {at['fdr']:.3f}, "
                          f"{at['called_virus']:.1%} called virus</li>")
    sections = []
    for level, table in tables.items():
        body = "".join("<tr>" + "".join(f"<td>{e(score_text(r[c]))}</td>" if c == "min_score" else
                                        f"<td>{_number(r[c])}</td>" for c in THRESHOLD_COLUMNS) + "</tr>" for r in table)
        sections.append(f"<h3>Per {e(level)} (<a href=\"{e(thresholds_file(level))}\">{e(thresholds_file(level))}</a>)</h3>"
                        f"<table><tr>{''.join(f'<th>{e(c)}</th>' for c in THRESHOLD_COLUMNS)}</tr>{body}</table>")
    about = "".join(f"<tr><th class=text>{e(k)}</th><td class=text>{e(v)}</td></tr>" for k, v in context.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>virnucpro evaluation</title><style>{CSS}</style></head>
<body><header><h1>Classifier evaluation</h1><p>Scores of labeled sequences against their labels
(<a style="color:#fff" href="{METRICS_FILE}">{METRICS_FILE}</a>).</p></header><main>{DEMO_BANNER if demo else ""}
<section><h2>Metrics</h2><p>Calls: {e(call_rule)}. AUROC and AUPRC rank the virus score, so they
do not depend on a threshold.</p>{''.join(f"<p class=muted>{e(note)}.</p>" for note in unscored_notes(summaries))}
<table><tr><th></th>{head}</tr>{rows}</table></section>
<section><h2>Choosing --min-score</h2><p>The lowest min-score whose calls have a false-discovery rate of
at most {target_fdr:g} on this set:</p><ul>{''.join(advice)}</ul>
<p class=muted>Measured on these labeled sequences: it holds for data with the same share of viruses.
Where viruses are rarer than here, the same min-score gives a higher FDR.</p></section>
<section><h2>Curves</h2><div style="display:flex; flex-wrap:wrap; gap:2em">{image(figures['roc'], 'ROC curves')}
{image(figures['pr'], 'precision-recall curves')}</div></section>
<section><h2>Threshold tables</h2>{''.join(sections)}</section>
{extra_sections}
<section><h2>What was evaluated</h2><table>{about}</table></section>
</main></body></html>
"""


def write_evaluation(folder: Path, levels: dict, target_fdr: float, context: dict,
                     call_rule: str = "a sequence is virus when its virus score is at least 0.5",
                     demo: bool = False, extra_sections: str = "") -> dict:
    """Write the evaluation of `levels` ({level: LevelScores, or a tuple of its fields}; calls
    default to score >= 0.5; `call_rule` says in words how the calls were made) into `folder`;
    `demo`: demo models (or a classifier trained on their embeddings) made the scores, and both
    metrics.json and the page say so; `extra_sections`: HTML added to the page (the calibration's).
    Returns what metrics.json holds."""
    if not 0 < target_fdr < 1:
        raise ValueError(f"target FDR {target_fdr} is not between 0 and 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    complete = {level: v if isinstance(v, LevelScores) else LevelScores(*v) for level, v in levels.items()}
    summaries, tables = {}, {}
    for level, scored in complete.items():
        summaries[level], tables[level] = evaluate_level(scored, target_fdr)
        atomic_write_text(folder / thresholds_file(level), _table_tsv(tables[level]))
    figures = {
        "roc": _curves_figure(complete, metrics.roc_curve, "ROC", "false positive rate", "true positive rate", True),
        "pr": _curves_figure(complete, lambda t, s: metrics.precision_recall_curve(t, s), "Precision-recall",
                             "recall", "precision", False),
    }
    atomic_write_bytes(folder / ROC_FIGURE, figures["roc"])
    atomic_write_bytes(folder / PR_FIGURE, figures["pr"])
    result = {"target_fdr": target_fdr, "call_rule": call_rule, "levels": summaries, "context": context,
              "demo_models": demo, **({DEMO_KEY: DEMO_VALUE} if demo else {})}
    atomic_write_text(folder / METRICS_FILE, json.dumps(result, indent=1, sort_keys=True) + "\n")
    atomic_write_text(folder / PAGE, _page(summaries, tables, figures, target_fdr, context, call_rule, demo,
                                           extra_sections))
    return result


# ---------------------------------------------------------------- one page comparing the classifiers

COMPARED = ("auroc", "auprc", "f1", "mcc", "precision", "recall")
MAX_METRICS_BYTES = 16 << 20  # a metrics.json is a few kilobytes


def _read_metrics(path: Path) -> dict | str:
    """A classifier's metrics.json, or why it cannot be shown (a damaged file is shown as such)."""
    try:
        result = read_json(path, MAX_METRICS_BYTES)
    except JsonFileError as exc:
        return f"unreadable: {exc.reason}"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"
    if not isinstance(result, dict) or not isinstance(result.get("levels"), dict):
        return "not a metrics.json of this tool"
    return result


def _comparison_row(name: str, result: dict | str, levels: list[str]) -> str:
    link = f'<a href="{e(name)}/{PAGE}">{e(name)}</a>'
    if isinstance(result, str):
        return f"<tr><td class=text>{link}</td><td class=text colspan=99>{e(result)}</td></tr>"
    context = result.get("context") or {}
    cells = [link, e(context.get("classifier", "")), e(context.get("chunk_length", "")),
             "DEMO" if result.get("demo_models") else ""]
    for level in levels:
        summary = result["levels"].get(level) or {}
        cells += [_number(summary.get(name)) if isinstance(summary.get(name), (int, float, type(None))) else "-"
                  for name in COMPARED]
        chosen = summary.get("min_score_for_target_fdr")
        cells.append(f"{e(score_text(chosen))} (FDR {result.get('target_fdr', '')})"
                     if isinstance(chosen, (int, float)) else "-")
    return "<tr>" + "".join(f"<td class=text>{c}</td>" if i < 4 else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>"


def write_comparison(evaluation_dir: Path) -> list[str]:
    """evaluation/index.html: every classifier evaluated in this workdir (one folder each, named
    by the classifier's name and SHA-256 prefix), side by side, each linking to its own page.
    Returns the folders listed."""
    evaluation_dir = Path(evaluation_dir)
    names = sorted(p.parent.name for p in evaluation_dir.glob(f"*/{METRICS_FILE}"))
    results = {name: _read_metrics(evaluation_dir / name / METRICS_FILE) for name in names}
    levels = sorted({level for r in results.values() if isinstance(r, dict) for level in r["levels"]},
                    key=lambda level: (level != "chunk", level))
    head = ("<tr><th rowspan=2>evaluation</th><th rowspan=2>classifier</th><th rowspan=2>chunk length</th><th rowspan=2></th>"
            + "".join(f"<th colspan={len(COMPARED) + 1}>per {e(level)}</th>" for level in levels) + "</tr><tr>"
            + "".join(f"<th>{e(name)}</th>" for _ in levels for name in (*COMPARED, "--min-score")) + "</tr>")
    rows = "".join(_comparison_row(name, result, levels) for name, result in results.items())
    demo = any(isinstance(r, dict) and r.get("demo_models") for r in results.values())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>virnucpro evaluations</title><style>{CSS}</style></head>
<body><header><h1>Classifier evaluations</h1><p>Every classifier evaluated on these labeled sequences in this
workdir, one folder each (its name and the first 12 hex digits of its SHA-256).</p></header><main>{DEMO_BANNER if demo else ""}
<section><h2>Side by side</h2><p>Precision and recall are those of each evaluation's calls (the original per-chunk
rule, or its --min-score); --min-score is the lowest reaching the target FDR on this set.</p>
<table>{head}{rows}</table></section></main></body></html>
"""
    atomic_write_text(evaluation_dir / PAGE, page)
    return names
