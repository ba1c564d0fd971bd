"""A run's inputs and parameters (run.json) and the fingerprint that decides resume vs refuse.

Knows nothing of torch: models are identified by name or by the SHA-256 of their files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError, StateError
from ..json_files import JsonFileError, read_json
from ..paths import Workdir
from ..modelstore.manifest import recorded_sha256
from ..model_facts import ModelSpec
from ..pipeline import KINDS, TRAINING

# Shard sizing: aim at GPU tasks of minutes, not seconds, so model loading (ESM-2 3B: ~1 min)
# is amortised. 50 Mbp of input gives ~22M ESM tokens (~0.44 tokens per input base after
# six-frame translation and stop filtering): about 4 minutes at 100K tokens/s on one H100.
BASES_PER_SHARD = 50_000_000
GZIP_EXPANSION = 3.5  # typical FASTA gzip ratio, for sizing only
CONFIG_VERSION = 1


@dataclass(kw_only=True)
class RunOptions:
    """How a run computes: what a request asks for and run.json keeps, field for field."""

    precision: str = "auto"
    packing: bool = True
    device: str = "auto"
    esm_token_budget: int | None = None
    dnabert_token_budget: int | None = None
    checkpoint_tokens: int | None = None
    min_score: float | None = None  # per-read call threshold; consensus only, so not in the fingerprint
    compress: bool = False  # gzip the per-input result files; consensus only, so not in the fingerprint
    dnabert_precision: str = "fp32"  # fp32 (the original's numbers), fp16 or bf16 on CUDA
    dnabert_remote_code: bool = False  # run the model folder's own code (trust_remote_code) instead of the native engine
    embedding_dtype: str = "float32"  # dtype of the stored embedding matrices; float16 halves their size
    trust_model_pickles: bool = False  # unpickle model files with weights_only=False (runs code from the file)
    allow_download: bool = False  # let tasks fetch hub models themselves (compute nodes with internet)
    compile: bool | None = None  # torch.compile the packed ESM-2 engine's dense parts; None: on CUDA only
    esm_residual: str = "fp32"  # packed ESM-2 residual stream at fp16/bf16: fp32, or "compute" (the GEMMs' dtype)
    kind: str = "predict"  # predict, train or evaluate (pipeline.KINDS): which stages the run has
    holdout: float = 0.1  # train: fraction of the sequences (reads, records) held out
    seed: int = 42  # train: the split and the shuffles
    holdout_window: int = 0  # train: split records into windows of this many bases for the split (0: whole records)
    target_fdr: float = 0.05  # evaluate: the FDR whose minimum score the threshold table names
    # consensus only, so not in the fingerprint: the calibration file (default: the classifier's own),
    # its SHA-256 (a file refitted in place re-runs consensus), a given virus share, the --max-fdr calls
    calibration: str | None = None
    calibration_sha256: str | None = None
    virus_share: float | None = None
    max_fdr: float | None = None

    def run_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(RunOptions)}


@dataclass(kw_only=True)
class RunConfig(RunOptions):
    inputs_list: str
    inputs: list[str]
    input_names: list[str]
    chunk_length: int
    shards: int
    models: ModelSpec
    fingerprint: dict = field(default_factory=dict)
    version: int = CONFIG_VERSION
    labels: list[str] = field(default_factory=list)  # train/evaluate: per input, "virus" or "other"
    genbank: list[str | None] = field(default_factory=list)  # per input: its GenBank file, or None

    @property
    def frame_selection(self) -> list[str | None]:
        """Per input, the GenBank file whose annotated CDS select its frames: a training's only.
        A prediction and an evaluation score every stop-free frame, as `run` does, whatever
        GenBank column the LABELS file has (an evaluation that kept only coding frames would
        measure something `run` never does)."""
        genbank = self.genbank if self.kind == TRAINING and self.genbank else []
        return list(genbank) or [None] * len(self.inputs)

    @property
    def evaluation_name(self) -> str:
        """The folder of an evaluation's results in W/evaluation/: the classifier's file name and
        the first 12 hex digits of its SHA-256, so that evaluations of other classifiers in one
        workdir are kept side by side (two files named classifier.safetensors stay apart)."""
        identity = ((self.fingerprint or {}).get("models") or {}).get("classifier") or {}
        stem = SAFE_NAME_CHARACTERS.sub("_", Path(self.models.classifier).stem).lstrip(".")[:100] or "classifier"
        digest = identity.get("sha256")
        return f"{stem}-{digest[:12]}" if isinstance(digest, str) and digest.isalnum() else stem

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        data["models"] = ModelSpec(**{k: v for k, v in data["models"].items() if k in ModelSpec.__dataclass_fields__})
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    def save(self, workdir: Workdir) -> None:
        atomic_write_text(workdir.config, self.to_json())

    @classmethod
    def load(cls, workdir: Workdir, has_restart: bool = False) -> "RunConfig":
        """The workdir's run; `has_restart`: the calling command has --restart (run, submit), which
        decides what a damaged run.json's error advises."""
        data = read_run_marker(workdir)
        if data is None:
            if any(workdir.dry_run_dir.glob("*.sh")):  # `submit --dry-run` writes scripts and no state
                raise StateError(f"{workdir.root}: only a dry run so far ('submit --dry-run' wrote the scripts in "
                                 f"{workdir.dry_run_dir}; nothing was submitted or run); start the run with the same "
                                 "'virnucpro-slurm submit' command without --dry-run, or with 'virnucpro-slurm run'")
            raise StateError(f"{workdir.root}: not a virnucpro workdir (no run.json); start a run with 'virnucpro-slurm run'")
        problem = shape_problem(data, RUN_SHAPE) or names_problem(data["input_names"], data["inputs"])
        if problem:
            again = ("add --restart" if has_restart else
                     "re-run the run's 'virnucpro-slurm run' (or 'submit') command with --restart")
            raise StateError(f"{workdir.config}: damaged run configuration ({problem}); restore it from a backup, "
                             f"or {again} to start the run again")
        if data.get("kind", "predict") not in KINDS:
            raise StateError(f"{workdir.config}: damaged run configuration (kind {data['kind']!r} is none of "
                             f"{', '.join(KINDS)}); restore it from a backup")
        return cls.from_dict(data)


