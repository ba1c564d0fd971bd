"""Engines layer: demo models in the real formats, loaders, and batched == original numerics."""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

from virnucpro.engines.classifier import (
    MLPClassifier,
    classify,
    input_dim,
    load_classifier,
)
from virnucpro.engines.demo import write_demo_models
from virnucpro.modelstore.resolve import chunk_length_from_name
from virnucpro.engines.dnabert import DnabertEmbedder
from virnucpro.engines.esm2 import ESM2Reference, load_esm2

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def esm_model(demo):
    return load_esm2(str(demo["esm2"]))


@pytest.fixture(scope="module")
def dnabert(demo):
    return DnabertEmbedder(str(demo["dnabert"]), token_budget=64)


def _digests(directory):  # the manifest records write times: compared on its own in test_modelstore
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "virnucpro-models.json"}


# ---------------------------------------------------------------- demo models


def test_demo_models_are_deterministic_and_complete(demo, tmp_path):
    again = write_demo_models(tmp_path)
    assert _digests(demo["esm2"].parent) == _digests(tmp_path)
    assert set(again) == {"esm2", "esm2_regression", "dnabert", "classifier_300", "classifier_500", "readme"}
    assert "RANDOM DEMO MODELS" in again["readme"].read_text()
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_demo_esm_checkpoint_is_the_fair_esm_hub_format(demo):
    import esm

    data = torch.load(demo["esm2"], map_location="cpu", weights_only=False)
    regression = torch.load(demo["esm2_regression"], map_location="cpu", weights_only=False)
    assert isinstance(data["cfg"]["model"], argparse.Namespace)
    assert all(k.startswith("encoder.") for k in data["model"])
    assert set(regression["model"]) == {"contact_head.regression.weight", "contact_head.regression.bias"}
    # regression data given -> fair-esm loads with strict=True: no missing or unexpected key
    model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t2_demo", data, regression)
    assert model.num_layers == 2 and model.embed_dim == 64
    # fair-esm's own local loader reads it too once Namespace is allow-listed
    with torch.serialization.safe_globals([argparse.Namespace]):
        model, _ = esm.pretrained.load_model_and_alphabet_local(str(demo["esm2"]))
    assert model.embed_dim == 64


def test_load_esm2_reads_demo_with_all_keys(demo, esm_model):
    assert (esm_model.name, esm_model.embed_dim, esm_model.num_layers) == ("esm2_t2_demo", 64, 2)
    assert not esm_model.model.training
    saved = torch.load(demo["esm2"], map_location="cpu", weights_only=False)["model"]
    loaded = esm_model.model.state_dict()
    key = "encoder.sentence_encoder.emb_layer_norm_after.weight"
    assert torch.equal(loaded["emb_layer_norm_after.weight"], saved[key])


