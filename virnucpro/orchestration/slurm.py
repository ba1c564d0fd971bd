"""SLURM execution: a run becomes one graph of array jobs, submitted through submitit.

    prepare (CPU) --afterok--> dnabert (GPU array) --+
                  --afterok--> esm2    (GPU array) --+--afterok--> predict (array) --afterok--> consensus

Every job is an array (prepare and consensus have one task), every task is a pickled call of
`virnucpro.orchestration.task.run_array_task`, which goes through `run_stage_shards` like the
local runner. Only unfinished (stage, shard) pairs are submitted; a stage with nothing to do is
left out and its dependents depend on its own parents instead. `kill-on-invalid-dep=yes` makes
SLURM cancel the dependents of a failed job instead of leaving them pending forever.

The sbatch script of a stage is rendered once, by `render_script` (submitit's own sbatch writer
with our parameters), and that exact text is both what `--dry-run` prints and what submitit
hands to sbatch; `--dry-run` never constructs an executor, so it works without SLURM installed.

Knows nothing of torch. Site settings come from profiles (slurm_templates/*.yaml).
"""

from __future__ import annotations

import copy
import getpass
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError, VirnucproError
from ..paths import SHARDED_STAGES, STAGES, Workdir
from .config import RunConfig
from .state import DONE, ShardState

PARENTS = {"prepare": (), "dnabert": ("prepare",), "esm2": ("prepare",), "predict": ("dnabert", "esm2"),
           "consensus": ("predict",)}
GPU_STAGES = ("dnabert", "esm2")
REQUEUEABLE_STAGES = GPU_STAGES
# SLURM's default MaxArraySize is 1001 (indices 0..1000): a stage with more unfinished shards
# gives each task several shards instead of failing at sbatch time.
MAX_ARRAY_TASKS = 1000
# Seconds before the time limit at which SLURM sends SIGUSR2 to the batch shell ("B:"): our task
# runs as the batch shell itself (exec, no srun step), so the signal must go there.
SIGNAL_WARNING_S = 90
TASK_FUNCTION = "virnucpro.orchestration.task.run_array_task"
UNLISTED_GRACE_S = 120
# Task states that mean the task itself went wrong (CANCELLED is a user's or a dependency's doing).
CRASH_STATES = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED", "PREEMPTED"}