def read_run_marker(workdir: Workdir) -> dict | None:
    """run.json's contents when it is this tool's (a JSON object with RUN_MARKER_KEYS); None when
    there is no run.json. Any other run.json (not JSON, cut short, another tool's) cannot be shown to
    be ours, so its folder is no workdir: refused by every command, --restart or not, and nothing
    in it is deleted."""
    try:
        data = read_json(workdir.config)
    except FileNotFoundError:
        return None
    except JsonFileError as exc:  # not JSON, a folder or a FIFO named run.json, ...
        reason = exc.reason
    except OSError as exc:  # no permission
        reason = f"not a readable file: {exc.strerror or exc}"
    else:
        missing = [key for key in RUN_MARKER_KEYS if key not in data] if isinstance(data, dict) else None
        if missing == []:
            return data
        reason = ("not a JSON object" if missing is None else
                  f"no {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    raise StateError(f"{workdir.config}: not a virnucpro run file ({reason}), so {workdir.root} does not look like a "
                     "virnucpro workdir; restore the file from a backup if it was one, else move the folder away or "
                     "choose another --workdir (nothing was changed)")


# run.json's shape as RunConfig.to_json writes it, checked once at load so that no command meets a
# wrong one later as an AttributeError or TypeError. A shape is a type, a tuple of types, [shape of
# each item] or {key: shape}, where a key ending in "?" may be absent (older run.json, empty fingerprint).
_MODEL_IDENTITY = {"path?": str, "sha256?": str, "files?": {}, "name?": str}
RUN_SHAPE = {
    **{f"{name}?": typing.get_args(hint) or hint for name, hint in typing.get_type_hints(RunOptions).items()},
    "version": int, "inputs_list": str, "inputs": [str], "input_names": [str], "chunk_length": int, "shards": int,
    "models": {"esm": str, "dnabert": str, "classifier": str, "demo?": bool},
    "labels?": [str], "genbank?": [(str, type(None))],
    "fingerprint": {"inputs?": [{"path": str, "sha256?": str, "genbank?": {"path": str, "sha256?": str}}],
                    "parameters?": {},
                    "models?": {"esm?": _MODEL_IDENTITY, "dnabert?": _MODEL_IDENTITY, "classifier?": _MODEL_IDENTITY}},
}
# The keys every run.json this tool writes has: what tells a workdir's marker from another tool's run.json.
RUN_MARKER_KEYS = [key for key in RUN_SHAPE if not key.endswith("?")]
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", type(None): "null"}


