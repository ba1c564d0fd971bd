"""The calibration `train` stores with its classifier, fitted on the held-out split.

The held-out side is whole reads (holdout.py: a read's unit of the split is its sequence, unless
--holdout-window cuts it into windows), so its reads are scored as a prediction scores them: a
read's score is the maximum virus score over its frames, its frame count the number of its rows;
the held-out reads without any frame (prepare's read tables list them; their sequence's key puts
each on its side, as it would their frames) count too, with their own probability. No calibration
is fitted, and the stage says why, when the held-out units are not whole reads scored as a
prediction scores them: frames chosen by GenBank CDS annotation, or --holdout-window.
"""

from __future__ import annotations

import numpy as np

from ..calibration_meta import run_identity
from ..evaluation.calibration import Calibration, fit_calibration
from ..fasta import read_records
from ..holdout import held_out, read_keys, sequence_key
from ..storage import read_shard_frames


def held_out_calibration(workdir, config, held_out_scores: np.ndarray) -> tuple[Calibration | None, str]:
    """(calibration of the held-out reads' scores, what it was fitted on) or (None, why not).
    `held_out_scores`: the best weights' virus score of every held-out row, in shard order."""
    if any(config.genbank or []):
        return None, ("no calibration stored: the training frames were chosen by GenBank CDS annotation, so its "
                      "held-out reads are not scored as a prediction scores them; fit one with 'virnucpro-slurm "
                      "evaluate' on labelled reads")
    if config.holdout_window:
        return None, ("no calibration stored: --holdout-window holds out windows of records, not whole reads scored "
                      "as a prediction scores them; fit one with 'virnucpro-slurm evaluate' on labelled reads")
    inputs, read_ids, scores = held_out_rows(workdir, config, held_out_scores)
    starts = np.flatnonzero(np.r_[True, (inputs[1:] != inputs[:-1]) | (read_ids[1:] != read_ids[:-1])]) \
        if len(inputs) else np.zeros(0, np.int64)
    labels = np.asarray([label == "virus" for label in config.labels])
    frameless = frameless_held_out(workdir, config)
    truth = np.r_[labels[inputs[starts]], labels[frameless]] if len(starts) else labels[frameless]
    best = np.r_[np.maximum.reduceat(scores, starts), np.zeros(len(frameless))] if len(starts) else np.zeros(len(frameless))
    frames = np.r_[np.diff(np.r_[starts, len(inputs)]), np.zeros(len(frameless), np.int64)]
    if truth.all() or not truth.any():
        return None, "no calibration stored: the held-out reads hold one class only"
    fitted_on = {"held_out_split": f"{config.holdout:g} of the reads, seed {config.seed}", "reads": int(len(truth)),
                 "reads_without_frames": int(len(frameless))}
    identity = run_identity((config.fingerprint or {}).get("models", {}), config.chunk_length)
    calibration = fit_calibration(truth, best, frames, level="read", identity=identity, fitted_on=fitted_on)
    return calibration, (f"calibration of the read scores fitted on {len(truth):,} held-out reads "
                         f"({int(truth.sum()):,} viral; {len(frameless):,} without a frame), stored in classifier.json")


def held_out_rows(workdir, config, held_out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input index, read id, virus score) of every held-out row, in shard order."""
    inputs, read_ids = [], []
    for shard in range(config.shards):
        table = read_shard_frames(workdir.shard_frames(shard))
        side = held_out(read_keys(workdir.split_keys(shard), len(table.read_ids), shard), config.seed, config.holdout)
        inputs.append(np.asarray(table.input_index)[side])
        read_ids.append(np.asarray(table.read_ids, dtype=object)[side])
    inputs = np.concatenate(inputs) if inputs else np.zeros(0, np.int64)
    read_ids = np.concatenate(read_ids) if read_ids else np.zeros(0, object)
    if len(inputs) != len(held_out_scores):
        raise ValueError(f"{len(held_out_scores)} held-out scores for {len(inputs)} held-out frames")
    return inputs, read_ids, np.asarray(held_out_scores, dtype=np.float64)


def frameless_held_out(workdir, config) -> np.ndarray:
    """The input index of every held-out read without a frame (prepare's read tables), its side
    drawn from its sequence's key as its frames' would be (the input is read again for those only)."""
    found = []
    for index, path in enumerate(config.inputs):
        with open(workdir.reads_table(index), encoding="utf-8") as table:
            next(table)  # header
            ids = {fields[0] for fields in (line.rstrip("\n").split("\t") for line in table) if fields[3] == "0"}
        keys = np.fromiter((sequence_key(sequence) for read_id, sequence in read_records(path) if read_id in ids),
                           np.uint64) if ids else np.zeros(0, np.uint64)
        found.append(np.full(int(held_out(keys, config.seed, config.holdout).sum()), index, np.int64))
    return np.concatenate(found) if found else np.zeros(0, np.int64)
