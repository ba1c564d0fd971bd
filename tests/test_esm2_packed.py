"""PackedESM2Engine against fair-esm's own forward (CPU, tiny random models) + one GPU test.

Error measure used throughout: per embedding, rel = ||packed - ref||_2 / ||ref||_2, where ref is
fair-esm's ``model(tokens, repr_layers=[L])["representations"][L][0, 1:min(len,1024)+1].mean(0)``
computed one sequence at a time (no padding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

esm = pytest.importorskip("esm")

from esm2_random import random_esm2  # noqa: E402
from virnucpro.engines.esm2_packed import PackedESM2Engine, default_token_budget, resolve_precision  # noqa: E402
from virnucpro.engines.esm2_packing import ffd_pack  # noqa: E402

LETTERS = np.array(list("ACDEFGHIKLMNPQRSTVWYXBZU"))
SHAPES = [(2, 64, 4), (3, 48, 3), (1, 40, 2), (2, 96, 8)]  # head dims 16, 16, 20, 12


def tiny_model(layers, dim, heads, seed=0, token_dropout=True):
    torch.manual_seed(seed)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(layers, dim, heads, alphabet=alphabet, token_dropout=token_dropout)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(0.2 * torch.randn_like(mod.weight))
                mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return model.eval(), alphabet


def random_proteins(n, lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(LETTERS, int(L))) for L in rng.integers(lo, hi + 1, n)]


def reference(model, alphabet, seqs):
    convert = alphabet.get_batch_converter()
    layer = model.num_layers
    out = []
    with torch.no_grad():
        for s in seqs:
            _, _, toks = convert([("x", s)])
            rep = model(toks, repr_layers=[layer])["representations"][layer]
            n_res = toks.shape[1] - 2  # residue tokens (BOS + EOS added by the converter)
            out.append(rep[0, 1:min(n_res, 1024) + 1].mean(0).numpy())
    return np.stack(out).astype(np.float32)


def rel_err(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def small():
    return tiny_model(2, 64, 4)


# ------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_fair_esm(shape):
    model, alphabet = tiny_model(*shape, seed=sum(shape))
    seqs = random_proteins(16, 1, 260, seed=shape[1])
    ref = reference(model, alphabet, seqs)
    for backend in ("sdpa", "sdpa_loop"):
        engine = PackedESM2Engine(model, alphabet, device="cpu", backend=backend, token_budget=600)
        got = engine.embed(seqs)
        assert got.dtype == np.float32 and got.shape == (len(seqs), shape[1])
        assert engine.dim == shape[1] and engine.backend == backend and engine.precision == "fp32"
        assert rel_err(got, ref).max() <= 1e-5, backend


def test_rotary_tables_are_the_nearest_float32_of_each_angle(small):
    """Not torch's threaded CPU cos: in rare processes one thread's half of that table came out up
    to 1.5e-4 off, and every embedding of the run moved by ~1e-5 (different bytes run to run)."""
    model, alphabet = small
    engine = PackedESM2Engine(model, alphabet, device="cpu", token_budget=600)
    engine.embed(random_proteins(4, 20, 60, seed=5))
    dh = engine.head_dim
    angles = np.arange(engine._rope_len, dtype=np.float32)[:, None] * (
        1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh))).numpy()[None, :]  # fair-esm's fp32 angles
    assert engine._cos.shape == angles.shape and engine._rope_len >= 2048
    assert engine._cos.numpy().tobytes() == np.cos(angles.astype(np.float64)).astype(np.float32).tobytes()
    assert engine._sin.numpy().tobytes() == np.sin(angles.astype(np.float64)).astype(np.float32).tobytes()


def test_prefetch_thread_and_defaults(small):
    model, alphabet = small
    seqs = random_proteins(16, 20, 200, seed=3)
    engine = PackedESM2Engine(model, alphabet, token_budget=512, prefetch=True)
    assert engine.backend == "sdpa"
    assert rel_err(engine.embed(seqs), reference(model, alphabet, seqs)).max() <= 1e-5


def test_without_token_dropout():
    model, alphabet = tiny_model(2, 64, 4, seed=5, token_dropout=False)
    seqs = random_proteins(10, 5, 120, seed=5)
    got = PackedESM2Engine(model, alphabet).embed(seqs)
    assert rel_err(got, reference(model, alphabet, seqs)).max() <= 1e-5


# ------------------------------------------------------------------------------ order / edges
def test_order_follows_input(small):
    model, alphabet = small
    seqs = random_proteins(30, 10, 250, seed=7)
    seqs += seqs[:5]  # duplicates too
    engine = PackedESM2Engine(model, alphabet, token_budget=600)
    base = engine.embed(seqs)
    perm = np.random.default_rng(1).permutation(len(seqs))
    shuffled = engine.embed([seqs[i] for i in perm])
    np.testing.assert_allclose(shuffled, base[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(base[-5:], base[:5], rtol=1e-5, atol=1e-6)
    assert rel_err(base[:8], reference(model, alphabet, seqs[:8])).max() <= 1e-5


def test_empty_input(small):
    engine = PackedESM2Engine(*small)
    out = engine.embed([])
    assert out.shape == (0, 64) and out.dtype == np.float32


def test_single_sequence(small):
    model, alphabet = small
    out = PackedESM2Engine(model, alphabet).embed(["MKTAYIAKQR"])
    assert out.shape == (1, 64)
    assert rel_err(out, reference(model, alphabet, ["MKTAYIAKQR"])).max() <= 1e-5


def test_sequences_longer_than_budget(small):
    model, alphabet = small
    seqs = ["M" + s for s in random_proteins(8, 20, 150, seed=11)] + ["A" * 3, "W" * 200]
    engine = PackedESM2Engine(model, alphabet, token_budget=64)
    assert rel_err(engine.embed(seqs), reference(model, alphabet, seqs)).max() <= 1e-5


def test_pooling_cap_1024(small):
    model, alphabet = small
    seqs = random_proteins(2, 1100, 1100, seed=13) + random_proteins(1, 1500, 1500, seed=14) + ["ACDE" * 256]
    engine = PackedESM2Engine(model, alphabet, token_budget=2048)
    got = engine.embed(seqs)
    ref = reference(model, alphabet, seqs)
    assert rel_err(got, ref).max() <= 1e-5
    # the cap matters: the mean over all residues is a different vector
    convert = alphabet.get_batch_converter()
    with torch.no_grad():
        _, _, toks = convert([("x", seqs[2])])
        full = model(toks, repr_layers=[2])["representations"][2][0, 1:-1].mean(0).numpy()
    assert rel_err(got[2:3], full[None])[0] > 1e-3


def test_special_token_ids_and_tokenisation(small):
    model, alphabet = small
    engine = PackedESM2Engine(model, alphabet, backend="sdpa")
    seqs = ["MKXBZU", "ACD<mask>EF<mask>", "GG HH", "K<cls>L", "O.-"]
    tok = engine._tokenizer(seqs)
    hp = engine._build_host_pack(tok, np.arange(len(seqs)))
    tokens = hp.ints[:hp.T].numpy()
    convert = alphabet.get_batch_converter()
    for j, s in enumerate(seqs):
        got = tokens[hp.cu_host[j]:hp.cu_host[j + 1]]
        _, _, toks = convert([("x", s)])
        assert got.tolist() == toks[0].tolist()
        assert got[0] == alphabet.cls_idx and got[-1] == alphabet.eos_idx
    # <mask> tokens: fair-esm zeroes them and rescales by 0.88 / (1 - mask ratio)
    assert rel_err(engine.embed(seqs), reference(model, alphabet, seqs)).max() <= 1e-5


def test_rejects_unencodable(small):
    engine = PackedESM2Engine(*small)
    with pytest.raises(ValueError, match="#1"):
        engine.embed(["MKV", "MKJ"])
    with pytest.raises(ValueError):
        engine.embed(["mkv"])


def test_empty_protein_is_nan_like_fair_esm(small):
    out = PackedESM2Engine(*small).embed(["", "MK"])
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


# ------------------------------------------------------------------------------ packing
def _naive_first_fit_decreasing(lengths, budget):
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, room = [], []
    for i in order:
        size = lengths[i]
        if size > budget:
            bins.append([i])
            room.append(0)
            continue
        for b, r in enumerate(room):
            if r >= size:
                bins[b].append(i)
                room[b] -= size
                break
        else:
            bins.append([i])
            room.append(budget - size)
    return bins


def test_ffd_pack_is_first_fit_decreasing():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 200))
        budget = int(rng.integers(4, 400))
        lengths = rng.integers(1, int(rng.integers(2, 600)), n)
        packs = ffd_pack(lengths, budget)
        assert [p.tolist() for p in packs] == _naive_first_fit_decreasing(lengths.tolist(), budget)
        flat = np.concatenate(packs)
        assert sorted(flat.tolist()) == list(range(n))
        for p in packs:
            assert lengths[p].sum() <= budget or len(p) == 1
    assert ffd_pack(np.zeros(0, dtype=np.int64), 10) == []


# ------------------------------------------------------------------------------ settings
def test_precision_and_backend_selection(small, monkeypatch):
    model, alphabet = small
    cpu = torch.device("cpu")
    assert resolve_precision(None, cpu) == "fp32"
    assert resolve_precision(None, torch.device("cuda")) == "fp16"
    monkeypatch.setenv("VIRNUCPRO_DISABLE_FP16", "1")
    assert resolve_precision("bf16", cpu) == "fp32"
    assert resolve_precision(None, torch.device("cuda")) == "fp32"
    monkeypatch.delenv("VIRNUCPRO_DISABLE_FP16")
    with pytest.raises(ValueError):
        resolve_precision("int8", cpu)
    with pytest.raises(ValueError):
        PackedESM2Engine(model, alphabet, backend="varlen")  # needs CUDA + fp16/bf16
    with pytest.raises(ValueError):
        PackedESM2Engine(model, alphabet, backend="nonsense")
    assert default_token_budget(cpu, 2560, "fp32") == PackedESM2Engine(model, alphabet).token_budget


def test_half_precisions_on_cpu_are_close(small):
    model, alphabet = small
    seqs = random_proteins(8, 30, 200, seed=17)
    ref = reference(model, alphabet, seqs)
    for precision in ("bf16", "fp16"):
        for fp32_residual in (True, False):
            got = PackedESM2Engine(model, alphabet, precision=precision, fp32_residual=fp32_residual).embed(seqs)
            assert rel_err(got, ref).max() <= 2e-2, (precision, fp32_residual)


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_3b_architecture_on_gpu():
    """Random-weight ESM-2 3B architecture (36 x 2560, 40 heads; weights N(0, 0.02), see
    random_esm2): packed fp16 / bf16 against fair-esm fp32 on the same GPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, alphabet = random_esm2(36, 2560, 40, device="cuda", seed=0)
    seqs = random_proteins(64, 30, 400, seed=21)
    # fair-esm fp32, length-sorted padded batches (padding does not change fair-esm's result)
    ref = np.empty((len(seqs), 2560), dtype=np.float32)
    ds = esm.data.FastaBatchedDataset([str(i) for i in range(len(seqs))], seqs)
    convert = alphabet.get_batch_converter()
    with torch.no_grad():
        for batch in ds.get_batch_indices(4096, extra_toks_per_seq=1):
            _, strs, toks = convert([(str(i), seqs[i]) for i in batch])
            rep = model(toks.cuda(), repr_layers=[36])["representations"][36]
            for j, i in enumerate(batch):
                ref[i] = rep[j, 1:min(len(strs[j]), 1024) + 1].mean(0).cpu().numpy()
    # fp32 on CUDA (SDPA path) is ~1e-6 from fair-esm; 1e-4 leaves room for cuBLAS algorithm choices
    for precision, limit in (("fp16", 2e-3), ("bf16", 1e-2), ("fp32", 1e-4)):
        engine = PackedESM2Engine(model, alphabet, device="cuda", precision=precision, token_budget=8192)
        got = engine.embed(seqs)
        rel = rel_err(got, ref)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{precision} {engine.backend}: max rel {rel.max():.2e}, min cos {cos.min():.7f}")
        assert rel.max() <= limit, (precision, engine.backend, rel.max())
        if precision == "fp16":
            assert cos.min() >= 0.99995
            assert engine.backend in ("flash_attn", "varlen", "sdpa")
        del engine
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ varlen plumbing
def _fake_varlen_210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, is_causal=False):
    """Stand-in with torch 2.10's varlen_attn signature, computed per sequence with SDPA."""
    assert cu_seq_q.dtype == torch.int32 and query.ndim == 3 and not is_causal
    cu = cu_seq_q.tolist()
    assert max_q == max_k == max(b - a for a, b in zip(cu, cu[1:]))
    assert cu[-1] == query.shape[0]
    outs = [torch.nn.functional.scaled_dot_product_attention(
        query[a:b].transpose(0, 1), key[a:b].transpose(0, 1), value[a:b].transpose(0, 1)).transpose(0, 1)
        for a, b in zip(cu, cu[1:])]
    return torch.cat(outs)