# ---------------------------------------------------------------- profiles

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
    },
}
STAGE_KEYS = ("time", "mem", "cpus", "partition")
# Named profiles: ./slurm_templates, then the checkout's, then the copy a wheel installs
# (setup.cfg data_files) under <prefix>/share/virnucpro/slurm_templates.
TEMPLATE_FOLDERS = (Path("slurm_templates"), Path(__file__).resolve().parents[2] / "slurm_templates",
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

    def partition_of(self, stage: str) -> str:
        p = self.profile
        explicit = p["stages"][stage].get("partition")
        if explicit:
            return explicit
        if stage in GPU_STAGES:
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


# ---------------------------------------------------------------- the job graph

@dataclass
class StageJob:
    """One array job: task i processes shards tasks[i]."""

    stage: str
    tasks: list[list[int]]
    after: list[str] = field(default_factory=list)  # stages of this submission it waits for
    gpus: int = 0
    after_any: list[str] = field(default_factory=list)  # waits for these to end, however they end

    @property
    def waits_for(self) -> list[str]:
        return self.after + [s for s in self.after_any if s not in self.after]

    @property
    def shards(self) -> list[int]:
        return [s for task in self.tasks for s in task]


def unfinished(entries: dict[int, ShardState], count: int) -> list[int]:
    return [s for s in range(count) if entries.get(s) is None or entries[s].status != DONE]


def group_shards(shards: list[int], per_task: int) -> list[list[int]]:
    """Consecutive groups of at most `per_task` shards (grown so that no array exceeds
    MAX_ARRAY_TASKS), as few as that allows and as even as possible: 6 shards for 4-GPU tasks
    become 3 + 3, not 4 + 2, so no task holds GPUs it has no shard for."""
    if not shards:
        return []
    per_task = max(per_task, per_task * -(-len(shards) // (per_task * MAX_ARRAY_TASKS)))
    tasks = -(-len(shards) // per_task)
    base, extra = divmod(len(shards), tasks)
    groups, start = [], 0
    for size in [base + 1] * extra + [base] * (tasks - extra):
        groups.append(shards[start:start + size])
        start += size
    return groups


def plan_jobs(config: RunConfig, state: dict[str, dict[int, ShardState]], gpus_per_task: int,
              one_gpu_array_at_a_time: bool = False) -> tuple[list[StageJob], dict]:
    """The array jobs that finish this run, and the done shards that must be recomputed because
    something they are made from is recomputed ({stage: [shards]}).

    `one_gpu_array_at_a_time` (set when --max-parallel-gpus caps the run) starts esm2 only once
    the dnabert array has ended, however it ended, so the two arrays never hold GPUs together
    and the cap holds for the run, not for each array."""
    todo: dict[str, list[int]] = {}
    for stage in STAGES:
        count = config.shards if stage in SHARDED_STAGES else 1
        todo[stage] = unfinished(state.get(stage, {}), count)
    # predict reads both embeddings of a shard; consensus reads every prediction.
    rerun = {"predict": sorted((set(todo["dnabert"]) | set(todo["esm2"])) - set(todo["predict"]))}
    todo["predict"] = sorted(set(todo["predict"]) | set(rerun["predict"]))
    if any(todo[s] for s in STAGES[:-1]) and not todo["consensus"]:
        rerun["consensus"], todo["consensus"] = [0], [0]
    submitted: set[str] = set()
    jobs = []
    for stage in STAGES:
        if not todo[stage]:
            continue
        gpu = stage in GPU_STAGES
        tasks = group_shards(todo[stage], gpus_per_task if gpu else 1)
        gpus = min(gpus_per_task, max(map(len, tasks))) if gpu else 0  # 1 shard left: 1 GPU, not N
        jobs.append(StageJob(stage, tasks, after=nearest_submitted(stage, submitted), gpus=gpus))
        if gpu and one_gpu_array_at_a_time:
            jobs[-1].after_any = [s for s in GPU_STAGES if s in submitted]
        submitted.add(stage)
    return jobs, {k: v for k, v in rerun.items() if v}


def nearest_submitted(stage: str, submitted: set[str]) -> list[str]:
    """The stages this one must wait for: its parents, or theirs when a parent has nothing to do."""
    out: list[str] = []
    for parent in PARENTS[stage]:
        for found in ([parent] if parent in submitted else nearest_submitted(parent, submitted)):
            if found not in out:
                out.append(found)
    return out


def placeholder(stage: str) -> str:
    """Stands for a job id not known before submission (dry-run scripts)."""
    return f"{stage.upper()}_JOB_ID"


def stage_folder(workdir: Workdir, stage: str) -> Path:
    """submitit's folder of a stage (pickles, results, submitted scripts); no %j for arrays."""
    return workdir.slurm_dir / "submitit" / stage


def log_pattern(workdir: Workdir, stage: str, suffix: str) -> str:
    return str(workdir.stage_log(stage) / f"%A_%a.{suffix}")


def task_log(workdir: Workdir, stage: str, array_job_id: str, index: str | int, suffix: str = "err") -> Path:
    return workdir.stage_log(stage) / f"{array_job_id}_{index}.{suffix}"


def check_workdir_path(workdir: Workdir) -> None:
    # '%' is a SLURM filename pattern and a submitit id tag; a newline breaks #SBATCH lines.
    text = str(workdir.root)
    if any(c in text for c in "%\\\n\r"):
        raise InputError(f"{text}: a SLURM workdir path must not contain '%', '\\' or line breaks; choose another --workdir")


def sbatch_parameters(workdir: Workdir, job: StageJob, options: SlurmOptions, dependency: str | None) -> dict:
    """Keyword arguments of submitit's sbatch writer for one stage."""
    p = options.profile
    res = p["stages"][job.stage]
    scale = max(job.gpus, 1)
    mem = res["mem"]
    if scale > 1:
        number, unit = re.match(r"(\d+)([KMGT]?)", mem).groups()
        mem = f"{int(number) * scale}{unit}"
    extra = {
        "output": log_pattern(workdir, job.stage, "out"),
        "error": log_pattern(workdir, job.stage, "err"),
        "chdir": str(workdir.root),
        "signal": f"B:USR2@{SIGNAL_WARNING_S}",
        "kill-on-invalid-dep": "yes",
    }
    if job.stage in REQUEUEABLE_STAGES:
        extra["requeue"] = True
    if job.gpus:
        extra["gres"] = f"{p['gres_name']}:{job.gpus}"
    extra.update(p["sbatch"])
    parallel = len(job.tasks)
    if job.gpus and p["max_parallel_gpus"]:
        parallel = min(parallel, max(1, p["max_parallel_gpus"] // job.gpus))
    return dict(
        job_name=f"virnucpro-{job.stage}", partition=options.partition_of(job.stage), time=res["time"],
        cpus_per_task=res["cpus"] * scale, mem=mem, account=p["account"], qos=p["qos"], dependency=dependency,
        map_count=len(job.tasks), array_parallelism=parallel, wckey=None, use_srun=False,
        setup=setup_lines(p["preamble"], options.origin), additional_parameters=extra,
    )


def setup_lines(preamble: str, origin: str) -> list[str]:
    lines = ["set -euo pipefail"]
    if preamble.strip():
        # Module and conda scripts read unset variables; errors in the preamble still stop the job.
        where = " ".join(origin.split())  # a comment line, whatever the profile's path holds
        lines += [f"# site preamble ({where}); nounset is relaxed around it", "set +u",
                  *preamble.rstrip("\n").splitlines(), "set -u"]
    return lines


def task_command(workdir: Workdir, stage: str) -> str:
    # exec: the Python process is the batch shell itself, so it receives SLURM's signals directly.
    return f"exec {shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(stage_folder(workdir, stage)))}"


def render_script(workdir: Workdir, job: StageJob, options: SlurmOptions, job_ids: dict[str, str]) -> str:
    """The sbatch script of a stage; `job_ids` gives the ids (or placeholders) of its dependencies."""
    from submitit.slurm.slurm import _make_sbatch_string  # the writer SlurmExecutor itself uses

    # comma: every condition must hold; afterany is met however the job ends (not cancelled by a failure)
    conditions = [f"{kind}:" + ":".join(job_ids[s] for s in stages)
                  for kind, stages in (("afterok", job.after), ("afterany", job.after_any)) if stages]
    dependency = ",".join(conditions) or None
    return _make_sbatch_string(command=task_command(workdir, job.stage), folder=stage_folder(workdir, job.stage),
                               **sbatch_parameters(workdir, job, options, dependency))


def task_calls(workdir: Workdir, job: StageJob):
    from submitit.core.utils import DelayedSubmission

    from .task import run_array_task

    device = None if job.gpus else "cpu"  # CPU stages never claim a GPU they were not given
    return [DelayedSubmission(run_array_task, str(workdir.root), job.stage, shards, max(job.gpus, 1), device)
            for shards in job.tasks]


# ---------------------------------------------------------------- submission through submitit

def _array_submitter_class():
    from submitit.slurm.slurm import SlurmExecutor, SlurmJob

    class ArraySubmitter(SlurmExecutor):
        """submitit's SlurmExecutor handed the exact script text `render_script` made.

        submitit submits a single call as a plain job and only several as an array; we always
        submit an array (one log naming scheme, one id scheme), so the pickles are written here:
        task i of array A loads A_i_submitted.pkl, as submitit's job runner expects.
        """

        def __init__(self, folder: Path, script: str):
            super().__init__(folder)
            self.script = script

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return self.script

        def submit_array(self, calls) -> tuple[str, Path]:
            import uuid

            self.folder.mkdir(parents=True, exist_ok=True)
            pickles = []
            for call in calls:
                path = self.folder / f".{uuid.uuid4().hex}.pkl"
                call.dump(path)
                pickles.append(path)
            job = self._submit_command(self._submitit_command_str)
            for index, path in enumerate(pickles):
                SlurmJob(folder=self.folder, job_id=f"{job.job_id}_{index}").paths.move_temporary_file(path, "submitted_pickle")
            return job.job_id, job.paths.submission_file

    return ArraySubmitter


def require_slurm(command: str = "sbatch") -> None:
    if shutil.which(command) is None or shutil.which("srun") is None:
        raise VirnucproError(f"'{command}' not found on PATH: submit from a SLURM login node "
                             "(or use --dry-run to only write the scripts, or 'virnucpro-slurm run' to run here)")


def submit_graph(workdir: Workdir, jobs: list[StageJob], options: SlurmOptions) -> dict:
    """Submit the stages in order, each after the jobs it depends on; record every id as soon as
    it exists (so `cancel` works even if a later sbatch fails), cancel the partial graph on error."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    require_slurm()
    Submitter = _array_submitter_class()
    record = {"submitted": time.time(), "user": getpass.getuser(), "profile": options.origin,
              "cancelled": None, "stages": {}}
    index = append_submission(workdir, record)
    ids: dict[str, str] = {}
    for job in jobs:
        script = render_script(workdir, job, options, ids)
        workdir.stage_log(job.stage).mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        try:
            job_id, script_path = Submitter(stage_folder(workdir, job.stage), script).submit_array(task_calls(workdir, job))
        except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError, OSError) as exc:
            cancelled = cancel_ids(list(ids.values()))
            detail = str(exc).strip().splitlines()
            raise VirnucproError(f"sbatch refused the {job.stage} job ({detail[-1] if detail else exc})"
                                 + (f"; cancelled the jobs already submitted ({', '.join(cancelled)})" if cancelled else "")
                                 + "; fix the SLURM settings (partition, account, limits) and submit again") from None
        ids[job.stage] = job_id
        record["stages"][job.stage] = {"job_id": job_id, "tasks": job.tasks, "after": job.waits_for,
                                       "gpus": job.gpus, "script": str(script_path)}
        update_submission(workdir, index, record)
    return record


# ---------------------------------------------------------------- W/slurm/jobs.json

def jobs_path(workdir: Workdir) -> Path:
    return workdir.slurm_dir / "jobs.json"


def load_jobs(workdir: Workdir) -> dict:
    try:
        return json.loads(jobs_path(workdir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"submissions": []}
    except ValueError as exc:
        raise VirnucproError(f"{jobs_path(workdir)}: unreadable ({exc}); cancel its jobs by hand with scancel") from None


def _save_jobs(workdir: Workdir, data: dict) -> None:
    atomic_write_text(jobs_path(workdir), json.dumps(data, indent=1) + "\n")


def append_submission(workdir: Workdir, record: dict) -> int:
    data = load_jobs(workdir)
    data["submissions"].append(record)
    _save_jobs(workdir, data)
    return len(data["submissions"]) - 1


def update_submission(workdir: Workdir, index: int, record: dict) -> None:
    data = load_jobs(workdir)
    data["submissions"][index] = record
    _save_jobs(workdir, data)


def recorded_job_ids(workdir: Workdir) -> list[str]:
    return [s["job_id"] for sub in load_jobs(workdir)["submissions"] for s in sub["stages"].values()]


def is_cancelled(workdir: Workdir, array_job_id: str) -> bool:
    for sub in load_jobs(workdir)["submissions"]:
        if any(s["job_id"] == array_job_id for s in sub["stages"].values()):
            return bool(sub.get("cancelled"))
    return False


# ---------------------------------------------------------------- asking SLURM

def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def expand_task_ids(job_id: str) -> list[str]:
    """'12_3' -> ['12_3']; '12_[0-2,5%2]' -> ['12_0', '12_1', '12_2', '12_5']; '12' -> ['12']."""
    match = re.match(r"^(\d+)_\[([^\]]*)\]$", job_id)
    if not match:
        return [job_id]
    base, spec = match.groups()
    out = []
    for part in spec.split("%")[0].split(","):
        bounds = part.split(":")[0].split("-")
        if bounds[0].isdigit():
            first, last = int(bounds[0]), int(bounds[-1])
            out += [f"{base}_{i}" for i in range(first, last + 1)]
    return out


def job_states(array_job_ids: list[str], since: float | None = None) -> tuple[str | None, dict[str, str]]:
    """State of every array task of these jobs: ('sacct' | 'squeue' | None, {'12_3': 'RUNNING'}).

    sacct when accounting works; else `squeue -t all` (which sees finished jobs for MinJobAge).
    """
    if not array_job_ids:
        return None, {}
    wanted = set(array_job_ids)
    argv = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(array_job_ids)]
    if since:
        argv += ["-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))]
    result = _run(argv)
    source, lines = None, []
    if result is not None and result.returncode == 0:
        source, lines = "sacct", result.stdout.splitlines()
    else:
        result = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(array_job_ids)])
        if result is not None and (result.returncode == 0 or result.stdout.strip()):
            source, lines = "squeue", result.stdout.splitlines()
    states: dict[str, str] = {}
    for line in lines:
        parts = line.strip().split("|")
        if len(parts) < 2 or parts[0].split("_")[0].split(".")[0] not in wanted:
            continue
        state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # sacct: "CANCELLED by 0"
        for task in expand_task_ids(parts[0]):
            states[task] = state
    return source, states


def active_jobs(workdir: Workdir) -> list[str]:
    """Recorded jobs of this workdir that SLURM still has queued or running."""
    ids = recorded_job_ids(workdir)
    if not ids:
        return []
    result = _run(["squeue", "-h", "-o", "%F|%i|%T", "-j", ",".join(ids)])
    if result is None:
        return []
    out = []
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids and parts[2] in ACTIVE_STATES and parts[0] not in out:
            out.append(parts[0])
    return out


def cancel_ids(ids: list[str]) -> list[str]:
    if not ids:
        return []
    result = _run(["scancel", *ids])
    return ids if result is not None and result.returncode == 0 else []


def cancel_run(workdir: Workdir) -> list[str]:
    """Mark every submission cancelled (so tasks stopped by the scancel do not requeue themselves),
    then scancel all recorded jobs of the workdir."""
    require_slurm("scancel")
    data = load_jobs(workdir)
    ids = [s["job_id"] for sub in data["submissions"] for s in sub["stages"].values()]
    if not ids:
        return []
    now = time.time()
    for sub in data["submissions"]:
        sub["cancelled"] = sub.get("cancelled") or now
    _save_jobs(workdir, data)
    result = _run(["scancel", *ids])
    if result is None or result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1] if result else "scancel did not run"
        raise VirnucproError(f"scancel {' '.join(ids)} failed ({message}); cancel the jobs by hand")
    return ids


def stage_jobs(workdir: Workdir) -> dict[str, list[dict]]:
    """Per stage, its submitted arrays (oldest first): job id, tasks (shard lists), submission time."""
    out: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    for sub in load_jobs(workdir)["submissions"]:
        for stage, job in sub["stages"].items():
            out[stage].append({**job, "submitted": sub["submitted"], "cancelled": sub.get("cancelled")})
    return out


def slurm_view(workdir: Workdir) -> dict:
    """What SLURM says about this run's jobs (for `status`): per stage, the states of the tasks
    of its latest array; `active` when any of them may still run."""
    per_stage = stage_jobs(workdir)
    ids = [job["job_id"] for jobs in per_stage.values() for job in jobs]
    if not ids:
        return {"source": None, "stages": {}, "task_states": {}, "active": False}
    since = min(job["submitted"] for jobs in per_stage.values() for job in jobs)
    source, states = job_states(ids, since)
    stages, active = {}, False
    for stage, jobs in per_stage.items():
        if not jobs:
            continue
        latest = jobs[-1]
        counts: dict[str, int] = {}
        crashed = []
        for index, shards in enumerate(latest["tasks"]):
            state = states.get(f"{latest['job_id']}_{index}")
            if state in CRASH_STATES:
                crashed.append({"task": f"{latest['job_id']}_{index}", "state": state, "shards": shards,
                                "log": str(task_log(workdir, stage, latest["job_id"], index))})
            if state is None:
                # sacct lists a job a moment after sbatch returns; a task it never lists is gone.
                active |= time.time() - latest["submitted"] < UNLISTED_GRACE_S
                state = "UNKNOWN" if source else "-"
            else:
                active |= state in ACTIVE_STATES
            counts[state] = counts.get(state, 0) + 1
        stages[stage] = {"job_ids": [job["job_id"] for job in jobs], "latest": latest["job_id"], "states": counts,
                         "crashed": crashed}
    return {"source": source, "stages": stages, "task_states": states, "active": active}


def format_states(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
