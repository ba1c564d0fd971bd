"""Fit the VirNucPro MLP with the original recipe, checkpointed every epoch and resumable at any batch.

The checkpoint is one safetensors file (model, best weights, optimizer momentum, the torch
generator that draws dropout masks) whose metadata holds the rest as JSON (recipe, epoch, batch
position, scheduler, early-stopping state, history, what data it was made from); checkpoint.json
beside it is a readable copy. Nothing is unpickled. The shuffle is a pure function of (seed,
epoch) (training.rows), so a run resumed from a checkpoint replays the same batches, draws the same
dropout masks and, on CPU, ends with bitwise the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from ..engines.classifier import MLPClassifier
from ..errors import InputError
from ..evaluation.metrics import binary_metrics
from ..json_files import parse_json
from .recipe import ORIGINAL, Recipe
from .rows import CLASS_NAMES, EMBEDDINGS, RowIndex, RowStream, ShardSource

CHECKPOINT_FORMAT = "virnucpro-training-checkpoint"
CHECKPOINT_VERSION = 2  # 2: with the SHA-256 of its content (a version-1 checkpoint is set aside)
HISTORY_FIELDS = ("epoch", "train_loss", "held_out_loss", "learning_rate")  # of each epoch, in this order
HELD_OUT_BATCH = 1024  # rows scored at once on the held-out side (does not change the result)


class TrainingInterrupted(Exception):
    """A stop was requested: the checkpoint holds the position of the next batch."""

    def __init__(self, epoch: int, batch: int):
        super().__init__(f"training stopped at epoch {epoch + 1}, batch {batch}; the checkpoint resumes there")
        self.epoch, self.batch = epoch, batch


@dataclass
class TrainedClassifier:
    state: dict  # the best epoch's state_dict (CPU tensors)
    input_widths: dict  # {"dnabert": 768, "esm2": E}
    recipe: Recipe
    seed: int
    holdout: float
    epochs: int  # epochs trained
    best_epoch: int  # 1-based
    history: list = field(default_factory=list)  # per epoch: train_loss, held_out_loss, learning_rate
    metrics: dict = field(default_factory=dict)  # of the best weights on the held-out frames
    rows: dict = field(default_factory=dict)
    held_out_scores: np.ndarray | None = None  # the best weights' virus score of every held-out row, in shard order

    def model(self) -> MLPClassifier:
        model = MLPClassifier(sum(self.input_widths.values()), self.recipe.hidden, self.recipe.classes)
        model.load_state_dict(self.state)
        return model.eval()


def new_model(width: int, recipe: Recipe, seed: int) -> MLPClassifier:
    torch.manual_seed(seed)
    model = MLPClassifier(width, recipe.hidden, recipe.classes)
    nn.init.xavier_uniform_(model.hidden_layer.weight)
    nn.init.xavier_uniform_(model.output_layer.weight)
    return model


class _Training:
    """The model, optimizer, scheduler and progress of one training, and its checkpoint."""

    def __init__(self, index: RowIndex, recipe: Recipe, seed: int, holdout: float, labels: list, device: str):
        self._arguments = (index, recipe, seed, holdout, labels, device)  # a fresh start after a failed resume
        self.recipe, self.device = recipe, torch.device(device)
        self.model = new_model(index.width, recipe, seed).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, recipe.lr_step_epochs, recipe.lr_gamma)
        self.best = _cpu_state(self.model)
        self.data = {"recipe": recipe.to_dict(), "seed": seed, "holdout": holdout, "labels": labels,
                     "widths": index.widths, "shards": index.identity()}
        self.progress = {"epoch": 0, "batch": 0, "loss_sum": 0.0, "best_loss": None, "best_epoch": 0,
                         "epochs_without_improvement": 0, "history": [], "finished": False}

    # ------------------------------------------------------------ checkpoint

    def save(self, checkpoint: Path, readable: Path) -> None:
        from safetensors.torch import save

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in self.best.items()})
        optimizer = self.optimizer.state_dict()
        for number, entry in optimizer["state"].items():
            for name, value in entry.items():
                tensors[f"optimizer.{number}.{name}"] = value.detach().cpu().contiguous()
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "data": self.data, **self.progress,
                 "optimizer_groups": optimizer["param_groups"], "scheduler": self.scheduler.state_dict()}
        text = json.dumps(state, sort_keys=True)
        atomic_write_bytes(checkpoint, save(tensors, metadata={"state": text, "sha256": checkpoint_sha256(text, tensors)}))
        atomic_write_text(readable, json.dumps(state, indent=1, sort_keys=True) + "\n")

    def resume(self, checkpoint: Path, log: Callable[[str], None], warn: Callable[[str], None]) -> bool:
        """Take up the checkpoint when it is of this training; False (starting over) otherwise. A
        damaged one (unreadable, its checksum wrong, or not fitting the model) is set aside, renamed
        beside it, so that it is neither resumed into a different classifier nor met again."""
        if not checkpoint.is_file():
            return False
        try:
            state, tensors = read_checkpoint(checkpoint)
        except DamagedCheckpoint as damage:
            set_aside(checkpoint, str(damage), warn)
            return False
        if state.get("format") != CHECKPOINT_FORMAT or state.get("data") != self.data:
            log(f"{checkpoint}: made from other data or another recipe; training starts over")
            return False
        try:
            self._take_up(state, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:  # checksummed, but not of this model
            self.__init__(*self._arguments)  # undo what was taken up: the fresh start of an uninterrupted training
            set_aside(checkpoint, f"does not fit the model ({type(exc).__name__})", warn)
            return False
        return True

    def _take_up(self, state: dict, tensors: dict) -> None:
        self.model.load_state_dict(_prefixed(tensors, "model."))
        best = _prefixed(tensors, "best.")
        if best.keys() != self.best.keys() or any(best[k].shape != self.best[k].shape for k in best):
            raise KeyError("best")
        self.best = best
        momentum: dict = {}
        for key, value in _prefixed(tensors, "optimizer.").items():
            number, name = key.split(".", 1)
            momentum.setdefault(int(number), {})[name] = value
        self.optimizer.load_state_dict({"state": momentum, "param_groups": state["optimizer_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        progress = {key: state[key] for key in self.progress}
        # the checkpoint's JSON has its keys sorted: each epoch's entry back in the order an
        # uninterrupted training writes it, so classifier.json is the same bytes either way
        progress["history"] = [{key: entry[key] for key in HISTORY_FIELDS} for entry in progress["history"]]
        self.progress = progress

    # ------------------------------------------------------------ epochs

    def train_epoch(self, stream: RowStream, stop_requested: Callable[[], bool], save: Callable[[], None]) -> float:
        epoch, progress = self.progress["epoch"], self.progress
        criterion = nn.CrossEntropyLoss()
        self.model.train()
        for features, labels in stream.training_batches(epoch, self.recipe.batch_size, progress["batch"]):
            if stop_requested():
                save()
                raise TrainingInterrupted(epoch, progress["batch"])
            self.optimizer.zero_grad(set_to_none=True)
            loss = criterion(self.model(features.to(self.device, non_blocking=True)),
                             labels.to(self.device, non_blocking=True))
            loss.backward()
            self.optimizer.step()
            progress["loss_sum"] += loss.item()
            progress["batch"] += 1
        self.scheduler.step()
        return progress["loss_sum"] / max(progress["batch"], 1)

    @torch.no_grad()
    def held_out(self, stream: RowStream, state: dict | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean loss, virus scores and truth on the held-out frames (eval mode)."""
        model = self.model
        if state is not None:
            model.load_state_dict(state)
        model.eval()
        total, scores, truth = 0.0, [], []
        for features, labels in stream.held_out_batches(HELD_OUT_BATCH):
            logits = model(features.to(self.device))
            labels = labels.to(self.device)
            total += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            scores.append(torch.softmax(logits, dim=1)[:, 1].float().cpu().numpy())
            truth.append(labels.cpu().numpy() == 1)
        count = sum(len(part) for part in truth)
        return total / count, np.concatenate(scores), np.concatenate(truth)

    def end_epoch(self, train_loss: float, held_out_loss: float, log: Callable[[str], None]) -> bool:
        """Early stopping as the original's: an epoch at least as good as the best becomes the best
        (its weights kept); `patience` epochs in a row without one stop the training. True: stop."""
        progress = self.progress
        epoch = progress["epoch"] + 1
        progress["history"].append(dict(zip(HISTORY_FIELDS, (epoch, train_loss, held_out_loss,
                                                             self.optimizer.param_groups[0]["lr"]))))
        if progress["best_loss"] is None or held_out_loss <= progress["best_loss"]:
            progress.update(best_loss=held_out_loss, best_epoch=epoch, epochs_without_improvement=0)
            self.best = _cpu_state(self.model)
        else:
            progress["epochs_without_improvement"] += 1
        log(f"epoch {epoch}: training loss {train_loss:.4f}, held-out loss {held_out_loss:.4f}"
            + (" (best)" if progress["best_epoch"] == epoch else ""))
        progress.update(epoch=epoch, batch=0, loss_sum=0.0)
        stop = progress["epochs_without_improvement"] >= self.recipe.patience or epoch >= self.recipe.max_epochs
        progress["finished"] = stop
        return stop


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be resumed: why, in words."""


def checkpoint_sha256(state_text: str, tensors: dict) -> str:
    """SHA-256 of a checkpoint's content: its state JSON and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(state_text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {list(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state, tensors) of a checkpoint whose checksum holds; DamagedCheckpoint otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a cut or garbled file
        raise DamagedCheckpoint(f"unreadable ({type(exc).__name__})") from None
    text, recorded = metadata.get("state"), metadata.get("sha256")
    if not isinstance(text, str) or not isinstance(recorded, str):
        raise DamagedCheckpoint("no state or no checksum (damaged, or written by an earlier version)")
    if checkpoint_sha256(text, tensors) != recorded:
        raise DamagedCheckpoint("its content does not match its checksum")
    try:
        state = parse_json(text, path)
    except ValueError:
        raise DamagedCheckpoint("its state is not JSON") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint("its state is not a JSON object")
    return state, tensors


