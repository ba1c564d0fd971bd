"""Which models a run uses (`resolve_models`: --models DIR, flags, defaults), and resolving them
on the login node before `submit`: every task then gets local paths only.

A model given as a path must exist. A hub name is looked up where its library caches it:
- fair-esm names (esm2_t36_3B_UR50D): `<torch hub dir>/checkpoints/<name>.pt`, the hub dir being
  what torch.hub.get_dir() returns ($TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else
  ~/.cache/torch/hub; computed here without importing torch);
- Hugging Face ids (zhihan1996/DNABERT-S): the huggingface_hub cache (its snapshot folder of the
  cached revision, which must hold config.json and the weights).
Found: the local path replaces the name in the run's configuration (run.json), so the tasks read
that file. Not found: `submit` refuses with one line saying to run `models download`, unless
`--allow-download` (compute nodes with internet: each task then downloads it itself); `--dry-run`
only warns.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import console
from ..classifier_meta import read_classifier_meta
from ..errors import InputError
from ..model_facts import DEFAULT_CHUNK_LENGTH, FAIR_ESM2_WIDTHS, KNOWN_WIDTHS, ModelSpec
from ..pipeline import TRAINING
from .demo import any_demo_model
from .sources import DNABERT_WEIGHTS

DEFAULT_ESM = "esm2_t36_3B_UR50D"
DEFAULT_DNABERT = "zhihan1996/DNABERT-S"
ESM_HUB_NAME = re.compile(r"esm2_t\d+_\w+")
HF_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
LABELS = {"esm": "ESM-2", "dnabert": "DNABERT-S"}


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch (same environment variables, same default)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def esm_cached(name: str) -> Path | None:
    path = torch_hub_dir() / "checkpoints" / f"{name}.pt"
    return path if path.is_file() else None


def hf_cached(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, if it holds config.json and weights."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id huggingface_hub rejects is simply not cached
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if any((folder / name).is_file() for name in DNABERT_WEIGHTS) else None


def locate(kind: str, spec: str) -> tuple[str | None, str]:
    """(local path or None, where it was looked for) for an ESM-2 or DNABERT-S model spec."""
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve()), str(path)
    if kind == "esm" and ESM_HUB_NAME.fullmatch(spec):
        found = esm_cached(spec)
        return (str(found) if found else None), f"the torch hub cache {torch_hub_dir() / 'checkpoints'}"
    if kind == "dnabert" and HF_REPO_ID.fullmatch(spec):
        found = hf_cached(spec)
        return (str(found) if found else None), "the Hugging Face cache"
    return None, str(path)


def check_reference(kind: str, spec: str) -> None:
    """Refuse a model reference that names no model it could be: for ESM-2 a folder or a name
    fair-esm does not publish (and the torch hub cache does not hold), for DNABERT-S a file or
    something neither a folder nor a hub id."""
    path = Path(spec).expanduser()
    if kind == "esm" and (path.is_dir() or not (path.exists() or spec in FAIR_ESM2_WIDTHS or locate(kind, spec)[0])):
        raise InputError(f"{spec}: {'a folder' if path.is_dir() else 'no such file and not a fair-esm model name'}; "
                         f"ESM-2 needs an esm2_*.pt file or one of {', '.join(FAIR_ESM2_WIDTHS)}")
    if kind == "esm" and path.is_file() and not path.name.startswith("esm2"):
        raise InputError(f"{spec}: not an ESM-2 checkpoint file (those are named esm2_*.pt: fair-esm picks the "
                         "architecture from the name); give the esm2_*.pt file or one of "
                         f"{', '.join(FAIR_ESM2_WIDTHS)}")
    if kind == "dnabert" and path.is_dir() and not (path / "config.json").is_file():
        raise InputError(f"{spec}: not a DNABERT-S model folder (no config.json); give the folder that "
                         "'virnucpro-slurm models download DIR' writes (DIR/DNABERT-S) or a hub id like zhihan1996/DNABERT-S")
    if kind == "dnabert" and (path.is_file() or not (path.exists() or HF_REPO_ID.fullmatch(spec))):
        raise InputError(f"{spec}: {'a file' if path.is_file() else 'no such folder and not a hub id'}; DNABERT-S needs "
                         "a model folder (config.json, tokenizer.json, weights) or a hub id like zhihan1996/DNABERT-S")


def require_here(kind: str, spec: str, allow_download: bool, pass_it: str) -> None:
    """Before a run or an embed starts here: refuse a reference that names no model, and a hub model
    this machine has not cached when no download is allowed. `pass_it` says how to give a fetched one."""
    check_reference(kind, spec)
    local, where = locate(kind, spec)
    if local is None and not allow_download:
        raise InputError(f"{spec}: the {LABELS[kind]} model is not on this machine (not in {where}); fetch it with "
                         f"'virnucpro-slurm models download DIR' where there is internet and {pass_it}, "
                         "or add --allow-download to fetch it now")


def resolve_for_submit(request, warn_only: bool) -> None:
    """Replace the request's ESM-2 and DNABERT-S models by local paths, or refuse (warn with
    --dry-run; let tasks download with --allow-download). Same model choice as the run makes."""
    models, _ = resolve_models(request)  # --models DIR, defaults and path checks, as the run resolves them
    for kind, spec, attribute in (("esm", models.esm, "esm_model"), ("dnabert", models.dnabert, "dnabert_model")):
        check_reference(kind, spec)
        label = LABELS[kind]
        local, where = locate(kind, spec)
        if local is not None:
            setattr(request, attribute, local)
            continue
        if request.allow_download:
            console.warn(f"{spec}: the {label} model is not on this machine; every task downloads it itself "
                         "(--allow-download)")
            continue
        message = (f"{spec}: the {label} model is not on this machine (not in {where}) and compute nodes may have no "
                   "internet; run 'virnucpro-slurm models download DIR' here and submit with --models DIR "
                   "(or pass --allow-download if the compute nodes have internet)")
        if warn_only:
            console.warn(message)
        else:
            raise InputError(message)


def check_for_run(request) -> None:
    """`run`: the ESM-2 and DNABERT-S models it will load exist here (or may be downloaded), before any work."""
    models, _ = resolve_models(request)
    for kind, spec in (("esm", models.esm), ("dnabert", models.dnabert)):
        require_here(kind, spec, request.allow_download, "pass --models DIR")


# ---------------------------------------------------------------- which models a run uses

def chunk_length_from_name(path: str) -> int | None:
    """300 or 500 when the file name carries that number as its own token (300_model.pth), else None."""
    tokens = set(re.split(r"[^0-9A-Za-z]+", Path(path).name)) & {"300", "500"}
    return int(tokens.pop()) if len(tokens) == 1 else None


MODEL_FLAGS = {"esm": "--esm-model", "dnabert": "--dnabert-model", "classifier": "--classifier"}


def models_in_dir(directory: Path, chunk_length: int | None, need_classifier: bool = True) -> dict:
    """Find an ESM-2 .pt, a DNABERT-S folder and the classifier(s) in a folder like demo-models
    (no classifier for a training: `need_classifier` False)."""
    if not directory.is_dir():
        raise InputError(f"{directory}: --models folder not found; fetch the models into it with 'virnucpro-slurm "
                         f"models download {directory}' (or 'virnucpro-slurm demo-models {directory}' to try things)")
    esm = sorted(p for p in directory.glob("esm2*.pt") if not p.name.endswith("-contact-regression.pt"))
    dnabert = sorted(p.parent for p in directory.glob("*/config.json"))
    classifiers = sorted(directory.glob("*.pth"))
    if chunk_length is not None:
        classifiers = [c for c in classifiers if chunk_length_from_name(str(c)) == chunk_length] or classifiers
    found = {"esm": esm[0] if esm else None, "dnabert": dnabert[0] if dnabert else None,
             "classifier": classifiers[0] if len(classifiers) == 1 else None}
    if chunk_length is None and classifiers:
        preferred = [c for c in classifiers if chunk_length_from_name(str(c)) == DEFAULT_CHUNK_LENGTH]
        found["classifier"] = (preferred or classifiers)[0]
    if not need_classifier:
        found.pop("classifier")
    for kind, path in found.items():
        if path is None:
            raise InputError(f"{directory}: no {kind} model found in --models folder (expected esm2_*.pt, a DNABERT-S "
                             f"folder with config.json and 300_/500_model.pth); give {MODEL_FLAGS[kind]} explicitly")
    return {k: str(v) for k, v in found.items()}


def resolve_models(request) -> tuple[ModelSpec, int]:
    """The models of a run request (orchestration.plan.RunRequest) and its chunk length: --models
    DIR, the flags and the defaults, every path checked, the classifier's widths and chunk length
    held against the models'."""
    training = request.kind == TRAINING  # a training makes its classifier
    found = models_in_dir(request.models_dir, request.chunk_length, need_classifier=not training) if request.models_dir else {}
    esm = request.esm_model or found.get("esm") or DEFAULT_ESM
    dnabert = request.dnabert_model or found.get("dnabert") or DEFAULT_DNABERT
    classifier = None if training else request.classifier or found.get("classifier")
    if not classifier and not training:
        raise InputError("no classifier given: pass --classifier 500_model.pth (or 300_model.pth) from VirNucPro, "
                         "or a classifier.safetensors made by 'virnucpro-slurm train', or --models DIR, or --demo")
    if classifier and not Path(classifier).is_file():
        raise InputError(f"{classifier}: classifier file not found; give the path to 300_model.pth, 500_model.pth "
                         "or a classifier.safetensors made by 'virnucpro-slurm train'")
    for kind, spec in (("ESM-2", esm), ("DNABERT-S", dnabert)):
        looks_like_path = spec.startswith(("/", ".", "~")) or spec.endswith(".pt")
        if looks_like_path and not Path(spec).exists():
            raise InputError(f"{spec}: {kind} model path not found; fetch the models with 'virnucpro-slurm models "
                             "download DIR' and pass --models DIR")
    meta = classifier_meta(classifier) if classifier else None
    named = meta["chunk_length"] if meta else chunk_length_from_name(classifier) if classifier else None
    chunk_length = request.chunk_length or named or DEFAULT_CHUNK_LENGTH
    if meta and chunk_length != named:
        raise InputError(f"--chunk-length {chunk_length} does not match the classifier {classifier}, trained on "
                         f"{named}-bp chunks; use --chunk-length {named} (or leave it out)")
    if named and chunk_length != named and not request.force_chunk_length:
        raise InputError(f"--chunk-length {chunk_length} contradicts the classifier {Path(classifier).name} (trained on "
                         f"{named}-bp chunks); use --chunk-length {named}, or --force-chunk-length if you are sure")
    # a demo model is one whatever flag brought it in (--demo, --models, --esm-model, ...)
    models = ModelSpec(esm=str(Path(esm).resolve()) if Path(esm).exists() else esm,
                       dnabert=str(Path(dnabert).resolve()) if Path(dnabert).exists() else dnabert,
                       classifier=str(Path(classifier).resolve()) if classifier else "",
                       demo=request.demo or any_demo_model(esm, dnabert, classifier))
    if meta:
        check_classifier_widths(classifier, meta, models)
    return models, chunk_length