def shape_problem(value, shape, where: str = "") -> str | None:
    """Where `value` departs from `shape`, in words ("fingerprint.inputs[0] should be an object"); None if nowhere."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} should be an object"
        for key, inner in shape.items():
            name = key.removesuffix("?")
            inside = f"{where}.{name}" if where else name
            if name in value:
                problem = shape_problem(value[name], inner, inside)
                if problem:
                    return problem
            elif not key.endswith("?"):
                return f"{inside} is missing"
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} should be a list"
        return next(filter(None, (shape_problem(item, shape[0], f"{where}[{i}]") for i, item in enumerate(value))), None)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    accepted = kinds + ((int,) if float in kinds else ())  # a hand-edited 1 for 1.0
    if isinstance(value, accepted) and (bool in kinds or not isinstance(value, bool)):  # bool is an int subclass
        return None
    return f"{where} should be {' or '.join(_TYPE_NAMES[kind] for kind in kinds)}"


# Result names are folder names inside W/results/ (and prefixes of the report's figures): never
# hidden, '.', '..' or empty, no separator or control character, short enough for any file system,
# and not the name of a file results/ itself holds.
SAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME_CHARACTERS = 200
RESERVED_RESULT_NAMES = {"index.tsv", "virnucpro_mqc.tsv"}


def is_safe_result_name(name: str) -> bool:
    return (bool(name) and not name.startswith(".") and len(name) <= MAX_NAME_CHARACTERS + 12
            and not SAFE_NAME_CHARACTERS.search(name) and name not in RESERVED_RESULT_NAMES)


def names_problem(names: list[str], inputs: list[str]) -> str | None:
    """What is wrong with run.json's result names, read back from disk (they become paths)."""
    unsafe = [name for name in names if not is_safe_result_name(name)]
    if unsafe:
        return f"input_names: {unsafe[0]!r} is not a plain folder name"
    if len(names) != len(inputs) or len(set(names)) != len(names):
        return "input_names should name each input once"
    return None


