"""The train stage's engine (virnucpro.training): split by sequence content, streaming, the recipe, checkpoints
that resume bitwise, and the classifier's safetensors files."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training_shards import shard_paths, write_training_shards
from virnucpro.calibration_meta import read_calibration
from virnucpro.classifier_meta import ClassifierFileError, read_classifier_meta
from virnucpro.engines.classifier import classify, load_classifier
from virnucpro.errors import InputError
from virnucpro.pipeline import ShardInterrupted
from virnucpro.holdout import chunk_keys, held_out, sequence_key
from virnucpro.storage import read_shard_frames
from virnucpro.training import ORIGINAL, TrainingInterrupted, fit, write_classifier
from virnucpro.training import rows as training_rows

SHORT = replace(ORIGINAL, max_epochs=3)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches of 32 rows gain nothing from a second thread, and on this shared 2-core machine
    OpenMP's waiting made them ~10x slower; the bitwise comparisons run with one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards, 4 inputs (two per class), 400 reads of 3 frames: 1200 rows."""
    return write_training_shards(tmp_path_factory.mktemp("training-shards"), shards=3, reads=400)


def train(shards, folder: Path, recipe=SHORT, stop=lambda: False, seed=7, holdout=0.2, log=None):
    sources, labels = shards
    return fit(sources, labels, holdout, seed, (folder / "checkpoint.safetensors", folder / "checkpoint.json"),
               "cpu", stop, log or (lambda line: None), recipe)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ the split

def test_holdout_is_by_sequence_content_and_independent_of_sharding():
    rng = np.random.default_rng(1)
    sequences = ["".join(rng.choice(list("ACGT"), 40)) for _ in range(5000)]
    keys = np.repeat([sequence_key(s) for s in sequences], 6)  # 6 frames a read
    whole = held_out(keys, 42, 0.1)
    # every frame of a read on one side
    assert (whole.reshape(-1, 6) == whole.reshape(-1, 6)[:, :1]).all()
    assert 0.08 < whole.mean() < 0.12
    # cut into shards anywhere, in any order: the same sides
    cuts = [0, 7, 1000, 17_777, len(keys)]
    assert np.array_equal(np.concatenate([held_out(keys[a:b], 42, 0.1) for a, b in zip(cuts, cuts[1:])]), whole)
    assert np.array_equal(held_out(keys[::-1], 42, 0.1)[::-1], whole)
    # the content is the identity: the same sequence in any case, in any input, on one side; the seed changes the split
    assert sequence_key(sequences[0].lower()) == sequence_key(sequences[0])
    assert not np.array_equal(held_out(keys, 43, 0.1), whole)
    assert held_out(keys, 2 ** 64 - 1, 0.1).any() and held_out(keys, 0, 0.1).any()


