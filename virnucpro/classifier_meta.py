"""A trained classifier's description (classifier.json beside classifier.safetensors), read without torch.

`virnucpro-slurm train` writes the weights as safetensors (tensors only: loading runs no code) and
this JSON beside them, same name with .json: chunk length, input widths, models, recipe, seed,
epochs, training inputs and held-out metrics, and the SHA-256 of the weights file it describes.
Login-node checks (does a run's chunk length and embedding widths match the classifier?) read it
here; engines.classifier loads the weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import InputError

FORMAT = "virnucpro-classifier"
WEIGHTS_SUFFIX = ".safetensors"
CLASS_NAMES = ("other", "virus")  # output 0, output 1 (the released classifiers' order)


class ClassifierFileError(InputError, ValueError):
    """A file that is not a VirNucPro classifier (one line naming the file and what was expected)."""


def meta_path(weights: str | Path) -> Path:
    """The description beside a weights file: classifier.safetensors -> classifier.json."""
    return Path(weights).with_suffix(".json")


def _problem(document) -> str | None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return f"no \"format\": \"{FORMAT}\""
    widths = document.get("input_widths")
    if not isinstance(widths, dict) or sorted(widths) != ["dnabert", "esm2"] or \
            not all(isinstance(w, int) and w > 0 for w in widths.values()):
        return "input_widths must give the dnabert and esm2 widths"
    for key in ("chunk_length", "hidden"):
        if not isinstance(document.get(key), int) or document[key] <= 0:
            return f"{key} must be a positive integer"
    if list(document.get("classes", ())) != list(CLASS_NAMES):
        return f"classes must be {list(CLASS_NAMES)}"
    if not isinstance(document.get("weights_sha256"), str):
        return "weights_sha256 missing"
    return None


def read_classifier_meta(path: str | Path) -> dict | None:
    """The description of a .safetensors classifier; None for any other file (a released .pth,
    whose chunk length only its name tells). A missing or malformed description is refused."""
    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        return None
    meta = meta_path(path)
    try:
        document = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClassifierFileError(f"{path}: its description {meta.name} is not beside it; keep the .safetensors "
                                  "and .json that 'virnucpro-slurm train' wrote together") from None
    except (OSError, ValueError) as exc:
        raise ClassifierFileError(f"{meta}: unreadable classifier description ({type(exc).__name__}); copy it "
                                  "again from the training workdir's classifier/ folder") from None
    problem = _problem(document)
    if problem:
        raise ClassifierFileError(f"{meta}: not a VirNucPro classifier description ({problem})")
    return document


def weights_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
