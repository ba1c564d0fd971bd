"""The VirNucPro MLP classifier and loading of its released checkpoints and of trained ones.

A trained classifier (`virnucpro-slurm train`) is a .safetensors file of the state_dict with its
description (classifier_meta) beside it: tensors only, nothing to unpickle.

The released 300_model.pth / 500_model.pth are whole modules pickled by `torch.save(model)` from a
training script run as `__main__`, so the pickle names the class `__main__.MLPClassifier`. We
load them with `weights_only=True` (virnucpro.engines.safe_load) allow-listing exactly the classes
such a file contains: `__main__.MLPClassifier` (mapped to our class for this load), nn.Linear,
nn.BatchNorm1d and nn.Dropout. The unpickled module only yields its state_dict, which goes into a
fresh MLPClassifier. A file naming anything else is refused; `trust_pickles=True`
(`--trust-model-pickles`) unpickles without restriction, which RUNS CODE FROM THE FILE (our class
is then put under `__main__.MLPClassifier` in `sys.modules['__main__']` for the load).
"""

from __future__ import annotations

import argparse

import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.classifier_meta import ClassifierFileError, read_classifier_meta, weights_sha256
from virnucpro.engines import safe_load

BATCH_SIZE = 256
_MAIN_LOCK = threading.Lock()  # the __main__ injection is process-global
_MISSING = object()


class MLPClassifier(nn.Module):
    # Attribute names are those of the original: the released state is keyed by them.
    def __init__(self, input_dim: int, hidden_dim: int, num_class: int):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))

    @property
    def input_dim(self) -> int:
        return self.hidden_layer.in_features


def input_dim(model: MLPClassifier) -> int:
    return model.hidden_layer.in_features


# Exactly what a released whole-module classifier pickles besides tensors and plain containers.
# argparse.Namespace is inert data (no code runs to build it); allowing it lets an ESM-2 checkpoint
# given as the classifier be refused for its structure, which is the user's actual mistake.
CLASSIFIER_ALLOWED_GLOBALS = ((MLPClassifier, "__main__.MLPClassifier"), nn.Linear, nn.BatchNorm1d, nn.Dropout,
                              argparse.Namespace)


def _torch_load_as_main(path: Path):
    """Unrestricted torch.load (--trust-model-pickles: runs code from the file) with our
    MLPClassifier resolvable as __main__.MLPClassifier, restored afterwards."""
    with _MAIN_LOCK:
        main = sys.modules["__main__"]
        previous = getattr(main, "MLPClassifier", _MISSING)
        main.MLPClassifier = MLPClassifier
        try:
            return safe_load.load(path, trust=True)
        finally:
            if previous is _MISSING:
                del main.MLPClassifier
            else:
                main.MLPClassifier = previous


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


# The layers of a pickled MLPClassifier and their kinds. Its tensors are read from these by
# structure: no method of the unpickled object runs (state_dict() would run the file's state-dict
# hooks and recurse forever into a module that contains itself).
_LAYERS = {"hidden_layer": nn.Linear, "bn1": nn.BatchNorm1d, "output_layer": nn.Linear}


def _module_tensors(obj: nn.Module) -> dict | None:
    modules = vars(obj).get("_modules")
    if not isinstance(modules, dict) or set(modules) - {*_LAYERS, "dropout"}:
        return None
    state = {}
    for name, kind in _LAYERS.items():
        layer = modules.get(name)
        if type(layer) is not kind:
            return None
        for group in ("_parameters", "_buffers"):
            tensors = vars(layer).get(group)
            if not isinstance(tensors, dict):
                return None
            state.update({f"{name}.{key}": value for key, value in tensors.items() if value is not None})
    return state


def _state_dict_of(obj) -> dict | None:
    if isinstance(obj, nn.Module):
        return _module_tensors(obj)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def _mlp_shapes(width: int, hidden: int, classes: int) -> dict[str, tuple[int, ...]]:
    """The tensors of MLPClassifier(width, hidden, classes) and their shapes, without building one."""
    shapes = {"hidden_layer.weight": (hidden, width), "hidden_layer.bias": (hidden,),
              "output_layer.weight": (classes, hidden), "output_layer.bias": (classes,),
              "bn1.num_batches_tracked": ()}
    shapes.update({f"bn1.{name}": (hidden,) for name in ("weight", "bias", "running_mean", "running_var")})
    return shapes