def set_aside(checkpoint: Path, why: str, log: Callable[[str], None]) -> Path:
    """Rename a damaged checkpoint beside itself (never over an earlier one) and say so."""
    number, aside = 1, checkpoint.with_name(f"{checkpoint.name}.damaged")
    while aside.exists():
        number += 1
        aside = checkpoint.with_name(f"{checkpoint.name}.damaged-{number}")
    os.replace(checkpoint, aside)
    fsync_dir(checkpoint.parent)
    log(f"{checkpoint}: damaged checkpoint ({why}); set aside as {aside.name}, training starts over")
    return aside


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def fit(sources: Sequence[ShardSource], labels_by_input: Sequence[int], holdout: float, seed: int,
        checkpoint: tuple[Path, Path], device: str, stop_requested: Callable[[], bool],
        log: Callable[[str], None], recipe: Recipe = ORIGINAL,
        warn: Callable[[str], None] | None = None) -> TrainedClassifier:
    """Train on the rows of these shards (label per input: 1 virus, 0 other), holding out the
    `holdout` fraction of reads; resume from `checkpoint` (safetensors, json) when it is of the same
    data and recipe (a damaged one is set aside, said through `warn`, default `log`). Raises
    TrainingInterrupted, after saving the checkpoint, when `stop_requested()` at a batch boundary;
    InputError when a class is missing from the data or from a side of the split."""
    index = RowIndex(sources, labels_by_input, seed, holdout)
    training = _Training(index, recipe, seed, holdout, [int(label) for label in labels_by_input], device)
    if training.resume(checkpoint[0], log, warn or log):
        log(f"resuming at epoch {training.progress['epoch'] + 1}, batch {training.progress['batch']}")
    log(f"{index.training_rows} training and {index.held_out_rows} held-out frames, "
        f"{index.width} features ({' + '.join(f'{k} {index.widths[k]}' for k in EMBEDDINGS)})")
    with RowStream(index) as stream:
        while not training.progress["finished"]:
            train_loss = training.train_epoch(stream, stop_requested, lambda: training.save(*checkpoint))
            held_out_loss, _, _ = training.held_out(stream)
            training.end_epoch(train_loss, held_out_loss, log)
            training.save(*checkpoint)
        _, scores, truth = training.held_out(stream, training.best)
    progress = training.progress
    return TrainedClassifier(
        state=training.best, input_widths=dict(index.widths), recipe=recipe, seed=seed, holdout=holdout,
        epochs=progress["epoch"], best_epoch=progress["best_epoch"], history=progress["history"],
        metrics=held_out_metrics(truth, scores, progress["best_loss"]),
        rows={"training": index.training_rows, "held_out": index.held_out_rows,
              **{f"{side}_{name}": index.counts[(held, label)]
                 for held, side in ((False, "training"), (True, "held_out")) for label, name in enumerate(CLASS_NAMES)}},
        held_out_scores=scores)


def held_out_metrics(truth: np.ndarray, scores: np.ndarray, loss: float) -> dict:
    """Per frame, of the best weights (a frame called virus when its virus score >= 0.5)."""
    return {"level": "frame", "loss": loss, **binary_metrics(truth, scores)}
