"""DNABERT-S nucleotide embedding (HF `trust_remote_code` model), original and batched.

The original embeds one sequence per forward call with no attention mask and averages the last
hidden state over ALL tokens, [CLS] and [SEP] included. The batched path must give the same
numbers: it pads, passes `attention_mask` (so padding never reaches a real token) and averages
only the real tokens, [CLS] and [SEP] still included.
"""

from __future__ import annotations

import numpy as np
import torch


def load_dnabert(spec: str, device: str | torch.device = "cpu"):
    """Return (tokenizer, model) for a HF model id or local directory; model fp32, eval mode."""
    from transformers import AutoModel, AutoTokenizer  # deferred: slow import
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load progress bar is noise in batch logs

    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=True)
    model = AutoModel.from_pretrained(spec, trust_remote_code=True)
    return tokenizer, model.to(device=device, dtype=torch.float32).eval()


class DnabertEmbedder:
    """Mean-pooled DNABERT-S embeddings; `embed` batches, `embed_one_at_a_time` is the original."""

    def __init__(self, spec: str, device: str | torch.device = "cpu", token_budget: int = 16384):
        self.tokenizer, self.model = load_dnabert(spec, device)
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
    def embed(self, seqs: list[str]) -> np.ndarray:
        """float32 [N, hidden] in input order."""
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        if not seqs:
            return out
        ids = self.tokenizer(list(seqs))["input_ids"]  # [CLS] ... [SEP], unpadded
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

    @torch.inference_mode()
    def embed_one_at_a_time(self, seqs: list[str]) -> np.ndarray:
        """The original VirNucPro way: one sequence per call, no mask, mean over all tokens."""
        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        for i, seq in enumerate(seqs):
            input_ids = self.tokenizer(seq, return_tensors="pt")["input_ids"].to(self.device)
            hidden = self.model(input_ids)[0]
            out[i] = torch.mean(hidden[0], dim=0).float().cpu().numpy()
        return out
