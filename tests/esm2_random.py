"""Random-weight ESM-2 models for the GPU tests and the throughput benchmark."""

from __future__ import annotations

import torch


def random_esm2(num_layers: int, embed_dim: int, attention_heads: int, device="cpu", seed: int = 0,
                linear_std: float = 0.02, token_dropout: bool = True):
    """An ``esm.model.esm2.ESM2`` with random weights scaled to give realistic activations.

    PyTorch's default init (and fair-esm's xavier q/k/v) makes a deep random ESM-2 degenerate:
    activations either shrink to nothing or attention saturates.  Here every Linear weight and
    bias is N(0, linear_std) (0.02, BERT/ESM style: with unit-variance LayerNorm outputs, q/k
    entries have std ~0.02*sqrt(dim) ~= 1 for the 3B model, so attention logits have std ~1), the
    token embeddings N(0, 1), LayerNorm weights 1 + N(0, 0.1) and biases N(0, 0.1).  Built
    directly on ``device`` (a 3B model in fp32 is 12 GB).  Returns (model, alphabet), eval mode.
    """
    import esm
    import esm.modules

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    device = torch.device(device)
    with device:
        model = esm.model.esm2.ESM2(num_layers, embed_dim, attention_heads, alphabet=alphabet,
                                    token_dropout=token_dropout)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0.0, linear_std, generator=gen)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, linear_std, generator=gen)
            elif isinstance(mod, (torch.nn.LayerNorm, esm.modules.ESM1bLayerNorm)):
                mod.weight.normal_(1.0, 0.1, generator=gen)
                mod.bias.normal_(0.0, 0.1, generator=gen)
        model.embed_tokens.weight.normal_(0.0, 1.0, generator=gen)
    return model.eval(), alphabet
