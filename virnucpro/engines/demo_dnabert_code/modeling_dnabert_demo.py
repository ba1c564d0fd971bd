"""A compact post-LayerNorm BERT encoder standing in for DNABERT-S in tests and demos.

Like DNABERT-S's own code, `forward(input_ids, attention_mask=None)` returns a tuple whose [0]
is the last hidden state [B, T, H]; padded keys are masked out so that a padded batch gives the
same hidden states for real tokens as one sequence at a time. No buffers are registered: the
position ids are built per call, so nothing depends on how a transformers version initialises
non-persistent buffers when loading.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_dnabert_demo import DnabertDemoConfig


class DnabertDemoLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, x, key_mask):
        batch, length, hidden = x.shape
        head_dim = hidden // self.num_heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        attn = attn.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attn_norm(x + self.attn_out(attn))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class DnabertDemoModel(PreTrainedModel):
    config_class = DnabertDemoConfig
    base_model_prefix = "dnabert_demo"

    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(DnabertDemoLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _init_weights(self, module):
        # Weights always come from the checkpoint (or are set by the demo writer): nothing to do.
        pass

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings} of this demo model"
            )
        positions = torch.arange(length, device=input_ids.device)
        x = self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, T]: True = attend
        for layer in self.layers:
            x = layer(x, key_mask)
        return (x, x[:, 0])
