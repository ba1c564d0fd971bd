"""MosaicBERT-style encoder of the DNABERT-S demo model (this project's code, real layout and hazards).

Weight names, shapes and numerics are those of DNABERT-S: word + token-type embeddings and a
LayerNorm (no position embeddings), ALiBi attention bias, post-LN layers with a fused `Wqkv`,
a gated-GELU MLP (`gated_layers`, `wo`, `layernorm`) and a tanh pooler on token 0. Real tokens
are unpadded before the layers and padded back (with zeros) at the end; padded keys get -10000.
"""

import math
import warnings

import torch
from einops import rearrange
from torch import nn
from transformers.models.bert.modeling_bert import BertPreTrainedModel

try:
    from .flash_attn_triton import flash_attn_qkvpacked_func
except ImportError:
    flash_attn_qkvpacked_func = None


def _slopes(heads):
    def geometric(n):
        first = 2 ** (-2 ** -(math.log2(n) - 3))
        return [first ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return geometric(heads)
    base = 2 ** math.floor(math.log2(heads))
    return geometric(base) + _slopes(2 * base)[0::2][: heads - base]


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertUnpadSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.p_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(self.p_dropout)
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        if flash_attn_qkvpacked_func is None:
            warnings.warn("Unable to import Triton; using the PyTorch attention implementation")

    def forward(self, x, indices, batch, seqlen, bias):
        qkv = self.Wqkv(x)
        padded = qkv.new_zeros((batch * seqlen, qkv.shape[-1]))
        padded[indices] = qkv
        qkv = rearrange(padded, "(b s) (t h d) -> b s t h d", b=batch, t=3, h=self.num_attention_heads)
        if self.p_dropout or flash_attn_qkvpacked_func is None:
            q = qkv[:, :, 0].permute(0, 2, 1, 3)
            k = qkv[:, :, 1].permute(0, 2, 3, 1)
            v = qkv[:, :, 2].permute(0, 2, 1, 3)
            scores = torch.matmul(q, k) / math.sqrt(self.attention_head_size) + bias
            probs = self.dropout(nn.functional.softmax(scores, dim=-1))
            out = torch.matmul(probs, v).permute(0, 2, 1, 3)
        else:  # the Triton kernel takes fp16/bf16 only
            dtype = qkv.dtype
            if dtype not in (torch.float16, torch.bfloat16):
                out = flash_attn_qkvpacked_func(qkv.to(torch.float16), bias.to(torch.float16)).to(dtype)
            else:
                out = flash_attn_qkvpacked_func(qkv, bias)
        out = rearrange(out, "b s h d -> (b s) (h d)")
        return out[indices]


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertUnpadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertUnpadSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, indices, batch, seqlen, bias):
        return self.output(self.self(x, indices, batch, seqlen, bias), x)


class BertGatedLinearUnitMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.GELU(approximate="none")
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        h = self.gated_layers(x)
        h = self.act(h[:, : self.intermediate_size]) * h[:, self.intermediate_size:]
        return self.layernorm(self.wo(self.dropout(h)) + x)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertUnpadAttention(config)
        self.mlp = BertGatedLinearUnitMLP(config)

    def forward(self, x, indices, batch, seqlen, bias):
        return self.mlp(self.attention(x, indices, batch, seqlen, bias))


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.num_attention_heads = config.num_attention_heads
        # A plain tensor attribute (not a buffer), built here from a Python list, as in DNABERT-S.
        self._current_alibi_size = int(config.alibi_starting_size)
        self.alibi = torch.zeros((1, self.num_attention_heads, self._current_alibi_size, self._current_alibi_size))
        self.rebuild_alibi_tensor(self._current_alibi_size)

    def rebuild_alibi_tensor(self, size, device=None):
        position = torch.arange(size, device=device)
        distance = torch.abs(position[None, :] - position[:, None]).unsqueeze(0).expand(self.num_attention_heads, -1, -1)
        slopes = torch.Tensor(_slopes(self.num_attention_heads)).to(device)
        self.alibi = (slopes[:, None, None] * -distance).unsqueeze(0)
        self._current_alibi_size = size

    def forward(self, hidden, attention_mask):
        batch, seqlen = attention_mask.shape
        key_bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        if self._current_alibi_size < seqlen:
            warnings.warn(f"Increasing alibi size from {self._current_alibi_size} to {seqlen}")
            self.rebuild_alibi_tensor(seqlen, hidden.device)
        elif self.alibi.device != hidden.device:
            self.alibi = self.alibi.to(hidden.device)
        bias = self.alibi[:, :, :seqlen, :seqlen] + key_bias
        indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
        x = rearrange(hidden, "b s d -> (b s) d")[indices]
        for layer in self.layer:
            x = layer(x, indices, batch, seqlen, bias)
        out = x.new_zeros((batch * seqlen, x.shape[-1]))
        out[indices] = x
        return rearrange(out, "(b s) d -> b s d", b=batch)


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden):
        return self.activation(self.dense(hidden[:, 0]))


class BertModel(BertPreTrainedModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return hidden, pooled
