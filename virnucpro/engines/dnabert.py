"""DNABERT-S: the engine factory and the remote-code fallback (HF `trust_remote_code`), original and batched.

The default engine is the native one (dnabert_native); this module's DnabertEmbedder runs the model
folder's own code and is used only with --dnabert-remote-code (and as the tests' oracle).

The original embeds one sequence per forward call with no attention mask and averages the last
hidden state over ALL tokens, [CLS] and [SEP] included. The batched path must give the same
numbers: it pads, passes `attention_mask` (so padding never reaches a real token) and averages
only the real tokens, [CLS] and [SEP] still included.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import VirnucproError
from . import dnabert_files as files
from . import output_rows
from .dnabert_native import NativeDnabert


def load_dnabert(spec: str, device: str | torch.device = "cpu", allow_download: bool = False):
    """The remote-code FALLBACK: (tokenizer, model) built from the model folder's own code, fp32, eval.

    Runs the folder's Python code (trust_remote_code), so only when the user asked for it. Made to
    work on transformers 4.x and 5.x: the model class is built directly on the CPU and the weights
    are loaded afterwards (5.x's from_pretrained builds on the meta device, where DNABERT-S's
    encoder cannot build its ALiBi table in __init__); its Triton attention switch is turned off
    (the module global `flash_attn_qkvpacked_func`), which is the original's `pip uninstall triton`.
    """
    import importlib.util
    import sys
    import warnings

    from transformers import AutoConfig, AutoTokenizer  # deferred: slow import
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load progress bar is noise in batch logs
    if importlib.util.find_spec("einops") is None:
        raise VirnucproError("the DNABERT-S remote-code fallback needs einops: pip install einops")
    folder = files.resolve_model_dir(spec, allow_download)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    reference = (getattr(config, "auto_map", None) or {}).get("AutoModel")
    if not reference:
        raise VirnucproError(f"{folder / 'config.json'}: no auto_map AutoModel entry, so there is no model code to run")
    model_class = get_class_from_dynamic_module(reference, str(folder))
    module = sys.modules[model_class.__module__]
    if getattr(module, "flash_attn_qkvpacked_func", None) is not None:
        module.flash_attn_qkvpacked_func = None  # fp32 PyTorch attention, as with triton uninstalled
    with warnings.catch_warnings(), torch.device("cpu"):
        warnings.simplefilter("ignore")  # "Unable to import Triton": wanted here
        model = model_class(config)
    path, state = files.read_weights(folder)
    own = model.state_dict()
    prefix = "bert." if any(k.startswith("bert.") for k in own) else ""
    state = {prefix + k: v for k, v in state.items() if prefix + k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise VirnucproError(f"{path}: weight {missing[0]} missing (and {len(missing) - 1} more) for {reference}")
    model.load_state_dict(state, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))  # tokenizer.json: no code of the folder runs
    return tokenizer, model.to(device=device, dtype=torch.float32).eval()


def load_dnabert_engine(spec: str, device: str = "cpu", precision: str = "fp32", remote_code: bool = False,
                        token_budget: int | None = None, allow_download: bool = False):
    """The native engine (default) or, when asked for, the remote-code fallback."""
    if remote_code:
        if precision != "fp32":
            raise VirnucproError("--dnabert-remote-code runs in fp32 only (the original's numbers); drop --dnabert-precision")
        kwargs = {"token_budget": token_budget} if token_budget else {}
        return DnabertEmbedder(spec, device=device, allow_download=allow_download, **kwargs)
    return NativeDnabert(spec, device=device, precision=precision, token_budget=token_budget, allow_download=allow_download)


class DnabertEmbedder:
    """Mean-pooled DNABERT-S embeddings; `embed` batches, `embed_one_at_a_time` is the original."""

    def __init__(self, spec: str, device: str | torch.device = "cpu", token_budget: int = 16384,
                 allow_download: bool = False):
        self.tokenizer, self.model = load_dnabert(spec, device, allow_download)
        self.tokens_embedded = 0
        self.device = torch.device(device)
        self.token_budget = token_budget  # padded tokens per forward: batch_size * max_len
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped by ascending token length so padded size stays within the budget."""
        batches, current, longest = [], [], 0
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            grown = max(longest, lengths[i])
            if current and grown * (len(current) + 1) > self.token_budget:
                batches.append(current)
                current, grown = [], lengths[i]
            current.append(i)
            longest = grown
        if current:
            batches.append(current)
        return batches

    @torch.inference_mode()
    def embed(self, seqs: list[str], out: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, hidden] in input order (into `out` when given)."""
        out = output_rows(out, len(seqs), self.dim)
        if not seqs:
            return out
        ids = self.tokenizer(list(seqs))["input_ids"]  # [CLS] ... [SEP], unpadded
        self.tokens_embedded += sum(map(len, ids))
        for batch in self._batches([len(x) for x in ids]):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids, attention_mask=mask)[0].float()
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            means = (hidden * weights).sum(1) / weights.sum(1)
            out[batch] = means.cpu().numpy()
        return out

    def count_tokens(self, seqs: list[str]) -> np.ndarray:
        return np.array([len(x) for x in self.tokenizer(list(seqs))["input_ids"]], dtype=np.int64)

    @torch.inference_mode()
    def embed_one_at_a_time(self, seqs: list[str]) -> np.ndarray:
        """The original VirNucPro way: one sequence per call, no mask, mean over all tokens."""
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        for i, seq in enumerate(seqs):
            input_ids = self.tokenizer(seq, return_tensors="pt")["input_ids"].to(self.device)
            hidden = self.model(input_ids)[0]
            out[i] = torch.mean(hidden[0], dim=0).float().cpu().numpy()
        return out
