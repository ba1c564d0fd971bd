"""What `evaluate` writes of the calibration: calibration.json (read scores: what `run --calibration`
takes), calibration-chunk.json (chunk scores, for completeness), reliability.png, and the section
of index.html that shows them. Every file atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..report.figures import reliability_figure
from ..report.page import e, image
from .calibration import Calibration, fit_calibration

CALIBRATION_FILE = "calibration.json"
CHUNK_CALIBRATION_FILE = "calibration-chunk.json"
RELIABILITY_FIGURE = "reliability.png"


def write_calibrations(folder: Path, reads: tuple, chunks: tuple, identity: dict, fitted_on: dict) -> str:
    """Fit and write the read calibration (reads: truth, scores, frame counts) and the chunk one
    (chunks: truth, scores); returns the HTML section about them. With one class there is nothing
    to calibrate: no file (an earlier one is removed), and the section says why."""
    folder = Path(folder)
    truth = np.asarray(reads[0], dtype=bool)
    if truth.all() or not truth.any():
        for name in (CALIBRATION_FILE, CHUNK_CALIBRATION_FILE, RELIABILITY_FIGURE):
            (folder / name).unlink(missing_ok=True)
        return ("<section><h2>Calibration</h2><p>The labelled reads hold one class only: no calibration can be fitted "
                "(it needs viral and other reads).</p></section>")
    fitted = {"read": fit_calibration(*reads, level="read", identity=identity, fitted_on=fitted_on),
              "chunk": fit_calibration(*chunks, level="chunk", identity=identity, fitted_on=fitted_on)}
    fitted["read"].save(folder / CALIBRATION_FILE)
    fitted["chunk"].save(folder / CHUNK_CALIBRATION_FILE)
    figure = reliability_figure({level: c.reliability for level, c in fitted.items()},
                                "Reliability diagram (out-of-fold)")
    atomic_write_bytes(folder / RELIABILITY_FIGURE, figure)
    return _section(fitted, figure)


def _section(fitted: dict[str, Calibration], figure: bytes) -> str:
    rows = "".join(
        f"<tr><th class=text>{e(level)}</th><td>{c.counts['reads']:,}</td><td>{c.labelled_share:.4f}</td>"
        f"<td>{len(c.band_lows)}</td><td>{c.validation['log_loss']:.4f}</td><td>{c.validation['brier']:.4f}</td>"
        f"<td>{'-' if c.validation['auroc'] is None else format(c.validation['auroc'], '.4f')}</td></tr>"
        for level, c in fitted.items())
    read = fitted["read"]
    bands = ", ".join(f"{b['frames'][0]}{'+' if b['frames'][1] is None else '-' + str(b['frames'][1])}"
                      for b in read.band_rows())
    return f"""<section><h2>Calibration</h2>
<p>The read scores' calibration (<a href="{CALIBRATION_FILE}">{CALIBRATION_FILE}</a>: pass it to
<code>run --calibration</code>) turns each read's max_virus_score and frame count into the probability
that it is a virus; <code>run</code> adapts it to each input's own virus share and writes
<code>virus_probability</code> and <code>fdr</code> into reads.tsv. Method {e(read.method)}, frame bands {e(bands)},
reads without a frame their own probability ({read.fit.frameless:.4f}). Chunk scores:
<a href="{CHUNK_CALIBRATION_FILE}">{CHUNK_CALIBRATION_FILE}</a>.</p>
<table><tr><th></th><th>n</th><th>virus share</th><th>bands</th><th>CV log loss</th><th>CV Brier</th><th>CV AUROC</th></tr>
{rows}</table>
<div>{image(figure, 'reliability diagram')}</div>
<p class=muted>It holds where the user's reads score like these given their class (same read lengths, same
kinds of genomes); only the share of viruses may differ.</p></section>"""
