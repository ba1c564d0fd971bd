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

ESM_HUB_NAME = re.compile(r"esm2_t\d+_\w+")
HF_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


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


def resolve_for_submit(request, warn_only: bool) -> None:
    """Replace the request's ESM-2 and DNABERT-S models by local paths, or refuse (warn with
    --dry-run; let tasks download with --allow-download). Same model choice as the run makes."""
    from ..orchestration.plan import resolve_models

    models, _ = resolve_models(request)  # --models DIR, defaults and path checks, as the run resolves them
    for kind, label, spec, attribute in (("esm", "ESM-2", models.esm, "esm_model"),
                                         ("dnabert", "DNABERT-S", models.dnabert, "dnabert_model")):
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
