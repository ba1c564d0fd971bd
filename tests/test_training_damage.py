"""Issue 33 items 5, 6, 7: a damaged training checkpoint is set aside and the training starts over
(never resumed into a different classifier, never wedging the stage); NaN or infinite embedding
rows are refused, naming the file and its first such frame, before a batch holds them; a resumed
training writes the same classifier.json bytes as an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from training_shards import write_training_shards
from virnucpro.errors import StaleInputError
from virnucpro.training import ORIGINAL, TrainingInterrupted, fit, write_classifier
from virnucpro.training.fit import checkpoint_sha256
from virnucpro.training.rows import RowIndex

RECIPE = replace(ORIGINAL, max_epochs=2)
SEED, HOLDOUT = 7, 0.2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as test_training: bitwise comparisons, and no OpenMP waiting on 2 cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_training_shards(tmp_path_factory.mktemp("shards"), shards=2, reads=240)


def train(shards, folder: Path, stop=lambda: False, log=None):
    sources, labels = shards
    return fit(sources, labels, HOLDOUT, SEED, (folder / "checkpoint.safetensors", folder / "checkpoint.json"),
               "cpu", stop, log or (lambda line: None), RECIPE)


def stop_at(calls: int):
    count = iter(range(1, 10 ** 9))
    return lambda: next(count) == calls


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    return train(shards, tmp_path_factory.mktemp("uninterrupted"))


def batches_per_epoch(result) -> int:
    return -(-int(result.rows["training"]) // RECIPE.batch_size)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------------ item 7

def test_a_resumed_training_writes_the_same_classifier_bytes(shards, uninterrupted, tmp_path):
    with pytest.raises(TrainingInterrupted):  # stopped in epoch 2: epoch 1's history comes back from the checkpoint
        train(shards, tmp_path, stop=stop_at(batches_per_epoch(uninterrupted) + 3))
    resumed = train(shards, tmp_path)
    files = {}
    for name, result in (("once", uninterrupted), ("resumed", resumed)):
        folder = tmp_path / name
        folder.mkdir()
        write_classifier(folder / "classifier.safetensors", folder / "classifier.json", result, {"chunk_length": 300})
        files[name] = [(folder / f).read_bytes() for f in ("classifier.safetensors", "classifier.json")]
    assert files["resumed"] == files["once"]
    assert list(json.loads(files["resumed"][1])["history"][0]) == ["epoch", "train_loss", "held_out_loss",
                                                                    "learning_rate"]


# ------------------------------------------------------------------ item 5

def _damage(path: Path, how: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if how == "cut short":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if how == "missing tensor":
        del tensors["best.bn1.running_mean"]
    elif how == "wrong tensor":
        tensors["model.hidden_layer.weight"] = torch.zeros(16, 20)
    elif how == "changed values":
        tensors["model.hidden_layer.weight"] = tensors["model.hidden_layer.weight"] * 1.001
    elif how == "state without a key":
        state = json.loads(metadata["state"])
        del state["scheduler"]
        metadata["state"] = json.dumps(state, sort_keys=True)
    elif how == "no checksum":  # what a checkpoint of an earlier version looks like
        del metadata["sha256"]
    elif how == "wrong tensor, checksum made to match":  # taken up, then refused by the model
        tensors["best.hidden_layer.bias"] = torch.zeros(16)
        metadata["sha256"] = checkpoint_sha256(metadata["state"], tensors)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("how", ["missing tensor", "wrong tensor", "changed values", "state without a key",
                                 "cut short", "no checksum", "wrong tensor, checksum made to match"])
def test_a_damaged_checkpoint_is_set_aside_and_the_training_starts_over(shards, uninterrupted, tmp_path, how):
    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(TrainingInterrupted):
        train(shards, tmp_path, stop=stop_at(batches_per_epoch(uninterrupted) + 5))
    _damage(checkpoint, how)
    damaged = checkpoint.read_bytes()
    lines = []
    result = train(shards, tmp_path, log=lines.append)  # no KeyError, no RuntimeError, not resumed
    said = [line for line in lines if "damaged checkpoint" in line]
    assert len(said) == 1 and said[0].endswith("set aside as checkpoint.safetensors.damaged, training starts over")
    assert not any(line.startswith("resuming") for line in lines)
    assert (tmp_path / "checkpoint.safetensors.damaged").read_bytes() == damaged  # renamed, not deleted
    assert_same_weights(result.state, uninterrupted.state)  # started over: what an uninterrupted training gives
    assert result.history == uninterrupted.history
    # a second damaged one is set aside beside the first, never over it
    _damage(checkpoint, "cut short")
    train(shards, tmp_path)
    assert (tmp_path / "checkpoint.safetensors.damaged").read_bytes() == damaged
    assert (tmp_path / "checkpoint.safetensors.damaged-2").exists()


# ------------------------------------------------------------------ item 6

@pytest.mark.parametrize("side,value", [("training", np.nan), ("held-out", np.inf), ("training", -np.inf)])
def test_non_finite_embedding_rows_are_refused_naming_the_file_and_first_frame(tmp_path, side, value):
    sources, labels = write_training_shards(tmp_path / "shards", shards=2, reads=240)
    index = RowIndex(sources, labels, SEED, HOLDOUT)
    rows = np.flatnonzero(index.shards[1].held_out == (side == "held-out"))
    first, later = int(rows[3]), int(rows[-2])
    path = sources[1].esm2
    with h5py.File(path, "r+") as h5:  # changed after the esm2 stage wrote it
        h5["embeddings"][later, 5] = value
        h5["embeddings"][first, 0] = value
    frame_ids = [line.split("\t")[3] for line in sources[1].frames.read_text().splitlines()[1:]]
    lines = []
    with pytest.raises(StaleInputError) as caught:
        train((sources, labels), tmp_path, log=lines.append)
    message = str(caught.value)
    assert message.startswith(f"{path}: frame {frame_ids[first]} (row {first}) holds NaN or infinite values")
    assert "the esm2 stage will run again for shard 1" in message and "\n" not in message
    assert (caught.value.stage, caught.value.shard) == ("esm2", 1)
    # before any epoch ended: none logged, no checkpoint written (nothing trained on the row is kept)
    assert not any(line.startswith("epoch") for line in lines)
    assert not (tmp_path / "checkpoint.safetensors").exists()
