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
_TIME = re.compile(r"^(\d+|\d+:\d{2}(:\d{2})?|\d+-\d{1,2}(:\d{2}(:\d{2})?)?)$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]+$")


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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise InputError(f"{path}:{line} not valid YAML ({getattr(exc, 'problem', exc)}); fix the profile") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a SLURM profile must be a mapping of settings (see slurm_templates/example-site.yaml)")
    merge_settings(profile, data, str(path))
    return profile, str(path)


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
            profile["sbatch"].update({str(k): v for k, v in value.items()})
        else:
            profile[key] = validate_setting(key, key, value, origin)


def validate_setting(label: str, kind: str, value, origin: str):
    if value is None:
        return None
    if kind == "time":
        value = str(value)
        if not _TIME.match(value):
            raise InputError(f"{origin}: {label} '{value}' is not a SLURM time (minutes, H:MM:SS or D-HH:MM:SS)")
    elif kind == "mem":
        value = str(value).upper().removesuffix("B")
        if not _MEM.match(value):
            raise InputError(f"{origin}: {label} '{value}' is not a memory size (e.g. 16G or 4000M)")
    elif kind in ("cpus", "gpus_per_task", "max_parallel_gpus"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{origin}: {label} must be a positive whole number, not {value!r}")
    elif kind == "preamble":
        value = "\n".join(value) if isinstance(value, list) else str(value)
    elif kind in ("partition", "cpu_partition", "account", "qos", "gres_name"):
        value = str(value)
        if not _NAME.match(value):
            raise InputError(f"{origin}: {label} '{value}' is not a valid SLURM name")
    return value


@dataclass
class SlurmOptions:
    profile: dict
    origin: str

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
