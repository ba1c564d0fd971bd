"""Stage train (training runs): fit the classifier on the run's embeddings; one pair (shard 0).

Reads every shard's frame table and its two embedding matrices (training.rows), labels each frame
with its input's label, holds out a fraction of the sequences (by the split keys prepare wrote), and trains with the original recipe
(training.recipe), checkpointing into training/ every epoch and when asked to stop (SIGTERM/USR2:
at the next batch boundary), so a requeued or re-run task resumes where it stopped. Writes
classifier/classifier.safetensors and classifier/classifier.json, which carries the calibration of
the held-out reads' scores (training.calibrate) as the classifier's own, then the training's report.
"""

from __future__ import annotations

from .. import console
from ..modelstore.demo import DEMO_KEY, DEMO_VALUE
from ..pipeline import ShardInterrupted
from ..report import finish_report
from .embedding import resolve_device

RECIPE = None  # None: the original recipe (training.recipe.ORIGINAL); tests shorten it here


def shard_sources(workdir, config) -> list:
    from ..training import ShardSource  # torch: only when a training reads its shards

    return [ShardSource(workdir.shard_frames(k), workdir.embeddings("dnabert", k), workdir.embeddings("esm2", k),
                        workdir.split_keys(k), k) for k in range(config.shards)]


def labels_by_input(config) -> list[int]:
    return [1 if label == "virus" else 0 for label in config.labels]  # the run's labels are checked on parsing


def _model(spec: str, identity: dict | None) -> dict:
    identity = identity or {}
    return {"name": spec, "sha256": identity.get("sha256") or identity.get("files")}


def classifier_metadata(config) -> dict:
    """What classifier.json records of the run: chunk length, models, training inputs."""
    fingerprint = config.fingerprint or {}
    models = fingerprint.get("models", {})
    hashes = {item["path"]: item.get("sha256") for item in fingerprint.get("inputs", [])}
    return {
        "chunk_length": config.chunk_length,
        "models": {"dnabert": _model(config.models.dnabert, models.get("dnabert")),
                   "esm2": _model(config.models.esm, models.get("esm"))},
        "embedding_dtype": config.embedding_dtype,
        "holdout_window": config.holdout_window,  # 0: whole records are the units of the split
        "training_inputs": [{"name": name, "path": path, "label": label, "sha256": hashes.get(path)}
                            for name, path, label in zip(config.input_names, config.inputs, config.labels)],
        # trained on demo models' embeddings: as meaningless as they are, and recognised as a demo model
        **({DEMO_KEY: DEMO_VALUE} if config.models.demo else {}),
    }


def open_stage(ctx):
    # torch: when the stage opens
    from ..training import ORIGINAL, TrainingInterrupted, fit, write_classifier
    from ..training.calibrate import held_out_calibration

    config, workdir = ctx.config, ctx.workdir
    device = resolve_device(config.device)

    def process(shard: int) -> dict:
        try:
            trained = fit(shard_sources(workdir, config), labels_by_input(config), config.holdout, config.seed,
                          (workdir.training_checkpoint, workdir.training_state), device, ctx.stop_requested,
                          console.info, RECIPE or ORIGINAL, warn=console.warn)
        except TrainingInterrupted as stop:
            raise ShardInterrupted({"epoch": stop.epoch + 1, "batch": stop.batch}) from None
        calibration, said = held_out_calibration(workdir, config, trained.held_out_scores)
        console.info(said)
        write_classifier(workdir.classifier_weights, workdir.classifier_meta, trained, classifier_metadata(config),
                         calibration)
        metrics = {"frames": trained.rows["training"] + trained.rows["held_out"], "epochs": trained.epochs,
                   "best_epoch": trained.best_epoch, "held_out_accuracy": trained.metrics.get("accuracy"),
                   "device": device}  # what --device auto became: the reports' "device" row
        finish_report(ctx, "train", metrics)
        return metrics
    return process
