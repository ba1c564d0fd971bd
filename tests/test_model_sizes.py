"""Untrusted sizes and numbers in model files (issue 25 items 5, 7, 12): every declared size is
checked against the weights present before anything of that size is built, weights are floats
that store every value, and a NaN reaching an embedding or a score fails the shard naming the
model. Each refusal is one line naming the file."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.engines import classifier as classifier_module
from virnucpro.engines.classifier import ClassifierFileError, load_classifier
from virnucpro.engines.demo import DNABERT_DIR, ESM_NAME
from virnucpro.engines.dnabert_native import NativeDnabert
from virnucpro.engines.esm2 import load_esm2
from virnucpro.engines.safe_load import ModelFileError
from virnucpro.errors import ShardError
from virnucpro.orchestration.config import RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir


def one_line_naming(info, path: Path) -> str:
    text = str(info.value)
    assert str(path) in text and "\n" not in text, text
    return text


# ---------------------------------------------------------------- DNABERT-S folder

@pytest.fixture
def dnabert_copy(demo_models, tmp_path) -> Path:
    folder = tmp_path / "dnabert"
    shutil.copytree(demo_models / DNABERT_DIR, folder)
    return folder


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def save_bin(folder: Path, change) -> Path:
    """The folder's weights as pytorch_model.bin (the only weights file), after `change(state)`."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def test_dnabert_layer_count_is_checked_against_the_weights_before_building(dnabert_copy):
    config = edit_config(dnabert_copy, num_hidden_layers=100_000)  # the demo holds 2
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="num_hidden_layers is 100000 but the weights present have 2") as info:
            NativeDnabert(str(dnabert_copy))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_naming(info, config)
    assert peak < 16 << 20, peak  # a table of the declared layers' weights was ~200 MB


@pytest.mark.parametrize("field, value, words", [
    ("num_hidden_layers", 1e8, "not a positive whole number"),  # JSON 1e8 is a float
    ("hidden_size", 0, "not a positive whole number"),
    ("num_attention_heads", True, "not a positive whole number"),
    ("intermediate_size", 128, "intermediate_size is 128 but the weights present have 64"),
    ("layer_norm_eps", "nan", "not a finite positive number"),
    ("layer_norm_eps", float("inf"), "not a finite positive number"),
    ("layer_norm_eps", -1e-12, "not a finite positive number"),
])
def test_dnabert_config_numbers_are_validated(dnabert_copy, field, value, words):
    config = edit_config(dnabert_copy, **{field: value})
    with pytest.raises(ModelFileError, match=words) as info:
        NativeDnabert(str(dnabert_copy))
    one_line_naming(info, config)


@pytest.mark.parametrize("text, words", [
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"not a readable JSON file \(nested deeper than 32 levels"),  # was RecursionError
    ("{}" + " " * (2 << 20), "larger than 1024 KiB, so not a model's config.json"),  # was read whole
])
def test_dnabert_config_json_deeply_nested_or_huge_is_one_line(dnabert_copy, text, words):
    from virnucpro.engines.dnabert_files import DnabertModelError

    (dnabert_copy / "config.json").write_text(text)
    with pytest.raises(DnabertModelError, match=words) as info:
        NativeDnabert(str(dnabert_copy))
    one_line_naming(info, dnabert_copy / "config.json")


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update({"embeddings.word_embeddings.weight": s["embeddings.word_embeddings.weight"].long()}),
     "holds int64 values, not floating point"),
    (lambda s: s.update({"embeddings.LayerNorm.weight": s["embeddings.LayerNorm.weight"] > 0}),
     "holds bool values"),
    (lambda s: s.update({"encoder.layer.0.mlp.wo.bias": torch.ones(1).expand(s["encoder.layer.0.mlp.wo.bias"].shape)}),
     r"is expanded from fewer stored values \(stride \(0,\)\)"),
])
def test_dnabert_weights_must_be_stored_floats(dnabert_copy, change, words):
    weights = save_bin(dnabert_copy, change)
    with pytest.raises(ModelFileError, match=words) as info:
        NativeDnabert(str(dnabert_copy))
    one_line_naming(info, weights)


