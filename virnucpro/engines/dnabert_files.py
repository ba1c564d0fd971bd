"""Reading a DNABERT-S model folder as data: config.json, weights, tokenizer.json. No model code runs.

A DNABERT-S folder (the `zhihan1996/DNABERT-S` hub repository, or a copy of it) holds
`config.json`, `tokenizer.json` (plus tokenizer_config.json / special_tokens_map.json), the
weights in `model.safetensors` and/or `pytorch_model.bin`, and its own model code
(`bert_layers.py`, ...). Only the first three are read here: safetensors is plain data, and
`pytorch_model.bin` is loaded with `torch.load(weights_only=True)`, which refuses any pickled
object that is not a tensor. Weight names may carry a `bert.` prefix (a BertForMaskedLM
checkpoint such as DNABERT-2-117M); the MLM head (`cls.*`) is ignored.

An HF id (`zhihan1996/DNABERT-S`) is looked up in the local Hugging Face cache only; the hub is
asked only when the run allows downloads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import VirnucproError
from . import safe_load
from .safe_load import check_weights, declared_float, declared_size

FALLBACK_HINT = "use --dnabert-remote-code to run the model folder's own code instead"
# Architectures whose weights are MosaicBERT's (Wqkv, GLU MLP, ALiBi): DNABERT-S and DNABERT-2.
KNOWN_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEAD_PREFIXES = ("cls.", "classifier.")  # MLM / classification heads: not part of the encoder
MAX_CONFIG_BYTES = 1 << 20  # config.json is read whole: a few kB in any real model folder


class DnabertModelError(VirnucproError):
    """The folder is not a DNABERT-S model the native engine can read (one line, names the file)."""


@dataclass(frozen=True)
class DnabertArch:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    type_vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def resolve_model_dir(spec: str, allow_download: bool = False) -> Path:
    """A local folder as given, or the local HF-cache snapshot of an HF id (downloaded only if allowed)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DnabertModelError(f"{spec}: a DNABERT-S model is a folder (config.json, tokenizer.json, weights), not a file")
    if not _HF_ID.match(str(spec)) or spec.startswith((".", "/", "~")):
        raise DnabertModelError(f"{spec}: DNABERT-S model folder not found")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=spec, local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        raise DnabertModelError(
            f"{spec}: not in the local Hugging Face cache; download it on a machine with internet "
            f"(huggingface_hub.snapshot_download) and pass the folder as --dnabert-model DIR, or allow --allow-download"
        ) from None
    except Exception as exc:  # network errors, unknown repositories, gated repositories
        raise DnabertModelError(f"{spec}: could not fetch from the Hugging Face hub: {type(exc).__name__}: {exc}") from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise DnabertModelError(f"{path}: missing; a DNABERT-S folder needs config.json, tokenizer.json and model.safetensors or pytorch_model.bin")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise DnabertModelError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB, so not a model's config.json "
                                    "(DNABERT-S's is 1 kB); copy the model folder again")
        config = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise DnabertModelError(f"{path}: not a readable JSON file ({str(exc)[:200]})") from None
    if not isinstance(config, dict):
        raise DnabertModelError(f"{path}: not a model config (expected a JSON object)")
    return config


def architecture(folder: Path, config: dict) -> DnabertArch:
    """The encoder sizes, or a one-line error when config.json describes another architecture."""
    path = folder / "config.json"
    names = config.get("architectures") or []
    if config.get("model_type") != "bert" or not any(n in KNOWN_ARCHITECTURES for n in names):
        found = ", ".join(map(str, names)) or "none"
        raise DnabertModelError(
            f"{path}: architecture {found} (model_type {config.get('model_type')!r}) is not DNABERT-S's MosaicBERT "
            f"BertModel, which the native engine computes; {FALLBACK_HINT}")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise DnabertModelError(f"{path}: hidden_act {act!r} is not the exact GELU of DNABERT-S; {FALLBACK_HINT}")
    # Types and signs here; each size is compared with the weights in encoder_weights, before
    # anything of that size is built.
    def size(field: str, default=None) -> int:
        if field not in config and default is None:
            raise DnabertModelError(f"{path}: size field {field!r} missing; {FALLBACK_HINT}")
        return declared_size(path, field, config.get(field, default))

    arch = DnabertArch(
        vocab_size=size("vocab_size"), hidden_size=size("hidden_size"), num_layers=size("num_hidden_layers"),
        num_heads=size("num_attention_heads"), intermediate_size=size("intermediate_size"),
        layer_norm_eps=declared_float(path, "layer_norm_eps", config.get("layer_norm_eps", 1e-12)),
        type_vocab_size=size("type_vocab_size", 2))
    if arch.hidden_size % arch.num_heads:
        raise DnabertModelError(f"{path}: hidden_size {arch.hidden_size} is not a multiple of num_attention_heads {arch.num_heads}")
    return arch


def weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise DnabertModelError(f"{folder}: no model.safetensors or pytorch_model.bin with the weights; "
                            f"copy the complete DNABERT-S repository (or {FALLBACK_HINT} for a model stored otherwise)")


def read_weights(folder: Path) -> tuple[Path, dict]:
    """(file, {name: fp32-or-stored-dtype CPU tensor}) with any `bert.` prefix removed and heads dropped."""
    import torch

    path = weights_file(folder)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            # weights_only=True; a pickled global is refused, naming it
            state = safe_load.load(path, expected="a DNABERT-S state dict of tensors")
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except VirnucproError:
        raise
    except Exception as exc:  # truncated file, not a torch file, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DnabertModelError(f"{path}: cannot read the weights ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DnabertModelError(f"{path}: not a state dict of tensors")
    out = {}
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIXES):
            continue
        out[key[len("bert."):] if key.startswith("bert.") else key] = value
    return path, out


def encoder_weights(path: Path, state: dict, arch: DnabertArch) -> dict:
    """The tensors the native engine uses, shape-checked; a one-line error for anything else."""
    if "embeddings.position_embeddings.weight" in state:
        raise DnabertModelError(f"{path}: has learned position embeddings, so it is a classic BERT, not DNABERT-S's "
                                f"ALiBi MosaicBERT; {FALLBACK_HINT}")
    check_weights(path, state, "a DNABERT-S checkpoint")
    check_sizes(path, state, arch)
    h, i, n = arch.hidden_size, arch.intermediate_size, arch.num_layers
    shapes = {
        "embeddings.word_embeddings.weight": (arch.vocab_size, h),
        "embeddings.token_type_embeddings.weight": (arch.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for layer in range(n):
        p = f"encoder.layer.{layer}."
        shapes.update({
            p + "attention.self.Wqkv.weight": (3 * h, h), p + "attention.self.Wqkv.bias": (3 * h,),
            p + "attention.output.dense.weight": (h, h), p + "attention.output.dense.bias": (h,),
            p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias": (h,),
            p + "mlp.gated_layers.weight": (2 * i, h),
            p + "mlp.wo.weight": (h, i), p + "mlp.wo.bias": (h,),
            p + "mlp.layernorm.weight": (h,), p + "mlp.layernorm.bias": (h,),
        })
    missing = [k for k in shapes if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DnabertModelError(f"{path}: weight {missing[0]} missing{more}: not a DNABERT-S (MosaicBERT) checkpoint "
                                f"matching config.json; {FALLBACK_HINT}")
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise DnabertModelError(f"{path}: {key} has shape {tuple(state[key].shape)}, config.json implies {shape}")
    layer_keys = {k for k in state if k.startswith("encoder.layer.")}
    extra = sorted(k for k in layer_keys - set(shapes))
    if extra:
        raise DnabertModelError(f"{path}: unexpected weight {extra[0]}: the encoder is not DNABERT-S's; {FALLBACK_HINT}")
    return {k: state[k] for k in shapes}


def _layer_count(state: dict) -> int:
    """Encoder layers present: distinct `encoder.layer.N.` indices (bounded by the weights stored)."""
    return len({key.split(".", 3)[2] for key in state if key.startswith("encoder.layer.")})


def check_sizes(path: Path, state: dict, arch: DnabertArch) -> None:
    """config.json's sizes against the weights present, before anything of those sizes is built
    (`num_hidden_layers: 1e8` once built a 7.8 GB shape table before failing)."""
    config, mismatch = path.parent / "config.json", f"config.json does not describe {path.name}"
    measured = {"embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
                "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
                "encoder.layer.0.mlp.wo.weight": ("hidden_size", "intermediate_size")}
    for key, fields in measured.items():
        if key not in state:
            raise DnabertModelError(f"{path}: weight {key} missing: not a DNABERT-S (MosaicBERT) checkpoint; {FALLBACK_HINT}")
        shape = tuple(state[key].shape)
        if len(shape) != len(fields):
            raise DnabertModelError(f"{path}: {key} has shape {shape}, expected {len(fields)} dimensions")
        for field, present in zip(fields, shape):
            declared_size(config, field, getattr(arch, field), present, mismatch)
    declared_size(config, "num_hidden_layers", arch.num_layers, _layer_count(state), mismatch)


def read_tokenizer(folder: Path):
    """The fast tokenizer from tokenizer.json (no truncation, no padding: the original's call)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise DnabertModelError(f"{path}: missing; the native engine reads DNABERT-S's BPE tokenizer.json ({FALLBACK_HINT} otherwise)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise DnabertModelError(f"{path}: not a readable tokenizers file ({type(exc).__name__}: {exc})") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
