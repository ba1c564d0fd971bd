"""Native DNABERT-S engine: the model's math computed here from its weights; none of its code runs.

``NativeDnabert(spec, device, precision, token_budget)`` reads a DNABERT-S folder (or the local
HF-cache copy of ``zhihan1996/DNABERT-S``) as data (see ``dnabert_files``) and embeds nucleotide
sequences with ``embed(list_of_str) -> float32 [N, hidden]``: the mean of the final hidden
states over ALL tokens of each sequence, [CLS] and [SEP] included, rows in input order. That is
the original VirNucPro method (one sequence per call, no mask, ``hidden.mean(0)``); the packed
computation gives the same numbers within float rounding. transformers is not imported and
triton is never used, so neither can change the numbers.

Architecture (MosaicBERT, eval mode: every dropout is the identity)
-------------------------------------------------------------------
* embeddings: word embedding + token-type embedding 0 (every token is type 0) -> LayerNorm.
  No position embeddings.
* attention bias: ALiBi, ``-slope_h * |i - j|`` within each sequence (slopes below, any head
  count, any length), never across sequences.
* each layer, post-LN: ``Wqkv`` (q, k, v laid out as (3, heads, head_dim)) ->
  softmax(q k^T / sqrt(head_dim) + bias) v -> ``attention.output.dense`` -> LayerNorm(x + .) ->
  GLU MLP: ``gated_layers`` (no bias) gives 2I columns; ``gelu(first I) * last I`` with exact
  erf GELU -> ``wo`` -> LayerNorm(x + .).

Packing
-------
Sequences are tokenized with the ``tokenizers`` library's batch encoder (the Rust tokenizer
under transformers' PreTrainedTokenizerFast, without its per-call wrapper), 64 sequences to a
joined string where the tokenizer allows it (``dnabert_tokens``: the same ids), in blocks of
``BLOCK_SEQUENCES``; each block is grouped by ascending token count into packs of at most
``token_budget`` padded tokens (count x longest; a longer sequence gets a pack of its own), so
packs hold sequences of nearly equal length. The dense parts (Wqkv, output projection, MLP,
LayerNorms) run on the packed tokens only, with no padding. Attention runs on a per-pack padded
view with one SDPA call per layer and an additive bias = ALiBi + (-inf on padded keys); padded
query rows are dropped again. With flash-attn installed (CUDA, fp16/bf16) its varlen kernel with
``alibi_slopes`` is used instead (after a self-check against SDPA).

Host side: tokenization and the pack arrays (numpy, no per-row tensor building) are prepared in a
background thread while the device computes the previous pack; inputs go to the device with
non_blocking copies from pinned memory; pooled rows stay on the device and come back with one
copy per ``embed`` call, so the loop has no per-pack synchronisation.

Precision: fp32 by default (the original's numbers); fp16/bf16 on CUDA only, with the pooling in
fp32.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VirnucproError
from . import output_rows
from . import dnabert_files as files
from .dnabert_tokens import GROUP, BatchTokenizer
from .pooled_rows import PooledRows, segment_means
from .prefetch import prefetched

log = logging.getLogger("virnucpro.dnabert")

CPU_TOKEN_BUDGET = 8192
GPU_TOKEN_BUDGET = 65536
BLOCK_SEQUENCES = 4096  # sequences tokenized together; packs never span blocks
ALIBI_STARTING_SIZE = 512
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes: geometric for 2^k heads; otherwise the 2^floor(log2 n) slopes followed by
    every other slope of the 2 * 2^floor(log2 n) list, as DNABERT-S (and the ALiBi paper) do."""
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_table(num_heads: int, size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[heads, size, size] bias -slope_h * |i - j| (fp32 arithmetic, then cast)."""
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)
    position = torch.arange(size, device=device)
    distance = (position[None, :] - position[:, None]).abs().to(torch.float32)
    return (slopes[:, None, None] * -distance[None]).to(dtype)


@dataclass
class _Layer:
    wqkv: torch.Tensor
    bqkv: torch.Tensor
    wo_attn: torch.Tensor
    bo_attn: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    w_gated: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


@dataclass
class _Pack:
    """One pack's inputs: host arrays (torch views of numpy) or, after `to`, device tensors."""

    rows: torch.Tensor          # [B] input row of each sequence
    ids: torch.Tensor           # [T] token ids, sequences concatenated
    lengths: torch.Tensor       # [B] float32 token counts (the mean's divisor)
    cu_seqlens: torch.Tensor    # [B + 1] int32
    pad_index: Optional[torch.Tensor]    # [B * L] token index of each padded slot (T = a zero row)
    unpad_index: Optional[torch.Tensor]  # [T] padded slot of each token
    key_valid: Optional[torch.Tensor]    # [B, L] bool
    batch: int
    longest: int
    tokens: int

    def to(self, device: torch.device) -> "_Pack":
        if device.type == "cpu":
            return self
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return _Pack(move(self.rows), move(self.ids), move(self.lengths), move(self.cu_seqlens),
                     move(self.pad_index), move(self.unpad_index), move(self.key_valid),
                     self.batch, self.longest, self.tokens)


def group_by_length(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices in ascending length, cut so that count * longest <= budget (a lone longer one alone)."""
    order = np.argsort(lengths, kind="stable")
    packs, start, count = [], 0, 0
    for j, length in enumerate(lengths[order].tolist()):
        if count and (count + 1) * length > budget:
            packs.append(order[start:j])
            start, count = j, 0
        count += 1
    if count:
        packs.append(order[start:])
    return packs


class NativeDnabert:
    """DNABERT-S embeddings computed natively; see the module docstring."""

    def __init__(self, spec: str, device: str | torch.device = "cpu", precision: str = "fp32",
                 token_budget: int | None = None, allow_download: bool = False, backend: str | None = None):
        self.device = torch.device(device)
        if precision not in _DTYPES:
            raise ValueError(f"DNABERT-S precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise VirnucproError(f"--dnabert-precision {precision} needs a CUDA device (running on {self.device}); "
                                 f"use fp32 on CPU")
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.folder = files.resolve_model_dir(spec, allow_download)
        self.arch = files.architecture(self.folder, files.read_config(self.folder))
        path, state = files.read_weights(self.folder)
        self._load(files.encoder_weights(path, state, self.arch))
        del state
        self.tokenizer = files.read_tokenizer(self.folder)
        self.tokenize = BatchTokenizer(self.tokenizer)
        self.dim = self.arch.hidden_size
        if token_budget is not None and token_budget < 1:
            raise ValueError(f"DNABERT-S token budget must be >= 1, got {token_budget}")
        self.token_budget = token_budget or (GPU_TOKEN_BUDGET if self.device.type == "cuda" else CPU_TOKEN_BUDGET)
        self.tokens_embedded = 0  # real tokens ([CLS] and [SEP] included) of every sequence embedded so far
        self._alibi = alibi_table(self.arch.num_heads, ALIBI_STARTING_SIZE, self.device, self.dtype)
        self.backend = self._select_backend(backend)
        log.info("DNABERT-S native engine: %s, %s, %s attention, token budget %d, tokenized %s",
                 self.folder, precision, self.backend, self.token_budget,
                 f"{GROUP} sequences at a time" if self.tokenize.joins_sequences else "one sequence at a time")

    # ------------------------------------------------------------------ weights

    def _load(self, w: dict) -> None:
        def put(name: str, dtype=None) -> torch.Tensor:
            return w[name].to(device=self.device, dtype=dtype or self.dtype).contiguous()

        self.word = put("embeddings.word_embeddings.weight")
        self.type0 = put("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln = (put("embeddings.LayerNorm.weight"), put("embeddings.LayerNorm.bias"))
        self.layers = []
        for n in range(self.arch.num_layers):
            p = f"encoder.layer.{n}."
            self.layers.append(_Layer(
                put(p + "attention.self.Wqkv.weight"), put(p + "attention.self.Wqkv.bias"),
                put(p + "attention.output.dense.weight"), put(p + "attention.output.dense.bias"),
                put(p + "attention.output.LayerNorm.weight"), put(p + "attention.output.LayerNorm.bias"),
                put(p + "mlp.gated_layers.weight"), put(p + "mlp.wo.weight"), put(p + "mlp.wo.bias"),
                put(p + "mlp.layernorm.weight"), put(p + "mlp.layernorm.bias")))
        self._slopes = torch.tensor(alibi_slopes(self.arch.num_heads), dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ attention back-ends

    def _select_backend(self, requested: str | None) -> str:
        if requested in ("sdpa", None) and (requested == "sdpa" or self.device.type != "cuda" or self.precision == "fp32"):
            return "sdpa"
        if requested not in (None, "flash_attn"):
            raise ValueError(f"unknown DNABERT-S attention backend {requested!r}")
        try:
            from flash_attn import flash_attn_varlen_func  # optional extra; CUDA fp16/bf16 only
        except Exception:
            if requested == "flash_attn":
                raise VirnucproError("flash-attn is not importable; install the 'flash' extra or use the default attention")
            return "sdpa"
        self._flash = flash_attn_varlen_func
        problem = self._probe_flash()
        if problem is None:
            return "flash_attn"
        log.warning("flash-attn varlen with ALiBi disagrees with SDPA (%s); using SDPA", problem)
        return "sdpa"

    def _probe_flash(self) -> str | None:
        generator = torch.Generator(device="cpu").manual_seed(0)
        lengths = np.array([5, 37, 64], dtype=np.int64)
        heads, dim = self.arch.num_heads, self.arch.head_dim
        qkv = torch.randn((int(lengths.sum()), 3 * heads * dim), generator=generator).to(self.device, self.dtype)
        pack = self._pack_arrays(np.arange(3), lengths, np.arange(int(lengths.sum())), np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        pack = pack.to(self.device)
        try:
            want = self._attention_sdpa(qkv, pack, self._bias(pack)).float()
            got = self._attention_flash(qkv, pack).float()
        except Exception as exc:  # an unsupported GPU or build
            return f"{type(exc).__name__}: {exc}"
        error = ((got - want).abs().max() / want.abs().max()).item()
        return None if error < 2e-2 else f"relative error {error:.2e}"

    def _bias(self, pack: _Pack) -> torch.Tensor:
        """[B or 1, heads, L, L] ALiBi + -inf on padded keys (grows the ALiBi table when needed)."""
        longest = pack.longest
        if self._alibi.shape[-1] < longest:
            self._alibi = alibi_table(self.arch.num_heads, longest, self.device, self.dtype)
        alibi = self._alibi[:, :longest, :longest].unsqueeze(0)
        if pack.key_valid is None:
            return alibi
        padding = torch.zeros(pack.key_valid.shape, dtype=self.dtype, device=self.device)
        padding.masked_fill_(~pack.key_valid, float("-inf"))
        return alibi + padding[:, None, None, :]

    def _attention_sdpa(self, qkv: torch.Tensor, pack: _Pack, bias: torch.Tensor) -> torch.Tensor:
        heads, dim = self.arch.num_heads, self.arch.head_dim
        x = qkv.view(-1, 3, heads, dim)
        if pack.pad_index is not None:
            x = torch.cat([x, x.new_zeros((1, 3, heads, dim))]).index_select(0, pack.pad_index)
        q, k, v = x.view(pack.batch, pack.longest, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(head_dim)
        out = out.transpose(1, 2).reshape(pack.batch * pack.longest, heads * dim)
        return out if pack.unpad_index is None else out.index_select(0, pack.unpad_index)

    def _attention_flash(self, qkv: torch.Tensor, pack: _Pack) -> torch.Tensor:
        heads, dim = self.arch.num_heads, self.arch.head_dim
        q, k, v = qkv.view(-1, 3, heads, dim).unbind(1)
        out = self._flash(q, k, v, pack.cu_seqlens, pack.cu_seqlens, pack.longest, pack.longest, dropout_p=0.0,
                          softmax_scale=dim ** -0.5, causal=False, alibi_slopes=self._slopes)
        return out.reshape(-1, heads * dim)

    # ------------------------------------------------------------------ forward

    def _forward(self, pack: _Pack) -> torch.Tensor:
        """[B, hidden] float32 means over each sequence's tokens."""
        hidden, eps, inter = self.arch.hidden_size, self.arch.layer_norm_eps, self.arch.intermediate_size
        x = F.layer_norm(F.embedding(pack.ids, self.word) + self.type0, (hidden,), *self.emb_ln, eps)
        bias = self._bias(pack) if self.backend == "sdpa" else None
        for layer in self.layers:
            qkv = F.linear(x, layer.wqkv, layer.bqkv)
            a = self._attention_sdpa(qkv, pack, bias) if bias is not None else self._attention_flash(qkv, pack)
            x = F.layer_norm(x + F.linear(a, layer.wo_attn, layer.bo_attn), (hidden,), layer.ln1_w, layer.ln1_b, eps)
            g = F.linear(x, layer.w_gated)
            h = F.gelu(g[:, :inter]) * g[:, inter:]
            x = F.layer_norm(x + F.linear(h, layer.wo, layer.bo), (hidden,), layer.ln2_w, layer.ln2_b, eps)
        return segment_means(x.float(), pack.lengths, offsets=pack.cu_seqlens)

    # ------------------------------------------------------------------ host side

    def _pack_arrays(self, rows: np.ndarray, lengths: np.ndarray, flat_ids: np.ndarray, offsets: np.ndarray) -> _Pack:
        """A pack of sequences `rows` (lengths, and each one's start in the block's flat token array)."""
        batch = len(rows)
        total = int(lengths.sum())
        starts = np.zeros(batch, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        gather = np.repeat(offsets - starts, lengths) + np.arange(total, dtype=np.int64)
        ids = flat_ids[gather]
        longest = int(lengths.max())
        pad_index = unpad_index = key_valid = None
        if int(lengths.min()) != longest:
            position = np.arange(longest, dtype=np.int64)
            valid = position[None, :] < lengths[:, None]
            pad_index = torch.from_numpy(np.where(valid, starts[:, None] + position, total).ravel())
            unpad_index = torch.from_numpy(np.flatnonzero(valid.ravel()))
            key_valid = torch.from_numpy(valid)
        cu = np.zeros(batch + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        pack = _Pack(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)), torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
                     torch.from_numpy(lengths.astype(np.float32)), torch.from_numpy(cu),
                     pad_index, unpad_index, key_valid, batch, longest, total)
        if self.device.type == "cuda":
            pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
            pack = _Pack(*(pin(getattr(pack, f)) for f in ("rows", "ids", "lengths", "cu_seqlens", "pad_index",
                                                           "unpad_index", "key_valid")), batch, longest, total)
        return pack

    def count_tokens(self, seqs: Sequence[str]) -> np.ndarray:
        """Token count of each sequence ([CLS] and [SEP] included)."""
        total = []
        for start in range(0, len(seqs), BLOCK_SEQUENCES):
            total.append(self.tokenize(seqs[start:start + BLOCK_SEQUENCES])[1])
        return np.concatenate(total) if total else np.zeros(0, dtype=np.int64)

    def _host_packs(self, seqs: Sequence[str]) -> Iterator[_Pack]:
        for first in range(0, len(seqs), BLOCK_SEQUENCES):
            flat, lengths = self.tokenize(seqs[first:first + BLOCK_SEQUENCES])
            offsets = np.zeros(len(lengths), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            for local in group_by_length(lengths, self.token_budget):
                yield self._pack_arrays(local + first, lengths[local], flat, offsets[local])

    def _prefetched(self, seqs: Sequence[str]) -> Iterator[_Pack]:
        """`_host_packs` run in a background thread, at most two packs ahead."""
        return prefetched(self._host_packs(seqs), "dnabert-host")

    @torch.inference_mode()
    def embed(self, seqs: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, hidden], rows in input order (into `out` when given)."""
        seqs = list(seqs)
        result = output_rows(out, len(seqs), self.dim)
        if not seqs:
            return result
        pooled = PooledRows(result, self.device)
        tokens = 0
        for host in self._prefetched(seqs):
            pack = host.to(self.device)
            pooled.put(host.rows.numpy(), pack.rows, self._forward(pack))
            tokens += host.tokens
        pooled.finish("DNABERT-S engine")
        self.tokens_embedded += tokens
        return result