# ---------------------------------------------------------------- ESM-2 checkpoint

def write_esm(demo_models: Path, tmp_path: Path, change) -> Path:
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(demo_models / f"{ESM_NAME}.pt", weights_only=True)
    change(data["cfg"]["model"], data["model"])
    path = tmp_path / f"{ESM_NAME}.pt"  # no contact-regression file beside it: fair-esm accepts that
    torch.save(data, path)
    return path


EMBED = "encoder.sentence_encoder.embed_tokens.weight"


@pytest.mark.parametrize("change, words", [
    (lambda cfg, state: setattr(cfg, "encoder_layers", 300), "encoder_layers is 300 but the weights present have 2"),
    (lambda cfg, state: setattr(cfg, "encoder_attention_heads", 0), "encoder_attention_heads is 0, not a positive"),
    (lambda cfg, state: setattr(cfg, "encoder_attention_heads", 3), "64 is not a multiple of encoder_attention_heads 3"),
    (lambda cfg, state: setattr(cfg, "encoder_embed_dim", 10 ** 6), "encoder_embed_dim is 1000000 but the weights"),
    (lambda cfg, state: setattr(cfg, "token_dropout", "no"), "cfg token_dropout is 'no', not true or false"),
    (lambda cfg, state: setattr(cfg, "token_dropout", torch.ones(3)), "cfg token_dropout is tensor"),
    (lambda cfg, state: state.update({EMBED: state[EMBED].to(torch.int32)}), "holds int32 values, not floating point"),
    (lambda cfg, state: state.update({EMBED: torch.zeros(1, 1).expand(state[EMBED].shape)}), "is expanded"),
])
def test_esm2_sizes_and_weights_are_checked_before_fair_esm_builds(demo_models, tmp_path, change, words):
    path = write_esm(demo_models, tmp_path, change)
    with pytest.raises(ModelFileError, match=words) as info:
        load_esm2(str(path))
    one_line_naming(info, path)


def test_esm2_weights_that_do_not_fit_the_cfg_name_the_file(demo_models, tmp_path):
    path = write_esm(demo_models, tmp_path, lambda cfg, state: state.pop(
        "encoder.sentence_encoder.layers.1.fc1.weight"))
    with pytest.raises(ModelFileError, match="weights do not fit the ESM-2 its cfg describes") as info:
        load_esm2(str(path))
    one_line_naming(info, path)


# ---------------------------------------------------------------- classifier

def save_released(model: torch.nn.Module, path: Path, monkeypatch) -> Path:
    """`model` pickled whole under `__main__.MLPClassifier`, as the released files are."""
    main_class = type("MLPClassifier", (classifier_module.MLPClassifier,), {"__module__": "__main__"})
    model.__class__ = main_class
    monkeypatch.setattr(sys.modules["__main__"], "MLPClassifier", main_class, raising=False)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def demo_classifier(demo_models: Path) -> classifier_module.MLPClassifier:
    return load_classifier(demo_models / "300_model.pth")


