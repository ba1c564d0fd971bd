"""A calibration file read and checked without numpy: planning refuses a bad or foreign one before
any work, and evaluation.calibration builds its numbers from what `read_calibration` returns.

The file is what `evaluate` writes (E/evaluation/NAME/calibration.json), or a classifier's description
(classifier.json, `train`) that carries one under "calibration". Checked, each failure one line
naming the file and field: format and version; the method; the labelled virus share in (0, 1);
counts; per band and per bootstrap replicate, parameters that are finite and make the probability
non-decreasing in the score (isotonic knots increasing, values non-decreasing in (0, 1); binned
likewise; Platt and beta slopes >= 0); the frameless reads' probability in (0, 1). A calibration
belongs to one classifier (SHA-256 of its weights), chunk length and pair of embedding models
(`model_digest` of each): `check_identity` refuses any other, naming both.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .classifier_meta import FORMAT as CLASSIFIER_FORMAT
from .classifier_meta import meta_path
from .errors import InputError
from .json_files import read_file_bytes, read_json

MAX_CALIBRATION_BYTES = 64 << 20  # a calibration (bands, 32 bootstrap refits) is well under a megabyte

FORMAT = "virnucpro-calibration"
VERSION = 1
METHODS = ("isotonic", "platt", "beta", "binned")
LEVELS = ("read", "chunk")
MAP_FIELDS = {"isotonic": ("knots", "values"), "binned": ("edges", "values"), "platt": ("a", "c"), "beta": ("a", "b", "c")}
IDENTITY_FIELDS = ("classifier_sha256", "chunk_length", "models")
EMBEDDED_KEY = "calibration"  # where classifier.json carries the calibration `train` fitted


class CalibrationFileError(InputError, ValueError):
    """A calibration file that cannot be used: one line naming the file and the field."""


def own_calibration(classifier: str | None) -> Path | None:
    """The classifier's own calibration: its description (classifier.json beside a .safetensors
    classifier) when that carries one; None otherwise (a released .pth carries none)."""
    if not classifier or Path(classifier).suffix != ".safetensors":
        return None
    described = meta_path(classifier)
    try:
        document = read_json(described, MAX_CALIBRATION_BYTES)
    except (OSError, ValueError):
        return None  # the classifier's own checks report an unreadable description
    return described if isinstance(document, dict) and isinstance(document.get(EMBEDDED_KEY), dict) else None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a calibration (or classifier description) file, read as read_calibration
    reads it: a regular file of bounded size (a FIFO or /dev/zero is refused, not waited on)."""
    return hashlib.sha256(read_file_bytes(path, MAX_CALIBRATION_BYTES)).hexdigest()


def read_calibration(path) -> dict:
    """The checked calibration document of a calibration file or of a classifier description."""
    path = Path(path)
    try:
        document = read_json(path, MAX_CALIBRATION_BYTES)
    except FileNotFoundError:
        raise CalibrationFileError(f"{path}: no such calibration file") from None
    except (OSError, ValueError) as exc:
        raise CalibrationFileError(f"{path}: not a readable calibration file ({type(exc).__name__}); fit one "
                                   "with 'virnucpro-slurm evaluate'") from None
    source = str(path)
    if isinstance(document, dict) and document.get("format") == CLASSIFIER_FORMAT:
        if not isinstance(document.get(EMBEDDED_KEY), dict):
            raise CalibrationFileError(f"{path}: a classifier description without a calibration; fit one with "
                                       "'virnucpro-slurm evaluate' on labelled reads and pass its calibration.json")
        document, source = document[EMBEDDED_KEY], f"{path} ({EMBEDDED_KEY})"
    check_document(document, source)
    return document


def check_document(document, source: str) -> None:
    """Raise CalibrationFileError, naming `source` and the field, unless `document` is usable."""
    def refuse(name: str, problem: str) -> CalibrationFileError:
        return CalibrationFileError(f"{source}: field {name}: {problem}; fit the calibration again with "
                                    "'virnucpro-slurm evaluate'")

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise refuse("format", f"not \"{FORMAT}\"")
    if document.get("version") != VERSION:
        raise refuse("version", f"{document.get('version')!r} is not {VERSION}")
    method, level = document.get("method"), document.get("level")
    if method not in METHODS:
        raise refuse("method", f"{method!r} is not one of {', '.join(METHODS)}")
    if level not in LEVELS:
        raise refuse("level", f"{level!r} is not read or chunk")
    share = document.get("labelled_virus_share")
    if not _number(share) or not 0 < share < 1:
        raise refuse("labelled_virus_share", f"{share!r} is not a share between 0 and 1 (both excluded)")
    bands = _check_bands(document.get("bands"), refuse)
    _check_fit(document.get("fit"), method, bands, "fit", refuse)
    replicates = document.get("replicates", [])
    if not isinstance(replicates, list):
        raise refuse("replicates", "not a list")
    for i, replicate in enumerate(replicates):
        _check_fit(replicate, method, bands, f"replicates[{i}]", refuse)
    if (document["fit"].get("frameless_probability") is None) != (level == "chunk"):
        raise refuse("fit.frameless_probability", "missing for a read calibration" if level == "read"
                     else "given for a chunk calibration")
    counts = document.get("counts", {})
    if not isinstance(counts, dict):
        raise refuse("counts", "not an object")
    for key in ("reads", "virus", "other"):
        if key in counts and not (isinstance(counts[key], int) and counts[key] >= 0):
            raise refuse(f"counts.{key}", f"{counts[key]!r} is not a count")
    length = document.get("chunk_length")
    if length is not None and not (isinstance(length, int) and length > 0):
        raise refuse("chunk_length", f"{length!r} is not a positive integer")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_bands(bands, refuse) -> int:
    if not isinstance(bands, list) or not bands:
        raise refuse("bands", "no band")
    low = 0
    for i, band in enumerate(bands):
        frames = band.get("frames") if isinstance(band, dict) else None
        if not (isinstance(frames, list) and len(frames) == 2 and isinstance(frames[0], int) and frames[0] >= 1):
            raise refuse(f"bands[{i}].frames", "not [lowest, highest] frame counts")
        if frames[0] <= low:
            raise refuse(f"bands[{i}].frames", "bands are not in increasing order of frame count")
        low = frames[0]
    return len(bands)


