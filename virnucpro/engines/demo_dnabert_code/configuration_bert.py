"""Config of the DNABERT-S demo model: transformers' BertConfig plus the ALiBi starting size."""

from transformers import BertConfig as _TransformersBertConfig


class BertConfig(_TransformersBertConfig):
    def __init__(self, alibi_starting_size=512, attention_probs_dropout_prob=0.0, **kwargs):
        super().__init__(attention_probs_dropout_prob=attention_probs_dropout_prob, **kwargs)
        self.alibi_starting_size = alibi_starting_size