def classifier_meta(classifier: str) -> dict | None:
    """What a classifier made by `train` says of itself (classifier.json beside its .safetensors);
    None for a released .pth, whose chunk length its name gives."""
    if Path(classifier).suffix != ".safetensors":
        return None
    return read_classifier_meta(Path(classifier))


def check_classifier_widths(classifier: str, meta: dict, models: ModelSpec) -> None:
    """Refuse, before any work, models whose embedding widths differ from those the classifier
    was trained on, naming both. Widths known without loading a model (by name, or a DNABERT-S
    folder's config.json) are checked here; others when prepare checks the models (check_models)."""
    trained = meta.get("input_widths") or {}
    given = {"dnabert": (models.dnabert, dnabert_width(models.dnabert)),
             "esm2": (models.esm, KNOWN_WIDTHS.get(Path(models.esm).stem))}
    for kind, (spec, width) in given.items():
        if width is not None and kind in trained and trained[kind] != width:
            name = (meta.get("models") or {}).get(kind, {}).get("name") or "its models"
            raise InputError(f"{classifier}: trained on {kind} embeddings of width {trained[kind]} ({name}), but "
                             f"{spec} gives {width}; use the models it was trained with, or a classifier trained "
                             "with these")


def dnabert_width(spec: str) -> int | None:
    """A DNABERT-S model's embedding width: its folder's config.json, else known by its hub id."""
    config = Path(spec) / "config.json"
    if config.is_file():
        # engines/ imports numpy: only for a model folder, so login-node planning stays light
        from ..engines.dnabert_files import read_config  # bounded read, one line when unreadable
        from ..engines.safe_load import declared_size

        return declared_size(config, "hidden_size", read_config(Path(spec)).get("hidden_size"),
                             what="give the DNABERT-S folder or 'zhihan1996/DNABERT-S'")
    return KNOWN_WIDTHS.get(spec)
