"""kill -9 of the local runner at seeded random moments spread over every stage, then resume.

An undisturbed reference run is timed once, phase by phase (planning, then each stage from its
"N of M shard(s) to run" line to its "done" line). Each trial starts `virnucpro-slurm run`, waits
for the start of its chosen phase, sleeps a seeded fraction of that phase's reference duration
and sends SIGKILL. Right after the kill, every artefact that exists must already be complete
(byte-identical to the reference's; checkpoint pieces recorded in progress.json must validate),
because a partial file must never be taken for a complete one. Then the same command runs to the
end and every artefact must be byte-identical to the reference. Trials run a few at a time in
their own workdirs with the same demo models.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.errors import ShardError
from virnucpro.storage import ShardCheckpoint, read_matrix, read_shard_frames

CLI = [shutil.which("virnucpro-slurm")] if shutil.which("virnucpro-slurm") else [sys.executable, "-m", "virnucpro.cli"]
TRIALS = int(os.environ.get("VIRNUCPRO_CRASH_TRIALS", "20"))
PARALLEL = int(os.environ.get("VIRNUCPRO_CRASH_PARALLEL", "4"))
PHASES = ("plan", "prepare", "dnabert", "esm2", "predict", "consensus")
# everything a run produces that must not depend on being interrupted (not logs, state, report)
ARTEFACTS = ("prepare", "shards", "embeddings", "predictions", "results")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "1000"}


def coding_read(rng: random.Random, codons: int) -> str:
    """A read with a stop-free frame, so every chunk yields frames (random DNA mostly would not)."""
    sense = [c for c in (a + b + d for a in "ACGT" for b in "ACGT" for d in "ACGT") if c not in ("TAA", "TAG", "TGA")]
    return "".join(rng.choice(sense) for _ in range(codons))


@pytest.fixture(scope="module")
def crash_inputs(tmp_path_factory) -> Path:
    import gzip

    folder = tmp_path_factory.mktemp("crash-inputs")
    rng = random.Random(11)
    for name, count in (("a.fa", 60), ("b.fa.gz", 40)):
        text = "".join(f">{name[0]}{i}\n{coding_read(rng, rng.choice([50, 50, 50, 200, 400]))}\n" for i in range(count))
        (folder / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    (folder / "inputs.txt").write_text("a.fa\nb.fa.gz\n")
    return folder / "inputs.txt"


def command(inputs: Path, workdir: Path, models: Path) -> list[str]:
    return [*CLI, "run", str(inputs), "--workdir", str(workdir), "--models", str(models), "--shards", "3",
            "--checkpoint-tokens", "1500", "--device", "cpu"]


class Watched:
    """A run whose stderr lines are timestamped as they arrive."""

    def __init__(self, argv: list[str]):
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
                                        start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put((time.monotonic() - self.started, line.rstrip("\n")))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 300) -> float | None:
        """Seconds since start when a line starting with `prefix` arrived; None if the run ended first."""
        deadline = time.monotonic() + timeout
        for at, line in self.seen:
            if line.startswith(prefix):
                return at
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.lines.put(None)
                return None
            self.seen.append(item)
            if item[1].startswith(prefix):
                return item[0]
        raise TimeoutError(f"no line starting with {prefix!r}")

    def finish(self, timeout: float = 300) -> int:
        """Wait for the exit and collect the rest of the output."""
        code = self.process.wait(timeout)
        while (item := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(item)
        self.lines.put(None)
        return code

    def phase_at_kill(self) -> str:
        """The last phase that had started when the process died (from its own output)."""
        phase = "plan"
        for _, line in self.seen:
            for stage in PHASES[1:]:
                if line.startswith(f"{stage}: ") and "shard(s) to run" in line:
                    phase = stage
        return phase


def start_line(phase: str) -> str:
    return f"{phase}: "  # the first such line is "<stage>: N of M shard(s) to run"


def artefacts(workdir: Path) -> dict[str, bytes]:
    out = {}
    for folder in ARTEFACTS:
        for path in sorted((workdir / folder).rglob("*")):
            if path.is_file() and not path.name.startswith(".") and ".partial" not in path.parts[-2]:
                out[str(path.relative_to(workdir))] = path.read_bytes()
    return out


@dataclass
class Reference:
    workdir: Path
    files: dict[str, bytes]
    phase_seconds: dict[str, float]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, crash_inputs, demo_models) -> Reference:
    workdir = tmp_path_factory.mktemp("reference") / "w"
    run = Watched(command(crash_inputs, workdir, demo_models))
    starts, ends = {"plan": 0.0}, {}
    for phase in PHASES[1:]:
        starts[phase] = run.wait_for(start_line(phase))
        ends[phase] = run.wait_for(f"{phase}: done in")
        assert starts[phase] is not None and ends[phase] is not None, run.seen
    assert run.finish() == 0, run.seen
    ends["plan"] = starts["prepare"]
    files = artefacts(workdir)
    assert any(p.startswith("results/") for p in files) and any(p.startswith("embeddings/esm2/") for p in files)
    return Reference(workdir, files, {p: ends[p] - starts[p] for p in PHASES})


@dataclass
class Trial:
    number: int
    phase: str  # where the kill was aimed
    delay: float  # seconds after the phase started
    killed: bool = False
    landed_in: str = ""  # the phase that was running when the kill arrived
    problems: list[str] = field(default_factory=list)


def check_after_kill(workdir: Path, reference: Reference) -> list[str]:
    """What a killed run left must be complete or absent: never a partial artefact."""
    problems = []
    for name, data in artefacts(workdir).items():
        if name == "prepare/frames.spool.tsv":
            continue  # prepare's own intermediate, complete when it exists, removed when prepare ends
        if name in reference.files and reference.files[name] != data:
            problems.append(f"{name} exists but differs from the complete file (a partial file is visible)")
        if name not in reference.files:
            problems.append(f"{name} should not exist")
    for name in ("run.json", "state.json"):
        if (workdir / name).exists():
            try:
                json.loads((workdir / name).read_text())
            except ValueError:
                problems.append(f"{name} does not parse after the kill")
    # checkpoint windows recorded as done must be whole (their checksums check) and be of the right frames
    for progress in workdir.glob("embeddings/*/*.partial/progress.json"):
        record = json.loads(progress.read_text())
        shard = int(progress.parent.name.split(".")[0])
        ids = read_shard_frames(workdir / "shards" / f"{shard:05d}.frames.tsv").frame_ids
        checkpoint = ShardCheckpoint(progress.parent, workdir / "unused.h5", ids, record["dim"], record["dtype"],
                                     {k: v for k, v in record["attrs"].items()})
        recorded = sum(window["rows"] for window in record["windows"])
        _, valid = checkpoint.verify()  # reads only: the re-run below must find the same state
        if sum(window["rows"] for window in valid) != recorded:
            problems.append(f"{progress}: recorded {recorded} rows but only {sum(w['rows'] for w in valid)} validate")
    return problems


def run_trial(number: int, reference: Reference, inputs: Path, models: Path, root: Path) -> Trial:
    rng = random.Random(7000 + number)
    phase = PHASES[number % len(PHASES)]
    trial = Trial(number, phase, rng.random() * reference.phase_seconds[phase])
    workdir = root / f"trial-{number:02d}"
    run = Watched(command(inputs, workdir, models))
    started = 0.0 if phase == "plan" else run.wait_for(start_line(phase))
    if started is not None:
        time.sleep(max(0.0, trial.delay - (time.monotonic() - run.started - started)))
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            trial.killed = run.process.wait() == -signal.SIGKILL
    run.finish()
    trial.landed_in = run.phase_at_kill()
    trial.problems += check_after_kill(workdir, reference)
    resumed = subprocess.run(command(inputs, workdir, models), capture_output=True, text=True, env=ENV, timeout=600)
    if resumed.returncode != 0:
        trial.problems.append(f"the re-run failed ({resumed.returncode}): {resumed.stderr[-2000:]}")
        return trial
    leftovers = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*.tmp"))
    if leftovers:
        trial.problems.append(f"temp files left after resuming: {leftovers}")
    files = artefacts(workdir)
    for name in sorted(set(files) | set(reference.files)):
        if files.get(name) != reference.files.get(name):
            trial.problems.append(f"{name} differs from the undisturbed run after resuming")
    shutil.rmtree(workdir, ignore_errors=True)  # keep the disk footprint of 20 trials small
    return trial


@pytest.fixture(scope="module")
def trials(reference, crash_inputs, demo_models, tmp_path_factory) -> list[Trial]:
    root = tmp_path_factory.mktemp("trials")
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda n: run_trial(n, reference, crash_inputs, demo_models, root), range(TRIALS)))


@pytest.mark.parametrize("number", range(TRIALS))
def test_killed_run_resumes_to_identical_outputs(trials, number):
    trial = trials[number]
    assert not trial.problems, f"trial {number} (kill {trial.delay:.2f} s into {trial.phase}, " \
                               f"landed in {trial.landed_in}):\n" + "\n".join(trial.problems)


def test_kills_cover_every_stage(trials):
    for t in trials:  # shown with pytest -s
        print(f"trial {t.number:2d}: aimed {t.delay:5.2f} s into {t.phase:9s} killed={t.killed!s:5} "
              f"landed in {t.landed_in}")
    killed = [t for t in trials if t.killed]
    assert len(killed) >= 0.75 * len(trials), [(t.phase, t.killed) for t in trials]
    assert {t.landed_in for t in killed} == set(PHASES), sorted((t.phase, t.landed_in) for t in killed)


# ---------------------------------------------------------------- readers refuse partial files

def test_readers_refuse_truncated_artefacts(reference, tmp_path):
    """Whatever the writer, a cut file is refused by its reader instead of being half-used."""
    shard = reference.workdir / "shards" / "00000.frames.tsv"
    frames = read_shard_frames(shard)
    text = shard.read_bytes()
    for cut in (text.index(b"\n", len(text) // 2) - 5, len(text) - 1):  # inside a line, before the last newline
        partial = tmp_path / f"cut-{cut}.frames.tsv"
        partial.write_bytes(shard.read_bytes()[:cut])
        with pytest.raises(ShardError, match="truncated or malformed"):
            read_shard_frames(partial)
    for kind in ("embeddings/esm2", "embeddings/dnabert", "predictions"):
        matrix = reference.workdir / kind / "00000.h5"
        name = "scores" if kind == "predictions" else "embeddings"
        read_matrix(matrix, frames.frame_ids, name=name)  # the complete file is accepted
        data = matrix.read_bytes()
        for cut in (len(data) // 3, len(data) - 100):
            partial = tmp_path / f"cut-{cut}.h5"
            partial.write_bytes(data[:cut])
            with pytest.raises(ShardError):
                read_matrix(partial, frames.frame_ids, name=name)
        # a complete file of another shard (ids and rows shifted) is refused too
        other = reference.workdir / kind / "00001.h5"
        with pytest.raises(ShardError, match="does not match the shard's frames"):
            read_matrix(other, frames.frame_ids, name=name)
    with h5py.File(tmp_path / "short.h5", "w") as h5:  # rows missing at the end
        h5.create_dataset("ids", data=np.array(frames.frame_ids[:-1], dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("embeddings", data=np.zeros((len(frames) - 1, 4), np.float32))
    with pytest.raises(ShardError, match="1 frame\\(s\\) missing"):
        read_matrix(tmp_path / "short.h5", frames.frame_ids)


# ---------------------------------------------------------------- prepare's worker pool

POOLED_PREPARE = """
import random, sys
from pathlib import Path
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir
from virnucpro.stages import prepare

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    rng = random.Random(1)
    unit = "".join(rng.choice("ACGT") for _ in range(10_000))
    with open(folder / "reads.fa", "w") as out:
        for i in range(400_000):
            out.write(f">r{i}\\n{unit[i % 9000:i % 9000 + 150]}\\n")
    prepare.BLOCK_BYTES = 1 << 16
    config = RunConfig(inputs_list="", inputs=[str(folder / "reads.fa")], input_names=["reads"], chunk_length=500,
                       shards=2, models=ModelSpec("esm", "dnabert", "classifier"))
    print("preparing", flush=True)
    prepare.prepare(StageContext(workdir=Workdir(folder / "w"), config=config))
"""


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:  # a zombie (state Z) has exited; whoever adopted it has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killing_prepare_takes_its_workers_down(tmp_path):
    """kill -9 of a prepare that runs a worker pool must not leave workers waiting forever."""
    script = tmp_path / "pooled_prepare.py"
    script.write_text(POOLED_PREPARE)
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               env={**ENV, "VIRNUCPRO_PREPARE_WORKERS": "2"})
    assert process.stdout.readline().strip() == "preparing"
    deadline = time.monotonic() + 60
    while len(workers := children_of(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2 and process.poll() is None, "the pool never started"
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while (alive := [w for w in workers if running(w)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for worker in alive:  # clean up before failing
        os.kill(worker, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived the killed prepare"