def input_names(paths: list[Path]) -> list[str]:
    """Result folder per input: the file stem (without .gz/.fa), made safe (is_safe_result_name)
    and unique in list order."""
    names, used = [], set(RESERVED_RESULT_NAMES)
    for path in paths:
        stem = path.name
        for suffix in (".gz", ".fasta", ".fna", ".fa", ".fas", ".ffn", ".txt"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        stem = SAFE_NAME_CHARACTERS.sub("_", stem).lstrip(".")[:MAX_NAME_CHARACTERS] or "input"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def auto_shards(paths: list[Path], bases_per_shard: int = BASES_PER_SHARD) -> int:
    """Shard count from file sizes alone, so a login node can size the arrays in milliseconds."""
    estimate = 0.0
    for path in paths:
        size = path.stat().st_size
        estimate += size * GZIP_EXPANSION if path.name.endswith(".gz") else size
    return max(1, math.ceil(estimate / bases_per_shard))


class HashCache:
    """SHA-256 of files, remembered by (path, inode, size, mtime, ctime) so a 11 GB model is hashed once.

    mtime alone can be restored (touch -d, os.utime, cp -p); ctime cannot: any write or utime sets
    it to now. An entry is kept only when the file's ctime is older than the hash by RACY_SECONDS,
    so a rewrite in the same timestamp tick as the stat (coarse clocks, NFS) is never cached."""

    RACY_SECONDS = 2.0

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = read_json(path)
            if not isinstance(self.entries, dict):
                self.entries = {}
        except (OSError, ValueError):  # only a cache: whatever is wrong with it costs a re-hash
            self.entries = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
        if key not in self.entries:
            started = time.time_ns()
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            if stat.st_ctime_ns >= started - self.RACY_SECONDS * 1e9:
                return digest.hexdigest()  # changed moments ago: may change again in the same tick
            self.entries[key] = digest.hexdigest()
            self.dirty = True
        return self.entries[key]

    def save(self) -> None:
        """Best effort: a cache that cannot be written (disk full, quota) only costs a re-hash."""
        if self.dirty:
            try:
                atomic_write_text(self.path, json.dumps(self.entries, indent=0))
            except OSError:
                pass


def model_identity(spec: str, hashes: HashCache) -> dict:
    """A model is its name (hub id) or the hashes of its weight files (local file or folder).

    A file of a models folder (`models download`, `demo-models`) takes its SHA-256 from the folder's
    manifest while its size and st_mtime_ns are the recorded ones (modelstore.manifest.recorded_sha256),
    so a run does not hash gigabytes; any other file is hashed (once per workdir, by HashCache)."""
    def sha256(file: Path) -> str:
        return recorded_sha256(file) or hashes.sha256(file)

    path = Path(spec)
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": sha256(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts)
        return {"path": str(path.resolve()), "files": {str(p.relative_to(path)): sha256(p) for p in files}}
    return {"name": spec}


def compute_fingerprint(config: RunConfig, hashes: HashCache) -> dict:
    """What decides whether existing results may be reused: inputs, parameters, models."""
    genbank = config.frame_selection
    # a GenBank file decides which frames prepare keeps: part of its input's identity
    inputs = [{"path": p, "sha256": hashes.sha256(Path(p)),
               **({"genbank": {"path": g, "sha256": hashes.sha256(Path(g))}} if g else {})}
              for p, g in zip(config.inputs, genbank)]
    if config.labels:  # the hashes are known here, before any work
        from .labels import check_one_label_per_content  # deferred: labels reads FASTA (numpy); status must not

        check_one_label_per_content(config.inputs, config.labels, [i["sha256"] for i in inputs], config.inputs_list)
    return {
        "inputs": inputs,
        "parameters": {
            "chunk_length": config.chunk_length,
            "shards": config.shards,
            "precision": config.precision,
            "packing": config.packing,
            "dnabert_precision": config.dnabert_precision,
            "dnabert_remote_code": config.dnabert_remote_code,
            "embedding_dtype": config.embedding_dtype,
            **({"esm_residual": config.esm_residual} if config.esm_residual != "fp32" else {}),
        },
        # a training run has no classifier (it makes one)
        "models": {kind: model_identity(spec, hashes) for kind, spec in
                   (("esm", config.models.esm), ("dnabert", config.models.dnabert), ("classifier", config.models.classifier))
                   if spec},
    }


CLASSIFIER_CHANGED = "classifier changed"


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """What differs, in words. The classifier is told apart from the embedding models
    (CLASSIFIER_CHANGED): only the stages that read it are redone for it (plan.compare_with_workdir)."""
    diffs = []
    for section in ("inputs", "parameters"):
        if old.get(section) != new.get(section):
            if section == "parameters":
                for key in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
                    if old.get(section, {}).get(key) != new.get(section, {}).get(key):
                        diffs.append(f"{key} {old.get(section, {}).get(key)!r} -> {new.get(section, {}).get(key)!r}")
            else:
                diffs.append(f"{section} changed")
    old_models, new_models = old.get("models", {}), new.get("models", {})
    if any(old_models.get(kind) != new_models.get(kind) for kind in ("esm", "dnabert")):
        diffs.append("models changed")
    if old_models.get("classifier") != new_models.get("classifier"):
        diffs.append(CLASSIFIER_CHANGED)
    return diffs


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{directory}: cannot create the workdir ({exc.strerror}); choose a writable --workdir") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"{directory}: the workdir is not writable; choose a writable --workdir")
