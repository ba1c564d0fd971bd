"""W/provenance.json: everything needed to reproduce or audit a run.

Versions of the software, identities of the models (SHA-256 of their weight files, from the run's
fingerprint), every parameter, the inputs' hashes, per-stage timings and the SLURM job ids. It is
written at plan time and brought up to date by the consensus stage and by `report`; each update
re-reads the file under the run's lock so concurrent writers (array tasks, a report) lose nothing.

No torch import here: orchestration code on a login node calls this. Package versions come from
installed metadata; CUDA from torch's own version file (or from torch when it is already loaded);
GPU models from torch when already loaded, else from nvidia-smi when present.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata, util
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write_text
from ..json_files import read_json
from ..paths import Workdir
from ..pipeline import stage_names
from .config import RunConfig
from .state import DONE, FAILED, PENDING, RUNNING, ShardState, StateFile, exclusive_lock

PROVENANCE_VERSION = 1
PACKAGES = ("torch", "fair-esm", "transformers", "h5py", "numpy", "submitit", "rich", "matplotlib")
MAX_EVENTS = 200  # a requeue-heavy run must not grow the file without bound


def iso(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp)) if timestamp else None


# ---------------------------------------------------------------- environment

def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"virnucpro": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def torch_cuda_build() -> str | None:
    """The CUDA version torch was built with, without importing torch (seconds on a login node)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.version.cuda
    spec = util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    try:
        tree = ast.parse(version_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "cuda" and isinstance(node.value, ast.Constant):
            return node.value.value
    return None


def visible_gpus() -> list[str]:
    """GPU models this process can see: from torch if the process already loaded it, else nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken driver must not stop a provenance update
            pass
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if listing.returncode == 0:
            return [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    return []


def cpu_threads() -> int | None:
    """torch's intra-op threads where this process loaded torch (a stage ran here), else None."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def environment() -> dict:
    return {
        "time": iso(time.time()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "cuda": torch_cuda_build(),
        "gpus": visible_gpus(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu_threads": cpu_threads(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


# ---------------------------------------------------------------- run description

def stage_timings(state: dict[str, dict[int, ShardState]], config: RunConfig) -> dict[str, dict]:
    """Per stage of the run's kind: shard counts, elapsed and summed shard time, tokens/s, requeues, hosts, job ids."""
    stages = {}
    for stage in stage_names(config):
        entries = state.get(stage, {})
        counts = {status: 0 for status in (DONE, RUNNING, PENDING, FAILED)}
        for entry in entries.values():
            counts[entry.status if entry.status in counts else PENDING] += 1
        done = [e for e in entries.values() if e.status == DONE]
        starts = [e.started for e in entries.values() if e.started]
        finishes = [e.finished for e in done if e.finished]
        computed = sum(e.metrics.get("computed_tokens") or 0 for e in done)
        compute_seconds = sum(e.metrics.get("compute_seconds") or 0 for e in done)
        complete = bool(entries) and counts[DONE] == len(entries)
        stages[stage] = {
            "shards": len(entries), **counts,
            "attempts": sum(e.attempts for e in entries.values()),
            "requeues": sum(e.requeues for e in entries.values()),
            "started": iso(min(starts)) if starts else None,
            "finished": iso(max(finishes)) if complete and finishes else None,
            # first start to last finish: what the user waited (shards may run in parallel)
            "elapsed_seconds": round(max(finishes) - min(starts), 3) if complete and finishes and starts else None,
            # sum over shards of their last attempt: the machine time the stage cost
            "shard_seconds": round(sum(e.seconds or 0 for e in done), 3),
            "computed_tokens": computed or None,
            "compute_seconds": round(compute_seconds, 3) or None,
            # per task (one GPU each): tokens computed / seconds spent computing them
            "tokens_per_second": round(computed / compute_seconds, 1) if computed and compute_seconds else None,
            "hosts": sorted({e.host for e in entries.values() if e.host}),
            # what the finished shards ran on (stage metrics): --device auto and --precision auto resolved
            "devices": sorted({str(e.metrics["device"]) for e in done if e.metrics.get("device")}),
            "precisions": sorted({str(e.metrics["precision"]) for e in done if e.metrics.get("precision")}),
            "job_ids": sorted({e.job_id for e in entries.values() if e.job_id}),
            "failures": [{"shard": shard, "error": e.error, "log": e.log}
                         for shard, e in sorted(entries.items()) if e.status == FAILED],
        }
    return stages


def submissions(workdir: Workdir) -> dict | None:
    """jobs.json as recorded (None: never submitted), read without refusing a damaged one."""
    try:
        return read_json(workdir.jobs)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable": str(workdir.jobs)}


def slurm_jobs(workdir: Workdir, timings: dict[str, dict]) -> dict:
    return {"job_ids_by_stage": {stage: t["job_ids"] for stage, t in timings.items() if t["job_ids"]},
            "submitted": submissions(workdir)}


def submitted_container(submitted) -> dict | None:
    """The container image the run's latest submission runs its tasks in (runtime and its version,
    image path and digest, the versions inside), from jobs.json's data; None without one."""
    records = submitted.get("submissions") if isinstance(submitted, dict) else None
    latest = records[-1] if isinstance(records, list) and records else None
    container = latest.get("container") if isinstance(latest, dict) else None
    return container if isinstance(container, dict) else None


def reproduce_command(config: RunConfig, workdir: Workdir) -> str:
    """The `run` (`train`, `evaluate`) command line that recreates this run's parameters (models as
    resolved paths/names)."""
    command = {"predict": "run"}.get(config.kind, config.kind)
    words = ["virnucpro-slurm", command, config.inputs_list, "--workdir", str(workdir.root),
             "--esm-model", config.models.esm, "--dnabert-model", config.models.dnabert,
             *(["--classifier", config.models.classifier] if config.models.classifier else []),
             "--chunk-length", str(config.chunk_length),
             "--shards", str(config.shards), "--precision", config.precision, "--device", config.device]
    if not config.packing:
        words.append("--no-packing")
    if getattr(config, "compress", False):
        words.append("--compress")
    if config.compile is not None:  # None: the default, on CUDA only
        words.append("--compile" if config.compile else "--no-compile")
    if config.esm_residual != "fp32":
        words += ["--esm-residual", config.esm_residual]
    training, evaluation = config.kind == "train", config.kind == "evaluate"
    for flag, value in (("--esm-token-budget", config.esm_token_budget),
                        ("--dnabert-token-budget", config.dnabert_token_budget),
                        ("--checkpoint-tokens", config.checkpoint_tokens),
                        ("--min-score", None if training else getattr(config, "min_score", None)),
                        ("--calibration", None if training else getattr(config, "calibration", None)),
                        ("--virus-share", None if training else getattr(config, "virus_share", None)),
                        ("--max-fdr", None if training else getattr(config, "max_fdr", None)),
                        ("--holdout", config.holdout if training else None),
                        ("--seed", config.seed if training else None),
                        ("--target-fdr", config.target_fdr if evaluation else None)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def describe_run(workdir: Workdir, config: RunConfig, state: dict[str, dict[int, ShardState]]) -> dict:
    parameters = asdict(config)
    parameters.pop("fingerprint", None)
    fingerprint = config.fingerprint or {}
    hashes = {item["path"]: item.get("sha256") for item in fingerprint.get("inputs", [])}
    timings = stage_timings(state, config)
    slurm = slurm_jobs(workdir, timings)
    return {
        "workdir": str(workdir.root),
        "demo_models": config.models.demo,
        "parameters": parameters,
        "models": {kind: {"spec": getattr(config.models, kind), **fingerprint.get("models", {}).get(kind, {})}
                   for kind in ("esm", "dnabert", "classifier")},
        "inputs_list": config.inputs_list,
        "inputs": [{"name": name, "path": path, "sha256": hashes.get(path)}
                   for name, path in zip(config.input_names, config.inputs)],
        "stages": timings,
        "slurm": slurm,
        "container": submitted_container(slurm["submitted"]),
        "reproduce": reproduce_command(config, workdir),
    }


# ---------------------------------------------------------------- the file

def _run_lock(workdir: Workdir):
    # the state lock file is never unlinked, so it is a safe flock target; held only for a rewrite
    return exclusive_lock(workdir.state_lock)


def read_provenance(workdir: Workdir) -> dict:
    """provenance.json as recorded. Only its environments and events are carried into the next
    version (the rest is recomputed), so a damaged file, or a damaged one of those two, counts as absent."""
    try:
        record = read_json(workdir.provenance)
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    environments = record.get("environments", {})
    if not isinstance(environments, dict) or not all(
            isinstance(env, dict) and isinstance(env.get("gpus", []), list)
            and all(isinstance(gpu, str) for gpu in env.get("gpus", [])) for env in environments.values()):
        record["environments"] = {}
    if not isinstance(record.get("events", []), list):
        record["events"] = []
    return record


def _merge_environment(record: dict, event: str, here: dict) -> dict:
    environments = {**record.get("environments", {}), event: here}
    events = (record.get("events", []) + [{"event": event, "time": here["time"], "host": here["host"],
                                           "argv": sys.argv, "cwd": os.getcwd()}])[-MAX_EVENTS:]
    head = {"provenance_version": PROVENANCE_VERSION, "updated": here["time"], "updated_by": event,
            "versions": here["versions"], "cuda": here["cuda"],
            # every GPU model any recorded process saw (GPU stages run on other hosts than plan)
            "gpus": sorted({gpu for env in environments.values() for gpu in env.get("gpus", [])})}
    rest = {k: v for k, v in record.items() if k not in head and k not in ("environments", "events")}
    return {**head, **rest, "environments": environments, "events": events}


def record_environment(workdir: Workdir, event: str) -> None:
    """Add where and with what software this process runs (e.g. 'stage:esm2' in a GPU task, after
    its model is loaded so the GPU is known) without recomputing the rest of the record."""
    here = environment()
    with _run_lock(workdir):
        record = _merge_environment(read_provenance(workdir), event, here)
        atomic_write_text(workdir.provenance, json.dumps(record, indent=1, default=str) + "\n")


def update_provenance(workdir: Workdir, config: RunConfig, event: str,
                      state: dict[str, dict[int, ShardState]] | None = None) -> dict:
    """Rewrite provenance.json with the run as it is now; `event` (plan, consensus, report,
    stage:<name>) records where this process ran and with which software."""
    if state is None:
        state = StateFile(workdir.state, workdir.state_lock).load()
    description = describe_run(workdir, config, state)
    here = environment()
    with _run_lock(workdir):
        previous = read_provenance(workdir)
        record = _merge_environment({**description, "environments": previous.get("environments", {}),
                                     "events": previous.get("events", [])}, event, here)
        atomic_write_text(workdir.provenance, json.dumps(record, indent=1, default=str) + "\n")
    return record
