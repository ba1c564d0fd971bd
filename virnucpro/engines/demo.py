"""Tiny RANDOM models in the real on-disk formats, for tests and for trying the pipeline offline.

Their predictions are meaningless. What is real is the format: a fair-esm ESM-2 checkpoint (plus
its contact-regression file), a DNABERT-S-style `trust_remote_code` HF directory, and classifier
.pth files pickled as whole `__main__.MLPClassifier` modules like the released ones. So the
loading code exercised on them is the code that loads the real models.

Everything is seeded and serialised without timestamps or temp names, so writing twice gives
byte-identical model files (only the manifest, virnucpro-models.json, records times); every file
is written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from virnucpro.atomic import atomic_write_bytes, atomic_write_text
from virnucpro.engines import classifier as _classifier

ESM_NAME = "esm2_t2_demo"
ESM_LAYERS, ESM_DIM, ESM_HEADS = 2, 64, 4
DNABERT_DIR = "dnabert-s-demo"
DNABERT_HIDDEN = 32
CLASSIFIER_HIDDEN = 512
_CODE_FILES = ("configuration_dnabert_demo.py", "modeling_dnabert_demo.py")
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BASES = ("A", "C", "G", "T", "N")
# A few BPE merges so that token counts differ from base counts, as with DNABERT-S's BPE.
_MERGES = (("A", "A"), ("C", "C"), ("G", "G"), ("T", "T"), ("A", "T"), ("C", "G"), ("AA", "AA"), ("TT", "TT"))

README = """\
RANDOM DEMO MODELS - their predictions are MEANINGLESS.

These files were written by virnucpro.engines.demo.write_demo_models with fixed random seeds.
They have the on-disk formats of the real models (fair-esm ESM-2 checkpoint, DNABERT-S-style
Hugging Face directory with trust_remote_code, VirNucPro 300_model.pth / 500_model.pth pickles)
but tiny sizes and random weights. Use them to test installation and plumbing only; for real
predictions use esm2_t36_3B_UR50D, zhihan1996/DNABERT-S and the released VirNucPro classifiers.
"""


def _torch_bytes(obj) -> bytes:
    # Saving to a buffer (not to a temp file path) keeps the temp name out of the zip archive.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _perturb_layer_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Move LayerNorm/BatchNorm affine params off (1, 0) so a missed norm layer shows in tests."""
    for sub in module.modules():
        if isinstance(sub, (nn.LayerNorm, nn.BatchNorm1d)) and sub.weight is not None:
            with torch.no_grad():
                sub.weight.add_(0.1 * torch.randn(sub.weight.shape, generator=generator))
                sub.bias.add_(0.1 * torch.randn(sub.bias.shape, generator=generator))


def _write_esm2(directory: Path) -> tuple[Path, Path]:
    import esm
    from esm.model.esm2 import ESM2

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = ESM2(ESM_LAYERS, ESM_DIM, ESM_HEADS, alphabet, token_dropout=True)
    _perturb_layer_norms(model, torch.Generator().manual_seed(1))
    state, regression = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head."):
            regression[key] = value.clone()  # shipped separately, as on the fair-esm hub
        elif key.startswith("lm_head."):
            state[f"encoder.{key}"] = value.clone()  # fairseq keeps the LM head on the encoder
        else:
            state[f"encoder.sentence_encoder.{key}"] = value.clone()
    cfg = argparse.Namespace(
        encoder_layers=ESM_LAYERS, encoder_embed_dim=ESM_DIM, encoder_attention_heads=ESM_HEADS, token_dropout=True
    )
    model_path = directory / f"{ESM_NAME}.pt"
    regression_path = directory / f"{ESM_NAME}-contact-regression.pt"
    atomic_write_bytes(model_path, _torch_bytes({"model": state, "cfg": {"model": cfg}}))
    atomic_write_bytes(regression_path, _torch_bytes({"model": regression}))
    return model_path, regression_path