def _load_safetensors(path: Path) -> MLPClassifier:
    """A trained classifier: its description says the shapes, its tensors must have exactly them
    (checked before the model is built, so a description cannot make it larger than the file)."""
    from safetensors.torch import load

    meta = read_classifier_meta(path)
    data = path.read_bytes()
    if weights_sha256(data) != meta["weights_sha256"]:
        raise ClassifierFileError(f"{path}: not the weights its {path.with_suffix('.json').name} describes "
                                  "(SHA-256 differs); keep the .safetensors and .json written together")
    width, hidden, classes = sum(meta["input_widths"].values()), meta["hidden"], len(meta["classes"])
    try:
        state = load(data)
    except Exception as exc:
        raise ClassifierFileError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    safe_load.check_weights(path, state, "a classifier written by 'virnucpro-slurm train'")
    if {key: tuple(value.shape) for key, value in state.items()} != _mlp_shapes(width, hidden, classes):
        raise ClassifierFileError(f"{path}: its tensors are not those of the MLPClassifier({width}, {hidden}, "
                                  f"{classes}) its description names; the file is damaged or not from 'train'")
    model = MLPClassifier(width, hidden, classes)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_classifier(path: str | Path, trust_pickles: bool = False) -> MLPClassifier:
    """Load a trained .safetensors classifier (with its .json beside it), a released whole-module
    .pth or a state_dict into a fresh MLPClassifier in eval mode.

    Safely (see the module docstring) unless `trust_pickles`, which runs code from a .pth. The
    widths come from the weights, which safe_load.check_weights has seen store every value, so
    what is built is no larger than the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier model not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    expected = "a VirNucPro MLPClassifier (whole pickled module or its state_dict)"
    try:
        if trust_pickles:
            obj = _torch_load_as_main(path)
        else:
            obj = safe_load.load(path, CLASSIFIER_ALLOWED_GLOBALS, expected=expected)
    except safe_load.UnsafeModelFileError:
        raise
    except (AttributeError, ModuleNotFoundError) as exc:  # pickle names a class we do not have
        raise ClassifierFileError(f"{path}: pickles an unknown class ({_first_line(exc)}); expected {expected}") from None
    except Exception as exc:  # torch raises many types for a non-torch file
        raise ClassifierFileError(f"{path}: not a readable PyTorch file ({_first_line(exc)}); expected {expected}") from None
    state = _state_dict_of(obj)
    if state is None:
        raise ClassifierFileError(f"{path}: wrong structure; expected {expected}")
    safe_load.check_weights(path, state, expected)
    try:
        hidden_w, output_w = state["hidden_layer.weight"], state["output_layer.weight"]
        model = MLPClassifier(hidden_w.shape[1], hidden_w.shape[0], output_w.shape[0])
        model.load_state_dict(state, strict=True)
    except Exception:
        raise ClassifierFileError(f"{path}: wrong structure; expected {expected}") from None
    return model.eval()


@torch.inference_mode()
def classify(model: MLPClassifier, features: np.ndarray) -> np.ndarray:
    """Softmax probabilities float32 [N, num_class] (class 0 = others, 1 = virus)."""
    features = np.asarray(features, dtype=np.float32)
    num_class = model.output_layer.out_features
    if features.ndim != 2 or features.shape[1] != input_dim(model):
        got = features.shape[1] if features.ndim == 2 else f"shape {features.shape}"
        raise ValueError(f"features have dimension {got} but the classifier expects {input_dim(model)}")
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((features.shape[0], num_class), dtype=np.float32)
    for start in range(0, features.shape[0], BATCH_SIZE):
        batch = torch.from_numpy(features[start : start + BATCH_SIZE]).to(device)
        out[start : start + BATCH_SIZE] = F.softmax(model(batch), dim=1).float().cpu().numpy()
    return out
