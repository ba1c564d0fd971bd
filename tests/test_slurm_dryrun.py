"""SLURM submission without a cluster: dry-run scripts, quoting, profiles, the job graph of a
resubmission, the multi-GPU task split, and status over 10,000 shards."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from virnucpro.errors import InputError
from virnucpro.orchestration import slurm
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.state import DONE, FAILED, PENDING, RUNNING, ShardState, StateFile
from virnucpro.paths import Workdir
from virnucpro.pipeline import PREDICTION_STAGES as STAGES  # a prediction's stages

REPO = Path(__file__).resolve().parents[1]


def sbatch_options(script: str) -> dict:
    """#SBATCH --key=value lines as sbatch reads them (quotes removed)."""
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (word,) = shlex.split(line[len("#SBATCH "):])
            key, _, value = word[2:].partition("=")
            options[key] = value if _ else True
    return options


def exec_line(script: str) -> list[str]:
    (line,) = [x for x in script.splitlines() if x.startswith("exec ")]
    return shlex.split(line)[1:]


@pytest.fixture
def odd_workdir(tmp_path) -> Path:
    return tmp_path / "it's a \"run\" dir" / "w $HOME `x`"


def test_dry_run_without_slurm_on_path_writes_quoted_scripts_and_changes_no_state(demo_models, example_inputs, odd_workdir, tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin)}  # no sbatch, no srun, no bash on PATH
    result = subprocess.run([sys.executable, "-m", "virnucpro.cli", "submit", str(example_inputs), "--models", str(demo_models),
                             "--workdir", str(odd_workdir), "--partition", "gpu", "--shards", "3", "--dry-run"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    workdir = Workdir(odd_workdir)
    assert sorted(p.name for p in workdir.root.rglob("*") if p.is_file()) == sorted(f"{s}.sh" for s in STAGES)
    assert not workdir.config.exists() and not workdir.state.exists() and not slurm.jobs_path(workdir).exists()
    for stage in STAGES:
        script = (workdir.dry_run_dir / f"{stage}.sh").read_text()
        assert script in result.stdout  # printed as written
        assert script.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in script
        assert '\nexport OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"\n' in script
        assert "bashrc" not in script and "profile" not in script
        assert subprocess.run(["/bin/bash", "-n"], input=script, text=True).returncode == 0
        options = sbatch_options(script)
        assert options["output"] == f"{workdir.root}/logs/{stage}/%A_%a.out"
        assert options["error"] == f"{workdir.root}/logs/{stage}/%A_%a.err"
        assert options["chdir"] == str(workdir.root)
        assert options["kill-on-invalid-dep"] == "yes" and options["signal"] == "B:USR2@90"
        gpu = stage in ("dnabert", "esm2")
        assert options.get("gres") == ("gpu:1" if gpu else None) and options.get("requeue") == (True if gpu else None)
        assert options["array"] == ("0-2%3" if stage in ("dnabert", "esm2", "predict") else "0-0%1")
        assert exec_line(script) == [sys.executable, "-u", "-m", "submitit.core._submit",
                                     str(workdir.slurm_dir / "submitit" / stage)]
    deps = {s: sbatch_options((workdir.dry_run_dir / f"{s}.sh").read_text()).get("dependency") for s in STAGES}
    assert deps == {"prepare": None, "dnabert": "afterok:PREPARE_JOB_ID", "esm2": "afterok:PREPARE_JOB_ID",
                    "predict": "afterok:DNABERT_JOB_ID:ESM2_JOB_ID", "consensus": "afterok:PREDICT_JOB_ID"}
    # issue 24 item 4: status and report said "start a run with 'virnucpro-slurm run'", as if nothing had happened
    for command in ("status", "report"):
        shown = subprocess.run([sys.executable, "-m", "virnucpro.cli", command, "-w", str(odd_workdir)],
                               env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 2 and "Traceback" not in shown.stderr
        assert "only a dry run" in shown.stderr and "nothing was submitted" in shown.stderr, shown.stderr
        assert "without --dry-run" in shown.stderr and "start a run with" not in shown.stderr


def test_device_cpu_puts_the_embedding_arrays_on_the_cpu_partition_without_gpus(demo_models, example_inputs, tmp_path):
    """Issue 30 item 6: `submit --device cpu` asked for --gres=gpu:1 on the GPU partition for
    dnabert and esm2, holding GPUs idle while the tasks computed on the CPU."""
    workdir = tmp_path / "w"
    result = subprocess.run([sys.executable, "-m", "virnucpro.cli", "submit", str(example_inputs), "--models", str(demo_models),
                             "--workdir", str(workdir), "--partition", "gpu", "--cpu-partition", "cpu", "--shards", "3",
                             "--device", "cpu", "--gpus-per-task", "2", "--max-parallel-gpus", "2", "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    options = {s: sbatch_options((workdir / "slurm" / "dry-run" / f"{s}.sh").read_text()) for s in STAGES}
    for stage in STAGES:
        assert options[stage]["partition"] == "cpu" and "gres" not in options[stage], (stage, options[stage])
    for stage, cpus in (("dnabert", "4"), ("esm2", "8")):  # per-GPU resources not multiplied by --gpus-per-task
        assert options[stage]["cpus-per-task"] == cpus and options[stage]["array"] == "0-2%3"  # no GPU cap either
    assert options["esm2"]["dependency"] == "afterok:PREPARE_JOB_ID"  # no wait for dnabert's GPUs to be freed
    assert options["dnabert"]["requeue"] is True  # still checkpointed and requeued on preemption


def test_submit_without_sbatch_is_a_one_line_error(demo_models, example_inputs, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "virnucpro.cli", "submit", str(example_inputs), "--models", str(demo_models),
                             "-w", str(tmp_path / "w"), "--partition", "gpu"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'sbatch' not found on PATH" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w" / "run.json").exists()


def write_profile(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def config_of(shards: int) -> RunConfig:
    return RunConfig(inputs_list="x", inputs=["a.fa"], input_names=["a"], chunk_length=500, shards=shards,
                     models=ModelSpec("esm", "dnabert", "cls"))


def test_flags_override_profile_which_overrides_defaults(tmp_path):
    profile = write_profile(tmp_path / "site.yaml", {
        "partition": "gpu-a", "account": "lab", "gres_name": "gpu:a100", "preamble": "module load cuda/12",
        "sbatch": {"constraint": "h100"},
        "stages": {"esm2": {"time": "3:00:00", "mem": "40G", "cpus": 6}, "predict": {"partition": "short"}}})
    flags = {"partition": "gpu-b", "cpu_partition": "cpu", "qos": None, "gpus_per_task": 2,
             "stages": {"esm2": {"time": "90"}, "prepare": {"time": None}}}
    options = slurm.resolve_options(str(profile), flags)
    workdir = Workdir(tmp_path / "w")
    jobs, _ = slurm.plan_jobs(config_of(4), {}, options.gpus_per_task)
    scripts = {job.stage: slurm.render_script(workdir, job, options, {s: slurm.placeholder(s) for s in STAGES}) for job in jobs}
    esm2 = sbatch_options(scripts["esm2"])
    assert esm2["partition"] == "gpu-b"                       # flag beats profile
    assert esm2["time"] == "90"                               # flag beats profile
    assert esm2["mem"] == "80G" and esm2["cpus-per-task"] == "12"  # profile, per GPU x 2 GPUs
    assert esm2["gres"] == "gpu:a100:2" and esm2["account"] == "lab" and esm2["constraint"] == "h100"
    assert esm2["array"] == "0-1%2"                           # 4 shards, 2 per task
    assert "qos" not in esm2                                  # neither profile nor flag
    prepare = sbatch_options(scripts["prepare"])
    assert prepare["partition"] == "cpu" and prepare["time"] == "2:00:00" and "gres" not in prepare  # default time
    assert sbatch_options(scripts["predict"])["partition"] == "short"  # per-stage partition from the profile
    lines = scripts["esm2"].splitlines()
    assert lines.index("set +u") < lines.index("module load cuda/12") < lines.index("set -u")
    assert lines.index("set -euo pipefail") < lines.index("set +u")


@pytest.mark.parametrize("data, message", [
    ({"partition": "gpu", "colour": "red"}, "unknown SLURM setting 'colour'"),
    ({"partition": "gpu", "stages": {"esm2": {"time": "soon"}}}, "stages.esm2.time 'soon' is not a SLURM time"),
    ({"partition": "gpu", "stages": {"esm2": {"mem": "lots"}}}, "is not a memory size"),
    ({"partition": "gpu", "stages": {"esm3": {"mem": "1G"}}}, "stages.esm3"),
    ({"partition": "gpu", "gpus_per_task": 0}, "gpus_per_task must be a positive whole number"),
    ({"partition": "gpu; rm -rf /"}, "is not a valid SLURM name"),
    ({"account": "lab"}, "no GPU partition"),
])
def test_bad_profiles_are_one_line_errors_naming_the_file(tmp_path, data, message):
    profile = write_profile(tmp_path / "bad.yaml", data)
    with pytest.raises(InputError) as error:
        slurm.resolve_options(str(profile), {})
    assert message in str(error.value) and "\n" not in str(error.value)
    if "partition" in data:
        assert str(profile) in str(error.value)


def test_shipped_profiles_match_the_defaults_and_load():
    default = yaml.safe_load((REPO / "slurm_templates" / "default.yaml").read_text())
    assert default == slurm.DEFAULT_PROFILE
    options = slurm.resolve_options(str(REPO / "slurm_templates" / "example-site.yaml"), {})
    assert options.partition_of("esm2") == "gpu-a100" and options.partition_of("prepare") == "cpu"
    assert "module load" in options.profile["preamble"]


def entries(done: list[int], count: int) -> dict:
    return {s: ShardState(status=DONE if s in done else PENDING) for s in range(count)}


def test_resubmission_plans_only_unfinished_work_and_skips_finished_dependencies():
    config = config_of(3)
    fresh, _ = slurm.plan_jobs(config, {}, 1)
    assert [(j.stage, j.tasks, j.after) for j in fresh] == [
        ("prepare", [[0]], []), ("dnabert", [[0], [1], [2]], ["prepare"]), ("esm2", [[0], [1], [2]], ["prepare"]),
        ("predict", [[0], [1], [2]], ["dnabert", "esm2"]), ("consensus", [[0]], ["predict"])]
    # prepare and esm2 done, dnabert missing shard 1: predict waits for dnabert only
    state = {"prepare": entries([0], 1), "dnabert": entries([0, 2], 3), "esm2": entries([0, 1, 2], 3),
             "predict": entries([0], 3), "consensus": entries([], 1)}
    jobs, rerun = slurm.plan_jobs(config, state, 1)
    assert [(j.stage, j.shards, j.after) for j in jobs] == [
        ("dnabert", [1], []), ("predict", [1, 2], ["dnabert"]), ("consensus", [0], ["predict"])]
    assert rerun == {}
    # a done prediction made from an embedding that is recomputed is recomputed too, and so is consensus
    state = {"prepare": entries([0], 1), "dnabert": entries([0, 1, 2], 3), "esm2": entries([0, 2], 3),
             "predict": entries([0, 1, 2], 3), "consensus": entries([0], 1)}
    jobs, rerun = slurm.plan_jobs(config, state, 1)
    assert [(j.stage, j.shards, j.after) for j in jobs] == [
        ("esm2", [1], []), ("predict", [1], ["esm2"]), ("consensus", [0], ["predict"])]
    assert rerun == {"predict": [1], "consensus": [0]}
    # only consensus left (e.g. --min-score changed): no dependency at all
    state = {**state, "esm2": entries([0, 1, 2], 3), "consensus": entries([], 1)}
    assert [(j.stage, j.after) for j in slurm.plan_jobs(config, state, 1)[0]] == [("consensus", [])]
    state["consensus"] = entries([0], 1)
    assert slurm.plan_jobs(config, state, 1)[0] == []


def test_large_runs_stay_within_slurm_array_limits():
    tasks = slurm.group_shards(list(range(2500)), 1)
    assert len(tasks) <= slurm.MAX_ARRAY_TASKS and [s for t in tasks for s in t] == list(range(2500))
    # as few tasks as 4 GPUs each allow, as even as possible: no task holds GPUs it has no shard for
    assert slurm.group_shards(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert slurm.group_shards(list(range(6)), 4) == [[0, 1, 2], [3, 4, 5]]
    assert slurm.group_shards([], 4) == []
    for count in (1, 7, 4001, 8000, 8001):
        tasks = slurm.group_shards(list(range(count)), 4)
        sizes = {len(t) for t in tasks}
        assert [s for t in tasks for s in t] == list(range(count)) and max(sizes) - min(sizes) <= 1
        assert len(tasks) <= slurm.MAX_ARRAY_TASKS
        assert count > 4 * slurm.MAX_ARRAY_TASKS or len(tasks) == -(-count // 4)


def test_a_gpu_cap_holds_for_the_run_not_for_each_array(tmp_path):
    workdir = Workdir(tmp_path / "w")
    placeholders = {s: slurm.placeholder(s) for s in STAGES}
    capped = slurm.resolve_options(None, {"partition": "gpu", "gpus_per_task": 2, "max_parallel_gpus": 4})
    jobs, _ = slurm.plan_jobs(config_of(8), {}, capped.gpus_per_task, capped.gpus_capped)
    scripts = {j.stage: sbatch_options(slurm.render_script(workdir, j, capped, placeholders)) for j in jobs}
    assert scripts["dnabert"]["array"] == scripts["esm2"]["array"] == "0-3%2"  # 2 tasks x 2 GPUs at once
    assert scripts["dnabert"]["dependency"] == "afterok:PREPARE_JOB_ID"
    # esm2 starts when dnabert has ended, however it ended, so at most 4 GPUs are held at any time
    assert scripts["esm2"]["dependency"] == "afterok:PREPARE_JOB_ID,afterany:DNABERT_JOB_ID"
    assert scripts["predict"]["dependency"] == "afterok:DNABERT_JOB_ID:ESM2_JOB_ID"
    # without a cap both arrays start after prepare and may run side by side
    free = slurm.resolve_options(None, {"partition": "gpu", "gpus_per_task": 2})
    jobs, _ = slurm.plan_jobs(config_of(8), {}, free.gpus_per_task, free.gpus_capped)
    assert [j.waits_for for j in jobs if j.gpus] == [["prepare"], ["prepare"]]


def test_gpu_tasks_ask_only_for_the_gpus_their_shards_use():
    jobs, _ = slurm.plan_jobs(config_of(1), {}, 4)
    assert {j.stage: (j.tasks, j.gpus) for j in jobs if j.gpus} == {"dnabert": ([[0]], 1), "esm2": ([[0]], 1)}
    jobs, _ = slurm.plan_jobs(config_of(6), {}, 4)
    assert {j.stage: (j.tasks, j.gpus) for j in jobs if j.gpus} == {
        "dnabert": ([[0, 1, 2], [3, 4, 5]], 3), "esm2": ([[0, 1, 2], [3, 4, 5]], 3)}


def test_workdir_paths_slurm_cannot_express_are_refused(tmp_path):
    with pytest.raises(InputError, match="must not contain '%'"):
        slurm.check_workdir_path(Workdir(tmp_path / "100%"))


def test_expand_array_task_ids():
    assert slurm.expand_task_ids("12_3") == ["12_3"]
    assert slurm.expand_task_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert slurm.expand_task_ids("7") == ["7"]


def test_each_worker_of_a_multi_gpu_task_sees_one_gpu(monkeypatch, tmp_path):
    from virnucpro.orchestration.task import split_for_workers, worker_commands

    assert split_for_workers([3, 4, 5, 6, 7], 2) == [[3, 5, 7], [4, 6]]
    assert split_for_workers([3], 4) == [[3]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    commands = worker_commands(tmp_path, "esm2", [[0, 2], [1]], "auto", "9_0", "/l/9_0.err")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["2", "5"]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "13")  # the task's CPUs, shared: no oversubscription
    commands = worker_commands(tmp_path, "esm2", [[0, 2], [1]], "auto", "9_0", "/l/9_0.err")
    assert [(env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) for _, env in commands] == [("6", "6")] * 2
    assert [argv[argv.index("--shards") + 1] for argv, _ in commands] == ["0,2", "1"]


PRIVATE_HF_MODULES = """
import os, sys
from pathlib import Path
from virnucpro.orchestration import task
task.use_private_hf_modules_cache()
first = os.environ["HF_MODULES_CACHE"]
task.use_private_hf_modules_cache()
assert os.environ["HF_MODULES_CACHE"] == first
from transformers.utils import HF_MODULES_CACHE  # read once, when transformers is imported
assert HF_MODULES_CACHE == first, HF_MODULES_CACHE
envs = [env.get("HF_MODULES_CACHE") for _, env in task.worker_commands(Path("w"), "dnabert", [[0], [1]], "cpu", None, None)]
print(first, envs)
"""


def test_each_task_process_copies_remote_model_code_into_its_own_folder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("HF_MODULES_CACHE", None)
    done = subprocess.run([sys.executable, "-c", PRIVATE_HF_MODULES], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder, workers = done.stdout.split(" ", 1)
    assert Path(folder).parent == tmp_path and not Path(folder).exists()  # removed when the task ends
    assert workers.strip() == "[None, None]"  # workers run side by side: each makes its own
    env["HF_MODULES_CACHE"] = str(tmp_path / "site")  # a site's own choice is kept, for workers too
    done = subprocess.run([sys.executable, "-c", PRIVATE_HF_MODULES], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    site = str(tmp_path / "site")
    assert done.stdout.strip() == f"{site} [{site!r}, {site!r}]"


def h5_arrays(path: Path) -> tuple:
    import h5py

    with h5py.File(path, "r") as h5:  # a shard's ids live in its frame table; the file names them by count + digest
        return (int(h5.attrs["frames"]), h5.attrs["ids_sha256"]), h5["embeddings"][:]


def test_a_task_split_over_two_workers_gives_the_one_worker_results(demo_models, example_inputs, tmp_path, monkeypatch):
    from virnucpro.orchestration.plan import RunRequest, plan_run
    from virnucpro.orchestration.runner import StageContext, run_stage_shards
    from virnucpro.orchestration.task import run_array_task

    one, config, state = plan_run(RunRequest(inputs_list=example_inputs, workdir=tmp_path / "one", models_dir=demo_models, shards=3))
    ctx = StageContext(workdir=one, config=config, device="cpu")
    assert not run_stage_shards(ctx, state, "prepare", [0]).failed
    shutil.copytree(one.root, tmp_path / "two")
    (tmp_path / "two" / "run.json").write_text((tmp_path / "one" / "run.json").read_text())
    assert run_stage_shards(ctx, state, "esm2", [0, 1, 2]).done == [0, 1, 2]
    started = time.time()
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # as a site may: kept, nothing made
    result = run_array_task(str(tmp_path / "two"), "esm2", [0, 1, 2], workers=2)
    print(f"2 CPU workers, 3 shards: {time.time() - started:.1f} s")
    assert result == {"stage": "esm2", "shards": [0, 1, 2], "requeued": False}
    two = Workdir(tmp_path / "two")
    after = StateFile(two.state, two.state_lock).load()["esm2"]
    assert all(after[s].status == DONE and after[s].attempts == 1 for s in range(3))
    for shard in range(3):
        ids_one, matrix_one = h5_arrays(one.embeddings("esm2", shard))
        ids_two, matrix_two = h5_arrays(two.embeddings("esm2", shard))
        assert ids_one == ids_two and matrix_one.tobytes() == matrix_two.tobytes()


def ten_thousand_shard_state(path: Path) -> None:
    stages = {"prepare": {"0": {"status": DONE, "seconds": 60.0}}, "consensus": {"0": {"status": PENDING}}}
    for stage in ("dnabert", "esm2", "predict"):
        shards = {}
        for shard in range(10_000):
            status = DONE if shard < 9_000 else RUNNING if shard < 9_100 else FAILED if shard < 9_105 else PENDING
            shards[str(shard)] = {"status": status, "attempts": 1, "requeues": shard % 7 == 0, "seconds": 240.0,
                                  "started": 1.0, "finished": 2.0, "job_id": f"{100 + len(stage)}_{shard}",
                                  "log": f"/w/logs/{stage}/{shard}.err", "host": "gpu01", "error": "boom" if status == FAILED else None,
                                  "metrics": {"tokens_per_second": 90_000.0, "frames": 40_000, "tokens": 2_000_000}}
        stages[stage] = shards
    path.write_text(json.dumps({"version": 1, "stages": stages}, indent=1))


def test_status_of_ten_thousand_shards(tmp_path):
    from virnucpro.orchestration.status import render_status, status_report, summarise

    workdir = Workdir(tmp_path)
    ten_thousand_shard_state(workdir.state)
    state = StateFile(workdir.state, workdir.state_lock)
    started = time.perf_counter()
    report = status_report(workdir)
    render_status(report)
    seconds = time.perf_counter() - started
    print(f"status of 3 x 10,000 shards: {seconds * 1000:.0f} ms")
    assert seconds < 5  # generous sanity bound; bench/status_speed.py measures it
    esm2 = next(s for s in report["stages"] if s["stage"] == "esm2")
    assert (esm2["done"], esm2["running"], esm2["failed"], esm2["pending"]) == (9_000, 100, 5, 895)
    assert esm2["requeued_shards"] == len([s for s in range(10_000) if s % 7 == 0])
    assert esm2["failures"][0] == {"shard": 9_100, "error": "boom", "log": "/w/logs/esm2/9100.err", "job_id": "104_9100"}
    assert esm2["eta_seconds"] == pytest.approx(240.0 * 1_000 / 100)
    assert not report["complete"] and report["slurm_source"] is None
    # a running shard whose SLURM task was killed for memory is a failure, not "running" forever
    lost = summarise(state.load(), {"104_9000": "OUT_OF_MEMORY"})[2]
    assert lost.counts[RUNNING] == 99 and lost.counts[FAILED] == 6
    assert "ended OUT_OF_MEMORY" in lost.failures[0]["error"]


def test_status_names_the_log_of_a_task_slurm_killed_before_it_recorded_anything(tmp_path, monkeypatch):
    from rich.console import Console

    from virnucpro.orchestration import status

    workdir = Workdir(tmp_path)
    state = StateFile(workdir.state, workdir.state_lock)
    state.initialise({"prepare": 1, "dnabert": 2, "esm2": 2, "predict": 2, "consensus": 1})
    for stage_name, shard in (("prepare", 0), ("dnabert", 0), ("dnabert", 1), ("esm2", 0)):
        state.mark_running(stage_name, shard)
        state.mark_done(stage_name, shard)
    slurm.append_submission(workdir, {"submitted": time.time() - 600, "cancelled": None, "stages": {
        "esm2": {"job_id": "50", "tasks": [[0], [1]], "after": [], "gpus": 1, "script": "x"},
        "predict": {"job_id": "51", "tasks": [[0], [1]], "after": ["esm2"], "gpus": 0, "script": "y"}}})
    monkeypatch.setattr(slurm.queries, "job_states", lambda ids, since=None: ("squeue", {
        "50_0": "COMPLETED", "50_1": "OUT_OF_MEMORY", "51_0": "CANCELLED", "51_1": "CANCELLED"}))
    report = status.status_report(workdir)
    esm2 = next(s for s in report["stages"] if s["stage"] == "esm2")
    assert esm2["failures"] == [{"shard": 1, "job_id": "50_1", "error": "SLURM task 50_1 ended OUT_OF_MEMORY",
                                 "log": str(workdir.root / "logs" / "esm2" / "50_1.err")}]
    assert esm2["slurm"]["states"] == {"COMPLETED": 1, "OUT_OF_MEMORY": 1}
    predict = next(s for s in report["stages"] if s["stage"] == "predict")
    assert predict["failures"] == [] and predict["slurm"]["states"] == {"CANCELLED": 2}
    assert not report["slurm_active"] and not report["complete"]
    out = Console(width=200, record=True, file=open(os.devnull, "w"))
    out.print(status.render_status(report))
    text = out.export_text()
    assert "esm2 shard 1 failed" in text and "50_1.err" in text and "51: 2 CANCELLED" in text
    # --watch returns at once when nothing is left that could change the run
    started = time.time()
    assert status.watch(workdir, 60, out)["complete"] is False and time.time() - started < 30
