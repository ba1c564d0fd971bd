"""Stage 2, dnabert (GPU): DNABERT-S embeddings of the nucleotide slice of every frame.

The native engine is the default; --dnabert-remote-code runs the model folder's own code. Either
engine counts the real tokens it embedded ([CLS] and [SEP] included), and the shard's "tokens"
and "computed_tokens" metrics report those instead of nucleotides + 2. Blocks (engine calls) are still
cut on nucleotides + 2 (embedding.py's costs), a pure function of the shard, so resume is unchanged.
"""

from __future__ import annotations

from ..orchestration.runner import StageContext
from .embedding import checkpointing, embed_shard, engine_override, resolve_device

KIND = "dnabert"


def open_stage(ctx: StageContext):
    from ..engines.dnabert import load_dnabert_engine  # torch, transformers: when the stage opens

    config = ctx.config
    device = resolve_device(config.device)
    embedder = engine_override(KIND, ctx) or load_dnabert_engine(
        config.models.dnabert, device, precision=config.dnabert_precision, remote_code=config.dnabert_remote_code,
        token_budget=config.dnabert_token_budget, allow_download=config.allow_download)
    cuda = device.startswith("cuda")
    # blocks of 4 GPU packs (one CPU pack)
    window = checkpointing(config.checkpoint_tokens, 1_000_000 if cuda else 50_000, 262_144 if cuda else 8192)

    def process(shard: int) -> dict:
        seen = {}

        def sequences_of(frames):
            seen["sequences"] = frames.nucleotides
            return frames.nucleotides

        before = getattr(embedder, "tokens_embedded", None)  # None: an engine that counts no tokens (bench's null one)
        stats = embed_shard(ctx, KIND, shard, sequences_of, embedder.embed, embedder.dim,
                            attrs={"model": config.models.dnabert}, **window)
        stats.update(device=device, precision=config.dnabert_precision)  # what ran, for the report and provenance
        if before is None:
            return stats
        computed = embedder.tokens_embedded - before
        resumed = stats.get("resumed_from") or 0
        earlier = 0
        if resumed and hasattr(embedder, "count_tokens"):  # frames embedded before a requeue: count them once
            earlier = int(embedder.count_tokens(seen["sequences"][:resumed]).sum())
        seconds = stats.get("compute_seconds") or 0
        stats.update(tokens=computed + earlier, computed_tokens=computed,
                     tokens_per_second=round(computed / seconds, 1) if seconds > 0 and computed else None)
        return stats
    return process
