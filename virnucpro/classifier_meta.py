"""A trained classifier's description (classifier.json beside classifier.safetensors), read without torch.

`virnucpro-slurm train` writes the weights as safetensors (tensors only: loading runs no code) and
this JSON beside them, same name with .json: chunk length, input widths, models, recipe, seed,
epochs, training inputs and held-out metrics, and the SHA-256 of the weights file it describes.
Login-node checks (does a run's chunk length and embedding widths match the classifier?) read it
here; engines.classifier loads the weights.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .model_facts import chunk_length_problem
from .errors import InputError
from .json_files import JsonFileError, read_json

FORMAT = "virnucpro-classifier"
WEIGHTS_SUFFIX = ".safetensors"
CLASS_NAMES = ("other", "virus")  # output 0, output 1 (the released classifiers' order)


class ClassifierFileError(InputError, ValueError):
    """A file that is not a VirNucPro classifier (one line naming the file and what was expected)."""


def meta_path(weights: str | Path) -> Path:
    """The description beside a weights file: classifier.safetensors -> classifier.json."""
    return Path(weights).with_suffix(".json")


MAX_DESCRIPTION_BYTES = 16 << 20  # a description is a few kB (its history grows ~120 bytes an epoch)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0  # a bool is an int in Python


def _problem(document) -> str | None:
    """What is wrong with a description, field by field as the tool reads them (the chunk length as
    the --chunk-length option is checked); None when nothing is."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return f"no \"format\": \"{FORMAT}\""
    widths = document.get("input_widths")
    if not isinstance(widths, dict) or sorted(widths) != ["dnabert", "esm2"] or \
            not all(_positive_int(w) for w in widths.values()):
        return "input_widths must give the dnabert and esm2 widths"
    problem = chunk_length_problem(document.get("chunk_length"))
    if problem:
        return f"chunk_length: {problem}"
    if not _positive_int(document.get("hidden")):
        return "hidden must be a positive integer"
    if document.get("classes") != list(CLASS_NAMES):
        return f"classes must be {list(CLASS_NAMES)}"
    if not isinstance(document.get("weights_sha256"), str) or not _SHA256.fullmatch(document["weights_sha256"]):
        return "weights_sha256 must be the 64 hex digits of the weights' SHA-256"
    models = document.get("models", {})
    if not isinstance(models, dict) or not all(
            isinstance(models.get(kind, {}), dict) and isinstance(models.get(kind, {}).get("name", ""), str)
            for kind in ("dnabert", "esm2")):
        return "models must map dnabert and esm2 to objects whose name is text"
    return None


def read_classifier_meta(path: str | Path) -> dict | None:
    """The description of a .safetensors classifier; None for any other file (a released .pth,
    whose chunk length only its name tells). A missing or malformed description is refused."""
    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        return None
    meta = meta_path(path)
    try:
        document = read_json(meta, max_bytes=MAX_DESCRIPTION_BYTES)
    except FileNotFoundError:
        raise ClassifierFileError(f"{path}: its description {meta.name} is not beside it; keep the .safetensors "
                                  "and .json that 'virnucpro-slurm train' wrote together") from None
    except (OSError, JsonFileError) as exc:
        reason = exc.reason if isinstance(exc, JsonFileError) else exc.strerror or type(exc).__name__
        raise ClassifierFileError(f"{meta}: unreadable classifier description ({reason}); copy it again from the "
                                  "training workdir's classifier/ folder") from None
    problem = _problem(document)
    if problem:
        raise ClassifierFileError(f"{meta}: not a VirNucPro classifier description ({problem})")
    return document


def weights_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
