"""One JSON line per figure, appended as soon as it is measured (bench/gpu_session.sh collects them).

    {"step": "quick", "figure": "engine_tokens_per_s", "value": 84512.3, "unit": "tokens/s", ...details}

A line is written and flushed at once, so a step stopped by its time limit keeps every figure it
had; `value` is null, with a `skipped` reason, for a figure this machine cannot give (fp8 on a CPU).
"""

from __future__ import annotations

import json
import os
import time


def emit(path: str | None, step: str, figure: str, value, unit: str | None = None, *, echo: bool = True,
         **details) -> None:
    """Append one figure to `path` (nothing when path is None); echo it to stdout unless told not to."""
    line = json.dumps({"step": step, "figure": figure, "value": value, "unit": unit, **details,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, default=str)
    if echo:
        print(line, flush=True)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
