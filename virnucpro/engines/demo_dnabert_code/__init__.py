"""Source of the tiny DNABERT-S-style demo model.

These modules are copied as text next to the demo weights (HF `trust_remote_code` layout), the
same way the real DNABERT-S repository ships its own `bert_layers.py`. They import only torch and
transformers so that they run from the HF dynamic-module cache.
"""