def test_load_esm2_without_regression_file_and_bad_names(demo, tmp_path):
    alone = tmp_path / "esm2_t2_demo.pt"
    alone.write_bytes(demo["esm2"].read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_esm2(str(alone)).embed_dim == 64
    renamed = tmp_path / "my_model.pt"
    renamed.write_bytes(demo["esm2"].read_bytes())
    with pytest.raises(ValueError, match="esm2_"):
        load_esm2(str(renamed))
    with pytest.raises(ValueError):
        load_esm2("not_an_esm_model")
    with pytest.raises(FileNotFoundError):
        load_esm2(str(tmp_path / "esm2_missing.pt"))


# ---------------------------------------------------------------- ESM-2


def _esm_one_at_a_time(esm_model, proteins):
    """Straight from the contract: one protein per forward, mean over positions 1..min(L, 1024)."""
    convert = esm_model.alphabet.get_batch_converter()
    layer = esm_model.num_layers
    rows = []
    with torch.no_grad():
        for protein in proteins:
            _, _, tokens = convert([("x", protein)])
            reps = esm_model.model(tokens, repr_layers=[layer])["representations"][layer]
            rows.append(reps[0, 1 : min(len(protein), 1024) + 1].mean(0).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("toks_per_batch", [2048, 200])
def test_esm_reference_matches_per_sequence_pooling(esm_model, toks_per_batch):
    rng = random.Random(7)
    proteins = ["".join(rng.choice(AMINO) for _ in range(n)) for n in (40, 1, 166, 1100, 12, 99, 166, 3)]
    got = ESM2Reference(esm_model, toks_per_batch=toks_per_batch).embed(proteins)
    want = _esm_one_at_a_time(esm_model, proteins)
    assert got.dtype == np.float32 and got.shape == (len(proteins), 64)
    rel = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert rel.max() <= 1e-5
    # the 1100-residue protein is seen whole but pooled over its first 1024 positions only
    assert not np.allclose(got[3], _esm_full_mean(esm_model, proteins[3]), atol=1e-4)


def _esm_full_mean(esm_model, protein):
    convert = esm_model.alphabet.get_batch_converter()
    _, _, tokens = convert([("x", protein)])
    with torch.no_grad():
        reps = esm_model.model(tokens, repr_layers=[2])["representations"][2]
    return reps[0, 1 : len(protein) + 1].mean(0).numpy()


def test_esm_reference_empty_and_lower_precision(esm_model, demo):
    ref = ESM2Reference(esm_model)
    assert ref.dim == 64 and ref.embed([]).shape == (0, 64)
    with pytest.raises(ValueError, match="empty"):
        ref.embed(["MKV", ""])
    proteins = ["MKVLA" * 20, "MST", AMINO * 3]
    want = ref.embed(proteins)
    bf16 = ESM2Reference(str(demo["esm2"]), precision="bf16").embed(proteins)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - want).max() / np.abs(want).max() < 3e-2
    with pytest.raises(ValueError):
        ESM2Reference(esm_model, precision="int8")


# ---------------------------------------------------------------- DNABERT-S


def test_dnabert_demo_remote_fallback_loads_with_its_hazards_handled(demo):
    from safetensors.torch import load_file

    from virnucpro.engines.dnabert import load_dnabert

    tokenizer, model = load_dnabert(str(demo["dnabert"]))  # transformers 5.x: plain from_pretrained fails here
    saved = load_file(str(demo["dnabert"] / "model.safetensors"))
    loaded = model.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert sys.modules[type(model).__module__].flash_attn_qkvpacked_func is None  # Triton path off
    ids = tokenizer("ACGTAATTN")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(ids) < len("ACGTAATTN") + 2  # BPE merges, like DNABERT-S
    out = model(torch.tensor([ids]))[0]
    assert out.shape == (1, len(ids), 32)


def _reference_means(folder, seqs):
    """REFERENCE.md section 7 written out plainly: one sequence at a time, no mask, mean over all tokens."""
    import json
    import math

    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    heads, h, inter, eps = cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"], cfg["layer_norm_eps"]
    n = 2 ** math.floor(math.log2(heads))
    pow2 = lambda k: [(2 ** (-(2 ** -(math.log2(k) - 3)))) ** (i + 1) for i in range(k)]  # noqa: E731
    slopes = torch.tensor(pow2(heads) if n == heads else pow2(n) + pow2(2 * n)[0::2][: heads - n])
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (h,), w[p + ".weight"], w[p + ".bias"], eps)  # noqa: E731
    rows = []
    for seq in seqs:
        ids = torch.tensor(tok.encode(seq).ids)
        length = len(ids)
        pos = torch.arange(length)
        bias = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()[None].float()
        x = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for layer in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            qkv = x @ w[p + "attention.self.Wqkv.weight"].T + w[p + "attention.self.Wqkv.bias"]
            q, k, v = qkv.view(length, 3, heads, h // heads).permute(1, 2, 0, 3)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // heads) + bias, -1) @ v
            att = att.transpose(0, 1).reshape(length, h)
            x = ln(x + att @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"], p + "attention.output.LayerNorm")
            g = x @ w[p + "mlp.gated_layers.weight"].T
            m = torch.nn.functional.gelu(g[:, :inter]) * g[:, inter:]
            x = ln(x + m @ w[p + "mlp.wo.weight"].T + w[p + "mlp.wo.bias"], p + "mlp.layernorm")
        rows.append(x.mean(0).numpy())
    return np.stack(rows)


def _dna(seed, lengths):
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGTN" if i % 3 == 0 else "ACGT") for _ in range(n)) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("heads, hidden", [(4, 32), (6, 48), (12, 96)])  # 6 and 12 (DNABERT-S) are not powers of two
@pytest.mark.parametrize("budget", [1, 64, 100_000])
def test_native_dnabert_equals_the_per_sequence_reference(tmp_path_factory, heads, hidden, budget):
    from virnucpro.engines.demo import write_dnabert_demo
    from virnucpro.engines.dnabert_native import NativeDnabert

    folder = write_dnabert_demo(tmp_path_factory.mktemp(f"dnabert{heads}") / "m", hidden=hidden, heads=heads)
    seqs = _dna(5, (499, 12, 300, 1, 2000, 150, 498, 0, 77, 1700))  # 2000 nt: > 512 tokens (ALiBi table grows)
    engine = NativeDnabert(str(folder), token_budget=budget)
    got = engine.embed(seqs)
    want = _reference_means(folder, seqs)
    assert got.dtype == np.float32 and got.shape == (len(seqs), hidden)
    assert max(engine.count_tokens(seqs)) > 512
    rel = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert rel.max() <= 1e-5
    one_by_one = np.stack([engine.embed([s])[0] for s in seqs])
    assert np.abs(one_by_one - got).max() / np.abs(want).max() <= 1e-5
    assert engine.tokens_embedded == 2 * int(engine.count_tokens(seqs).sum())  # real tokens, once per embed call


def test_native_dnabert_equals_remote_fallback_and_handles_edges(demo, dnabert):
    from virnucpro.engines.dnabert_native import NativeDnabert

    seqs = _dna(3, (499, 12, 300, 1, 150, 498, 77, 300, 35, 2))
    native = NativeDnabert(str(demo["dnabert"]), token_budget=256)
    got = native.embed(seqs)
    for want in (dnabert.embed_one_at_a_time(seqs), dnabert.embed(seqs)):
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5
    assert native.embed([]).shape == (0, 32)
    np.testing.assert_array_equal(native.embed(seqs[::-1]), native.embed(seqs)[::-1])  # rows follow the input
    with pytest.raises(Exception, match="CUDA"):
        NativeDnabert(str(demo["dnabert"]), precision="fp16")


def test_native_dnabert_refuses_unknown_models_in_one_line(demo, tmp_path):
    import json
    import shutil
    import subprocess

    from virnucpro.engines.dnabert_files import DnabertModelError
    from virnucpro.engines.dnabert_native import NativeDnabert

    other = tmp_path / "other"
    shutil.copytree(demo["dnabert"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["HyenaDNAModel"], "model_type": "hyena"}))
    with pytest.raises(DnabertModelError, match="config.json.*--dnabert-remote-code"):
        NativeDnabert(str(other))
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nACGT\n")
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "embed", "dnabert", str(fasta), "--model", str(other),
                           "--out", str(tmp_path / "x.h5"), "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr and "--dnabert-remote-code" in done.stderr
    nothing = tmp_path / "noweights"
    shutil.copytree(demo["dnabert"], nothing)
    (nothing / "model.safetensors").unlink()
    with pytest.raises(DnabertModelError, match="model.safetensors or pytorch_model.bin"):
        NativeDnabert(str(nothing))
    with pytest.raises(DnabertModelError, match="not in the local Hugging Face cache"):
        NativeDnabert("nobody-here/no-such-model")


def test_dnabert_batched_equals_one_at_a_time(dnabert):
    rng = random.Random(3)
    seqs = ["".join(rng.choice("ACGTN" if i % 3 == 0 else "ACGT") for _ in range(n))
            for i, n in enumerate((499, 12, 300, 1, 150, 498, 77, 300, 35, 2))]
    got = dnabert.embed(seqs)
    want = dnabert.embed_one_at_a_time(seqs)
    assert got.dtype == np.float32 and got.shape == (len(seqs), dnabert.dim) == (10, 32)
    assert np.abs(got - want).max() <= 1e-5
    assert dnabert.embed([]).shape == (0, 32)


def test_dnabert_batches_respect_token_budget(dnabert):
    lengths = [5, 40, 3, 17, 64, 100, 8]
    batches = dnabert._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:  # a lone over-budget sequence still gets its own batch
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= dnabert.token_budget


# ---------------------------------------------------------------- classifier


def test_classifier_pickle_is_main_mlpclassifier(demo):
    with zipfile.ZipFile(demo["classifier_300"]) as archive:
        pickle_bytes = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"__main__\nMLPClassifier" in pickle_bytes
    for key in ("classifier_300", "classifier_500"):
        model = load_classifier(demo[key])
        assert isinstance(model, MLPClassifier) and not model.training
        assert input_dim(model) == model.input_dim == 96
        assert model.bn1.running_mean.abs().sum() > 0
    assert not hasattr(sys.modules["__main__"], "MLPClassifier")  # injection undone
    assert chunk_length_from_name(demo["classifier_300"]) == 300
    assert chunk_length_from_name(demo["classifier_500"]) == 500


def test_classifier_state_dict_forms_load_identically(demo, tmp_path):
    model = load_classifier(demo["classifier_300"])
    features = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    want = classify(model, features)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pth")
    for name in ("plain.pth", "wrapped.pth"):
        np.testing.assert_array_equal(classify(load_classifier(tmp_path / name), features), want)


def test_classifier_rejects_other_files(demo, tmp_path):
    (tmp_path / "notes.pth").write_text("not a model\n")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    for path in (tmp_path / "notes.pth", tmp_path / "other.pth", demo["esm2"]):
        with pytest.raises(ValueError, match="MLPClassifier") as info:
            load_classifier(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_classify_probabilities(demo):
    model = load_classifier(demo["classifier_500"])
    features = np.random.default_rng(1).standard_normal((600, 96)).astype(np.float32)  # > one batch of 256
    probs = classify(model, features)
    assert probs.dtype == np.float32 and probs.shape == (600, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    with torch.no_grad():  # eval-mode reference: BatchNorm running stats, no dropout
        logits = model(torch.from_numpy(features)).numpy()
    np.testing.assert_array_equal(probs.argmax(1), logits.argmax(1))
    assert classify(model, np.zeros((0, 96), np.float32)).shape == (0, 2)
    with pytest.raises(ValueError, match="95.*96"):
        classify(model, np.zeros((2, 95), np.float32))


@pytest.mark.parametrize(
    "name, expected",
    [("300_model.pth", 300), ("500_model.pth", 500), ("/a/b/model-300.pth", 300), ("model_500_v2.pth", 500),
     ("3000_model.pth", None), ("model.pth", None), ("300_500.pth", None)],
)
def test_chunk_length_from_name(name, expected):
    assert chunk_length_from_name(name) == expected


def test_native_dnabert_reads_a_pytorch_bin_with_bert_prefix_and_mlm_head(demo, tmp_path):
    """A BertForMaskedLM-style checkpoint (DNABERT-2 layout): `bert.` prefixes, a `cls.*` head,
    weights in pytorch_model.bin instead of model.safetensors: the same embeddings."""
    import shutil

    from safetensors.torch import load_file

    from virnucpro.engines.dnabert_native import NativeDnabert

    folder = tmp_path / "mlm-layout"
    shutil.copytree(demo["dnabert"], folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    renamed = {f"bert.{name}": tensor for name, tensor in weights.items()}
    renamed["cls.predictions.bias"] = torch.zeros(7)  # an MLM head the embedding never uses
    torch.save(renamed, folder / "pytorch_model.bin")
    seqs = ["ACGTACGTTTGACCA" * 5, "GGGCCCAAATTT", "ATG" * 40]
    expected = NativeDnabert(str(demo["dnabert"])).embed(seqs)
    got = NativeDnabert(str(folder)).embed(seqs)
    assert np.array_equal(got, expected)


class _Hostile:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch '{self.marker}'",))


def test_native_dnabert_refuses_a_hostile_pytorch_bin_without_running_it(demo, tmp_path):
    import shutil

    from virnucpro.engines.dnabert_native import NativeDnabert
    from virnucpro.engines.safe_load import UnsafeModelFileError

    folder, marker = tmp_path / "evil", tmp_path / "MARKER"
    shutil.copytree(demo["dnabert"], folder)
    (folder / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2), "x": _Hostile(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeModelFileError) as refused:
        NativeDnabert(str(folder))
    assert str(folder / "pytorch_model.bin") in str(refused.value) and "--trust-model-pickles" in str(refused.value)
    assert not marker.exists()


def test_every_engine_embeds_into_a_given_buffer_with_the_same_rows(demo, esm_model, dnabert):
    """embed_shard hands each window one of two reused buffers: an engine must fill exactly that
    buffer (every row, stale bytes overwritten) and give the rows it gives without one."""
    from virnucpro.engines.dnabert_native import NativeDnabert
    from virnucpro.engines.esm2_packed import PackedESM2Engine

    rng = random.Random(7)
    dna = _dna(5, (150, 12, 300, 77, 150, 35))
    proteins = ["".join(rng.choice(AMINO) for _ in range(n)) for n in (50, 3, 99, 17, 50, 8)]
    engines = [(NativeDnabert(str(demo["dnabert"]), token_budget=256), dna), (dnabert, dna),
               (PackedESM2Engine(esm_model.model, esm_model.alphabet), proteins), (ESM2Reference(esm_model), proteins)]
    for engine, seqs in engines:
        fresh = engine.embed(seqs)
        buffer = np.full((len(seqs) + 3, engine.dim), np.nan, np.float32)  # stale contents, longer than needed
        got = engine.embed(seqs, out=buffer[:len(seqs)])
        assert np.shares_memory(got, buffer) and np.isfinite(buffer[:len(seqs)]).all()
        np.testing.assert_array_equal(got, fresh)
        assert np.isnan(buffer[len(seqs):]).all()  # nothing written past the rows asked for
        with pytest.raises(ValueError, match="output buffer"):
            engine.embed(seqs, out=np.empty((len(seqs), engine.dim + 1), np.float32))


FIRST_THREADED_COS = """
import sys, numpy as np, torch
if sys.argv[1] == "stage":
    from virnucpro.stages.embedding import resolve_device
    resolve_device("cpu")  # what every torch stage calls first
torch.set_num_threads(2)  # the fault needs a worker thread, on any machine
angles = torch.arange(16384, dtype=torch.float32).reshape(2048, 8) * 0.37
right = np.cos(angles.numpy().astype(np.float64)).astype(np.float32)
print(int((np.abs(angles.cos().numpy() - right) > 1e-6).sum()))
"""


def test_the_first_threaded_cpu_math_call_is_right_after_a_stage_starts():
    """A process's first threaded VML call (torch's cos here) sometimes gave a wrong half on a worker
    thread: ~1 fresh process in 4 under pytest on the 2-core VM (so 10 clean runs without the
    warm-up happen ~6% of the time). Stages warm it up serially first."""
    # one after another: started all at once, the processes never showed it
    wrong = [int(subprocess.run([sys.executable, "-c", FIRST_THREADED_COS, "stage"], capture_output=True, text=True,
                                check=True).stdout) for _ in range(10)]
    assert wrong == [0] * 10


def test_safetensors_files_with_several_metadata_keys_have_one_byte_order():
    """The demo DNABERT-S weights (metadata: format + the demo mark) came out in one of two byte
    orders depending on the process (safetensors keeps metadata in a randomly seeded hash map)."""
    code = ("import hashlib, torch; from virnucpro.engines.safe_load import safetensors_bytes; "
            "print(hashlib.sha256(safetensors_bytes({'w': torch.ones(2)}, "
            "{'format': 'pt', 'virnucpro_demo': 'x', 'a': 'b', 'zz': 'y'})).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(6)}
    assert len(digests) == 1, digests