def test_classifier_of_expanded_tensors_is_refused_before_it_is_built(tmp_path):
    wide = 10 ** 6  # a 4 kB file once built a classifier 10^7 wide (5.2 GB)
    state = {"hidden_layer.weight": torch.zeros(1, 1).expand(wide, 96), "hidden_layer.bias": torch.zeros(1).expand(wide),
             "bn1.weight": torch.ones(1).expand(wide), "bn1.bias": torch.zeros(1).expand(wide),
             "bn1.running_mean": torch.zeros(1).expand(wide), "bn1.running_var": torch.ones(1).expand(wide),
             "bn1.num_batches_tracked": torch.tensor(0), "output_layer.weight": torch.zeros(1, 1).expand(2, wide),
             "output_layer.bias": torch.zeros(2)}
    path = tmp_path / "300_model.pth"
    torch.save(state, path)
    assert path.stat().st_size < 8192
    with pytest.raises(ModelFileError, match="hidden_layer.weight of shape .* is expanded") as info:
        load_classifier(path)
    one_line_naming(info, path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_classifier_integer_or_bool_weights_are_refused_not_cast(demo_models, tmp_path, dtype):
    state = demo_classifier(demo_models).state_dict()
    state["output_layer.weight"] = state["output_layer.weight"].to(dtype)
    path = tmp_path / "300_model.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=f"output_layer.weight holds {str(dtype)[6:]} values") as info:
        load_classifier(path)
    one_line_naming(info, path)


def test_classifier_that_contains_itself_is_refused_in_one_line(demo_models, tmp_path, monkeypatch):
    model = demo_classifier(demo_models)
    model._modules["loop"] = model  # state_dict() recursed forever (RecursionError)
    path = save_released(model, tmp_path / "300_model.pth", monkeypatch)
    with pytest.raises(ClassifierFileError, match="wrong structure; expected a VirNucPro MLPClassifier") as info:
        load_classifier(path)
    assert "expected expected" not in one_line_naming(info, path)


def test_classifier_state_dict_hooks_in_the_file_are_never_called(demo_models, tmp_path, monkeypatch):
    model = demo_classifier(demo_models)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model._state_dict_hooks[0] = 5  # state_dict() called it: TypeError 'int' object is not callable
    model.bn1._state_dict_hooks[0] = torch.nn.Linear(1, 1)  # an allow-listed class, called with the wrong arguments
    loaded = load_classifier(save_released(model, tmp_path / "300_model.pth", monkeypatch))
    got = loaded.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_classifier_refusals_say_expected_once(tmp_path):
    path = tmp_path / "300_model.pth"
    path.write_text("not a model\n")
    with pytest.raises(ClassifierFileError) as info:
        load_classifier(path)
    text = one_line_naming(info, path)
    assert "; expected a VirNucPro MLPClassifier" in text and "expected expected" not in text


# ---------------------------------------------------------------- NaN results fail the shard

@pytest.fixture
def demo_copy(quiet_demo_run, tmp_path) -> StageContext:
    assert quiet_demo_run.returncode == 0, quiet_demo_run.stderr
    shutil.copytree(quiet_demo_run.workdir, tmp_path / "w")
    workdir = Workdir(tmp_path / "w")
    return StageContext(workdir=workdir, config=RunConfig.load(workdir))


def test_nan_in_dnabert_weights_fails_the_shard_naming_the_model(demo_copy, dnabert_copy):
    from safetensors.torch import load_file, save_file

    from virnucpro.stages import dnabert

    state = load_file(str(dnabert_copy / "model.safetensors"))
    state["encoder.layer.1.mlp.wo.bias"][0] = float("nan")
    save_file(state, str(dnabert_copy / "model.safetensors"))
    demo_copy.config.models.dnabert = str(dnabert_copy)
    demo_copy.workdir.embeddings("dnabert", 0).unlink()
    with pytest.raises(ShardError, match="dnabert shard 0: frame 0 came out NaN or infinite") as info:
        dnabert.open_stage(demo_copy)(0)
    one_line_naming(info, dnabert_copy)
    assert not demo_copy.workdir.embeddings("dnabert", 0).exists()


def test_nan_score_fails_the_predict_shard_naming_the_classifier(demo_copy, demo_models, tmp_path):
    from virnucpro.stages import predict

    state = demo_classifier(demo_models).state_dict()
    state["bn1.running_var"][5] = -1.0  # sqrt of a negative variance: every score NaN
    path = tmp_path / "300_model.pth"
    torch.save(state, path)
    demo_copy.config.models.classifier = str(path)
    before = demo_copy.workdir.predictions(0).read_bytes()
    with pytest.raises(ShardError, match="predict shard 0: frame 0 came out NaN or infinite") as info:
        predict.open_stage(demo_copy)(0)
    one_line_naming(info, path)
    assert demo_copy.workdir.predictions(0).read_bytes() == before


def test_require_finite_names_the_first_bad_row():
    from virnucpro.stages.embedding import require_finite

    rows = np.zeros((6, 3), np.float32)
    require_finite(rows, "m.pt", "esm2 shard 2", 100)
    rows[4, 1] = np.inf
    with pytest.raises(ShardError, match=r"^m.pt: esm2 shard 2: frame 104 came out NaN or infinite"):
        require_finite(rows, "m.pt", "esm2 shard 2", 100)
