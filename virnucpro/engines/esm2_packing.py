"""Packing proteins for the ESM-2 engine: which proteins share a pack, and the pack's tensors.

* ``ffd_pack`` groups proteins into packs of at most ``token_budget`` tokens by
  first-fit-decreasing (exact FFD, computed run-by-run over equal lengths with numpy); a protein
  longer than the budget gets a pack of its own.
* ``build_host_pack`` lays a pack's proteins end to end with no padding: BOS + residues + EOS each
  (the alphabet's ``cls_idx`` / ``eos_idx``), described by ``cu_seqlens`` (int32) and positions
  that restart at 0 for each protein, plus the indices of the pooled rows (residues
  1..min(L, 1024)) and their protein, all in one int64 host tensor (pinned on CUDA) so one copy
  moves it. For the padded SDPA view it adds each token's slot in a [B, max_len] grid and the
  key mask; when ``<mask>`` tokens are present, the token-dropout divisor of each token.
* ``to_device`` copies a host pack to the device and slices it back into its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .esm2_tokens import Tokenized

POOL_CAP = 1024  # residues averaged: positions 1..min(L, 1024)


def ffd_pack(token_lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """First-fit-decreasing bin packing of items (token counts) into bins of ``budget``.

    Items are taken longest first (ties in input order); each goes into the first (lowest
    numbered) bin with room, or a new bin.  An item longer than ``budget`` gets a bin of its own.
    Equal-length runs are placed together with numpy, which is exactly what item-by-item first fit
    does (they fill the eligible bins left to right, floor(room / size) each, then open new bins),
    so the cost is O(distinct lengths x bins) in vectorised numpy.  Returns, per bin, the item
    indices in placement order.
    """
    n = np.asarray(token_lengths, dtype=np.int64)
    if n.ndim != 1:
        raise ValueError("token_lengths must be 1-D")
    if budget < 1:
        raise ValueError("budget must be positive")
    count = len(n)
    if count == 0:
        return []
    if (n < 1).any():
        raise ValueError("every item needs at least one token")
    order = np.argsort(-n, kind="stable")
    sizes = n[order]
    run_starts = np.flatnonzero(np.r_[True, sizes[1:] != sizes[:-1]])
    run_ends = np.r_[run_starts[1:], count]
    room = np.zeros(0, dtype=np.int64)  # remaining capacity per bin
    bin_of = np.empty(count, dtype=np.int64)  # bin of order[j]
    for a, b in zip(run_starts.tolist(), run_ends.tolist()):
        s = int(sizes[a])
        k = b - a
        if s > budget:  # oversize: one bin each, closed
            new = np.arange(len(room), len(room) + k)
            bin_of[a:b] = new
            room = np.concatenate([room, np.zeros(k, dtype=np.int64)])
            continue
        placed = 0
        eligible = np.flatnonzero(room >= s)
        if len(eligible):
            fits = room[eligible] // s
            cum = np.cumsum(fits)
            placed = int(min(k, cum[-1]))
            if placed:
                target = eligible[np.searchsorted(cum, np.arange(placed), side="right")]
                bin_of[a:a + placed] = target
                room -= s * np.bincount(target, minlength=len(room))
        rest = k - placed
        if rest:
            per_bin = budget // s
            local = np.arange(rest) // per_bin
            n_new = int(local[-1]) + 1
            bin_of[a + placed:b] = len(room) + local
            filled = np.bincount(local, minlength=n_new) * s
            room = np.concatenate([room, budget - filled])
    # group item indices per bin, keeping placement order (stable sort on bin id)
    by_bin = np.argsort(bin_of, kind="stable")
    bins_sorted = bin_of[by_bin]
    cuts = np.flatnonzero(np.r_[True, bins_sorted[1:] != bins_sorted[:-1]])
    packs = np.split(order[by_bin], cuts[1:])
    assert sum(len(p) for p in packs) == count
    return packs



@dataclass(frozen=True)
class PackLayout:
    """What a pack looks like for one engine (its alphabet, model and attention back-end)."""

    prepend_bos: bool
    append_eos: bool
    cls_idx: int
    eos_idx: int
    mask_idx: int
    token_dropout: bool
    padded_view: bool  # the per-pack padded SDPA back-end: also build the padded-grid slots
    pin: bool  # pin the host tensors (CUDA)


@dataclass
class HostPack:
    index: np.ndarray  # input rows of the proteins in this pack
    B: int
    T: int
    max_len: int
    uniform: bool  # all proteins have the same token count
    cu_host: list  # python ints, for the per-protein loop
    ints: torch.Tensor  # int64: tokens | positions | keep | rows (= index) | (flat)
    cu: torch.Tensor  # int32 [B+1]
    counts: torch.Tensor  # float32 [B]: residues pooled per protein
    scale: Optional[torch.Tensor]  # float32 [T] token-dropout divisor (only if <mask> present)
    key_mask: Optional[torch.Tensor]  # bool [B, 1, 1, max_len] for the padded SDPA view
    n_keep: int
    has_flat: bool


@dataclass
class DevicePack:
    B: int
    T: int
    max_len: int
    uniform: bool
    cu_host: list
    tokens: torch.Tensor
    pos: torch.Tensor
    keep: torch.Tensor
    rows: torch.Tensor  # int64 [B]: the proteins' rows in the embed call's output
    flat: Optional[torch.Tensor]
    cu: torch.Tensor
    counts: torch.Tensor
    scale: Optional[torch.Tensor]
    key_mask: Optional[torch.Tensor]



def build_host_pack(layout: PackLayout, tok: Tokenized, index: np.ndarray) -> HostPack:
    """The host tensors of one pack: proteins ``index`` of ``tok``, laid end to end with BOS/EOS."""
    npre, npost = int(layout.prepend_bos), int(layout.append_eos)
    L = tok.lengths[index]
    n = L + npre + npost
    B = len(index)
    T = int(n.sum())
    cu = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(n, out=cu[1:])
    starts = cu[:-1]
    max_len = int(n.max())
    uniform = bool((n == n[0]).all())
    tokens = np.empty(T, dtype=np.int64)
    if npre:
        tokens[starts] = layout.cls_idx
    if npost:
        tokens[cu[1:] - 1] = layout.eos_idx
    total = int(L.sum())
    if total:
        r = np.arange(total, dtype=np.int64)
        before = np.cumsum(L) - L
        src = np.repeat(tok.offsets[index] - before, L) + r
        dst = np.repeat(starts + npre - before, L) + r
        tokens[dst] = tok.ids[src]
    pos = np.arange(T, dtype=np.int64) - np.repeat(starts, n)
    m = np.minimum(L, POOL_CAP)
    n_keep = int(m.sum())
    rk = np.arange(n_keep, dtype=np.int64)
    before_m = np.cumsum(m) - m
    keep = np.repeat(starts + npre - before_m, m) + rk
    parts = [tokens, pos, keep, index.astype(np.int64)]
    key_mask = None
    has_flat = False
    if layout.padded_view and not uniform:
        parts.append(np.repeat(np.arange(B, dtype=np.int64) * max_len, n) + pos)
        key_mask = torch.from_numpy(np.arange(max_len)[None, :] < n[:, None]).view(B, 1, 1, max_len)
        has_flat = True
    scale = None
    if tok.mask_counts and layout.token_dropout:
        hits = [(j, tok.mask_counts[int(i)]) for j, i in enumerate(index.tolist()) if int(i) in tok.mask_counts]
        if hits:
            # fair-esm: x * (1 - 0.12) / (1 - n_mask / n_tokens); <mask> rows zeroed (divisor inf)
            div = np.ones(T, dtype=np.float32)
            for j, nm in hits:
                ratio = np.float32(nm) / np.float32(n[j])
                div[cu[j]:cu[j + 1]] = np.float32(1) - ratio
            div[tokens == layout.mask_idx] = np.inf
            scale = torch.from_numpy(div)
    ints = torch.from_numpy(np.concatenate(parts))
    cu_t = torch.from_numpy(cu.astype(np.int32))
    counts = torch.from_numpy(m.astype(np.float32))
    if layout.pin:
        ints, cu_t, counts = ints.pin_memory(), cu_t.pin_memory(), counts.pin_memory()
        if key_mask is not None:
            key_mask = key_mask.pin_memory()
        if scale is not None:
            scale = scale.pin_memory()
    return HostPack(index=index, B=B, T=T, max_len=max_len, uniform=uniform,
                     cu_host=cu.tolist(), ints=ints, cu=cu_t, counts=counts, scale=scale,
                     key_mask=key_mask, n_keep=n_keep, has_flat=has_flat)

def to_device(hp: HostPack, dev: torch.device) -> DevicePack:
    """The pack on the device (non-blocking copies from pinned memory on CUDA)."""
    nb = dev.type == "cuda"
    ints = hp.ints.to(dev, non_blocking=nb)
    T, K = hp.T, hp.n_keep
    tokens, pos = ints[:T], ints[T:2 * T]
    keep = ints[2 * T:2 * T + K]
    rows = ints[2 * T + K:2 * T + K + hp.B]
    flat = ints[2 * T + K + hp.B:] if hp.has_flat else None
    return DevicePack(
        B=hp.B, T=T, max_len=hp.max_len, uniform=hp.uniform, cu_host=hp.cu_host,
        tokens=tokens, pos=pos, keep=keep, rows=rows, flat=flat,
        cu=hp.cu.to(dev, non_blocking=nb), counts=hp.counts.to(dev, non_blocking=nb),
        scale=None if hp.scale is None else hp.scale.to(dev, non_blocking=nb),
        key_mask=None if hp.key_mask is None else hp.key_mask.to(dev, non_blocking=nb))
