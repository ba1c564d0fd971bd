"""Config of the tiny DNABERT-S-style demo encoder (random weights; for tests and demos only)."""

from transformers import PretrainedConfig


class DnabertDemoConfig(PretrainedConfig):
    model_type = "dnabert_demo"

    def __init__(
        self,
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=1024,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        super().__init__(pad_token_id=pad_token_id, **kwargs)
