"""Resolving models on the login node before `submit`: every task then gets local paths only.

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
from ..errors import InputError
from .sources import DNABERT_WEIGHTS

# fair-esm's pretrained ESM-2 models (esm.pretrained) and their embedding widths
FAIR_ESM2_WIDTHS = {"esm2_t6_8M_UR50D": 320, "esm2_t12_35M_UR50D": 480, "esm2_t30_150M_UR50D": 640,
                    "esm2_t33_650M_UR50D": 1280, "esm2_t36_3B_UR50D": 2560, "esm2_t48_15B_UR50D": 5120}
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
    from ..orchestration.plan import resolve_models

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
    from ..orchestration.plan import resolve_models

    models, _ = resolve_models(request)
    for kind, spec in (("esm", models.esm), ("dnabert", models.dnabert)):
        require_here(kind, spec, request.allow_download, "pass --models DIR")
