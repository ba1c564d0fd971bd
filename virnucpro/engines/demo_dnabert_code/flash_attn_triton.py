"""Stand-in for DNABERT-S's Triton flash-attention kernel (demo model only).

Importable exactly when triton is. Like the real kernel it only takes CUDA tensors and computes in
fp16; unlike it, it does not compile anything (on a GPU it gives fp16-rounded attention).
"""

import math

import torch
import triton  # noqa: F401  -- the ImportError when triton is absent is what switches this path off


def flash_attn_qkvpacked_func(qkv, bias=None, causal=False, softmax_scale=None):
    """qkv [batch, seqlen, 3, heads, head_dim] fp16/bf16 CUDA -> [batch, seqlen, heads, head_dim]."""
    assert qkv.dtype in (torch.float16, torch.bfloat16)
    assert qkv.is_cuda
    q, k, v = qkv.unbind(2)
    scale = softmax_scale or 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v)
