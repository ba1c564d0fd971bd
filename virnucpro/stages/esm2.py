"""Stage 3, esm2 (GPU): ESM-2 protein embeddings of every frame of a shard.

The packed engine is the default; `--no-packing` or VIRNUCPRO_DISABLE_PACKING=1 uses fair-esm's
own padded forward (the original's method). Either way the shard is checkpointed per window and
resumes exactly where a SIGTERM or kill -9 stopped it.
"""

from __future__ import annotations

import logging
import os

from ..orchestration.runner import StageContext
from .embedding import checkpointing, embed_shard, engine_override, resolve_device

log = logging.getLogger("virnucpro.esm2")
KIND = "esm2"


def packing_enabled(config) -> bool:
    return config.packing and os.environ.get("VIRNUCPRO_DISABLE_PACKING", "") in ("", "0")


def compile_enabled(requested: bool | None, device: str) -> bool:
    """--compile / --no-compile; unset: on for CUDA (the dense parts gain ~15-20%), off on the CPU."""
    return device.startswith("cuda") if requested is None else bool(requested)


def load_engine(spec: str, device: str, precision: str, packing: bool, token_budget: int | None,
                trust_pickles: bool = False, compile: bool | None = None, residual: str = "fp32"):
    """The ESM-2 engine, warmed up (compiled, kernels loaded) before any checkpoint window starts."""
    from ..engines.esm2 import ESM2Reference, load_esm2  # torch, fair-esm: when an engine loads

    precision = None if precision == "auto" else precision
    # Load on the host: the packed engine copies the weights to the GPU in its own precision,
    # so the fp32 original never occupies GPU memory beside it (12 GB for the 3B model).
    loaded = load_esm2(spec, device="cpu", trust_pickles=trust_pickles)
    if packing:
        from ..engines.esm2_packed import PackedESM2Engine  # only the engine asked for is imported
        engine = PackedESM2Engine(loaded.model, loaded.alphabet, device=device, precision=precision, token_budget=token_budget,
                                  compile=compile_enabled(compile, device), fp32_residual=residual == "fp32")
        del loaded  # the engine logs its backend, precision and token budget
        engine.warm_up()
    else:
        engine = ESM2Reference(loaded, device=device, precision=precision or "fp32")
        log.info("ESM-2 %s: fair-esm padded forward (packing disabled)", loaded.name)
    return engine


def open_stage(ctx: StageContext):
    config = ctx.config
    device = resolve_device(config.device)
    engine = engine_override(KIND, ctx) or load_engine(config.models.esm, device, config.precision,
                                                       packing_enabled(config), config.esm_token_budget,
                                                       trust_pickles=config.trust_model_pickles,
                                                       compile=config.compile, residual=config.esm_residual)
    cuda = device.startswith("cuda")
    # windows of at most 400K tokens (~4 s of packed fp16 on an H100) and 10 s of measured work
    # (fp32, --no-packing); blocks of one GPU pack at the largest token budget
    window = checkpointing(config.checkpoint_tokens, 400_000 if cuda else 20_000, 65_536 if cuda else 4096)

    def process(shard: int) -> dict:
        stats = embed_shard(ctx, KIND, shard, lambda frames: frames.proteins, engine.embed, engine.dim,
                            attrs={"model": config.models.esm}, **window)
        # what ran, for the report and provenance: --precision auto becomes fp16 or fp32 here
        return {**stats, "device": device, "precision": getattr(engine, "precision", config.precision)}
    return process
