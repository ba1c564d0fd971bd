"""Stage 4, predict: [DNABERT-S | ESM-2] features -> MLP -> softmax, per shard.

Rows are paired by frame id and both embedding files must list exactly the shard's frames in
order; a frame missing on either side fails the shard (the original let ids drift from rows).
"""

from __future__ import annotations

from ..errors import InputError
from ..orchestration.runner import StageContext
from ..storage import read_matrix, read_shard_frames, write_matrix
from .embedding import resolve_device


def open_stage(ctx: StageContext):
    import numpy as np

    from ..engines.classifier import classify, load_classifier

    config, workdir = ctx.config, ctx.workdir
    try:
        model = load_classifier(config.models.classifier)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model.to(resolve_device(config.device))

    def process(shard: int) -> dict:
        frames = read_shard_frames(workdir.shard_frames(shard))
        _, dna = read_matrix(workdir.embeddings("dnabert", shard), frames.frame_ids)
        _, protein = read_matrix(workdir.embeddings("esm2", shard), frames.frame_ids)
        features = np.concatenate([dna, protein], axis=1) if len(frames) else np.zeros((0, dna.shape[1] + protein.shape[1]), np.float32)
        try:
            scores = classify(model, features)
        except ValueError as exc:
            raise InputError(f"{config.models.classifier}: {exc}") from None
        write_matrix(workdir.predictions(shard), frames.frame_ids, scores, name="scores")
        return {"frames": len(frames)}
    return process
