"""ESM-2 protein language model: loading fair-esm checkpoints and the original VirNucPro embedding.

Loading. fair-esm 2.0.0 calls `torch.load` without `weights_only`; PyTorch >= 2.6 defaults it to
True and ESM-2 checkpoints pickle an `argparse.Namespace` under `cfg["model"]`, so fair-esm's own
loaders fail. We read the files ourselves through `safe_load.load` (weights_only=True with exactly
`argparse.Namespace` allow-listed: a checkpoint whose pickle names anything else is refused, since
unpickling it could run code) and hand the dict to fair-esm's `load_model_and_alphabet_core`,
which builds the model exactly as the hub loader would. `trust_pickles=True`
(`--trust-model-pickles`) loads with weights_only=False, which runs code from the file.

Embedding (`ESM2Reference`). The original method: fair-esm length-sorted padded batches of
`toks_per_batch` tokens, BOS + residues + EOS with no truncation, representation of the final
layer, mean over token positions 1..min(L, 1024).
"""

from __future__ import annotations

import argparse
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import output_rows
from . import safe_load

ESM_DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/fair-esm"
POOL_CAP = 1024  # the original averages at most the first 1024 residues of a protein
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ESM2Model:
    model: Any  # esm.model.esm2.ESM2, eval mode
    alphabet: Any  # esm.data.Alphabet
    name: str
    embed_dim: int
    num_layers: int


# What the real fair-esm files pickle besides tensors and plain containers (see module docstring).
ESM_ALLOWED_GLOBALS = (argparse.Namespace,)


def _load_checkpoint(path: str | Path, trust_pickles: bool = False) -> dict:
    return safe_load.load(path, ESM_ALLOWED_GLOBALS, trust=trust_pickles)


