"""Turning a command line into a run: resolve models, read the inputs list, size the shards,
compare the fingerprint with the workdir's, and create the state entries. No torch here."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..atomic import refuse_linked_folders, remove_stale_temp_files
from ..errors import InputError, StateError
from ..paths import Workdir
from ..pipeline import PREDICTION, TRAINING, downstream, reset_by_options, shard_counts
from ..fasta import read_inputs_list
from ..modelstore.demo import any_demo_model
from .config import (CLASSIFIER_CHANGED, DEFAULT_CHUNK_LENGTH, HashCache, ModelSpec, RunConfig, RunOptions,
                     auto_shards, check_writable, compute_fingerprint, fingerprint_differences, input_names, read_run_marker)
from .labels import read_labels
from .state import DONE, RUNNING, StateFile, exclusive_lock
from .writer import WorkdirWriter

DEFAULT_ESM = "esm2_t36_3B_UR50D"
DEFAULT_DNABERT = "zhihan1996/DNABERT-S"


@dataclass(kw_only=True)
class RunRequest(RunOptions):
    """A `run`, `train`, `evaluate` or `submit` command line, before planning. `inputs_list` is
    the inputs list of a prediction, the LABELS file of a training or an evaluation."""

    inputs_list: Path
    workdir: Path
    models_dir: Path | None = None
    esm_model: str | None = None
    dnabert_model: str | None = None
    classifier: str | None = None
    chunk_length: int | None = None
    force_chunk_length: bool = False
    shards: int | None = None
    restart: bool = False
    demo: bool = False

    @classmethod
    def of_run(cls, workdir: Path) -> "RunRequest":
        """The request that plans a workdir's recorded run again, whatever its kind (`submit
        --workdir W` without an inputs argument): its inputs, models and options as run.json has them."""
        config = RunConfig.load(Workdir(workdir), has_restart=True)
        return cls(inputs_list=Path(config.inputs_list), workdir=Path(workdir), esm_model=config.models.esm,
                   dnabert_model=config.models.dnabert, classifier=config.models.classifier or None,
                   chunk_length=config.chunk_length, force_chunk_length=True, shards=config.shards,
                   demo=config.models.demo, **config.run_options())


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


def resolve_models(request: RunRequest) -> tuple[ModelSpec, int]:
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
    from ..classifier_meta import read_classifier_meta  # torch-free (engines.classifier re-exports it)

    return read_classifier_meta(Path(classifier))


def check_classifier_widths(classifier: str, meta: dict, models: ModelSpec) -> None:
    """Refuse, before any work, models whose embedding widths differ from those the classifier
    was trained on, naming both. Widths known without loading a model (by name, or a DNABERT-S
    folder's config.json) are checked here; others when prepare checks the models (check_models)."""
    from ..stages.prepare import KNOWN_WIDTHS, dnabert_width

    trained = meta.get("input_widths") or {}
    given = {"dnabert": (models.dnabert, dnabert_width(models.dnabert)),
             "esm2": (models.esm, KNOWN_WIDTHS.get(Path(models.esm).stem))}
    for kind, (spec, width) in given.items():
        if width is not None and kind in trained and trained[kind] != width:
            name = (meta.get("models") or {}).get(kind, {}).get("name") or "its models"
            raise InputError(f"{classifier}: trained on {kind} embeddings of width {trained[kind]} ({name}), but "
                             f"{spec} gives {width}; use the models it was trained with, or a classifier trained "
                             "with these")


# What may be in a folder before it holds run.json: what planning writes before run.json (a plan
# refused half-way) and the demo models `run --demo` writes into the workdir before planning.
# `submit --dry-run` writes slurm/dry-run/ and changes no state, so a dry run may come first.
PRE_CONFIG_ENTRIES = {".state.lock", ".hash-cache.json", ".writer.lock", ".writer.json", "demo-models", "logs", "slurm"}


def check_is_workdir_or_empty(workdir: Workdir) -> None:
    """Refuse a non-empty folder that is not a virnucpro workdir (no run.json, or one that is not
    this tool's): nothing in it is ours, so nothing in it may be deleted or mixed with a run's files.
    Refuse a workdir holding a symbolic link to a folder: a run would write or delete through it."""
    if not workdir.root.is_dir():
        return
    refuse_linked_folders(workdir.root)
    if read_run_marker(workdir) is not None:
        return
    foreign = sorted(p.name for p in workdir.root.iterdir() if p.name not in PRE_CONFIG_ENTRIES)
    if foreign:
        raise StateError(f"{workdir.root}: not empty and not a virnucpro workdir (no run.json; holds "
                         f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                         "choose a new or empty --workdir (nothing was changed)")


def discard_results(workdir: Workdir) -> None:
    """Delete this tool's outputs; only ever called on a workdir (check_is_workdir_or_empty)."""
    check_is_workdir_or_empty(workdir)
    for folder in workdir.output_folders:
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(workdir.state_records, ignore_errors=True)
    for path in (workdir.state, workdir.config):
        path.unlink(missing_ok=True)


def _holds_work(workdir: Workdir) -> bool:
    """Whether any (stage, shard) of the workdir's run is done or running."""
    state = StateFile(workdir.state, workdir.state_lock).load()
    return any(entry.status in (DONE, RUNNING) for shards in state.values() for entry in shards.values())


def new_config(request: RunRequest) -> RunConfig:
    """The run a request describes (models resolved, inputs listed, shards sized); writes nothing."""
    models, chunk_length = resolve_models(request)
    if request.kind == PREDICTION:
        inputs, labels, genbank = read_inputs_list(request.inputs_list), [], []
    else:
        labelled = read_labels(request.inputs_list, need_both_classes=request.kind == TRAINING)
        inputs, labels, genbank = labelled.inputs, labelled.labels, [str(g) if g else None for g in labelled.genbank]
    return RunConfig(inputs_list=str(Path(request.inputs_list).resolve()), inputs=[str(p) for p in inputs],
                     input_names=input_names(inputs), chunk_length=chunk_length,
                     shards=request.shards or auto_shards(inputs), models=models, labels=labels, genbank=genbank,
                     **request.run_options())


def compare_with_workdir(request: RunRequest, workdir: Workdir, config: RunConfig,
                         hashes: HashCache) -> tuple[bool, list[str]]:
    """What this request means for the workdir's existing run, deciding and writing nothing:
    (discard its results?, stages to reset). Refuses a request for a different run that would
    lose work. Fills in config.fingerprint (and the run's shard count when not given). Shared by
    `plan_run` and `submit --dry-run`, so the dry run plans and refuses exactly as submit does."""
    if workdir.config.exists() and not request.restart:
        previous = RunConfig.load(workdir, has_restart=True)
        if request.shards is None:
            config.shards = previous.shards  # auto-sizing must not change a run in flight
        config.fingerprint = compute_fingerprint(config, hashes)
        differences = fingerprint_differences(previous.fingerprint, config.fingerprint)
        # another classifier (an evaluation of a training's or a prediction's workdir, say) reuses
        # the embeddings: only what reads the classifier is computed again
        reset = reset_by_options(previous, config)
        if CLASSIFIER_CHANGED in differences:
            from .. import console

            differences.remove(CLASSIFIER_CHANGED)
            again = downstream("predict", config)
            reset += [name for name in again if name not in reset]
            if again and not differences:
                console.info(f"another classifier: {', '.join(again)} run again; the embeddings in {workdir.root} are reused")
        if differences and _holds_work(workdir):
            raise StateError(f"{workdir.root} holds a run with different {'; '.join(differences)}; "
                             "use a new --workdir, or add --restart to discard its results")
        # differences with nothing done (e.g. an input fixed after prepare refused it): nothing to lose
        return bool(differences), ([] if differences else reset)
    config.fingerprint = compute_fingerprint(config, hashes)
    return request.restart, []


def refuse_while_jobs_active(workdir: Workdir) -> None:
    """A run's SLURM tasks write its state: nothing else may plan it while they are queued or running."""
    if not workdir.jobs.exists():
        return
    from .slurm import active_jobs

    active = active_jobs(workdir)
    if active:
        raise StateError(f"{workdir.root}: SLURM jobs {', '.join(active)} of this run are still queued or running; "
                         f"wait for them, or 'virnucpro-slurm cancel --workdir {workdir.root}' first")


def plan_run(request: RunRequest, writer: WorkdirWriter | None = None) -> tuple[Workdir, RunConfig, StateFile]:
    """Create or re-open a workdir for this request; refuse a workdir of a different run, one
    another process holds, and one whose SLURM jobs are still active. `writer` (held by the
    caller for as long as it writes the run) is acquired here; without it, for planning only."""
    workdir = Workdir(request.workdir)
    config = new_config(request)
    check_is_workdir_or_empty(workdir)
    check_writable(workdir.root)  # only now: a request refused above leaves no empty workdir behind
    with contextlib.ExitStack() as planning:
        if writer is None:
            writer = planning.enter_context(WorkdirWriter(workdir.root, "plan"))
        writer.acquire()
        refuse_while_jobs_active(workdir)
        return _plan_held(request, workdir, config)


def _plan_held(request: RunRequest, workdir: Workdir, config: RunConfig) -> tuple[Workdir, RunConfig, StateFile]:
    with exclusive_lock(workdir.state_lock):  # provenance is only written under this lock
        remove_stale_temp_files(workdir.run_files)
    hashes = HashCache(workdir.hash_cache)
    discard, reset = compare_with_workdir(request, workdir, config, hashes)
    classifier = Path(config.models.classifier) if config.models.classifier else None
    if discard and classifier and any(classifier.is_relative_to(folder.resolve()) for folder in workdir.output_folders):
        raise InputError(f"{classifier}: the classifier lies inside {workdir.root}, whose results this run would "
                         "discard; copy it out of the workdir and pass the copy (nothing was changed)")
    if discard:
        discard_results(workdir)
    hashes.save()
    config.save(workdir)
    state = StateFile(workdir.state, workdir.state_lock)
    if reset:  # e.g. only the per-read calls depend on --min-score: redo consensus alone
        state.reset(reset)
    state.initialise(shard_counts(config))
    from ..provenance import update_provenance
    update_provenance(workdir, config, "plan", state.load())
    return workdir, config, state


def open_run(workdir_path: Path) -> tuple[Workdir, RunConfig, StateFile]:
    workdir = Workdir(workdir_path)
    config = RunConfig.load(workdir)
    return workdir, config, StateFile(workdir.state, workdir.state_lock)
