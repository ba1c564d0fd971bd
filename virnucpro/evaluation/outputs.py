"""What `evaluate` writes: metrics.json, one threshold table per level, ROC and precision-recall
figures, and a self-contained index.html. Every file atomic; the page opens offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes, atomic_write_text
from ..report.figures import png_bytes
from ..report.page import CSS, e, image
from . import metrics

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


def evaluate_level(truth, scores, called, target_fdr: float) -> tuple[dict, list[dict]]:
    """(metrics of one level, its threshold table): the calls' metrics, the min-score reaching
    the target FDR and the table's rows (the default grid plus that min-score)."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    summary = metrics.binary_metrics(truth, scores, called=called)
    chosen = metrics.min_score_for_fdr(truth, scores, target_fdr)
    grid = list(metrics.DEFAULT_THRESHOLDS) + ([chosen] if chosen is not None else [])
    table = metrics.threshold_table(truth, scores, grid)
    summary["target_fdr"] = target_fdr
    summary["min_score_for_target_fdr"] = None if chosen is None else float(np.float32(chosen))
    summary["at_target_fdr"] = (None if chosen is None else
                                {k: v for k, v in metrics.threshold_row(truth, scores, chosen).items() if k != "min_score"})
    return summary, table


def _table_tsv(rows: list[dict]) -> str:
    lines = ["\t".join(THRESHOLD_COLUMNS)]
    for row in rows:
        lines.append("\t".join(score_text(row[c]) if c == "min_score" else
                               (str(row[c]) if isinstance(row[c], int) else f"{row[c]:.6f}") for c in THRESHOLD_COLUMNS))
    return "\n".join(lines) + "\n"


def _curves_figure(levels: dict, curve, title: str, xlabel: str, ylabel: str, diagonal: bool) -> bytes:
    figure = Figure(figsize=(5.2, 4.6))
    ax = figure.add_subplot()
    for colour, (level, (truth, scores, _)) in zip(LEVEL_COLOURS, levels.items()):
        truth = np.asarray(truth, dtype=bool)
        if truth.all() or not truth.any():
            continue  # one class: no curve
        x, y = curve(truth, scores)
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


def _page(summaries: dict, tables: dict, figures: dict, target_fdr: float, context: dict, call_rule: str,
          extra_sections: str = "") -> str:
    names = ("n", "positives", "accuracy", "precision", "recall", "f1", "mcc", "auroc", "auprc")
    head = "".join(f"<th>{e(level)}</th>" for level in summaries)
    rows = "".join(f"<tr><th class=text>{e(name)}</th>" + "".join(f"<td>{_number(s[name])}</td>" for s in summaries.values())
                   + "</tr>" for name in names)
    rows += "".join(f"<tr><th class=text>{e(k.upper())}</th>" + "".join(f"<td>{s['confusion'][k]:,}</td>" for s in summaries.values())
                    + "</tr>" for k in ("tp", "fp", "tn", "fn"))
    advice = []
    for level, s in summaries.items():
        if s["min_score_for_target_fdr"] is None:
            advice.append(f"<li>per {e(level)}: no min-score reaches FDR &le; {target_fdr:g} on this set</li>")
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
(<a style="color:#fff" href="{METRICS_FILE}">{METRICS_FILE}</a>).</p></header><main>
<section><h2>Metrics</h2><p>Calls: {e(call_rule)}. AUROC and AUPRC rank the virus score, so they
do not depend on a threshold.</p>
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
                     extra_sections: str = "") -> dict:
    """Write the evaluation of `levels` ({level: (truth, virus scores[, calls])}: calls default to
    score >= 0.5; `call_rule` says in words how the calls were made) into `folder`; returns what
    metrics.json holds. `extra_sections`: HTML added to the page (the calibration's)."""
    if not 0 < target_fdr < 1:
        raise ValueError(f"target FDR {target_fdr} is not between 0 and 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    complete = {level: (v[0], v[1], v[2] if len(v) > 2 else None) for level, v in levels.items()}
    summaries, tables = {}, {}
    for level, (truth, scores, called) in complete.items():
        summaries[level], tables[level] = evaluate_level(truth, scores, called, target_fdr)
        atomic_write_text(folder / thresholds_file(level), _table_tsv(tables[level]))
    figures = {
        "roc": _curves_figure(complete, metrics.roc_curve, "ROC", "false positive rate", "true positive rate", True),
        "pr": _curves_figure(complete, lambda t, s: metrics.precision_recall_curve(t, s), "Precision-recall",
                             "recall", "precision", False),
    }
    atomic_write_bytes(folder / ROC_FIGURE, figures["roc"])
    atomic_write_bytes(folder / PR_FIGURE, figures["pr"])
    result = {"target_fdr": target_fdr, "call_rule": call_rule, "levels": summaries, "context": context}
    atomic_write_text(folder / METRICS_FILE, json.dumps(result, indent=1, sort_keys=True) + "\n")
    atomic_write_text(folder / PAGE, _page(summaries, tables, figures, target_fdr, context, call_rule, extra_sections))
    return result