def _hub_file(url: str) -> Path:
    """The torch hub cache's copy of a fair-esm file, downloaded into it when missing."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)  # temp file, then rename
    return cached


_LAYER_KEY = re.compile(r"encoder\.sentence_encoder\.layers\.(\d+)\.")
EXPECTED = "a fair-esm ESM-2 checkpoint (esm2_*.pt from fair-esm, or a fair-esm model name)"


def check_checkpoint(path: Path, model_data, regression_data) -> None:
    """The cfg's sizes against the weights present, and the weights themselves (safe_load's
    checks), before fair-esm builds a model of those sizes (`encoder_layers = 1e6` once
    allocated 7.6 GB; 0 heads divided by zero)."""
    if not isinstance(model_data, dict) or not isinstance(model_data.get("model"), dict) or "cfg" not in model_data:
        raise safe_load.ModelFileError(f"{path}: not a fair-esm ESM-2 checkpoint (expected a dict with 'model' and 'cfg')")
    cfg = model_data["cfg"].get("model") if isinstance(model_data["cfg"], dict) else None
    if not isinstance(cfg, argparse.Namespace):
        raise safe_load.ModelFileError(f"{path}: no cfg['model'] namespace of sizes; expected {EXPECTED}")
    state = model_data["model"]
    safe_load.check_weights(path, state, EXPECTED)
    if regression_data is not None:
        regression = regression_data.get("model") if isinstance(regression_data, dict) else None
        if not isinstance(regression, dict):
            raise safe_load.ModelFileError(f"{path}: its -contact-regression.pt holds no 'model' dict; expected {EXPECTED}")
        safe_load.check_weights(path.with_name(f"{path.stem}-contact-regression.pt"), regression, EXPECTED)
    embedding = state.get("encoder.sentence_encoder.embed_tokens.weight")
    if embedding is None or embedding.dim() != 2:
        raise safe_load.ModelFileError(f"{path}: no 2-D encoder.sentence_encoder.embed_tokens.weight; expected {EXPECTED}")
    layers = {m.group(1) for m in map(_LAYER_KEY.match, state) if m}
    mismatch = f"the cfg does not describe the weights; expected {EXPECTED}"
    get = lambda field: getattr(cfg, field, None)  # noqa: E731
    dim = safe_load.declared_size(path, "cfg encoder_embed_dim", get("encoder_embed_dim"), embedding.shape[1], mismatch)
    safe_load.declared_size(path, "cfg encoder_layers", get("encoder_layers"), len(layers), mismatch)
    heads = safe_load.declared_size(path, "cfg encoder_attention_heads", get("encoder_attention_heads"), what=EXPECTED)
    if not isinstance(get("token_dropout"), bool):  # a truthy string or a tensor changed or broke every embedding
        raise safe_load.ModelFileError(f"{path}: cfg token_dropout is {get('token_dropout')!r:.60}, not true or false; "
                                       f"expected {EXPECTED}")
    if dim % heads:
        raise safe_load.ModelFileError(f"{path}: cfg encoder_embed_dim {dim} is not a multiple of "
                                       f"encoder_attention_heads {heads}; expected {EXPECTED}")


def _read_local(path: Path, trust_pickles: bool = False) -> tuple[str, dict, dict | None]:
    name = path.stem
    if not name.startswith("esm2"):
        raise ValueError(
            f"{path}: an ESM-2 checkpoint file must be named esm2_*.pt (fair-esm picks the ESM-2 "
            f"architecture from the file name); rename it, keeping its -contact-regression.pt beside it"
        )
    model_data = _load_checkpoint(path, trust_pickles)
    regression_path = path.with_name(f"{name}-contact-regression.pt")
    regression_data = _load_checkpoint(regression_path, trust_pickles) if regression_path.is_file() else None
    return name, model_data, regression_data


def load_esm2(spec: str, device: str | torch.device = "cpu", trust_pickles: bool = False) -> ESM2Model:
    """Load an ESM-2 model from a fair-esm hub name (e.g. esm2_t36_3B_UR50D) or a local .pt file.

    Files are unpickled safely (see the module docstring) unless `trust_pickles`."""
    import esm.pretrained  # deferred: importing fair-esm is slow and only needed here

    path = Path(spec)
    if str(spec).endswith(".pt") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"ESM-2 checkpoint not found: {spec}")
        name, model_data, regression_data = _read_local(path, trust_pickles)
    elif re.fullmatch(r"esm2_t\d+_\w+", spec):
        name = spec
        path = _hub_file(f"{ESM_DOWNLOAD_ROOT}/models/{name}.pt")
        model_data = _load_checkpoint(path, trust_pickles)
        regression_data = _load_checkpoint(_hub_file(f"{ESM_DOWNLOAD_ROOT}/regression/{name}-contact-regression.pt"),
                                           trust_pickles)
    else:
        raise ValueError(f"{spec!r} is neither a local esm2_*.pt file nor a fair-esm ESM-2 model name")

    check_checkpoint(path, model_data, regression_data)
    with warnings.catch_warnings():
        # Without the regression file fair-esm only warns that *contacts* will be wrong; we never
        # predict contacts, so the warning would only mislead.
        warnings.filterwarnings("ignore", message="Regression weights not found")
        try:
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, model_data, regression_data)
        except (RuntimeError, KeyError, AttributeError, TypeError, ValueError, AssertionError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]  # load_state_dict's names the weights
            raise safe_load.ModelFileError(f"{path}: weights do not fit the ESM-2 its cfg describes "
                                           f"({type(exc).__name__}: {first}); expected {EXPECTED}") from None
    model = model.eval().to(device)
    return ESM2Model(model, alphabet, name, int(model.embed_dim), int(model.num_layers))


class ESM2Reference:
    """The original VirNucPro ESM-2 embedding, batched as fair-esm's extract script batches."""

    def __init__(
        self,
        model: ESM2Model | str,
        device: str | torch.device = "cpu",
        toks_per_batch: int = 2048,
        precision: str = "fp32",
    ):
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        self.esm = load_esm2(model, device) if isinstance(model, str) else model
        self.device = torch.device(device)
        # Casting happens in place: an ESM2Model passed in is shared, not copied (a 3B copy costs 12 GB).
        self.esm.model.to(device=self.device, dtype=_PRECISIONS[precision]).eval()
        self.toks_per_batch = toks_per_batch
        self.precision = precision
        self.dim = self.esm.embed_dim

    def _batches(self, proteins: list[str]) -> list[list[int]]:
        from esm.data import FastaBatchedDataset

        dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
        # extra_toks_per_seq=1 as fair-esm's extract.py does (BOS, as it counts it).
        return dataset.get_batch_indices(self.toks_per_batch, extra_toks_per_seq=1)

    @torch.inference_mode()
    def embed(self, proteins: list[str], out: np.ndarray | None = None) -> np.ndarray:
        """Mean final-layer representation per protein, float32 [N, dim], in input order (into `out`
        when given)."""
        out = output_rows(out, len(proteins), self.dim)
        for i, protein in enumerate(proteins):
            if not protein:
                raise ValueError(f"protein {i} is empty: ESM-2 mean pooling is undefined for 0 residues")
        alphabet, layer = self.esm.alphabet, self.esm.num_layers
        convert = alphabet.get_batch_converter()  # no truncation: the whole protein is seen
        for indices in self._batches(proteins):
            _, _, tokens = convert([(str(i), proteins[i]) for i in indices])
            reps = self.esm.model(tokens.to(self.device), repr_layers=[layer])["representations"][layer]
            residues = (tokens != alphabet.padding_idx).sum(1) - 2  # minus BOS and EOS
            for row, i in enumerate(indices):
                n = min(int(residues[row]), POOL_CAP)
                out[i] = reps[row, 1 : n + 1].float().mean(0).cpu().numpy()  # pool in fp32
        return out
