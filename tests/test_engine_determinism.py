"""Issue 23: deterministic pooling and the compiled packed ESM-2 engine, on the CPU.

The pooling of both packed engines must not use float atomics (index_add_ / scatter_add_ /
index_put_(accumulate=True) are atomicAdd on CUDA: the order of each sum, hence its last bits,
changes run to run). Here those ops are made to fail, the engines run under
torch.use_deterministic_algorithms(True), and a second call must give the same bits.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch

esm = pytest.importorskip("esm")

from test_esm2_packed import random_proteins, reference, rel_err, tiny_model  # noqa: E402
from virnucpro.engines.esm2_packed import PackedESM2Engine  # noqa: E402
from virnucpro.engines.pooled_rows import segment_means  # noqa: E402

ATOMIC_OPS = ("index_add_", "index_add", "scatter_add_", "scatter_add", "index_put_")


@contextlib.contextmanager
def deterministic_without_atomics(monkeypatch):
    def refuse(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} is a float atomic on CUDA: not deterministic")
        return fail

    for name in ATOMIC_OPS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    monkeypatch.setattr(torch, "index_add", refuse("torch.index_add"))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def test_segment_means_is_the_mean_of_each_run_of_rows():
    rows = torch.randn(17, 5, generator=torch.Generator().manual_seed(3))
    lengths = [4, 0, 6, 7]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    divisor = torch.tensor([4.0, 0.0, 6.0, 7.0])
    by_lengths = segment_means(rows, divisor, lengths=torch.tensor(lengths))
    by_offsets = segment_means(rows, divisor, offsets=offsets)
    assert by_lengths.numpy().tobytes() == by_offsets.numpy().tobytes()
    starts = offsets.tolist()
    for b, n in enumerate(lengths):
        if n:
            torch.testing.assert_close(by_lengths[b], rows[starts[b]:starts[b] + n].mean(0))
        else:
            assert torch.isnan(by_lengths[b]).all()  # 0/0, as fair-esm's mean over no residue


def test_packed_esm2_runs_deterministic_without_atomics(monkeypatch):
    model, alphabet = tiny_model(2, 64, 4)
    seqs = random_proteins(12, 1, 200, seed=5)
    engine = PackedESM2Engine(model, alphabet, token_budget=500)
    with deterministic_without_atomics(monkeypatch):
        first = engine.embed(seqs)
        again = engine.embed(seqs)
    assert first.tobytes() == again.tobytes()
    assert rel_err(first, reference(model, alphabet, seqs)).max() <= 1e-5


def test_native_dnabert_runs_deterministic_without_atomics(monkeypatch, tmp_path):
    from virnucpro.engines.demo import write_dnabert_demo
    from virnucpro.engines.dnabert_native import NativeDnabert

    folder = tmp_path / "dnabert"
    write_dnabert_demo(folder, hidden=32, layers=2, heads=4, intermediate=64)
    rng = np.random.default_rng(7)
    seqs = ["".join(rng.choice(list("ACGT"), int(n))) for n in rng.integers(1, 200, 20)]
    native = NativeDnabert(str(folder), token_budget=512)
    with deterministic_without_atomics(monkeypatch):
        first = native.embed(seqs)
        again = native.embed(seqs)
    assert first.tobytes() == again.tobytes()
    # the same means as each sequence alone (test_engines checks those against the model's own code)
    alone = np.concatenate([native.embed([s]) for s in seqs])
    assert np.abs(first - alone).max() / np.abs(alone).max() <= 1e-5


# ------------------------------------------------------------------------------ compile
def _symbols(graph_module) -> set:
    """The free symbols of a captured graph's inputs (its dynamic dimensions)."""
    found = set()
    for node in graph_module.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("example_value")
        sizes = value.shape if isinstance(value, torch.Tensor) else [value]
        for size in sizes:
            if isinstance(size, (torch.SymInt, torch.SymFloat)):
                found |= {str(s) for s in size.node.expr.free_symbols}
    return found


def _pack_sizes(engine, seqs):
    from virnucpro.engines.esm2_packing import ffd_pack

    return {int(sum(len(seqs[i]) + 2 for i in p)) for p in ffd_pack(np.array([len(s) + 2 for s in seqs]),
                                                                     engine.token_budget)}


def test_compiled_graphs_have_only_the_token_dim_dynamic_and_never_recompile(monkeypatch):
    """One graph per dense function for 20 different pack sizes; its only symbol is the token count."""
    from torch._dynamo.utils import counters

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward  # eager: this test is about dynamo's guards, not inductor's kernels

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(real_compile, backend=recording_backend))
    torch._dynamo.reset()
    counters.clear()
    model, alphabet = tiny_model(2, 64, 4)
    engine = PackedESM2Engine(model, alphabet, token_budget=2000, compile=True)
    sizes = set()
    for i in range(20):
        seqs = random_proteins(1 + i % 4, 2 + 3 * i, 40 + 7 * i, seed=40 + i)
        sizes |= _pack_sizes(engine, seqs)
        engine.embed(seqs)
    assert len(sizes) >= 20
    assert len(graphs) == 2, [g.code for g in graphs]  # _attn_in and _attn_out_ffn, each compiled once
    assert sum(counters["recompiles"].values()) == 0
    for gm in graphs:
        assert len(_symbols(gm)) == 1, _symbols(gm)


def test_compiled_engine_equals_eager_across_pack_sizes():
    """Inductor on the CPU: compiled == eager within 1e-5 (REFERENCE.md section 3) for 20 pack
    sizes, compiled once (zero recompiles)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, alphabet = tiny_model(1, 32, 2)
    compiled = PackedESM2Engine(model, alphabet, token_budget=2000, compile=True)
    eager = PackedESM2Engine(model, alphabet, token_budget=2000)
    worst = 0.0
    for i in range(20):
        seqs = random_proteins(1 + i % 3, 3 + 5 * i, 30 + 9 * i, seed=70 + i)
        got, want = compiled.embed(seqs), eager.embed(seqs)
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    assert worst <= 1e-5
    assert counters["frames"]["ok"] == 2 and sum(counters["recompiles"].values()) == 0


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_window_recomputed_on_a_gpu_gives_the_same_bits(tmp_path):
    """The promise of stages/embedding.py on CUDA: the same call twice, the same bytes, for the
    packed ESM-2 engine (fp16, eager and compiled) and the native DNABERT-S engine (fp32, fp16)."""
    from virnucpro.engines.demo import write_dnabert_demo
    from virnucpro.engines.dnabert_native import NativeDnabert

    model, alphabet = tiny_model(3, 320, 20, seed=31)
    seqs = random_proteins(200, 20, 600, seed=31)
    for compile in (False, True):
        engine = PackedESM2Engine(model, alphabet, device="cuda", precision="fp16", token_budget=8192, compile=compile)
        assert engine.embed(seqs).tobytes() == engine.embed(seqs).tobytes(), compile
    folder = tmp_path / "dnabert"
    write_dnabert_demo(folder, hidden=768, layers=2, heads=12, intermediate=3072)
    rng = np.random.default_rng(9)
    dna = ["".join(rng.choice(list("ACGT"), int(n))) for n in rng.integers(100, 500, 300)]
    for precision in ("fp32", "fp16"):
        native = NativeDnabert(str(folder), device="cuda", precision=precision, token_budget=16384)
        assert native.embed(dna).tobytes() == native.embed(dna).tobytes(), precision