def _tokenizer_json() -> dict:
    """A DNABERT-S-like BPE tokenizer.json: [CLS] tokens [SEP], merges as "a b" strings (all versions read those)."""
    vocab = {token: i for i, token in enumerate(_SPECIALS + _BASES + tuple(a + b for a, b in _MERGES))}

    def special(token: str) -> dict:
        return {"SpecialToken": {"id": token, "type_id": 0}}

    def sequence(name: str) -> dict:
        return {"Sequence": {"id": name, "type_id": 0}}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in _SPECIALS
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]"), sequence("A"), special("[SEP]")],
            "pair": [special("[CLS]"), sequence("A"), special("[SEP]"), sequence("B"), special("[SEP]")],
            "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")},
        },
        "decoder": None,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "vocab": vocab, "merges": [f"{a} {b}" for a, b in _MERGES],
        },
    }


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _write_dnabert(directory: Path) -> Path:
    from safetensors.torch import save as safetensors_bytes

    from virnucpro.engines.demo_dnabert_code.configuration_dnabert_demo import DnabertDemoConfig
    from virnucpro.engines.demo_dnabert_code.modeling_dnabert_demo import DnabertDemoModel

    target = directory / DNABERT_DIR
    tokenizer = _tokenizer_json()
    # Written by hand (not config.save_pretrained) so the file is the same whatever transformers
    # version writes it, and holds nothing a version may not understand.
    config = {
        "architectures": ["DnabertDemoModel"],
        "auto_map": {
            "AutoConfig": "configuration_dnabert_demo.DnabertDemoConfig",
            "AutoModel": "modeling_dnabert_demo.DnabertDemoModel",
        },
        "model_type": "dnabert_demo",
        "vocab_size": len(tokenizer["model"]["vocab"]),
        "hidden_size": DNABERT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 1024,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    torch.manual_seed(2)
    model = DnabertDemoModel(DnabertDemoConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=generator))
        for sub in model.modules():
            if isinstance(sub, nn.LayerNorm):
                sub.weight.add_(1.0)  # LayerNorm scales around 1 (random), biases around 0

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(target / "model.safetensors", safetensors_bytes(state, metadata={"format": "pt"}))
    atomic_write_text(target / "config.json", _json_text(config))
    for name in _CODE_FILES:
        code = resources.files("virnucpro.engines.demo_dnabert_code").joinpath(name).read_text("utf-8")
        atomic_write_text(target / name, code)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    atomic_write_text(target / "tokenizer.json", _json_text(tokenizer))
    atomic_write_text(target / "special_tokens_map.json", _json_text(specials))
    atomic_write_text(
        target / "tokenizer_config.json",
        _json_text({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024,
                    "padding_side": "right", "clean_up_tokenization_spaces": False, **specials}),
    )
    return target


def _classifier_pickle(seed: int, input_dim: int) -> bytes:
    """A whole MLPClassifier module pickled under the class path `__main__.MLPClassifier`, as released."""
    # A subclass named like the original and claiming to live in __main__: the pickle records
    # only that name; the loader maps it back to our class.
    main_class = type("MLPClassifier", (_classifier.MLPClassifier,), {"__module__": "__main__"})
    torch.manual_seed(seed)
    model = main_class(input_dim, CLASSIFIER_HIDDEN, 2)
    generator = torch.Generator().manual_seed(seed + 1)
    _perturb_layer_norms(model, generator)
    with torch.no_grad():  # nonzero running statistics, so eval mode visibly matters
        model.bn1.running_mean.copy_(0.5 * torch.randn(CLASSIFIER_HIDDEN, generator=generator))
        model.bn1.running_var.copy_(0.5 + torch.rand(CLASSIFIER_HIDDEN, generator=generator))
        model.bn1.num_batches_tracked.fill_(100)
    model.eval()
    with _classifier._MAIN_LOCK:  # pickle checks that __main__.MLPClassifier is this very class
        main = sys.modules["__main__"]
        previous = getattr(main, "MLPClassifier", _classifier._MISSING)
        main.MLPClassifier = main_class
        try:
            return _torch_bytes(model)
        finally:
            if previous is _classifier._MISSING:
                del main.MLPClassifier
            else:
                main.MLPClassifier = previous


def write_demo_models(directory: str | Path) -> dict[str, Path]:
    """Write the demo models into `directory`; return their paths by role.

    Keys: esm2 (the .pt), esm2_regression, dnabert (directory), classifier_300, classifier_500, readme.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    esm_path, regression_path = _write_esm2(directory)
    dnabert_path = _write_dnabert(directory)
    paths = {"esm2": esm_path, "esm2_regression": regression_path, "dnabert": dnabert_path}
    for seed, chunk in ((300, 300), (500, 500)):
        path = directory / f"{chunk}_model.pth"
        atomic_write_bytes(path, _classifier_pickle(seed, DNABERT_HIDDEN + ESM_DIM))
        paths[f"classifier_{chunk}"] = path
    paths["readme"] = directory / "README.txt"
    atomic_write_text(paths["readme"], README)
    # Last, over every file above: the folder is then a --mirror source and `models verify` checks it.
    from virnucpro import __version__
    from virnucpro.modelstore.manifest import write_folder_manifest
    write_folder_manifest(directory, url="virnucpro-demo-models", revision=__version__)
    return paths
