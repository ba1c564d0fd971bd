"""Recognising the random demo models (`demo-models`, `run --demo`) wherever they come from.

Random-weight predictions must never look real, whatever flag brought the models in (`--demo`,
`--models DIR`, `--esm-model`, `--dnabert-model`, `--classifier`, `embed --model`), so every demo
model carries a mark in its own file, in a place its format allows and its loader ignores:

- ESM-2 checkpoint (a torch zip archive): a `virnucpro_demo` entry in the checkpoint dict;
- classifier .pth (a whole pickled module): a `virnucpro_demo` attribute of the module;
- DNABERT-S folder: a `virnucpro_demo` key in config.json and in model.safetensors' metadata;

and the demo folder's manifest (virnucpro-models.json) says `"demo": true` (and its files' origin
is `virnucpro-demo-models/...`, which a mirror download keeps). Detection reads a few kilobytes
and runs nothing: the JSON of config.json or of a safetensors header, or the pickle bytes of a
torch zip archive searched for the mark (never unpickled). No torch here: the planner uses it.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from .manifest import MANIFEST_NAME

DEMO_KEY = "virnucpro_demo"
DEMO_VALUE = "RANDOM WEIGHTS: predictions are meaningless"
DEMO_ORIGIN = "virnucpro-demo-models"  # the origin URL prefix `demo-models` records in its manifest
_MAX_JSON_BYTES = 1 << 20  # a config.json or safetensors header is far smaller


def _json_has_mark(data) -> bool:
    return isinstance(data, dict) and (DEMO_KEY in data or DEMO_KEY in (data.get("__metadata__") or {}))


def _safetensors_marked(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_JSON_BYTES:
            return False
        return _json_has_mark(json.loads(handle.read(size)))


def _torch_zip_marked(path: Path) -> bool:
    """A torch.save zip archive whose pickle (`<name>/data.pkl`) holds the mark as a string."""
    with zipfile.ZipFile(path) as archive:
        pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
        return any(info.file_size <= _MAX_JSON_BYTES and DEMO_KEY.encode() in archive.read(info) for info in pickles)


def file_is_marked(path: Path) -> bool:
    """Whether one model file carries the demo mark (False for anything unreadable or foreign)."""
    try:
        if path.name == "config.json":
            return path.stat().st_size <= _MAX_JSON_BYTES and _json_has_mark(json.loads(path.read_bytes()))
        if path.suffix == ".safetensors":
            return _safetensors_marked(path)
        return zipfile.is_zipfile(path) and _torch_zip_marked(path)
    except (OSError, ValueError, zipfile.BadZipFile, struct.error):
        return False


def _manifest_says_demo(file: Path) -> bool:
    """The models manifest of the folder holding `file` (or of its parent, for a DNABERT-S folder)."""
    for folder in (file.parent, file.parent.parent):
        try:
            data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if data.get("demo") is True:
            return True
        relative = file.relative_to(folder).as_posix()
        for entry in data.get("files") or []:
            if isinstance(entry, dict) and entry.get("path") == relative:
                return str(entry.get("url", "")).startswith(f"{DEMO_ORIGIN}/")
    return False


def is_demo_model(spec: str | Path | None) -> bool:
    """Whether a model reference (an ESM-2 .pt, a DNABERT-S folder, a classifier .pth; a hub name
    is never one) is a demo model: by the mark in its files, or by its folder's manifest."""
    if not spec:
        return False
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [path / "config.json", path / "model.safetensors"]
    elif path.is_file():
        files = [path]
    else:
        return False
    return any(file_is_marked(f) for f in files if f.is_file()) or any(_manifest_says_demo(f.resolve()) for f in files)


def any_demo_model(*specs) -> bool:
    return any(is_demo_model(spec) for spec in specs)


def models_are_demo(models) -> bool:
    """A run's ModelSpec: recorded demo (run.json), or a demo model among its files (a run planned
    before demo models were recognised whatever flag brought them in)."""
    return models.demo or any_demo_model(models.esm, models.dnabert, models.classifier)
