"""Issue 25: what the tool reads back from disk (the workdir's job ids and state records) and the
user text it prints is data, never argv options, code or markup; duration options are bounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from virnucpro import console
from virnucpro.cli import build_parser, main
from virnucpro.orchestration.plan import RunRequest, plan_run

CODING = "ATG" + "GCTGAAAAACTG" * 12


def _planned(tmp_path: Path, demo_models: Path, name: str = "W"):
    reads = tmp_path / "reads.fa"
    reads.write_text(f">r1\n{CODING}\n")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{reads}\n")
    return plan_run(RunRequest(inputs_list=listing, workdir=tmp_path / name, models_dir=demo_models))


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err and "internal error" not in err, err
    return errors[0]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """scancel, squeue, sacct and srun on PATH that only record their argv."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name in ("scancel", "squeue", "sacct", "srun", "sbatch"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _jobs_json(workdir: Path, stages: dict, **submission) -> Path:
    path = workdir / "slurm" / "jobs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"submissions": [{"submitted": 1.0, "cancelled": None, "stages": stages,
                                                 **submission}]}))
    return path


@pytest.mark.parametrize("stages", [
    {"prepare": {"job_id": "--me", "tasks": [[0]]}, "dnabert": {"job_id": "--user=alice", "tasks": [[0]]}},
    {"prepare": {"job_id": "12 13", "tasks": [[0]]}},
    {"prepare": {"job_id": "12\n", "tasks": [[0]]}},
    {"prepare": {"job_id": 12, "tasks": [[0]]}},
    {"prepare": {"job_id": "12", "tasks": "all"}},
    {"--me": {"job_id": "12", "tasks": [[0]]}},
], ids=["options", "two ids", "a newline", "a number", "tasks text", "a stage named like an option"])
def test_cancel_passes_only_slurm_job_ids_to_scancel(tmp_path, fake_slurm, capsys, stages):
    """Issue 25 item 8: {"job_id": "--me"} in W/slurm/jobs.json became `scancel --me --user=alice`."""
    jobs = _jobs_json(tmp_path / "W", stages)
    before = jobs.read_bytes()
    assert main(["cancel", "-w", str(tmp_path / "W")]) != 0
    line = _one_error(capsys)
    assert line.startswith(f"error: {jobs}: damaged (") and "scancel" in line, line
    assert not fake_slurm.exists()  # no SLURM command ran
    assert jobs.read_bytes() == before


@pytest.mark.parametrize("submission", [{"submitted": "yesterday"}, {"cancelled": "no"}, {"stages": []}])
def test_status_refuses_a_jobs_file_of_wrong_types_in_one_line(tmp_path, demo_models, fake_slurm, capsys, submission):
    workdir, _, _ = _planned(tmp_path, demo_models)
    jobs = _jobs_json(workdir.root, **{"stages": {"prepare": {"job_id": "12", "tasks": [[0]]}}, **submission})
    assert main(["status", "-w", str(workdir.root)]) == 2
    assert _one_error(capsys).startswith(f"error: {jobs}: damaged (")


def test_cancel_still_cancels_array_job_ids(tmp_path, fake_slurm, capsys):
    _jobs_json(tmp_path / "W", {"prepare": {"job_id": "12", "tasks": [[0], [1]]},
                                "dnabert": {"job_id": "13_4", "tasks": [[0]]}})
    assert main(["cancel", "-w", str(tmp_path / "W")]) == 0
    assert fake_slurm.read_text() == "scancel 12 13_4\n"


@pytest.mark.parametrize("record", [{"metrics": [1]}, {"attempts": "2"}, {"status": "finished"}, {"error": 7},
                                    {"metrics": {"tokens_per_second": "fast"}}, {"pid": True}, [1]],
                         ids=["metrics list", "attempts text", "unknown status", "error number", "metric text",
                              "pid bool", "a list"])