def test_windows_of_a_genome_are_units_of_their_own_and_identical_windows_share_a_side():
    from virnucpro.sequences import chunk_starts

    rng = np.random.default_rng(2)
    genome = "".join(rng.choice(list("ACGT"), 10_000))
    whole = chunk_keys(genome, 300)
    assert whole == [sequence_key(genome)]  # one unit: every chunk of the record on one side
    windows = chunk_keys(genome, 300, window=2000)
    starts = chunk_starts(len(genome), 300)
    assert len(windows) == len(starts) and len(set(windows)) == 5
    assert windows == [sequence_key(genome[s // 2000 * 2000:(s // 2000 + 1) * 2000]) for s in starts]
    # a second genome sharing the first 2,000 bases: that window has the same key, so the same side
    other = genome[:2000] + "".join(rng.choice(list("ACGT"), 4000))
    assert chunk_keys(other, 300, window=2000)[0] == windows[0]
    assert chunk_keys(genome[:1500], 300, window=2000) == [sequence_key(genome[:1500])]


@pytest.mark.parametrize("value", [-1, 2 ** 64, 1.5, "x", True])
def test_a_seed_out_of_range_is_one_line(value):
    from virnucpro.model_facts import seed_problem

    assert seed_problem(value) == f"{value!r} is not a seed (a whole number from 0 to {2 ** 64 - 1})"
    assert seed_problem(2 ** 64 - 1) is None and seed_problem(0) is None


def test_epoch_order_covers_every_training_row_once_and_depends_on_seed_and_epoch(shards, monkeypatch):
    monkeypatch.setattr(training_rows, "BLOCK_ROWS", 50)
    monkeypatch.setattr(training_rows, "WINDOW_BLOCKS", 3)
    sources, labels = shards
    index = training_rows.RowIndex(sources, labels, 7, 0.2)
    with training_rows.RowStream(index) as stream:
        def epoch_rows(epoch, first=0):
            # batches are views of reused buffers: copied to be kept
            return torch.cat([features.clone() for features, _ in stream.training_batches(epoch, 32, first)])
        first, second = epoch_rows(0), epoch_rows(1)
        assert len(first) == index.training_rows
        # the same rows (as a multiset), another order
        assert torch.equal(first[torch.argsort(first[:, 0])], second[torch.argsort(second[:, 0])])
        assert not torch.equal(first, second)
        assert torch.equal(epoch_rows(0), first)  # deterministic
        assert torch.equal(epoch_rows(0, first=5), first[5 * 32:])  # resumed at batch 5: the same rows
        held_out = torch.cat([features.clone() for features, _ in stream.held_out_batches(100)])
        assert len(held_out) == index.held_out_rows
        assert not set(map(tuple, held_out.tolist())) & set(map(tuple, first.tolist()))


# ------------------------------------------------------------------ the recipe, learning, output

@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    lines = []
    return train(shards, folder, log=lines.append), folder, lines


def test_training_learns_and_uses_the_original_recipe(trained):
    result, folder, lines = trained
    # the stated held-out accuracy on classes that differ learnably
    assert result.metrics["accuracy"] >= 0.95, result.metrics
    assert result.epochs == 3 and len(result.history) == 3 and any("epoch 3" in line for line in lines)
    assert result.rows["held_out_virus"] > 0 and result.rows["held_out_other"] > 0
    state = json.loads((folder / "checkpoint.json").read_text())
    assert state["data"]["recipe"] == {**ORIGINAL.to_dict(), "max_epochs": 3}
    recipe = state["data"]["recipe"]
    assert (recipe["hidden"], recipe["batch_size"], recipe["patience"], recipe["lr_step_epochs"]) == (512, 32, 5, 10)
    group = state["optimizer_groups"][0]
    assert (group["initial_lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (2e-4, 0.9, 0, False)
    scheduler = state["scheduler"]
    assert (scheduler["step_size"], scheduler["gamma"], scheduler["last_epoch"]) == (10, 0.85, 3)
    assert state["finished"] and state["epoch"] == 3
    # the embedded state (what a resume reads) is the same as the readable copy
    from safetensors import safe_open
    with safe_open(str(folder / "checkpoint.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["state"]) == state
        assert handle.get_tensor("model.hidden_layer.weight").shape == (512, 20)
        assert "optimizer.0.momentum_buffer" in handle.keys()


def test_new_model_is_xavier_initialised_from_the_seed():
    from virnucpro.training.fit import new_model
    a, b = new_model(3328, ORIGINAL, 1), new_model(3328, ORIGINAL, 1)
    assert_same_weights(a.state_dict(), b.state_dict())
    bound = (6 / (3328 + 512)) ** 0.5  # Xavier-uniform bound; torch's default would be 1/sqrt(3328)
    weight = a.hidden_layer.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert not torch.equal(weight, new_model(3328, ORIGINAL, 2).hidden_layer.weight)


def test_early_stopping_keeps_the_best_epoch(shards, tmp_path):
    # a learning rate that diverges makes the held-out loss rise after the first epochs
    result = train(shards, tmp_path, recipe=replace(ORIGINAL, max_epochs=40, patience=2, learning_rate=5.0))
    losses = [entry["held_out_loss"] for entry in result.history]
    best = int(np.argmin(losses)) + 1
    assert result.epochs < 40 and result.best_epoch == best and result.epochs == best + 2
    assert result.metrics["loss"] == pytest.approx(losses[best - 1], rel=1e-6)


def test_classifier_files_load_without_pickle_and_score_the_same(trained, tmp_path):
    result, _, _ = trained
    weights, meta = tmp_path / "classifier.safetensors", tmp_path / "classifier.json"
    write_classifier(weights, meta, result, {"chunk_length": 150, "models": {"dnabert": {"name": "d"}}})
    loaded = load_classifier(weights)
    features = np.random.default_rng(0).standard_normal((100, 20)).astype(np.float32)
    assert np.array_equal(classify(loaded, features), classify(result.model(), features))
    document = read_classifier_meta(weights)
    assert document["chunk_length"] == 150 and document["input_widths"] == {"dnabert": 8, "esm2": 12}
    assert document["recipe"]["learning_rate"] == 2e-4 and document["seed"] == 7 and document["epochs"] == 3
    assert document["held_out_metrics"]["accuracy"] == result.metrics["accuracy"]
    assert read_classifier_meta(tmp_path / "300_model.pth") is None  # a released classifier has none


def test_classifier_meta_needs_no_torch():
    code = "import sys, virnucpro.classifier_meta; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_damaged_classifier_files_are_refused_in_one_line(trained, tmp_path):
    from safetensors.torch import save_file
    from virnucpro.classifier_meta import weights_sha256
    result, _, _ = trained
    weights, meta = tmp_path / "c.safetensors", tmp_path / "c.json"
    write_classifier(weights, meta, result, {"chunk_length": 300})
    document = json.loads(meta.read_text())

    def refused(match: str):
        with pytest.raises(ClassifierFileError, match=match) as caught:
            load_classifier(weights)
        assert "\n" not in str(caught.value) and isinstance(caught.value, InputError)

    # wrong shapes (a hidden layer of 16), the description's checksum made to match
    save_file({**result.state, "hidden_layer.weight": torch.zeros(16, 20)}, weights)
    meta.write_text(json.dumps({**document, "weights_sha256": weights_sha256(weights.read_bytes())}))
    refused("tensors are not those of the MLPClassifier")
    meta.write_text(json.dumps(document))
    refused("SHA-256 differs")
    meta.write_text(json.dumps({**document, "input_widths": {"dnabert": 8}}))
    refused("input_widths")
    meta.unlink()
    refused("c.json is not beside it")


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("case, match", [
    ("one class", "every input is labelled 'other'"),
    ("no virus rows", "the inputs labelled 'virus' gave no frame"),
    ("held-out without virus", "side of the split .* has no 'virus' frame"),
])
def test_unusable_labels_or_splits_are_refused(tmp_path, case, match):
    if case == "one class":
        sources, _ = write_training_shards(tmp_path, shards=1, reads=20, inputs=2)
        labels = [0, 0]
    elif case == "no virus rows":  # input 1 (virus) has no frame
        sources, labels = write_training_shards(tmp_path, shards=1, reads=20, inputs=3,
                                                input_of_read=lambda r: 2 * (r % 2))
    else:  # one virus read only: it falls on the training side
        sources, labels = write_training_shards(tmp_path, shards=1, reads=20, inputs=2,
                                                input_of_read=lambda r: int(r == 0))
    with pytest.raises(InputError, match=match) as caught:
        fit(sources, labels, 0.2, 1, (tmp_path / "c.safetensors", tmp_path / "c.json"), "cpu", lambda: False,
            lambda line: None, SHORT)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "c.safetensors").exists()


# ------------------------------------------------------------------ checkpoint and resume

def stop_at(calls: int):
    """A stop_requested that asks to stop at its `calls`-th call (a batch boundary)."""
    count = iter(range(1, 10**9))
    return lambda: next(count) == calls


def test_a_stopped_training_resumes_to_bitwise_the_same_weights(trained, shards, tmp_path):
    uninterrupted, _, _ = trained
    per_epoch = -(-int(uninterrupted.rows["training"]) // 32)
    # stopped in epoch 2 before its batch 6; resumed, stopped again before epoch 3's first batch
    for calls, where in ((per_epoch + 7, (1, 6)), (per_epoch - 6 + 1, (2, 0))):
        with pytest.raises(TrainingInterrupted) as caught:
            train(shards, tmp_path, stop=stop_at(calls))
        assert (caught.value.epoch, caught.value.batch) == where
        state = json.loads((tmp_path / "checkpoint.json").read_text())
        assert (state["epoch"], state["batch"], state["finished"]) == (*where, False)
    lines = []
    resumed = train(shards, tmp_path, log=lines.append)
    assert "resuming at epoch 3, batch 0" in lines
    assert_same_weights(resumed.state, uninterrupted.state)
    assert resumed.history == uninterrupted.history and resumed.metrics == uninterrupted.metrics
    # a finished checkpoint is taken as it is
    again = train(shards, tmp_path)
    assert_same_weights(again.state, uninterrupted.state)


def test_a_checkpoint_of_other_data_is_not_resumed(trained, shards, tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(shards, tmp_path, stop=stop_at(20))
    lines = []
    train(shards, tmp_path, seed=8, recipe=replace(SHORT, max_epochs=1), log=lines.append)
    assert any("made from other data or another recipe; training starts over" in line for line in lines)


SIGNALLED_TRAINING = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from dataclasses import replace
from training_shards import shard_paths
from virnucpro.orchestration.runner import StopFlag
from virnucpro.training import ORIGINAL, TrainingInterrupted, fit
flag = StopFlag().install()  # what the runner gives a stage as ctx.stop_requested
calls = iter(range(10**9))
def stop():
    if next(calls) == {signal_at}:  # mid-training: tell the test, and give it time to signal
        open({marker!r}, "w").close()
        time.sleep(600 if {hang} else 2)
    return flag()
try:
    fit([shard_paths(Path({shards!r}), k) for k in range(3)], [0, 1, 0, 1], 0.2, 7,
        (Path({folder!r}) / "checkpoint.safetensors", Path({folder!r}) / "checkpoint.json"), "cpu", stop, print,
        replace(ORIGINAL, max_epochs=3))
except TrainingInterrupted as stopped:
    sys.exit(3)
"""


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "SIGTERM"])
def test_killed_or_terminated_mid_training_then_resumed_gives_bitwise_the_same_weights(trained, shards, tmp_path,
                                                                                        signal_number):
    uninterrupted, _, _ = trained
    per_epoch = -(-int(uninterrupted.rows["training"]) // 32)
    marker = tmp_path / "signal-now"
    code = SIGNALLED_TRAINING.format(tests=str(TESTS), folder=str(tmp_path), marker=str(marker),
                                     signal_at=per_epoch + 10, hang=signal_number == signal.SIGKILL,
                                     shards=str(shards[0][0].frames.parent))
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal_number)
    finally:
        returncode = process.wait()
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    if signal_number == signal.SIGKILL:  # the last checkpoint: the end of epoch 1
        assert returncode == -signal.SIGKILL and (state["epoch"], state["batch"]) == (1, 0)
    else:  # stopped at the next batch boundary, checkpoint written there
        assert returncode == 3 and (state["epoch"], state["batch"]) == (1, 10)
    resumed = train(shards, tmp_path)
    assert_same_weights(resumed.state, uninterrupted.state)


# ------------------------------------------------------------------ the stage

def write_read_tables(sources, inputs: int, folder: Path, frameless: int = 30) -> None:
    """prepare's read table of each input: its reads with their frame counts, and `frameless`
    reads without a frame (the train stage's calibration counts them)."""
    from collections import Counter

    frames = Counter()
    for source in sources:
        table = read_shard_frames(source.frames)
        frames.update(zip(table.input_index.tolist(), table.read_ids))
    for index in range(inputs):
        rows = [f"{read}\t300\t1\t{count}\n" for (i, read), count in frames.items() if i == index]
        rows += [f"empty{index}_{j}\t300\t1\t0\n" for j in range(frameless)]
        (folder / f"reads-{index}.tsv").write_text("read_id\tlength\tchunks\tframes\n" + "".join(rows))
        # the input itself, for the frameless reads: their sequence's key puts each on its side
        (folder / f"in{index}.fa").write_text("".join(f">empty{index}_{j}\n{'N' * (j + 1)}\n" for j in range(frameless)))


def fake_run(shards, folder: Path):
    sources, labels = shards
    shard_folder = sources[0].frames.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_read_tables(sources, 4, folder)
    workdir = SimpleNamespace(
        root=folder,  # no run.json or state: the report the stage writes at its end is refused with a warning
        reads_table=lambda index: folder / f"reads-{index}.tsv",
        shard_frames=lambda k: shard_paths(shard_folder, k).frames,
        embeddings=lambda kind, k: getattr(shard_paths(shard_folder, k), kind),
        split_keys=lambda k: shard_paths(shard_folder, k).split_keys,
        training_checkpoint=folder / "training/checkpoint.safetensors",
        training_state=folder / "training/checkpoint.json",
        classifier_weights=folder / "classifier/classifier.safetensors",
        classifier_meta=folder / "classifier/classifier.json")
    config = SimpleNamespace(
        shards=len(sources), labels=["virus" if label else "other" for label in labels], holdout=0.2, seed=7,
        holdout_window=0, genbank=[],
        device="cpu", chunk_length=300, embedding_dtype="float32", input_names=[f"in{i}" for i in range(4)],
        inputs=[str(folder / f"in{i}.fa") for i in range(4)],
        models=SimpleNamespace(dnabert="DNABERT-S", esm="esm2_t6_8M_UR50D", classifier="", demo=False),
        fingerprint={"inputs": [{"path": str(folder / "in0.fa"), "sha256": "ab" * 32}],
                     "models": {"esm": {"name": "esm2_t6_8M_UR50D"}, "dnabert": {"path": "/m", "sha256": "cd" * 32}}})
    return workdir, config


def test_train_stage_writes_the_classifier_and_stops_with_shard_interrupted(trained, shards, tmp_path, monkeypatch):
    from virnucpro.pipeline import StageContext
    from virnucpro.stages import train as stage
    monkeypatch.setattr(stage, "RECIPE", SHORT)
    workdir, config = fake_run(shards, tmp_path)
    with pytest.raises(ShardInterrupted) as caught:
        stage.open_stage(StageContext(workdir, config, stop_requested=stop_at(5)))(0)
    assert caught.value.metrics == {"epoch": 1, "batch": 4}
    metrics = stage.open_stage(StageContext(workdir, config))(0)
    assert metrics["epochs"] == 3 and metrics["frames"] == 1200
    document = read_classifier_meta(workdir.classifier_weights)
    assert document["models"] == {"dnabert": {"name": "DNABERT-S", "sha256": "cd" * 32},
                                  "esm2": {"name": "esm2_t6_8M_UR50D", "sha256": None}}
    assert document["training_inputs"][0] == {"name": "in0", "path": config.inputs[0], "label": "other",
                                              "sha256": "ab" * 32}
    assert document["chunk_length"] == 300 and document["input_widths"] == {"dnabert": 8, "esm2": 12}
    assert_same_weights(load_classifier(workdir.classifier_weights).state_dict(), trained[0].state)
    # the classifier's own calibration, of its held-out reads (frameless ones included)
    calibration = read_calibration(workdir.classifier_meta)
    assert calibration["classifier_sha256"] == document["weights_sha256"] and calibration["chunk_length"] == 300
    held_out = calibration["fitted_on"]
    assert 0 < held_out["reads_without_frames"] < 120 and held_out["reads"] == calibration["counts"]["reads"]
    assert calibration["counts"]["frameless"]["reads"] == held_out["reads_without_frames"]



def test_status_shows_where_an_unfinished_training_stands(trained, tmp_path):
    """While train runs (or after it stopped), status reads the checkpoint's summary: epochs done
    of the most the recipe allows, the last losses, the best epoch."""
    import shutil

    from virnucpro.orchestration.state import StateFile
    from virnucpro.orchestration.status import render_status, status_report
    from virnucpro.paths import Workdir

    result, folder, _ = trained
    workdir = Workdir(tmp_path / "T")
    workdir.training_dir.mkdir(parents=True)
    shutil.copy(folder / "checkpoint.json", workdir.training_state)
    state = StateFile(workdir.state, workdir.state_lock)
    state.initialise({"prepare": 1, "dnabert": 1, "esm2": 1, "train": 1})
    state.mark_running("train", 0)
    report = status_report(workdir)
    last = result.history[-1]
    assert report["training"] == {"epochs_done": result.epochs, "batch": 0, "max_epochs": SHORT.max_epochs,
                                  "train_loss": last["train_loss"], "held_out_loss": last["held_out_loss"],
                                  "best_epoch": result.best_epoch, "best_loss": min(h["held_out_loss"] for h in result.history)}
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(render_status(report))
    assert (f"training: {result.epochs} of at most {SHORT.max_epochs} epochs done (epoch {result.epochs + 1} at batch 0), "
            f"last training loss {last['train_loss']:.4f}") in console.export_text()
    state.mark_done("train", 0, {})
    assert status_report(workdir)["training"] is None  # a finished training: its classifier.json says the rest
    workdir.training_state.write_text("{damaged")
    state.mark_running("train", 0)
    assert status_report(workdir)["training"] is None  # unreadable: status still works
