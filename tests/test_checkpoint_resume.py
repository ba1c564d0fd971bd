"""Emergency checkpoints: SIGTERM / kill -9 in the middle of the ESM-2 stage, then resume.

Real subprocesses and real signals. The resumed embeddings must be bitwise identical to an
uninterrupted run, ids in the same order, no row lost or duplicated.
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.orchestration.runner import EXIT_REQUEUE
from virnucpro.orchestration.state import StateFile
from virnucpro.paths import Workdir
from virnucpro.storage import ids_digest, read_shard_frames

CLI = [sys.executable, "-m", "virnucpro.cli"]
CHECKPOINT_TOKENS = "600"


@pytest.fixture(scope="module")
def many_reads(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reads")
    rng = random.Random(7)
    with open(folder / "reads.fa", "w") as out:
        for i in range(1500):
            out.write(f">read{i}\n{''.join(rng.choice('ACGT') for _ in range(150))}\n")
    (folder / "inputs.txt").write_text("reads.fa\n")
    return folder / "inputs.txt"


def command(inputs, workdir, models):
    return [*CLI, "run", str(inputs), "--workdir", str(workdir), "--models", str(models), "--shards", "2",
            "--checkpoint-tokens", CHECKPOINT_TOKENS, "--device", "cpu"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, many_reads, demo_models) -> Path:
    workdir = tmp_path_factory.mktemp("clean") / "w"
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    return workdir


def checkpoint_marks(workdir: Path) -> dict:
    """progress.json files that record at least one window: the skeleton written when a shard opens
    records none, and a signal sent before the first window leaves nothing to resume from."""
    marks = {}
    for path in (workdir / "embeddings" / "esm2").glob("*.partial/progress.json"):
        try:
            if json.loads(path.read_text())["windows"]:
                marks[path] = path.stat().st_mtime_ns
        except (OSError, ValueError, KeyError):
            continue  # replaced while read: the next poll sees it
    return marks


def wait_for_checkpoint(workdir: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until this process has written a new esm2 checkpoint (not one left by a previous run)."""
    before = checkpoint_marks(workdir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = checkpoint_marks(workdir)
        if any(before.get(path) != mark for path, mark in now.items()):
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended (exit {process.returncode}) before an esm2 checkpoint")
        time.sleep(0.01)
    raise AssertionError("no esm2 checkpoint appeared")


def interrupt(inputs, workdir, models, sig, rng) -> subprocess.Popen:
    process = subprocess.Popen(command(inputs, workdir, models), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(workdir, process)
    time.sleep(rng.uniform(0, 0.1))
    sent = time.time()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    process.elapsed_after_signal = time.time() - sent
    process.stderr_text = stderr
    return process


def embeddings(workdir: Path, kind: str = "esm2") -> list[tuple[list[str], np.ndarray]]:
    """Each shard's (ids, rows): the ids are the frame table's, which the file must refer to."""
    out = []
    for path in sorted((workdir / "embeddings" / kind).glob("*.h5")):
        ids = read_shard_frames(workdir / "shards" / path.name.replace(".h5", ".frames.tsv")).frame_ids
        with h5py.File(path) as h5:
            assert h5.attrs["frames"] == len(ids) and h5.attrs["ids_sha256"] == ids_digest(ids)
            out.append((ids, h5["embeddings"][:]))
    return out


def assert_identical(workdir: Path, reference: Path) -> None:
    for (ids, matrix), (ref_ids, ref_matrix) in zip(embeddings(workdir), embeddings(reference), strict=True):
        assert ids == ref_ids
        assert len(set(ids)) == len(ids)
        assert matrix.tobytes() == ref_matrix.tobytes()
    for path in sorted((reference / "results").rglob("*.*")):
        assert (workdir / path.relative_to(reference)).read_bytes() == path.read_bytes()


def esm_metrics(workdir: Path) -> dict:
    paths = Workdir(workdir)
    return {shard: entry for shard, entry in StateFile(paths.state, paths.state_lock).load()["esm2"].items()}


def test_sigterm_three_times_then_complete(tmp_path, many_reads, demo_models, uninterrupted):
    rng = random.Random(3)
    workdir = tmp_path / "w"
    for _ in range(3):
        process = interrupt(many_reads, workdir, demo_models, signal.SIGTERM, rng)
        assert process.returncode == EXIT_REQUEUE, process.stderr_text
        assert process.elapsed_after_signal < 20  # inside SLURM's usual KillWait of 30 s
        assert "Traceback" not in process.stderr_text and "resume" in process.stderr_text
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    assert_identical(workdir, uninterrupted)
    paths = Workdir(workdir)
    state = StateFile(paths.state, paths.state_lock).load()
    # one interruption per stop (a local run is not requeued), on the shard it stopped in, or on
    # the next one when the signal came between two shards (or two stages)
    assert sum(e.interruptions for entries in state.values() for e in entries.values()) == 3
    assert sum(e.requeues for entries in state.values() for e in entries.values()) == 0
    assert not [e for entries in state.values() for e in entries.values() if e.interrupted]  # ran again since
    assert any(e.metrics.get("resumed_from", 0) > 0 for e in esm_metrics(workdir).values())


def test_sighup_checkpoints_like_sigterm_and_leaves_nothing_running(tmp_path, many_reads, demo_models, uninterrupted):
    """Issue 13 item 4: closing the terminal (SIGHUP) wrote no checkpoint and left the shard
    "running" for good, so `status --watch` never returned."""
    workdir = tmp_path / "w"
    process = interrupt(many_reads, workdir, demo_models, signal.SIGHUP, random.Random(7))
    assert process.returncode == EXIT_REQUEUE, process.stderr_text
    assert "Traceback" not in process.stderr_text and "resume" in process.stderr_text
    paths = Workdir(workdir)
    state = StateFile(paths.state, paths.state_lock).load()
    assert not [(stage, k) for stage, entries in state.items() for k, e in entries.items() if e.status == "running"]
    assert sum(e.interruptions for entries in state.values() for e in entries.values()) == 1
    watch = subprocess.run([sys.executable, "-m", "virnucpro.cli", "status", "-w", str(workdir), "--watch", "0.2"],
                           capture_output=True, text=True, timeout=60)
    assert watch.returncode != 0 and "Traceback" not in watch.stderr  # ended: not complete, nothing running
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    assert_identical(workdir, uninterrupted)


def status_json(workdir: Path) -> dict:
    done = subprocess.run([*CLI, "status", "-w", str(workdir), "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


@pytest.mark.parametrize("sigints", [1, 2])
def test_ctrl_c_shows_as_interrupted_with_the_command_that_resumes_it(tmp_path, many_reads, demo_models, uninterrupted, sigints):
    """Issue 24 item 3: one Ctrl-C showed the shard as "requeued" and ended with an error line; two
    showed "failed ... process is gone" with an ETA while nothing ran."""
    workdir = tmp_path / "w"
    process = subprocess.Popen(command(many_reads, workdir, demo_models), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for_checkpoint(workdir, process, timeout=600)  # slow on a loaded machine: it runs prepare and dnabert first
    process.send_signal(signal.SIGINT)
    seen = []
    if sigints == 2:  # once the first is handled (two at once arrive as one), the second stops at once
        for line in process.stderr:
            seen.append(line)
            if "received SIGINT" in line:
                break
        process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert process.returncode == EXIT_REQUEUE, stderr
    assert "interrupted: run the same command again to resume" in stderr
    assert "error:" not in stderr and "Traceback" not in stderr
    report = status_json(workdir)
    stopped = [(s["stage"], stop) for s in report["stages"] for stop in s["interrupted"]]
    assert [stage for stage, _ in stopped] == ["esm2"], report
    assert stopped[0][1]["signal"].startswith("SIGINT")  # "SIGINT twice ..." when the second came mid-window
    assert stopped[0][1]["command"].startswith("virnucpro-slurm run ") and str(workdir) in stopped[0][1]["command"]
    for stage in report["stages"]:
        assert stage["requeued_shards"] == 0 and stage["failed"] == 0 and stage["running"] == 0
        assert stage["eta_seconds"] is None  # nothing runs: no time left to estimate
    shown = subprocess.run([*CLI, "status", "-w", str(workdir)], capture_output=True, text=True, timeout=60).stdout
    assert "interrupted by SIGINT" in shown and "resume with: virnucpro-slurm run" in shown and "process is gone" not in shown
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    assert_identical(workdir, uninterrupted)
    assert not [s for s in status_json(workdir)["stages"] if s["interrupted"]]


def test_a_second_ctrl_c_in_the_middle_of_a_shard_leaves_it_interrupted_not_running(tmp_path, monkeypatch):
    """The second Ctrl-C raises KeyboardInterrupt wherever the stage is: in a local run the shard is
    interrupted (pending, resumable, shown with no ETA), never left "running" for status to call
    failed; in a SLURM task it propagates as before."""
    from virnucpro.orchestration import runner
    from virnucpro.orchestration.status import status_report

    def open_stage(stage, ctx):
        def process(shard):
            raise KeyboardInterrupt  # what StopFlag raises on the second SIGINT
        return process

    monkeypatch.setattr(runner, "open_stage", open_stage)
    monkeypatch.setattr(sys, "argv", ["virnucpro-slurm", "run", "in.txt", "-w", str(tmp_path)])
    paths = Workdir(tmp_path)
    state = StateFile(paths.state, paths.state_lock)
    state.initialise({"prepare": 1})
    ctx = runner.StageContext(workdir=paths, config=None)
    outcome = runner.run_stage_shards(ctx, state, "prepare", [0], local=True)
    assert outcome.interrupted and not outcome.failed
    entry = state.read_entry("prepare", 0)
    assert (entry.status, entry.requeues, entry.interruptions) == ("pending", 0, 1)
    assert entry.interrupted["signal"].startswith("SIGINT twice")
    assert entry.interrupted["command"] == f"virnucpro-slurm run in.txt -w {tmp_path}"
    prepare = status_report(paths)["stages"][0]
    assert prepare["failed"] == prepare["running"] == 0 and prepare["eta_seconds"] is None
    assert [stop["shard"] for stop in prepare["interrupted"]] == [0]
    with pytest.raises(KeyboardInterrupt):  # a SLURM task: not a local interruption
        runner.run_stage_shards(ctx, state, "prepare", [0], job_id="12_0")


def test_kill9_resumes_from_last_checkpoint(tmp_path, many_reads, demo_models, uninterrupted):
    rng = random.Random(11)
    workdir = tmp_path / "w"
    for _ in range(2):
        process = interrupt(many_reads, workdir, demo_models, signal.SIGKILL, rng)
        assert process.returncode == -signal.SIGKILL
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    assert_identical(workdir, uninterrupted)
    assert any(e.metrics.get("resumed_from", 0) > 0 for e in esm_metrics(workdir).values())


def test_corrupt_checkpoint_piece_is_recomputed(tmp_path, many_reads, demo_models, uninterrupted):
    workdir = tmp_path / "w"
    process = interrupt(many_reads, workdir, demo_models, signal.SIGKILL, random.Random(5))
    assert process.returncode == -signal.SIGKILL
    progress = sorted(checkpoint_marks(workdir))[0]
    record = json.loads(progress.read_text())
    windows = record["windows"]
    assert windows, "expected at least one checkpointed window"
    victim = progress.parent / "embeddings.h5"
    data = bytearray(victim.read_bytes())
    row_bytes = record["dim"] * 4
    # one flipped byte in the middle of the first recorded window's rows: its checksum no longer matches
    data[record["offset"] + windows[0]["rows"] * row_bytes // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    subprocess.run(command(many_reads, workdir, demo_models), check=True, capture_output=True)
    assert_identical(workdir, uninterrupted)
    shard = int(progress.parent.name.split(".")[0])
    assert esm_metrics(workdir)[shard].metrics["resumed_from"] == 0  # nothing after a bad piece is trusted
