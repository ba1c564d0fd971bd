"""Tiny RANDOM models in the real on-disk formats, for tests and for trying the pipeline offline.

Their predictions are meaningless. What is real is the format: a fair-esm ESM-2 checkpoint (plus
its contact-regression file), a DNABERT-S folder in the real hub layout (config.json, model.safetensors,
BPE tokenizer.json, model code files with the real code's hazards), and classifier .pth files pickled as whole `__main__.MLPClassifier` modules like the released ones. So the
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

from virnucpro import __version__
from virnucpro.atomic import atomic_write_bytes, atomic_write_text
from virnucpro.engines import classifier as _classifier
from virnucpro.engines.safe_load import safetensors_bytes
from virnucpro.modelstore.demo import DEMO_KEY, DEMO_ORIGIN, DEMO_VALUE
from virnucpro.modelstore.manifest import write_folder_manifest

ESM_NAME = "esm2_t2_demo"
ESM_LAYERS, ESM_DIM, ESM_HEADS = 2, 64, 4
DNABERT_DIR = "dnabert-s-demo"
DNABERT_HIDDEN = 32
CLASSIFIER_HIDDEN = 512
# The real DNABERT-S repository's code files, in this project's own version (see demo_dnabert_code).
_CODE_FILES = ("configuration_bert.py", "bert_layers.py", "flash_attn_triton.py")
DNABERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")

README = """\
RANDOM DEMO MODELS - their predictions are MEANINGLESS.

These files were written by virnucpro.engines.demo.write_demo_models with fixed random seeds.
They have the on-disk formats of the real models (fair-esm ESM-2 checkpoint, DNABERT-S
Hugging Face folder in the real layout, VirNucPro 300_model.pth / 500_model.pth pickles)
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
    # the demo mark (modelstore.demo): one more entry of the checkpoint dict, which the loader ignores
    atomic_write_bytes(model_path, _torch_bytes({"model": state, "cfg": {"model": cfg}, DEMO_KEY: DEMO_VALUE}))
    atomic_write_bytes(regression_path, _torch_bytes({"model": regression}))
    return model_path, regression_path


