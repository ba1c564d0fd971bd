"""End to end on the project's single-node SLURM cluster (tests/slurm/start-cluster.sh).

Skipped when no cluster is running, except in CI (CI set): there .ci/run starts the cluster
before pytest, so a missing cluster is a failure. Jobs run as root on this machine with this
Python, so the tasks import this checkout.
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

CLUSTER_DIR = Path(os.environ.get("VIRNUCPRO_SLURM_DIR", "/tmp/virnucpro-slurm"))
WAIT_SECONDS = 400
STOP_CODONS = {"TAA", "TAG", "TGA"}


# ---------------------------------------------------------------- the cluster

def cluster_environment() -> dict | None:
    """os.environ plus what DIR/env.sh exports, or None when the cluster does not answer."""
    env_file = CLUSTER_DIR / "env.sh"
    if not env_file.is_file():
        return None
    dump = subprocess.run(["bash", "-c", 'source "$1" && env -0', "_", str(env_file)], capture_output=True, timeout=30)
    if dump.returncode != 0:
        return None
    env = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return env if "is UP" in ping.stdout else None


CLUSTER_ENV = cluster_environment()  # at collection, so a skip costs no session fixture (demo models)
NO_CLUSTER = f"no SLURM test cluster answers in {CLUSTER_DIR} (start it: tests/slurm/start-cluster.sh)"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(CLUSTER_ENV is None and not IN_CI, reason=NO_CLUSTER)]


@pytest.fixture(scope="module")
def cluster():
    env = CLUSTER_ENV
    if env is None:  # only reached in CI, where the cluster must be up
        pytest.fail(NO_CLUSTER + "; in CI tests/run.sh must start it before pytest")
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k == "SLURM_CONF" or k.startswith("VIRNUCPRO_SLURM") or k == "PATH"})
    yield env
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def profile(cluster, tmp_path_factory) -> Path:
    """Small jobs so several fit on the test node at once."""
    small = {"time": 10, "mem": "300M", "cpus": 1}
    path = tmp_path_factory.mktemp("profile") / "test-cluster.yaml"
    path.write_text(yaml.safe_dump({
        "partition": cluster.get("VIRNUCPRO_SLURM_GPU_PARTITION", "gpu"),
        "cpu_partition": cluster.get("VIRNUCPRO_SLURM_CPU_PARTITION", "cpu"),
        "stages": {stage: dict(small) for stage in ("prepare", "dnabert", "esm2", "predict", "consensus")}}))
    return path


def cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"virnucpro-slurm {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}")
    return done


class LocalRun:
    """`virnucpro-slurm run` in the background: the reference results, computed while SLURM works."""

    def __init__(self, workdir: Path, *args):
        self.workdir = workdir
        # As many CPU threads as the profile's tasks get (cpus: 1): on some CPUs (AVX2 MKL GEMM)
        # the thread count changes the order of float sums and with it the last printed digit.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "virnucpro.cli", "run", *map(str, args), "-w", str(workdir), "-q"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def results(self) -> Path:
        output, _ = self.process.communicate(timeout=600)
        assert self.process.returncode == 0, output
        return self.workdir / "results"


def report(workdir: Path) -> dict:
    from virnucpro.orchestration.status import status_report
    from virnucpro.paths import Workdir

    return status_report(Workdir(workdir))


def stage(rep: dict, name: str) -> dict:
    return next(s for s in rep["stages"] if s["stage"] == name)


def wait_until_settled(workdir: Path) -> dict:
    """Poll until no job of the run is queued or running and no shard is running."""
    deadline = time.time() + WAIT_SECONDS
    while True:
        rep = report(workdir)
        if rep["slurm_source"] and not rep["slurm_active"] and not any(s["running"] for s in rep["stages"]):
            return rep
        if time.time() > deadline:
            queue = subprocess.run(["squeue", "-t", "all"], capture_output=True, text=True).stdout
            raise AssertionError(f"run in {workdir} did not settle in {WAIT_SECONDS} s:\n{queue}\n{json.dumps(rep, indent=1)}")
        time.sleep(0.5)


def latest_submission(workdir: Path) -> dict:
    return json.loads((workdir / "slurm" / "jobs.json").read_text())["submissions"][-1]


def assert_same_results(expected: Path, actual: Path) -> None:
    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(actual) for p in actual.rglob("*") if p.is_file())
    for name in files:
        assert (expected / name).read_bytes() == (actual / name).read_bytes(), f"{name} differs"


def submit_args(inputs: Path, models: Path, workdir: Path, profile: Path, *extra) -> list:
    return ["submit", inputs, "--models", models, "-w", workdir, "--profile", profile, "--shards", 3, *extra]


# ---------------------------------------------------------------- (a) + (b): a whole run

@pytest.fixture(scope="module")
def example_reference(cluster, demo_models, example_inputs, tmp_path_factory) -> LocalRun:
    return LocalRun(tmp_path_factory.mktemp("reference") / "w", example_inputs, "--models", demo_models, "--shards", 3)


@pytest.fixture(scope="module")
def slurm_run(cluster, profile, demo_models, example_inputs, example_reference, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm") / "it's a \"slurm\" run" / "w"
    args = submit_args(example_inputs, demo_models, workdir, profile, "--max-parallel-gpus", 2)
    dry = cli(*args, "--dry-run")
    assert not (workdir / "state.json").exists()
    scripts = {p.stem: p.read_text() for p in (workdir / "slurm" / "dry-run").glob("*.sh")}
    started = time.time()
    cli(*args)
    settled = wait_until_settled(workdir)
    print(f"SLURM run of the example inputs: {time.time() - started:.1f} s")
    return {"workdir": workdir, "dry_run": dry.stdout, "scripts": scripts, "report": settled}


def test_a_submitted_run_completes_with_the_local_results(slurm_run, example_reference, example_inputs, demo_models, profile):
    workdir = slurm_run["workdir"]
    rep = slurm_run["report"]
    assert rep["complete"], json.dumps(rep, indent=1)
    submission = latest_submission(workdir)
    assert list(submission["stages"]) == ["prepare", "dnabert", "esm2", "predict", "consensus"]
    for entry in rep["stages"]:
        job = submission["stages"][entry["stage"]]
        assert entry["slurm"]["latest"] == job["job_id"]
        assert entry["slurm"]["states"] == {"COMPLETED": len(job["tasks"])}
        for index in range(len(job["tasks"])):  # every task logged where the scripts say
            assert (workdir / "logs" / entry["stage"] / f"{job['job_id']}_{index}.err").is_file()
    # --max-parallel-gpus caps the run, not each array: esm2 started once the dnabert array had ended
    assert submission["stages"]["esm2"]["after"] == ["prepare", "dnabert"]
    state = json.loads((workdir / "state.json").read_text())["stages"]
    assert min(e["started"] for e in state["esm2"].values()) >= max(e["finished"] for e in state["dnabert"].values())
    status = cli("status", "-w", workdir)
    assert "COMPLETED" in status.stdout and f"({rep['slurm_source']})" in status.stdout
    environments = json.loads((workdir / "provenance.json").read_text())["environments"]
    for name in ("dnabert", "esm2"):  # threads follow the profile's cpus, not the node's cores
        assert environments[f"stage:{name}"]["cpu_threads"] == 1
    assert_same_results(example_reference.results(), workdir / "results")
    resubmit = cli(*submit_args(example_inputs, demo_models, workdir, profile))
    assert "nothing to submit" in resubmit.stderr
    assert len(json.loads((workdir / "slurm" / "jobs.json").read_text())["submissions"]) == 1


def test_b_dry_run_scripts_are_the_submitted_scripts(slurm_run):
    from virnucpro.orchestration.slurm import PREVIEW_NOTE, placeholder

    submission = latest_submission(slurm_run["workdir"])
    assert sorted(slurm_run["scripts"]) == sorted(submission["stages"])
    ids = {name: job["job_id"] for name, job in submission["stages"].items()}
    for name, job in submission["stages"].items():
        assert slurm_run["scripts"][name].splitlines()[1] + "\n" == PREVIEW_NOTE  # says it is a preview
        expected = slurm_run["scripts"][name].replace(PREVIEW_NOTE, "")
        for dependency, job_id in ids.items():
            expected = expected.replace(placeholder(dependency), job_id)
        assert Path(job["script"]).read_text() == expected
        assert slurm_run["scripts"][name] in slurm_run["dry_run"]


# ---------------------------------------------------------------- (c): requeue and resume

def stop_free_reads(path: Path, reads: int, length: int = 500) -> Path:
    """Reads whose first reading frame has no stop codon: every chunk yields a full-length frame."""
    rng = random.Random(11)
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOP_CODONS]
    with open(path, "w") as handle:
        for i in range(reads):
            handle.write(f">read{i}\n{''.join(rng.choice(codons) for _ in range(length // 3 + 1))[:length]}\n")
    inputs = path.with_suffix(".txt")
    inputs.write_text(f"{path}\n")
    return inputs


class Interrupter:
    """Signals the first running task of a stage once its shard has a checkpoint on disk."""

    def __init__(self, workdir: Path, stage: str, command: list[str]):
        self.workdir, self.stage, self.command = workdir, stage, command
        self.shard = None

    def __call__(self) -> None:
        if self.shard is not None:
            return
        entries = {}  # the tasks' own records: state.json is only folded at a stage's end
        for record in (self.workdir / "state.d" / self.stage).glob("*.json"):
            try:
                entries[record.stem] = json.loads(record.read_text())
            except (FileNotFoundError, ValueError):
                continue
        for shard, entry in entries.items():
            progress = self.workdir / "embeddings" / self.stage / f"{int(shard):05d}.partial" / "progress.json"
            if entry["status"] == "running" and entry["job_id"] and progress.exists():
                sent = subprocess.run([*self.command, entry["job_id"]], capture_output=True, timeout=30)
                if sent.returncode == 0:  # else the task ended meanwhile: try the next one
                    self.shard, self.job_id = int(shard), entry["job_id"]
                    return


def test_c_requeued_embedding_tasks_resume_from_their_checkpoint(cluster, profile, demo_models, tmp_path):
    """Two-GPU tasks (one worker process per fake GPU) stopped by SIGUSR2 and by scontrol requeue."""
    inputs = stop_free_reads(tmp_path / "reads.fasta", 200)
    options = ["--models", demo_models, "--shards", 2, "--checkpoint-tokens", 3000]
    reference = LocalRun(tmp_path / "reference", inputs, *options)
    workdir = tmp_path / "slurm"
    started = time.time()
    cli("submit", inputs, "-w", workdir, "--profile", profile, "--gpus-per-task", 2, *options)
    submitted = latest_submission(workdir)["stages"]
    assert submitted["esm2"]["tasks"] == [[0, 1]] and "#SBATCH --gres=gpu:2" in Path(submitted["esm2"]["script"]).read_text()
    usr2, requeue = interrupt_both_embeddings(workdir, started)
    assert "2 worker(s)" in (workdir / "logs" / "esm2" / f"{submitted['esm2']['job_id']}_0.err").read_text()
    assert_same_results(reference.results(), workdir / "results")


def interrupt_both_embeddings(workdir: Path, started: float) -> tuple[Interrupter, Interrupter]:
    """Stop a running task of each embedding stage once it has a checkpoint, let the run settle,
    and check that both were requeued and resumed from their checkpoints."""
    # dnabert: SIGUSR2 to the batch shell (the time-limit warning): the task requeues itself.
    # esm2: 'scontrol requeue' (what preemption does): SLURM sends SIGTERM and requeues it.
    usr2 = Interrupter(workdir, "dnabert", ["scancel", "--batch", "--signal=USR2"])
    requeue = Interrupter(workdir, "esm2", ["scontrol", "requeue"])
    watching = threading.Event()

    def watch_for_checkpoints():  # polls fast: a signal must land while windows remain to be computed
        while not watching.is_set() and (usr2.shard is None or requeue.shard is None):
            usr2()
            requeue()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_for_checkpoints, daemon=True)
    watcher.start()
    try:
        rep = wait_until_settled(workdir)
    finally:
        watching.set()
        watcher.join()
    print(f"SLURM run with two requeues: {time.time() - started:.1f} s")
    assert usr2.shard is not None and requeue.shard is not None, "no embedding task was caught running"
    assert rep["complete"], json.dumps(rep, indent=1)
    state = json.loads((workdir / "state.json").read_text())["stages"]
    for interrupted in (usr2, requeue):
        entry = state[interrupted.stage][str(interrupted.shard)]
        assert entry["requeues"] >= 1 and entry["attempts"] >= 2, entry
        assert entry["metrics"]["resumed_from"] > 0, entry
        assert stage(rep, interrupted.stage)["requeued_shards"] >= 1
        log = (workdir / "logs" / interrupted.stage / f"{interrupted.job_id}.err").read_text()
        assert f"resuming at frame {entry['metrics']['resumed_from']}" in log
    dnabert_log = (workdir / "logs" / "dnabert" / f"{usr2.job_id}.err").read_text()
    assert "received SIGUSR2" in dnabert_log and f"requeued {usr2.job_id}" in dnabert_log
    assert "received SIGTERM" in (workdir / "logs" / "esm2" / f"{requeue.job_id}.err").read_text()
    return usr2, requeue


# ---------------------------------------------------------------- (d): a broken shard

def test_d_a_broken_shard_fails_its_stage_cancels_dependents_and_resubmission_finishes_only_the_rest(
        cluster, profile, demo_models, example_inputs, example_reference, tmp_path):
    from virnucpro.orchestration.plan import RunRequest, plan_run
    from virnucpro.orchestration.runner import StageContext, run_stage_shards

    workdir = tmp_path / "w"
    wd, config, state = plan_run(RunRequest(inputs_list=example_inputs, workdir=workdir, models_dir=demo_models, shards=3))
    assert not run_stage_shards(StageContext(workdir=wd, config=config), state, "prepare", [0]).failed
    table = wd.shard_frames(1)
    good = table.read_bytes()
    table.write_text("this is not a frame table\n")
    args = submit_args(example_inputs, demo_models, workdir, profile)
    cli(*args)
    first = latest_submission(workdir)
    assert list(first["stages"]) == ["dnabert", "esm2", "predict", "consensus"]  # prepare is done
    assert first["stages"]["dnabert"]["after"] == []
    rep = wait_until_settled(workdir)
    assert not rep["complete"]
    for name in ("dnabert", "esm2"):
        entry = stage(rep, name)
        assert (entry["done"], entry["failed"]) == (2, 1)
        (failure,) = entry["failures"]
        job_id = first["stages"][name]["job_id"]
        assert failure["shard"] == 1 and "not a frame table" in failure["error"]
        assert failure["log"] == str(workdir / "logs" / name / f"{job_id}_1.err")
        assert "not a frame table" in Path(failure["log"]).read_text()
        assert entry["slurm"]["states"] == {"COMPLETED": 2, "FAILED": 1}
    for name in ("predict", "consensus"):  # cancelled by kill-on-invalid-dep, not pending forever
        assert set(stage(rep, name)["slurm"]["states"]) == {"CANCELLED"}
        assert stage(rep, name)["done"] == 0
    status = cli("status", "-w", workdir, check=False)
    assert status.returncode == 1
    assert "dnabert shard 1 failed" in status.stdout and f"{first['stages']['dnabert']['job_id']}_1.err" in status.stdout

    table.write_bytes(good)
    cli(*args)
    second = latest_submission(workdir)
    # the damaged table was prepare's output (StaleInputError): prepare is redone with the failed shards
    assert {name: job["tasks"] for name, job in second["stages"].items()} == {
        "prepare": [[0]], "dnabert": [[1]], "esm2": [[1]], "predict": [[0], [1], [2]], "consensus": [[0]]}
    rep = wait_until_settled(workdir)
    assert rep["complete"], json.dumps(rep, indent=1)
    assert cli("status", "-w", workdir).returncode == 0
    assert_same_results(example_reference.results(), workdir / "results")


# ---------------------------------------------------------------- cancel

def test_cancel_stops_every_job_of_the_run(cluster, profile, demo_models, example_inputs, tmp_path):
    workdir = tmp_path / "w"
    cli(*submit_args(example_inputs, demo_models, workdir, profile))
    ids = [job["job_id"] for job in latest_submission(workdir)["stages"].values()]
    # while its jobs are queued or running, the run's tasks write its state: a local run must not
    local = cli("run", example_inputs, "--models", demo_models, "-w", workdir, "--shards", 3, check=False)
    assert local.returncode == 2 and "still queued or running" in local.stderr and "cancel" in local.stderr, local.stderr
    assert len(local.stderr.strip().splitlines()) == 1
    done = cli("cancel", "-w", workdir)
    assert all(job_id in done.stderr for job_id in ids)
    assert latest_submission(workdir)["cancelled"]
    rep = wait_until_settled(workdir)
    assert not rep["complete"]
    for entry in rep["stages"]:
        assert set(entry["slurm"]["states"]) <= {"CANCELLED", "COMPLETED"}, entry  # prepare may have finished first
    assert "CANCELLED" in stage(rep, "consensus")["slurm"]["states"]
    assert cli("status", "-w", workdir, check=False).returncode == 1


# ---------------------------------------------------------------- (e): every task inside the container image

def in_container(container_image: Path) -> list:
    return ["--container", container_image / "virnucpro.ch", "--container-runtime", "charliecloud"]


def image_python_version(container_image: Path) -> str:
    from virnucpro.orchestration.container import Container, runtime_environment

    probe = Container("charliecloud", str(container_image / "virnucpro.ch")).python(
        ["-c", "import platform; print(platform.python_version())"], gpu=False)
    done = subprocess.run(probe, capture_output=True, text=True, env=runtime_environment(), timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.container
def test_e_a_run_in_the_container_image_gives_the_results_of_a_run_without_it(
        cluster, profile, demo_models, example_inputs, example_reference, container_image, tmp_path):
    from virnucpro import __version__

    workdir = tmp_path / "w"
    args = submit_args(example_inputs, demo_models, workdir, profile, *in_container(container_image))
    started = time.time()
    cli(*args)
    rep = wait_until_settled(workdir)
    print(f"SLURM run of the example inputs in the container image: {time.time() - started:.1f} s")
    assert rep["complete"], json.dumps(rep, indent=1)
    for job in latest_submission(workdir)["stages"].values():
        assert "ch-run --set-env=TMPDIR=/tmp" in Path(job["script"]).read_text()
    assert_same_results(example_reference.results(), workdir / "results")
    provenance = json.loads((workdir / "provenance.json").read_text())
    container = provenance["container"]
    ch_run = subprocess.run(["ch-run", "--version"], capture_output=True, text=True, env={**os.environ, "USER": "root"})
    assert container["runtime"] == "charliecloud" and container["runtime_version"] == (ch_run.stdout or ch_run.stderr).strip()
    assert container["image"] == str(container_image / "virnucpro.ch") and container["virnucpro"] == __version__
    recorded = json.loads((container_image / "virnucpro.ch" / "ch" / "virnucpro-image.json").read_text())
    assert container["digest"] == recorded["id"] and recorded["id"].startswith("sha256:")
    # a folder outside /tmp is bound (and its mount point made); ch-run shares /tmp itself (a checkout there needs none)
    assert (str(example_inputs.parent) in container["binds"]) == (not example_inputs.is_relative_to("/tmp"))
    # the stages ran the image's Python; the plan, this one
    python = image_python_version(container_image)
    assert {name: env["versions"]["python"] for name, env in provenance["environments"].items()
            if name.startswith("stage:")} == {"stage:dnabert": python, "stage:esm2": python}
    page = (workdir / "report" / "index.html").read_text()
    assert container["image"] in page and container["digest"] in page


@pytest.mark.container
def test_f_tasks_stopped_in_the_container_image_are_requeued_and_resume_from_their_checkpoint(
        cluster, profile, demo_models, container_image, tmp_path):
    inputs = stop_free_reads(tmp_path / "reads.fasta", 200)
    options = ["--models", demo_models, "--shards", 2, "--checkpoint-tokens", 3000]
    reference = LocalRun(tmp_path / "reference", inputs, *options)
    workdir = tmp_path / "slurm"
    started = time.time()
    cli("submit", inputs, "-w", workdir, "--profile", profile, *options, *in_container(container_image))
    interrupt_both_embeddings(workdir, started)
    assert_same_results(reference.results(), workdir / "results")
