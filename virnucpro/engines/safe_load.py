"""Reading PyTorch model files without running code from them.

`torch.load(weights_only=False)` runs whatever the file's pickle says (a `__reduce__` can call
`os.system`), and model folders on shared filesystems are written by others. Every model file
virnucpro reads goes through `load`: `weights_only=True`, plus an allow-list of exactly the
classes the real files contain:

- ESM-2 checkpoint (`esm2_*.pt`) and its contact-regression file: `argparse.Namespace` (the
  fairseq model configuration under `cfg["model"]`), nothing else;
- VirNucPro classifier (`300_model.pth` / `500_model.pth`, a whole module pickled by
  `torch.save(model)` from a script run as `__main__`): `__main__.MLPClassifier` (mapped to our
  own class for this load only), `torch.nn.Linear`, `torch.nn.BatchNorm1d`, `torch.nn.Dropout`;
- DNABERT-S `pytorch_model.bin`: a plain state_dict, nothing beyond torch's defaults.

Allow-listed classes are only instantiated and given their pickled attributes (`__setstate__`
of our own code or a plain `__dict__` update): no function named by the file is ever called.
A file that needs any other global is refused with one line naming the file and the global.
`trust=True` (`--trust-model-pickles`) is the only way around that, and it RUNS CODE FROM THE FILE.

Sizes in a model file are untrusted too: a 1 kB config.json or pickled cfg can declare 10^8 layers,
and a 4 kB pickle can hold a 10^7-wide tensor expanded from one value (stride 0). Every loader
checks, before it builds anything: each weight with `check_weights` (floating point, every value
stored), each declared size with `declared_size` (a positive whole number, equal to the size of
the weights actually present) and each declared float with `declared_float` (finite, positive).
What gets allocated is then bounded by the bytes of the file itself.
"""

from __future__ import annotations

import pickle
import re
import threading
from pathlib import Path
from typing import Iterable

from virnucpro.errors import InputError

_LOCK = threading.Lock()  # torch's safe-globals list is process-wide
# torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module x is blocked"
_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeModelFileError(InputError, ValueError):
    """A model file whose pickle needs a global outside the allow-list (it could run code)."""


class ModelFileError(InputError, ValueError):
    """A model file whose weights or declared sizes are not those of a real model (one line naming it)."""


def _name_of(entry) -> str:
    if isinstance(entry, tuple):  # (object, "module.Name") as torch.serialization accepts
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def _offending_globals(path: Path, allowed: set[str], error: BaseException) -> list[str]:
    import torch

    match = _UNSUPPORTED.search(str(error))
    if not match:
        return []  # e.g. "Unsupported operand": not a pickle the safe unpickler can read at all
    try:  # lists the globals of a zip-format checkpoint without unpickling anything
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        names = [g for g in found if g not in allowed]
        if names:
            return names
    except Exception:
        pass
    return [match.group(1)]


def refusal(path: Path, names: list[str], expected: str = "") -> UnsafeModelFileError:
    return UnsafeModelFileError(
        f"{path}: refused to unpickle {', '.join(names)}: loading it could run code from the file"
        f"{'; expected ' + expected if expected else ''}; use a model file from the original source "
        f"('virnucpro-slurm models download'), or pass --trust-model-pickles only if you trust whoever "
        f"wrote this file (it RUNS CODE FROM THE FILE)")


def load(path: str | Path, allow: Iterable = (), *, trust: bool = False, mmap: bool = False, expected: str = ""):
    """torch.load on the CPU with weights_only=True and exactly the `allow`-listed globals.

    `allow` holds classes, or (class, "module.Name") pairs that map a pickled name to a class.
    Raises UnsafeModelFileError naming the file and the offending global(s) (`expected` says what
    the file should have been); other load errors (not a torch file, truncated, an opcode the safe
    unpickler does not know) propagate unchanged for the caller to word. Nothing is executed either way.
    """
    import torch

    path = Path(path)
    allow = list(allow)
    if trust:
        # --trust-model-pickles: the user vouches for the file, and this RUNS CODE FROM IT. The full
        # unpickler resolves classes by import, so a caller that needs a name such as
        # __main__.MLPClassifier makes it importable itself.
        return torch.load(str(path), map_location="cpu", weights_only=False, mmap=mmap)
    if not hasattr(torch.serialization, "safe_globals"):
        raise InputError(f"{path}: safe loading of model files needs torch >= 2.6 (this is {torch.__version__}); "
                         "upgrade torch, or pass --trust-model-pickles if you trust the file (it RUNS CODE FROM IT)")
    with _LOCK:
        try:
            with torch.serialization.safe_globals(allow):
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            names = _offending_globals(path, {_name_of(entry) for entry in allow}, exc)
            if not names:
                raise
            raise refusal(path, names, expected) from None


def _stores_every_value(tensor) -> bool:
    """False for an expanded or otherwise self-overlapping tensor (a stride of 0 on a dimension of
    size > 1): it claims more values than its storage holds."""
    if tensor.numel() <= 1:
        return True
    reach = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 1)
    return reach >= tensor.numel() and all(stride > 0 for size, stride in zip(tensor.shape, tensor.stride()) if size > 1)


def check_weights(path: Path, weights: dict, what: str) -> None:
    """Every weight a floating-point tensor that stores each of its values; integer scalars (a
    BatchNorm's num_batches_tracked counter) pass. Bool or integer weights are refused rather than
    cast, and an expanded tensor rather than materialized."""
    import torch

    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelFileError(f"{path}: {name} is a {type(tensor).__name__}, not a tensor; expected {what}")
        counter = tensor.dim() == 0 and tensor.dtype in (torch.int64, torch.int32)
        if not (tensor.is_floating_point() or counter):
            raise ModelFileError(f"{path}: weight {name} holds {str(tensor.dtype).removeprefix('torch.')} values, not "
                                 f"floating point (a model's weights are float); expected {what}")
        if not _stores_every_value(tensor):
            raise ModelFileError(f"{path}: weight {name} of shape {tuple(tensor.shape)} is expanded from fewer stored "
                                 f"values (stride {tuple(tensor.stride())}); a real model stores every weight; expected {what}")


def declared_size(path: Path, field: str, value, present: int | None = None, what: str = "") -> int:
    """A size a model's configuration declares: a positive whole number, equal to `present` (the
    size measured on the weights in the file) when given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFileError(f"{path}: {field} is {value!r:.60}, not a positive whole number; {what or 'fix the model configuration'}")
    if present is not None and value != present:
        raise ModelFileError(f"{path}: {field} is {value} but the weights present have {present}; "
                             f"{what or 'the configuration does not match the weights'}")
    return value


def declared_float(path: Path, field: str, value, what: str = "") -> float:
    """A float a model's configuration declares (an epsilon): finite and positive."""
    import math

    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and number > 0):
        raise ModelFileError(f"{path}: {field} is {value!r:.60}, not a finite positive number (a NaN or infinite value "
                             f"would make every result NaN); {what or 'fix the model configuration'}")
    return float(number)


def safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content. The library keeps `metadata` in a
    hash map whose order changes from one process to the next, so a file with two metadata keys
    (a demo model's mark beside `format`) came out in either of two byte orders; its header is
    written again here with the metadata keys sorted (same characters, so the same length)."""
    import json
    import struct

    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    ordered += b" " * (size - len(ordered))  # the library pads its header with spaces to 8 bytes
    if len(ordered) != size:
        raise RuntimeError("safetensors header changed length when its metadata was sorted")
    return data[:8] + ordered + data[8 + size:]
