"""Stage 4, predict: [DNABERT-S | ESM-2] features -> MLP -> softmax, per shard.

Rows are paired by frame id and both embedding files must list exactly the shard's frames in
order; a frame missing on either side fails the shard (the original let ids drift from rows).
"""

from __future__ import annotations

from ..errors import InputError
from ..orchestration.runner import StageContext
from ..storage import open_matrix, read_shard_frames, write_matrix

ROWS_PER_BLOCK = 65_536  # a shard's features never sit in memory all at once
from .embedding import resolve_device


def open_stage(ctx: StageContext):
    import numpy as np

    from ..engines.classifier import classify, load_classifier

    config, workdir = ctx.config, ctx.workdir
    try:
        model = load_classifier(config.models.classifier, trust_pickles=config.trust_model_pickles)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model.to(resolve_device(config.device))

    def process(shard: int) -> dict:
        frames = read_shard_frames(workdir.shard_frames(shard))
        scores = np.zeros((len(frames), 2), np.float32)
        with open_matrix(workdir.embeddings("dnabert", shard), frames.frame_ids) as (_, dna), \
                open_matrix(workdir.embeddings("esm2", shard), frames.frame_ids) as (_, protein):
            width = dna.shape[1] + protein.shape[1]
            for start in range(0, max(len(frames), 1), ROWS_PER_BLOCK):
                stop = min(start + ROWS_PER_BLOCK, len(frames))
                features = np.concatenate([dna[start:stop], protein[start:stop]], axis=1).reshape(stop - start, width)
                try:
                    scores[start:stop] = classify(model, features)
                except ValueError as exc:
                    raise InputError(f"{config.models.classifier}: {exc} (DNABERT-S {dna.shape[1]} + ESM-2 "
                                     f"{protein.shape[1]}); use the classifier that matches these models") from None
        write_matrix(workdir.predictions(shard), frames.frame_ids, scores, name="scores")
        return {"frames": len(frames)}
    return process
