"""The trained classifier's files: classifier.safetensors (weights) and classifier.json (description)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_text
from ..calibration_meta import EMBEDDED_KEY
from ..classifier_meta import CLASS_NAMES, FORMAT, weights_sha256
from ..evaluation.calibration import Calibration
from ..engines.safe_load import safetensors_bytes
from ..modelstore.demo import DEMO_KEY
from .fit import TrainedClassifier


def write_classifier(weights: Path, meta: Path, trained: TrainedClassifier, metadata: dict,
                     calibration: Calibration | None = None) -> None:
    """Both files atomically, the weights first: a description is only ever written for weights
    that are complete (it records their SHA-256). `metadata`: what the caller knows of the run
    (chunk_length, models, training inputs with their labels and SHA-256); `calibration`: of the
    held-out reads' scores, stored in the description as these weights' own."""
    marks = {key: value for key, value in metadata.items() if key == DEMO_KEY}  # a demo model's mark, in both files
    data = safetensors_bytes({key: value.contiguous() for key, value in trained.state.items()},
                             {"format": FORMAT, **marks})
    atomic_write_bytes(weights, data)
    document = {
        **metadata,
        "format": FORMAT, "version": 1, "weights": Path(weights).name, "weights_sha256": weights_sha256(data),
        "input_widths": trained.input_widths, "hidden": trained.recipe.hidden, "classes": list(CLASS_NAMES),
        "recipe": trained.recipe.to_dict(), "seed": trained.seed, "holdout": trained.holdout,
        "split": ("by sequence content: every frame of a read (genome record), or of a window of it with "
                  "holdout_window, on one side; identical sequences on one side"),
        "epochs": trained.epochs, "best_epoch": trained.best_epoch, "rows": trained.rows,
        "held_out_metrics": trained.metrics, "history": trained.history,
    }
    if calibration is not None:
        identity = {**calibration.identity, "classifier_sha256": document["weights_sha256"]}
        document[EMBEDDED_KEY] = replace(calibration, identity=identity).to_dict()
    atomic_write_text(meta, json.dumps(document, indent=1) + "\n")
