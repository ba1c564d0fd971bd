"""Model code of the tiny DNABERT-S demo model, in the layout of the real DNABERT-S repository.

These modules are written as text next to the demo weights (`configuration_bert.py`,
`bert_layers.py`, `flash_attn_triton.py`), the way the real hub repository ships its own code for
`trust_remote_code`. They are this project's own code, written to have the same structure and the
same hazards as the real files, so that the remote-code fallback is tested against them:
- `bert_layers` imports einops;
- the encoder builds its ALiBi table as a plain tensor in `__init__` (transformers 5.x, which
  builds models on the meta device inside `from_pretrained`, fails there);
- `bert_layers` try-imports a Triton kernel; when that import succeeds (triton installed) and
  `attention_probs_dropout_prob == 0`, attention goes through it: fp16, CUDA only (a bare
  AssertionError on CPU).
The native engine never imports these modules; nothing in virnucpro does except through
transformers' dynamic modules for the fallback.
"""
