"""Stage 2, dnabert (GPU): DNABERT-S embeddings of the nucleotide slice of every frame."""

from __future__ import annotations

from ..orchestration.runner import StageContext
from .embedding import embed_shard, engine_override, resolve_device

KIND = "dnabert"


def open_stage(ctx: StageContext):
    from ..engines.dnabert import DnabertEmbedder

    config = ctx.config
    device = resolve_device(config.device)
    kwargs = {"token_budget": config.dnabert_token_budget} if config.dnabert_token_budget else {}
    embedder = engine_override(KIND, ctx) or DnabertEmbedder(config.models.dnabert, device=device, **kwargs)
    window = config.checkpoint_tokens or (1_000_000 if device.startswith("cuda") else 50_000)

    def process(shard: int) -> dict:
        return embed_shard(ctx, KIND, shard, lambda frames: frames.nucleotides, embedder.embed, embedder.dim, window,
                           attrs={"model": config.models.dnabert})
    return process
