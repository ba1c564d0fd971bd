"""Site settings: the built-in profile, profile files (slurm_templates/*.yaml) and flags.

Built-in defaults < --profile file < command-line flags; every value is validated where it is
read, with one line naming the file (or "command line") and the setting.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ...pipeline import STAGE, STAGES
from ..container import RUNTIMES, Container

# The built-in profile; slurm_templates/default.yaml spells out the same values (a test keeps
# them equal). For dnabert/esm2, cpus and mem are per GPU: a task with N GPUs asks for N times.
DEFAULT_PROFILE: dict = {
    "partition": None,
    "cpu_partition": None,
    "account": None,
    "qos": None,
    "gres_name": "gpu",
    "gpus_per_task": 1,
    "max_parallel_gpus": None,
    "preamble": "",
    "container": None,
    "container_runtime": None,
    "sbatch": {},
    "stages": {
        "prepare": {"time": "2:00:00", "mem": "16G", "cpus": 2},
        "dnabert": {"time": "4:00:00", "mem": "32G", "cpus": 4},
        "esm2": {"time": "8:00:00", "mem": "64G", "cpus": 8},
        "predict": {"time": "1:00:00", "mem": "16G", "cpus": 2},
        "consensus": {"time": "2:00:00", "mem": "16G", "cpus": 2},
        "train": {"time": "24:00:00", "mem": "32G", "cpus": 8},
        "evaluate": {"time": "1:00:00", "mem": "16G", "cpus": 2},
    },
}
STAGE_KEYS = ("time", "mem", "cpus", "partition")
# Named profiles: ./slurm_templates, then the checkout's, then the copy a wheel installs
# (setup.cfg data_files) under <prefix>/share/virnucpro/slurm_templates.
TEMPLATE_FOLDERS = (Path("slurm_templates"), Path(__file__).resolve().parents[3] / "slurm_templates",
                    Path(sys.prefix) / "share" / "virnucpro" / "slurm_templates")
# Every pattern is used with fullmatch: `$` alone also matches before a final newline, and a
# newline in a value ends its #SBATCH line (the rest becomes a shell line of the script).
_TIME = re.compile(r"\d+|\d+:\d{2}(:\d{2})?|\d+-\d{1,2}(:\d{2}(:\d{2})?)?")
_MEM = re.compile(r"\d+[KMGT]?")
_NAME = re.compile(r"[A-Za-z0-9_.:+-]+")
_SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # a long option name, as `sbatch --help` lists them
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Directives every stage script already writes (sbatch.py and submitit; a test keeps this list
# complete), plus --mem's mutually exclusive forms. An `sbatch:` entry may not override them: an
# `array` would start tasks with no work, an `output` hide the logs `status` reads.
OWNED_SBATCH_OPTIONS = frozenset({
    "job-name", "partition", "time", "cpus-per-task", "mem", "account", "qos", "dependency", "array", "output",
    "error", "chdir", "signal", "kill-on-invalid-dep", "requeue", "gres", "nodes", "open-mode", "wckey",
    "mem-per-cpu", "mem-per-gpu"})
# Options of the sbatch command rather than of the job: --wrap would submit its command instead of the
# stage script, --wait block the submission, --parsable and --test-only change what sbatch prints
# (submitit reads the job id from it), --hold keep every task waiting for a release nobody sends.
COMMAND_SBATCH_OPTIONS = frozenset({"wrap", "wait", "parsable", "test-only", "hold", "help", "usage", "version",
                                    "export-file", "ignore-pbs"})
# A profile is a few lines of settings; the cap (and refusing YAML aliases) keeps a hostile file
# from expanding into gigabytes while it is parsed.
MAX_PROFILE_BYTES = 64 << 10
MAX_PROFILE_DEPTH = 8


def find_profile(spec: str) -> Path:
    """A profile path, or the name of a profile in one of TEMPLATE_FOLDERS."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for folder in TEMPLATE_FOLDERS:
        for candidate in (folder / spec, folder / f"{spec}.yaml", folder / f"{spec}.yml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for folder in TEMPLATE_FOLDERS for p in folder.glob("*.y*ml")})
    raise InputError(f"{spec}: SLURM profile not found; give a YAML file path"
                     + (f" or one of: {', '.join(known)}" if known else ""))


def load_profile(spec: str | None) -> tuple[dict, str]:
    """The built-in defaults overlaid with a profile file; returns (profile, where it came from)."""
    profile = copy.deepcopy(DEFAULT_PROFILE)
    if not spec:
        return profile, "built-in defaults"
    path = find_profile(spec)
    import yaml

    try:
        data = yaml.load(_profile_text(path), Loader=_unique_keys_loader()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise InputError(f"{path}:{line} not valid YAML ({getattr(exc, 'problem', exc)}); fix the profile") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a SLURM profile must be a mapping of settings (see slurm_templates/example-site.yaml)")
    merge_settings(profile, data, str(path))
    return profile, str(path)


def _unique_keys_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently: a `partition:` further down would win without a word)."""
    import yaml

    class UniqueKeysLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r:.60} is given twice in one mapping; keep one", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeysLoader


def _profile_text(path: Path) -> str:
    """The profile's text, refused when over MAX_PROFILE_BYTES or when it uses YAML anchors or
    aliases (a few lines of aliases expand to gigabytes: a "billion laughs")."""
    import yaml

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PROFILE_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the SLURM profile ({getattr(exc, 'strerror', None) or exc}); "
                         "give a readable UTF-8 YAML file") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise InputError(f"{path}: a SLURM profile is at most {MAX_PROFILE_BYTES >> 10} KiB (a few lines of settings); "
                         "this one is larger: give the right file")
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise InputError(f"{path}: line {event.start_mark.line + 1}: YAML anchors and aliases ('&', '*') are not "
                             "accepted in a SLURM profile; write each value out")
        depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
        if depth > MAX_PROFILE_DEPTH:  # PyYAML builds nested values recursively: 20,000 '[' overflowed the stack
            raise InputError(f"{path}: line {event.start_mark.line + 1}: nested deeper than {MAX_PROFILE_DEPTH} levels; "
                             "a SLURM profile is settings, per-stage settings and sbatch options")
    return text


def merge_settings(profile: dict, data: dict, origin: str) -> None:
    """Overlay `data` (a profile file or command-line flags) on `profile`, validating every value."""
    for key, value in data.items():
        if key not in DEFAULT_PROFILE:
            raise InputError(f"{origin}: unknown SLURM setting '{key}'; known: {', '.join(DEFAULT_PROFILE)}")
        if key == "stages":
            if not isinstance(value, dict):
                raise InputError(f"{origin}: 'stages' must map stage names to time/mem/cpus/partition")
            for stage, settings in value.items():
                if stage not in STAGES or not isinstance(settings, dict):
                    raise InputError(f"{origin}: stages.{stage}: expected one of {', '.join(STAGES)} with a mapping of settings")
                for name, setting in settings.items():
                    if name not in STAGE_KEYS:
                        raise InputError(f"{origin}: stages.{stage}.{name}: unknown; per-stage settings are {', '.join(STAGE_KEYS)}")
                    profile["stages"][stage][name] = validate_setting(f"stages.{stage}.{name}", name, setting, origin)
        elif key == "sbatch":
            if not isinstance(value, dict):
                raise InputError(f"{origin}: 'sbatch' must map sbatch option names to values, e.g. {{constraint: a100}}")
            profile["sbatch"].update({sbatch_option(k, v, origin): v for k, v in value.items()})
        else:
            profile[key] = validate_setting(key, key, value, origin)


def sbatch_option(key, value, origin: str) -> str:
    """An extra `#SBATCH --key=value` line: an option name, and a one-line scalar value."""
    if not isinstance(key, str) or not _SBATCH_OPTION.fullmatch(key):
        raise InputError(f"{origin}: sbatch option name {key!r:.80} is not an sbatch long option (letters, digits, '-'); "
                         "write it as in `sbatch --help`, without the leading '--'")
    if len(key) < 2:
        raise InputError(f"{origin}: sbatch.{key} is a one-letter (short) option; write the long option as in "
                         "`sbatch --help` (e.g. 'constraint', not 'C')")
    if key.replace("_", "-") in COMMAND_SBATCH_OPTIONS:
        raise InputError(f"{origin}: sbatch.{key} changes what sbatch itself does (the script it submits, whether "
                         "it waits, what it prints), not the job's resources; virnucpro decides those: remove it")
    if key.replace("_", "-") in OWNED_SBATCH_OPTIONS:
        raise InputError(f"{origin}: sbatch.{key} is written by virnucpro itself (array, logs, resources, dependencies); "
                         "use the profile's settings (partition, account, qos, gres_name, stages.STAGE.time/mem/cpus)")
    if isinstance(value, (dict, list)) or value is None or value is False or _CONTROL.search(str(value)):
        raise InputError(f"{origin}: sbatch.{key} value {value!r:.80} is not a one-line value; give a single line of text "
                         "(true for a flag without a value)")
    return key


def validate_setting(label: str, kind: str, value, origin: str):
    if value is None:
        return None
    if kind == "time":
        value = str(value)
        if not _TIME.fullmatch(value):
            raise InputError(f"{origin}: {label} {value!r:.80} is not a SLURM time (minutes, H:MM:SS or D-HH:MM:SS)")
    elif kind == "mem":
        value = str(value).upper().removesuffix("B")
        if not _MEM.fullmatch(value):
            raise InputError(f"{origin}: {label} {value!r:.80} is not a memory size (e.g. 16G or 4000M)")
    elif kind in ("cpus", "gpus_per_task", "max_parallel_gpus"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{origin}: {label} must be a positive whole number, not {value!r}")
    elif kind == "preamble":
        lines = value if isinstance(value, list) else [value]
        if not all(isinstance(line, str) for line in lines):
            raise InputError(f"{origin}: {label} must be shell text or a list of lines of text, not {value!r:.80}; "
                             "quote lines YAML reads as numbers or true/false")
        value = "\n".join(lines)
    elif kind == "container":
        value = str(value)
        if not value.strip() or _CONTROL.search(value):
            raise InputError(f"{origin}: {label} {value!r:.80} is not a path to a container image (one line)")
    elif kind == "container_runtime":
        if value not in RUNTIMES:
            raise InputError(f"{origin}: {label} {value!r:.80} is not one of {', '.join(RUNTIMES)}")
    elif kind in ("partition", "cpu_partition", "account", "qos", "gres_name"):
        value = str(value)
        if not _NAME.fullmatch(value):
            raise InputError(f"{origin}: {label} {value!r:.80} is not a valid SLURM name")
    return value


@dataclass
class SlurmOptions:
    profile: dict
    origin: str
    container: Container | None = None  # every task runs inside this image (submit sets it from the profile's)
    container_record: dict | None = None  # what the submission records of it (runtime, versions, digest)

    @property
    def gpus_per_task(self) -> int:
        return self.profile["gpus_per_task"]

    @property
    def gpus_capped(self) -> bool:
        return bool(self.profile["max_parallel_gpus"])

    def partition_of(self, stage: str, gpu: bool | None = None) -> str:
        """The stage's partition; `gpu`: whether its tasks ask for a GPU (default: whether the stage
        can use one; a training with --device cpu does not)."""
        p = self.profile
        explicit = p["stages"][stage].get("partition")
        if explicit:
            return explicit
        if STAGE[stage].gpu if gpu is None else gpu:
            return p["partition"]
        return p["cpu_partition"] or p["partition"]


def resolve_options(profile_spec: str | None, flags: dict) -> SlurmOptions:
    """Built-in defaults < profile file < command-line flags (flags given as profile keys)."""
    profile, origin = load_profile(profile_spec)
    given = {k: v for k, v in flags.items() if v is not None and k != "stages"}
    stages = {s: {k: v for k, v in settings.items() if v is not None} for s, settings in flags.get("stages", {}).items()}
    merge_settings(profile, {**given, "stages": {s: v for s, v in stages.items() if v}}, "command line")
    if not profile["partition"]:
        raise InputError(f"no GPU partition: pass --partition NAME (or set 'partition' in the profile {origin})")
    return SlurmOptions(profile, origin)
