"""Turning a command line into a run: resolve models, read the inputs list, size the shards,
compare the fingerprint with the workdir's, and create the state entries. No torch here."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import console
from ..atomic import refuse_linked_folders, remove_stale_temp_files
from ..calibration_meta import (CalibrationFileError, check_identity, file_sha256, own_calibration, read_calibration,
                                run_identity)
from ..errors import InputError, StateError
from ..fasta import read_inputs_list
from ..modelstore.resolve import resolve_models
from ..paths import Workdir
from ..pipeline import PREDICTION, TRAINING, downstream, reset_by_options, shard_counts
from .config import (CLASSIFIER_CHANGED, HashCache, RunConfig, RunOptions, auto_shards, check_writable,
                     compute_fingerprint, fingerprint_differences, input_names, read_run_marker)
from .labels import read_labels
from .provenance import update_provenance
from .state import DONE, RUNNING, StateFile, exclusive_lock
from .writer import WorkdirWriter

# A workdir's queued or running SLURM job ids (orchestration.slurm.active_jobs), handed in by the
# command that plans: planning itself knows nothing of SLURM.
ActiveJobs = Callable[[Workdir], list[str]]

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
        if request.kind != TRAINING and any(genbank):
            console.warn(f"{request.inputs_list}: its GenBank column is ignored: an evaluation scores every stop-free "
                         "frame, as 'run' does (only a training keeps the frames inside annotated CDS)")
            genbank = []
    calibration, calibration_sha256 = resolve_calibration(request, models.classifier)
    return RunConfig(inputs_list=str(Path(request.inputs_list).resolve()), inputs=[str(p) for p in inputs],
                     input_names=input_names(inputs), chunk_length=chunk_length,
                     shards=request.shards or auto_shards(inputs), models=models, labels=labels, genbank=genbank,
                     **{**request.run_options(), "calibration": calibration, "calibration_sha256": calibration_sha256})


def resolve_calibration(request: RunRequest, classifier: str | None) -> tuple[str | None, str | None]:
    """(path, SHA-256) of the calibration the read calls use: the one asked for, else the
    classifier's own (train fits one), else none. Refuses --max-fdr with --min-score, and
    --max-fdr or --virus-share without a calibration."""
    if request.kind == TRAINING:
        return None, None
    if request.max_fdr is not None and request.min_score is not None:
        raise InputError("--max-fdr and --min-score are two rules for the read calls: give one of them")
    path = Path(request.calibration).resolve() if request.calibration else own_calibration(classifier)
    if path is None:
        flag = "--max-fdr" if request.max_fdr is not None else "--virus-share" if request.virus_share is not None else None
        if flag:
            raise InputError(f"{flag} needs a calibration of the classifier's read scores: pass --calibration FILE "
                             "('virnucpro-slurm evaluate' writes E/evaluation/NAME/calibration.json), or a classifier that "
                             "carries one ('virnucpro-slurm train' fits one)")
        return None, None
    if not path.is_file():
        raise CalibrationFileError(f"{path}: no such calibration file (--calibration)")
    return str(path), file_sha256(path)


def check_calibration(config: RunConfig) -> None:
    """Refuse, before any work, a calibration that is damaged, of chunk scores, or of another
    classifier, chunk length or embedding models than this run's (its fingerprint names them)."""
    if not config.calibration:
        return
    document = read_calibration(config.calibration)
    if document["level"] != "read":
        raise CalibrationFileError(f"{config.calibration}: a calibration of chunk scores; the read calls take the "
                                   "read-level one (evaluate's calibration.json)")
    check_identity(document, config.calibration, run_identity(config.fingerprint.get("models", {}), config.chunk_length))


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
        check_calibration(config)
        differences = fingerprint_differences(previous.fingerprint, config.fingerprint)
        # another classifier (an evaluation of a training's or a prediction's workdir, say) reuses
        # the embeddings: only what reads the classifier is computed again
        reset = reset_by_options(previous, config)
        if CLASSIFIER_CHANGED in differences:
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
    check_calibration(config)
    return request.restart, []


def refuse_while_jobs_active(workdir: Workdir, active_jobs: ActiveJobs | None) -> None:
    """A run's SLURM tasks write its state: nothing else may plan it while they are queued or running."""
    if not workdir.jobs.exists() or active_jobs is None:
        return
    active = active_jobs(workdir)
    if active:
        raise StateError(f"{workdir.root}: SLURM jobs {', '.join(active)} of this run are still queued or running; "
                         f"wait for them, or 'virnucpro-slurm cancel --workdir {workdir.root}' first")


def plan_run(request: RunRequest, writer: WorkdirWriter | None = None,
             active_jobs: ActiveJobs | None = None) -> tuple[Workdir, RunConfig, StateFile]:
    """Create or re-open a workdir for this request; refuse a workdir of a different run, one
    another process holds, and one whose SLURM jobs are still active (as `active_jobs` tells:
    the commands pass orchestration.slurm.active_jobs). `writer` (held by the caller for as long
    as it writes the run) is acquired here; without it, for planning only."""
    workdir = Workdir(request.workdir)
    config = new_config(request)
    check_is_workdir_or_empty(workdir)
    check_writable(workdir.root)  # only now: a request refused above leaves no empty workdir behind
    with contextlib.ExitStack() as planning:
        if writer is None:
            writer = planning.enter_context(WorkdirWriter(workdir.root, "plan"))
        writer.acquire()
        refuse_while_jobs_active(workdir, active_jobs)
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
    update_provenance(workdir, config, "plan", state.load())
    return workdir, config, state


def open_run(workdir_path: Path) -> tuple[Workdir, RunConfig, StateFile]:
    workdir = Workdir(workdir_path)
    config = RunConfig.load(workdir)
    return workdir, config, StateFile(workdir.state, workdir.state_lock)