def _fake_varlen_211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False):
    assert scale == query.shape[-1] ** -0.5 and tuple(window_size) == (-1, -1)
    return _fake_varlen_210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)


@pytest.mark.parametrize("fake", [_fake_varlen_210, _fake_varlen_211])
def test_varlen_call_plumbing(small, fake):
    """The varlen path's cu_seqlens / max_seqlen / signature handling, driven on CPU with a fake kernel."""
    from virnucpro.engines.esm2_packed import _varlen_kwargs

    model, alphabet = small
    engine = PackedESM2Engine(model, alphabet, backend="sdpa_loop", token_budget=500)
    engine._varlen_fn = fake
    engine._varlen_kw = _varlen_kwargs(fake, engine.scale)
    engine._attn = engine._attn_varlen
    seqs = random_proteins(12, 1, 300, seed=23)
    assert rel_err(engine.embed(seqs), reference(model, alphabet, seqs)).max() <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_engine_on_gpu():
    """torch.compile of the dense parts (token dim dynamic), fp16, on a small model."""
    model, alphabet = tiny_model(3, 320, 20, seed=31)
    seqs = random_proteins(40, 20, 400, seed=31)
    ref = reference(model, alphabet, seqs)
    engine = PackedESM2Engine(model, alphabet, device="cuda", precision="fp16", token_budget=4096, compile=True)
    got = engine.embed(seqs)
    assert rel_err(got, ref).max() <= 2e-3
    again = engine.embed(seqs[::-1])  # other pack shapes: dynamic, no failure
    assert rel_err(again[::-1], ref).max() <= 2e-3