def _check_fit(data, method: str, bands: int, name: str, refuse) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("bands"), list) or len(data["bands"]) != bands:
        raise refuse(f"{name}.bands", f"not {bands} band maps")
    for b, params in enumerate(data["bands"]):
        _check_map(method, params, f"{name}.bands[{b}]", refuse)
    frameless = data.get("frameless_probability")
    if frameless is not None and not (_number(frameless) and 0 < frameless < 1):
        raise refuse(f"{name}.frameless_probability", f"{frameless!r} is not a probability between 0 and 1")


def _check_map(method: str, params, name: str, refuse) -> None:
    if not isinstance(params, dict):
        raise refuse(name, "not an object")
    for key in MAP_FIELDS[method]:
        value = params.get(key)
        if not all(_number(v) for v in (value if isinstance(value, list) else [value])):
            raise refuse(f"{name}.{key}", "missing, or not finite numbers (NaN or infinity)")
    if method in ("platt", "beta"):
        for key in MAP_FIELDS[method][:-1]:
            if params[key] < 0:
                raise refuse(f"{name}.{key}", f"{params[key]} < 0: the probability would fall as the score rises")
        return
    scores_key = MAP_FIELDS[method][0]
    xs, values = params[scores_key], params["values"]
    if len(values) != len(xs) + (method == "binned") or not values:
        raise refuse(f"{name}.values", f"{len(values)} values for {len(xs)} {scores_key}")
    if any(b <= a for a, b in zip(xs, xs[1:])) or any(not 0 <= x <= 1 for x in xs):
        raise refuse(f"{name}.{scores_key}", "not increasing scores between 0 and 1")
    if any(b < a for a, b in zip(values, values[1:])):
        raise refuse(f"{name}.values", "not monotone: the probability would fall as the score rises")
    if any(not 0 < v < 1 for v in values):
        raise refuse(f"{name}.values", "not probabilities between 0 and 1 (both excluded)")


# ---------------------------------------------------------------- whose calibration it is

def model_digest(identity: dict) -> str:
    """One string per model whatever its path: a file's SHA-256, the SHA-256 of a folder's file
    hashes (run fingerprint's "files"), or a hub model's name."""
    if identity.get("sha256"):
        return identity["sha256"]
    if identity.get("files"):
        return hashlib.sha256(json.dumps(identity["files"], sort_keys=True).encode()).hexdigest()
    return f"name:{identity.get('name')}"


def run_identity(fingerprint_models: dict, chunk_length: int) -> dict:
    """The identity fields of a run (its fingerprint's "models" and chunk length), as a calibration
    records them: the classifier's SHA-256 and each embedding model's name and digest."""
    def model(kind: str) -> dict:
        identity = fingerprint_models.get(kind, {})
        return {"name": Path(identity.get("path") or identity.get("name") or "?").name, "digest": model_digest(identity)}

    classifier = fingerprint_models.get("classifier", {})
    return {"classifier_sha256": classifier.get("sha256"), "chunk_length": chunk_length,
            "models": {"esm": model("esm"), "dnabert": model("dnabert")}}


def check_identity(document: dict, source: str, run: dict) -> None:
    """Refuse a calibration of another classifier, chunk length or embedding models than `run`'s
    (run_identity's fields; a field either side lacks is not compared), naming both."""
    def refuse(what: str, theirs: str, ours: str) -> CalibrationFileError:
        return CalibrationFileError(f"{source}: calibrated for {what} {theirs}, but this run uses {ours}; fit a "
                                    "calibration for this classifier and these models with 'virnucpro-slurm evaluate'")

    if document.get("classifier_sha256") and run.get("classifier_sha256") and \
            document["classifier_sha256"] != run["classifier_sha256"]:
        raise refuse("the classifier of SHA-256", document["classifier_sha256"][:16], run["classifier_sha256"][:16])
    if document.get("chunk_length") and run.get("chunk_length") and document["chunk_length"] != run["chunk_length"]:
        raise refuse("chunk length", str(document["chunk_length"]), str(run["chunk_length"]))
    theirs, ours = document.get("models") or {}, run.get("models") or {}
    for kind in ("esm", "dnabert"):
        a, b = theirs.get(kind), ours.get(kind)
        if isinstance(a, dict) and isinstance(b, dict) and a.get("digest") != b.get("digest"):
            raise refuse(f"the {kind} model", _model_text(a), _model_text(b))


def _model_text(model: dict) -> str:
    digest = str(model.get("digest", "?"))
    return f"{model.get('name')} ({digest if digest.startswith('name:') else digest[:16]})"