def _dnabert_tokenizer_json() -> str:
    """A BPE tokenizer.json like DNABERT-S's, built with the `tokenizers` library: special tokens
    [UNK] [CLS] [SEP] [PAD] [MASK] (ids 0-4, so [PAD] is 3 while config.json says pad_token_id 0,
    as in the real model), bases, all dinucleotides and some 4-mers, `[CLS] ... [SEP]` template."""
    import random

    from tokenizers import Tokenizer, models, processors

    tokens = list(DNABERT_SPECIALS) + list("ACGTN")
    merges = [(a, b) for a in "ACGT" for b in "ACGT"]
    dinucleotides = [a + b for a, b in merges]
    quads = random.Random(4).sample([(a, b) for a in dinucleotides for b in dinucleotides], 24)
    merges += quads
    tokens += dinucleotides + [a + b for a, b in quads]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    tokenizer.add_special_tokens(list(DNABERT_SPECIALS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return _json_text(json.loads(tokenizer.to_str()))


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def dnabert_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    """config.json with the real DNABERT-S keys (read from its hub repository), tiny sizes."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-2-117M", "alibi_starting_size": 512, "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel"},
        "classifier_dropout": None, "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": intermediate, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": heads,
        "num_hidden_layers": layers, "pad_token_id": 0, "position_embedding_type": "absolute",
        "torch_dtype": "float32", "transformers_version": "4.28.0", "type_vocab_size": 2, "use_cache": True,
        "vocab_size": vocab_size,
    }


def dnabert_random_weights(config: dict, seed: int) -> dict:
    """Random weights under DNABERT-S's real names (a saved BertModel: no prefix), LayerNorm scales ~1."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {"embeddings.word_embeddings.weight": (v, h), "embeddings.token_type_embeddings.weight": (2, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        shapes.update({p + "attention.self.Wqkv.weight": (3 * h, h), p + "attention.self.Wqkv.bias": (3 * h,),
                       p + "attention.output.dense.weight": (h, h), p + "attention.output.dense.bias": (h,),
                       p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias": (h,),
                       p + "mlp.gated_layers.weight": (2 * i, h), p + "mlp.wo.weight": (h, i), p + "mlp.wo.bias": (h,),
                       p + "mlp.layernorm.weight": (h,), p + "mlp.layernorm.bias": (h,)})
    shapes.update({"pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        value = 0.2 * torch.randn(shape, generator=generator)
        if name.endswith(("LayerNorm.weight", "layernorm.weight")):
            value = value + 1.0
        state[name] = value.contiguous()
    return state


def write_dnabert_demo(target: Path, hidden: int = DNABERT_HIDDEN, layers: int = 2, heads: int = 4,
                       intermediate: int = 64, seed: int = 3, tokenizer: str | None = None) -> Path:
    """A DNABERT-S folder in the real layout: config.json, model.safetensors, tokenizer files, model code.
    `tokenizer`: another tokenizer.json text (bench/host_overhead.py's BPE of DNABERT-S's size).
    Both config.json and the safetensors metadata carry the demo mark (modelstore.demo)."""
    target = Path(target)
    tokenizer = tokenizer or _dnabert_tokenizer_json()
    config = dnabert_config(len(json.loads(tokenizer)["model"]["vocab"]), hidden, layers, heads, intermediate)
    config[DEMO_KEY] = DEMO_VALUE
    state = dnabert_random_weights(config, seed)
    atomic_write_bytes(target / "model.safetensors", safetensors_bytes(state, metadata={"format": "pt", DEMO_KEY: DEMO_VALUE}))
    # Written by hand (not config.save_pretrained): the same file whatever transformers version writes it.
    atomic_write_text(target / "config.json", _json_text(config))
    for name in _CODE_FILES:
        code = resources.files("virnucpro.engines.demo_dnabert_code").joinpath(name).read_text("utf-8")
        atomic_write_text(target / name, code)
    specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"}
    atomic_write_text(target / "tokenizer.json", tokenizer)
    atomic_write_text(target / "special_tokens_map.json", _json_text(specials))
    atomic_write_text(
        target / "tokenizer_config.json",
        _json_text({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1000000000000000019884624838656,
                    "padding_side": "right", "clean_up_tokenization_spaces": True, **specials}),
    )
    return target


def _write_dnabert(directory: Path, tokenizer: str | None = None) -> Path:
    return write_dnabert_demo(directory / DNABERT_DIR, tokenizer=tokenizer)


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
    setattr(model, DEMO_KEY, DEMO_VALUE)  # the demo mark (modelstore.demo): pickled with the module's attributes
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


def write_demo_models(directory: str | Path, dnabert_tokenizer: str | None = None) -> dict[str, Path]:
    """Write the demo models into `directory`; return their paths by role. `dnabert_tokenizer`:
    another tokenizer.json text for the DNABERT-S folder (see write_dnabert_demo).

    Keys: esm2 (the .pt), esm2_regression, dnabert (directory), classifier_300, classifier_500, readme.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    esm_path, regression_path = _write_esm2(directory)
    dnabert_path = _write_dnabert(directory, dnabert_tokenizer)
    paths = {"esm2": esm_path, "esm2_regression": regression_path, "dnabert": dnabert_path}
    for seed, chunk in ((300, 300), (500, 500)):
        path = directory / f"{chunk}_model.pth"
        atomic_write_bytes(path, _classifier_pickle(seed, DNABERT_HIDDEN + ESM_DIM))
        paths[f"classifier_{chunk}"] = path
    paths["readme"] = directory / "README.txt"
    atomic_write_text(paths["readme"], README)
    # Last, over every file above: the folder is then a --mirror source and `models verify` checks it.
    write_folder_manifest(directory, url=DEMO_ORIGIN, revision=__version__, demo=True)
    return paths