def test_a_state_record_of_wrong_types_is_one_line_naming_it(tmp_path, demo_models, capsys, record):
    """Issue 25 item 12: a valid-JSON record of wrong types ("metrics": [1]) was an internal error."""
    workdir, _, state = _planned(tmp_path, demo_models)
    path = state.record_path("prepare", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": "done", **record} if isinstance(record, dict) else record))
    assert main(["status", "-w", str(workdir.root)]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {path}: damaged state record (") and "delete it" in line, line


def test_a_damaged_holder_record_is_no_holder(tmp_path, demo_models, capsys):
    """A new hostile case: `.writer.json` with a text `started` crashed describe_holder (TypeError)."""
    workdir, _, _ = _planned(tmp_path, demo_models)
    (workdir.root / ".writer.json").write_text(json.dumps({"command": "x", "host": "elsewhere", "pid": 1,
                                                           "started": "now", "heartbeat": 9e99}))
    capsys.readouterr()
    assert main(["status", "-w", str(workdir.root)]) == 1  # not complete: a status, not an error
    captured = capsys.readouterr()
    assert "internal error" not in captured.err and "Traceback" not in captured.err, captured.err
    assert "prepare" in captured.out and "in use by" not in captured.out


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "soon"])
def test_status_watch_refuses_what_is_not_a_duration_when_parsed(value, capsys):
    with pytest.raises(SystemExit) as parsed:
        build_parser().parse_args(["status", "-w", "W", f"--watch={value}"])
    assert parsed.value.code == 2
    assert f"{value!r} is not a positive number of seconds" in capsys.readouterr().err


def test_status_watch_raises_tiny_intervals_to_the_minimum():
    """Issue 25 item 12: --watch 1e-9 was a busy loop folding the state as fast as it could."""
    from virnucpro.cli.parser import WATCH_MIN_SECONDS

    assert build_parser().parse_args(["status", "-w", "W", "--watch", "1e-9"]).watch == WATCH_MIN_SECONDS
    assert build_parser().parse_args(["status", "-w", "W", "--watch", "7"]).watch == 7.0
    assert build_parser().parse_args(["status", "-w", "W", "--watch"]).watch == 5.0


def test_status_prints_a_failure_quoting_markup_as_it_is(tmp_path, demo_models, capsys):
    """Issue 25 item 11: a duplicate read id `read[/1]` in a failure record crashed `status`
    (MarkupError), and so did a workdir named `W[/]x`."""
    workdir, _, state = _planned(tmp_path, demo_models, name="W[/]x")
    state.mark_failed("prepare", 0, "reads.fa: duplicate read id read[/1]; give every read its own id")
    capsys.readouterr()
    assert main(["status", "-w", str(workdir.root)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    assert "duplicate read id read[/1];" in captured.out and "W[/]x" in captured.out


def test_console_lines_print_user_text_literally(capsys):
    """Issue 25 item 11, the shared mechanism: console.info treats its text as literal; only parts
    given with a style are styled (a workdir `W[/]x` crashed `run` after run.json was written)."""
    console.configure()
    console.info("workdir /tmp/W[/]x: 1 input(s)")
    console.info(("done", "bold green"), ": results in /tmp/[bold]W[/]x")
    console.warn("read[/1] twice")
    console.error("read [red]x[/red]")
    err = capsys.readouterr().err
    assert "workdir /tmp/W[/]x: 1 input(s)" in err and "done: results in /tmp/[bold]W[/]x" in err
    assert "read[/1] twice" in err and "read [red]x[/red]" in err


def test_a_planted_lock_link_is_refused_and_nothing_is_created_outside(tmp_path):
    """A new hostile case: a lock file (W/.state.lock, DIR/.virnucpro-download.lock) planted as a
    dangling link made the tool create the file it points to, anywhere."""
    from virnucpro.errors import StateError
    from virnucpro.orchestration.state import exclusive_lock

    victim = tmp_path / "victim" / "created"
    victim.parent.mkdir()
    (tmp_path / ".state.lock").symlink_to(victim)
    with pytest.raises(StateError, match="a symbolic link where virnucpro keeps a lock file"):
        with exclusive_lock(tmp_path / ".state.lock"):
            pass
    assert not victim.exists()


def test_a_damaged_provenance_record_is_rewritten(quiet_demo_run, tmp_path):
    """A new hostile case: provenance.json of wrong types (a list, environments a list) made
    `report` (and planning) an internal error."""
    import shutil

    workdir = tmp_path / "W"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    for damaged in ("[1]", '{"environments": [1], "events": {}}', '{"environments": {"plan": {"gpus": [[1]]}}}'):
        (workdir / "provenance.json").write_text(damaged)
        assert main(["report", "-w", str(workdir), "--quiet"]) == 0
        record = json.loads((workdir / "provenance.json").read_text())
        assert isinstance(record["environments"], dict) and record["events"][-1]["event"] == "report"


def test_a_linked_dry_run_folder_is_refused_before_old_scripts_are_removed(quiet_demo_run, demo_models, tmp_path,
                                                                          capsys):
    """A new hostile case: `submit --dry-run` deletes W/slurm/dry-run/*.sh before writing new
    ones; with that folder a link, another folder's scripts went."""
    import shutil

    from virnucpro.orchestration.config import RunConfig
    from virnucpro.paths import Workdir

    workdir = tmp_path / "W"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    victim = tmp_path / "scripts"
    victim.mkdir()
    (victim / "mine.sh").write_text("echo mine\n")
    (workdir / "slurm").mkdir(exist_ok=True)
    (workdir / "slurm" / "dry-run").symlink_to(victim)
    config = RunConfig.load(Workdir(workdir))
    capsys.readouterr()
    code = main(["submit", config.inputs_list, "-w", str(workdir), "--demo", "--models", str(demo_models),
                 "--dry-run", "--partition", "gpu"])
    assert code == 2 and "a symbolic link inside the workdir" in _one_error(capsys)
    assert (victim / "mine.sh").read_text() == "echo mine\n" and [p.name for p in victim.iterdir()] == ["mine.sh"]
