"""Issue 13: the workdir is the user's data (a non-workdir folder is never emptied, a damaged state
file is rebuilt, one writer at a time), SIGHUP stops a run like SIGTERM, and options that cannot
work are refused when the command line is parsed."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucpro.cli import build_parser, main
from virnucpro.errors import StateError
from virnucpro.orchestration.plan import RunRequest, plan_run
from virnucpro.orchestration.runner import StopFlag

CODING = "ATG" + "GCTGAAAAACTG" * 12


def _inputs(tmp_path: Path) -> Path:
    reads = tmp_path / "reads.fa"
    reads.write_text(f">r1\n{CODING}\n")
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{reads}\n")
    return listing


A_FOLDER = object()


@pytest.mark.parametrize("marker", [None, '{"name": "my other tool"}', "not json", "[1, 2]", A_FOLDER],
                         ids=["no run.json", "another tool's run.json", "a run.json not JSON", "a run.json list",
                              "a folder named run.json"])
@pytest.mark.parametrize("restart", [True, False], ids=["--restart", "plain"])
def test_a_folder_that_is_not_a_workdir_is_refused_and_kept(tmp_path, demo_models, restart, marker):
    """Item 1: `--restart` on a folder without run.json deleted results/, report/, ... inside it;
    so it did on a folder whose run.json was any other file of that name."""
    folder = tmp_path / "P"
    (folder / "results").mkdir(parents=True)
    (folder / "results" / "mine.csv").write_text("x\n")
    (folder / "report").mkdir()
    (folder / "report" / "notes.txt").write_text("mine too\n")
    if marker is A_FOLDER:
        (folder / "run.json").mkdir()
    elif marker is not None:
        (folder / "run.json").write_text(marker)
    request = RunRequest(inputs_list=_inputs(tmp_path), workdir=folder, models_dir=demo_models, restart=restart)
    with pytest.raises(StateError, match="not a virnucpro workdir|does not look like a virnucpro workdir") as refused:
        plan_run(request)
    assert str(folder) in str(refused.value) and "\n" not in str(refused.value)
    assert (folder / "results" / "mine.csv").read_text() == "x\n"
    assert (folder / "report" / "notes.txt").read_text() == "mine too\n"
    assert sorted(p.name for p in folder.iterdir()) == ["report", "results"] + ["run.json"] * (marker is not None)
    assert marker in (None, A_FOLDER) or (folder / "run.json").read_text() == marker  # nothing added or changed either


def test_restart_of_a_real_workdir_still_discards_its_results(tmp_path, demo_models):
    workdir = tmp_path / "w"
    request = RunRequest(inputs_list=_inputs(tmp_path), workdir=workdir, models_dir=demo_models)
    _, _, state = plan_run(request)
    state.mark_running("prepare", 0)
    state.mark_done("prepare", 0)
    (workdir / "shards").mkdir()
    (workdir / "shards" / "00000.frames.tsv").write_text("stale\n")
    request.restart = True
    _, _, state = plan_run(request)
    assert not (workdir / "shards").exists()
    assert state.load()["prepare"][0].status == "pending"


def test_sighup_stops_a_run_like_sigterm():
    """Item 4: closing the terminal (SIGHUP) stopped nothing at a checkpoint; the state stayed running."""
    assert signal.SIGHUP in StopFlag.SIGNALS
    previous = signal.getsignal(signal.SIGHUP)
    try:
        flag = StopFlag().install()
        signal.raise_signal(signal.SIGHUP)
        assert flag() and flag.signal_name == "SIGHUP"
    finally:
        for sig in StopFlag.SIGNALS:
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("argv, fragment", [
    (["run", "x.txt", "--shards", "0"], "--shards: '0' is not a whole number of at least 1"),
    (["run", "x.txt", "--shards", "-3"], "--shards: '-3' is not a whole number of at least 1"),
    (["run", "x.txt", "--device", "tpu"], "'tpu' is not a device"),
    (["run", "x.txt", "--device", "cuda:x"], "'cuda:x' is not a device"),
    (["run", "x.txt", "--esm-token-budget", "0"], "'0' is not a whole number of at least 1"),
    (["run", "x.txt", "--checkpoint-tokens", "0"], "'0' is not a whole number of at least 1"),
    (["run", "x.txt", "--dnabert-token-budget", "0"], "'0' is not a whole number of at least 1"),
    (["submit", "x.txt", "--shards", "0"], "'0' is not a whole number of at least 1"),
    (["embed", "esm2", "p.faa", "--model", "m", "--out", "o.h5", "--device", "tpu"], "'tpu' is not a device"),
    (["embed", "esm2", "p.faa", "--model", "m", "--out", "o.h5", "--token-budget", "0"], "at least 1"),
])
def test_impossible_options_are_refused_when_parsed(argv, fragment, capsys):
    """Items 5 and 10: --shards 0 meant auto and -3 was an internal error; --device tpu and zero budgets
    were accepted and failed late or never."""
    with pytest.raises(SystemExit) as parsed:
        build_parser().parse_args(argv)
    assert parsed.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err, err


def test_good_options_still_parse():
    args = build_parser().parse_args(["run", "x.txt", "--shards", "3", "--device", "cuda:1", "--esm-token-budget", "5"])
    assert (args.shards, args.device, args.esm_token_budget) == (3, "cuda:1", 5)


def test_missing_classifier_message_names_a_real_option(tmp_path):
    """Item 10: the message suggested --classifier-model, which does not exist."""
    from virnucpro.errors import InputError
    from virnucpro.modelstore.resolve import models_in_dir

    (tmp_path / "esm2_t2_demo.pt").write_bytes(b"")
    (tmp_path / "dnabert").mkdir()
    (tmp_path / "dnabert" / "config.json").write_text("{}")
    with pytest.raises(InputError) as missing:
        models_in_dir(tmp_path, None)
    assert "--classifier-model" not in str(missing.value) and "give --classifier explicitly" in str(missing.value)
    assert "--classifier" in {a for action in build_parser()._subparsers._group_actions[0].choices["run"]._actions
                              for a in action.option_strings}


@pytest.mark.parametrize("outputs", ["same file twice", "output is the input"])
def test_translate_refuses_overwriting_its_own_files(tmp_path, capsys, outputs):
    """Item 10: translate accepted one path for both outputs, or an output equal to its input."""
    source = tmp_path / "reads.fa"
    source.write_text(f">r1\n{CODING}\n")
    out = tmp_path / "out.fa"
    dna, protein = (out, out) if outputs == "same file twice" else (source, tmp_path / "p.faa")
    code = main(["translate", str(source), "--chunk-length", "500", "--nucleotide-out", str(dna), "--protein-out",
                 str(protein)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1, errors
    assert source.read_text() == f">r1\n{CODING}\n"
    assert not out.exists() and not (tmp_path / "p.faa").exists()


def test_an_input_rewritten_with_its_mtime_restored_is_seen(tmp_path, demo_models):
    """Item 9: inputs were keyed on size + mtime, so a same-size rewrite with the mtime put back
    was reused and run.json kept a SHA-256 the file no longer had."""
    import hashlib
    import os
    import time

    listing = _inputs(tmp_path)
    reads = tmp_path / "reads.fa"
    old = time.time() - 3600
    os.utime(reads, (old, old))
    time.sleep(2.1)  # the file's ctime must be older than the hash, or it is (rightly) not cached
    request = RunRequest(inputs_list=listing, workdir=tmp_path / "w", models_dir=demo_models)
    _, config, state = plan_run(request)
    assert config.fingerprint["inputs"][0]["sha256"] == hashlib.sha256(reads.read_bytes()).hexdigest()
    state.mark_running("prepare", 0)
    state.mark_done("prepare", 0)
    stat = reads.stat()
    reads.write_text(reads.read_text().replace("ATG", "ATC", 1))  # same size, other content
    os.utime(reads, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (reads.stat().st_size, reads.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(StateError, match="different inputs changed"):
        plan_run(request)


@pytest.fixture
def empty_model_caches(tmp_path, monkeypatch):
    """No hub model is cached: an empty torch hub dir and Hugging Face cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))


EMBED_CASES = {  # case: (kind, FASTA text, model (relative to the demo models), what the one error line names)
    "missing model": ("esm2", ">ok\nMKVLA\n", "esm2_t2_nope.pt", "esm2_t2_nope.pt: --model not found"),
    "stop in a protein": ("esm2", ">ok\nMKVLA\n>bad\nMKV*LA\n", "esm2_t2_demo.pt", "'bad' contains '*'"),
    "letter ESM-2 cannot encode": ("esm2", ">ok\nMKVLA\n>bad\nMKVLLJJ\n", "esm2_t2_demo.pt", "p.faa: protein 'bad' contains 'J'"),
    "hub name not cached": ("esm2", ">ok\nMKVLA\n", "esm2_t36_3B_UR50D", "not on this machine"),
    "a folder as ESM-2 model": ("esm2", ">ok\nMKVLA\n", "dnabert-s-demo", "dnabert-s-demo: a folder; ESM-2 needs"),
    "hub id not cached": ("dnabert", ">ok\nACGTACGTAC\n", "zhihan1996/DNABERT-S", "--model DIR/DNABERT-S, or add --allow-download"),
    "another hub name not cached": ("esm2", ">ok\nMKVLA\n", "esm2_t6_8M_UR50D", "--model DIR/esm2_t6_8M_UR50D.pt"),
    "a classifier as ESM-2 model": ("esm2", ">ok\nMKVLA\n", "500_model.pth", "500_model.pth: not an ESM-2 checkpoint file"),
}


@pytest.mark.parametrize("case", list(EMBED_CASES))
def test_embed_errors_are_one_line(tmp_path, demo_models, capsys, case, empty_model_caches, monkeypatch):
    """Item 10: `embed` with a missing, uncached or wrong-kind model or a protein ESM-2 cannot encode
    was an internal error (or advised options `embed` does not have)."""
    kind, text, model, named = EMBED_CASES[case]
    monkeypatch.chdir(demo_models)  # hub names stay names; files are relative to the demo models
    (tmp_path / "p.faa").write_text(text)
    code = main(["embed", kind, str(tmp_path / "p.faa"), "--model", model, "--out", str(tmp_path / "o.h5"), "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and "internal error" not in err, err
    assert named in errors[0] and "--dnabert-model" not in errors[0], errors[0]
    assert not (tmp_path / "o.h5").exists()


def test_embed_into_a_folder_is_refused_before_any_work(tmp_path, demo_models, capsys):
    """Item 10: `embed --out FOLDER` embedded everything, then failed renaming onto the folder (internal error)."""
    (tmp_path / "p.faa").write_text(">ok\nMKVLA\n")
    (tmp_path / "out").mkdir()
    code = main(["embed", "esm2", str(tmp_path / "p.faa"), "--model", str(demo_models / "esm2_t2_demo.pt"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and "--out is a folder" in errors[0], errors
    assert list((tmp_path / "out").iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("argv", [
    ["run", "x.txt", "--device", "cpu", "--precision", "fp16"],
    ["run", "x.txt", "--device", "cpu", "--dnabert-precision", "fp16"],
    ["embed", "esm2", "p.faa", "--model", "m", "--out", "o.h5", "--device", "cpu", "--precision", "fp16"],
    ["run", "x.txt", "--precision", "fp16"],  # --device auto on a machine without CUDA
    ["run", "x.txt", "--precision", "bf16"],
    ["run", "--demo", "-w", "w", "--dnabert-precision", "fp16"],
    ["embed", "esm2", "p.faa", "--model", "m", "--out", "o.h5", "--precision", "fp16"],
    ["run", "x.txt", "--device", "cuda"],
])
def test_fp16_on_cpu_is_refused_before_any_work(tmp_path, capsys, argv, monkeypatch):
    """Item 10: --precision fp16 with --device cpu, or with --device auto where there is no CUDA
    GPU, was accepted silently (and --dnabert-precision fp16 failed in the dnabert stage, after
    run.json had recorded it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and re.search("16 needs a CUDA GPU|--device cuda: no CUDA GPU", errors[0]), errors
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("models", [["--esm-model", "esm2_t99_bogus"], ["--esm-model", "esm2_t36_3B_UR50D"],
                                    ["--dnabert-model", "zhihan1996/DNABERT-S"], ["--esm-model", "500_model.pth"],
                                    ["--dnabert-model", "empty"]],
                         ids=["unknown fair-esm name", "ESM-2 not cached", "DNABERT-S not cached",
                              "a classifier as ESM-2 model", "an empty folder as DNABERT-S model"])
def test_run_checks_model_references_before_any_work(tmp_path, demo_models, capsys, models, empty_model_caches):
    """Item 10: a typo in --esm-model failed at the esm2 stage, after dnabert, with URLError, and the
    run without the typo was then refused (models changed)."""
    if models[1].endswith(".pth"):  # a file that exists but is no ESM-2 checkpoint (fair-esm needs esm2_*.pt)
        models = [models[0], str(demo_models / models[1])]
    if models[1] == "empty":  # a folder that exists but holds no model
        (tmp_path / "empty").mkdir()
        models = [models[0], str(tmp_path / "empty")]
    code = main(["run", str(_inputs(tmp_path)), "-w", str(tmp_path / "w"), "--models", str(demo_models), *models])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {models[1]}: "), errors
    assert ("esm2_t36_3B_UR50D" in errors[0]) if ("bogus" in models[1] or ".pth" in models[1]) \
        else ("models download" in errors[0])
    assert not (tmp_path / "w").exists()


def test_report_clears_the_temp_files_of_a_killed_report(quiet_demo_run, tmp_path):
    """Item 10 (and kill -9 trial 17): a report killed mid-write left report/.index.html.*.tmp forever."""
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    stale = workdir / "report" / ".index.html.3emx64jf.tmp"
    stale.write_bytes(b"partial")
    assert main(["report", "--workdir", str(workdir), "--quiet"]) == 0
    assert not stale.exists() and (workdir / "report" / "index.html").is_file()


def _cut_short(text: str) -> str:
    return text[: len(text) // 2]


def _in_run_json(key: str, value):
    """A damage that sets run.json's `key` (a dotted path: fingerprint.inputs) to `value`, keeping the rest."""
    def damage(text: str) -> str:
        data = json.loads(text)
        *parents, last = key.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[last] = value
        return json.dumps(data)
    return damage


@pytest.mark.parametrize("damage", [
    _cut_short, _in_run_json("fingerprint", 5), _in_run_json("fingerprint.parameters", []),
    _in_run_json("fingerprint.inputs", 3), _in_run_json("fingerprint.inputs", [5]), _in_run_json("fingerprint.models", 5),
    _in_run_json("models", {"esm": "e"}), _in_run_json("chunk_length", "500")],
    ids=["truncated", "fingerprint 5", "parameters a list", "inputs 3", "inputs [5]", "models 5", "a model missing",
         "chunk_length text"])
def test_a_damaged_run_file_is_one_line_naming_it_and_restart_recovers(tmp_path, demo_models, capsys, damage):
    """Item 7: a damaged run.json gave 'internal error: JSONDecodeError/AttributeError/TypeError',
    and a wrong shape inside it (fingerprint 5, ...) still did for run, submit, status and report.
    A run.json cut short cannot be shown to be ours, so --restart refuses it too, deleting nothing."""
    workdir = tmp_path / "w"
    plan_run(RunRequest(inputs_list=_inputs(tmp_path), workdir=workdir, models_dir=demo_models))
    target = workdir / "run.json"
    target.write_text(damage(target.read_text()))
    ours = damage is not _cut_short  # the others keep run.json's keys: a workdir of ours, damaged inside
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    run = ["run", str(_inputs(tmp_path)), "-w", str(workdir), "--models", str(demo_models), "-q"]
    capsys.readouterr()
    for argv, has_restart in ((["status", "-w", str(workdir)], False), (run, True),
                              (["submit", *run[1:], "--partition", "gpu", "--dry-run"], True),
                              (["report", "--workdir", str(workdir), "--quiet"], False)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(target) in err and "restore" in err, err
        assert "internal error" not in err and "Error" not in err and "Traceback" not in err, err
        if ours:  # the advice fits the command: status and report have no --restart
            assert ("add --restart" in err) == has_restart and ("'virnucpro-slurm run'" in err) != has_restart, err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    assert main([*run, "--restart"]) == (0 if ours else 2)
    if not ours:
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not look like a virnucpro workdir" in err, err
        assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", [lambda text: text[: len(text) // 2], lambda text: "[1, 2]"], ids=["truncated", "a list"])
def test_a_damaged_state_file_is_rebuilt_from_the_shard_records(tmp_path, demo_models, capsys, damage):
    """Items 6 and 7: state.json is folded from state.d/, so a damaged one loses nothing."""
    workdir = tmp_path / "w"
    argv = ["run", str(_inputs(tmp_path)), "-w", str(workdir), "--models", str(demo_models), "-q"]
    assert main(argv) == 0
    results = {p: p.read_bytes() for p in (workdir / "results").rglob("*.*")}
    target = workdir / "state.json"
    target.write_text(damage(target.read_text()))
    capsys.readouterr()
    assert main(["status", "-w", str(workdir)]) == 0  # complete: every shard's record says done
    err = capsys.readouterr().err
    assert str(target) in "".join(err.split()) and "rebuilt" in err and "Traceback" not in err
    assert main(argv) == 0  # nothing recomputed, state.json folded again
    assert {p: p.read_bytes() for p in (workdir / "results").rglob("*.*")} == results
    assert all(e["status"] == "done" for shards in json.loads(target.read_text())["stages"].values() for e in shards.values())


@pytest.mark.parametrize("change", [["--shards", "3"], "other inputs"], ids=["other --shards", "other inputs"])
def test_a_dry_run_refuses_what_submit_would_refuse(tmp_path, demo_models, capsys, change):
    """Item 8: `submit --dry-run` on a workdir with work done ignored the new command ("nothing to submit")."""
    workdir = tmp_path / "w"
    _, _, state = plan_run(RunRequest(inputs_list=_inputs(tmp_path), workdir=workdir, models_dir=demo_models))
    state.mark_running("prepare", 0)
    state.mark_done("prepare", 0)
    if change == "other inputs":
        other = tmp_path / "other"
        other.mkdir()
        listing, extra = _inputs(other), []
    else:
        listing, extra = _inputs(tmp_path), change
    capsys.readouterr()
    base = [str(listing), "-w", str(workdir), "--models", str(demo_models), "--partition", "gpu", *extra]
    outcomes = []
    for dry in (["--dry-run"], []):
        code = main(["submit", *base, *dry])
        outcomes.append((code, capsys.readouterr().err.strip()))
    (dry_code, dry_err), (real_code, real_err) = outcomes
    assert dry_code == real_code == 2, outcomes
    assert "holds a run with different" in dry_err and dry_err == real_err


# ---------------------------------------------------------------- item 3 and 4: one writer, dead holders

def _wait_for(predicate, process, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("timed out")


def _cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_workdir(tmp_path, demo_models):
    reads = tmp_path / "reads.fa"
    reads.write_text("".join(f">r{i}\n{CODING}{'ACGT' * (i % 7)}\n" for i in range(400)))
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{reads}\n")
    workdir = tmp_path / "w"
    argv = ["run", listing, "-w", workdir, "--models", demo_models, "--shards", "2", "--device", "cpu"]
    first = subprocess.Popen([sys.executable, "-m", "virnucpro.cli", *map(str, argv)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any('"running"' in p.read_text() for p in workdir.glob("state.d/*/*.json")), first)
        first.send_signal(signal.SIGSTOP)  # holds the workdir, mid-shard, for as long as the test needs
        for second in (argv, ["submit", *argv[1:], "--partition", "gpu", "--dry-run"]):
            refused = _cli(*second)
            assert refused.returncode == 2, refused
            line = refused.stderr.strip()
            assert len(line.splitlines()) == 1 and "in use by 'virnucpro-slurm run'" in line, line
            assert f"pid {first.pid} on {socket.gethostname()}" in line and "Traceback" not in line
        assert f"in use by 'virnucpro-slurm run' (pid {first.pid}" in _cli("status", "-w", workdir).stdout
        first.kill()  # kill -9: the flock goes with it, the holder record and a "running" shard stay
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (workdir / ".writer.json").exists()
    status = _cli("status", "-w", workdir, "--json")
    report = json.loads(status.stdout)
    assert report["holder"] is None and not any(s["running"] for s in report["stages"])
    gone = [f for s in report["stages"] for f in s["failures"]]
    assert gone and all(f"pid {first.pid}" in f["error"] and "is gone" in f["error"] for f in gone)
    watch = _cli("status", "-w", workdir, "--watch", "0.2", timeout=60)  # ends: nothing can progress
    assert watch.returncode == 1
    assert _cli(*argv).returncode == 0  # the dead holder does not lock the workdir
    assert not (workdir / ".writer.json").exists()
    assert json.loads(_cli("status", "-w", workdir, "--json").stdout)["complete"]


@pytest.mark.parametrize("heartbeat_age, refused", [(5, True), (3600, False)], ids=["fresh", "stale"])
def test_a_holder_on_another_node_counts_while_its_heartbeat_is_fresh(tmp_path, demo_models, heartbeat_age, refused):
    """flock may not exclude another node (Lustre localflock): the holder record's heartbeat does."""
    workdir = tmp_path / "w"
    request = RunRequest(inputs_list=_inputs(tmp_path), workdir=workdir, models_dir=demo_models)
    plan_run(request)
    now = time.time()
    (workdir / ".writer.json").write_text(json.dumps({
        "command": "virnucpro-slurm run", "host": "login-node-2", "pid": 4242, "started": now - 7200,
        "heartbeat": now - heartbeat_age}))
    if refused:
        with pytest.raises(StateError, match=r"in use by 'virnucpro-slurm run' \(pid 4242 on login-node-2"):
            plan_run(request)
    else:
        plan_run(request)
        assert not (workdir / ".writer.json").exists()  # taken over, then released


def test_more_shards_than_frames_is_refused_before_any_shard_is_written(tmp_path, demo_models, capsys):
    """Item 5: --shards 3000 on 50 reads was accepted and ran > 13 minutes of empty shards
    (100,000 is refused the same way, after a few seconds of planning 600,000 pairs)."""
    workdir = tmp_path / "w"
    listing = _inputs(tmp_path)  # one read: its stop-free frames are a handful
    argv = ["run", str(listing), "-w", str(workdir), "--models", str(demo_models), "--device", "cpu"]
    assert main([*argv, "--shards", "3000"]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    frames = int(line.split("more than the ")[1].split()[0])
    assert 1 <= frames < 10 and f"use --shards {frames} or fewer" in line, line
    assert not (workdir / "shards").exists() or not any((workdir / "shards").iterdir())
    assert main([*argv, "--shards", str(frames)]) == 0  # the suggested count works: nothing was done to lose


def test_report_on_a_read_only_workdir_is_one_line_naming_the_folder(quiet_demo_run, tmp_path, capsys):
    """Item 10: `report` on a read-only workdir was an internal error. Permission bits do not stop
    root (CI), so root gets a read-only tmpfs where mounting is allowed, else a file where the
    report folder must go (a folder that cannot be created either)."""
    import os
    import shutil
    import subprocess

    workdir = tmp_path / "w"
    mounted = False
    if os.geteuid() == 0:
        workdir.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(workdir)],
                                 capture_output=True).returncode == 0
    shutil.copytree(quiet_demo_run.workdir, workdir, dirs_exist_ok=True)
    shutil.rmtree(workdir / "report")
    blocked = workdir / "report"
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(workdir)], check=True)
        blocked = workdir / "logs"  # the first folder the report writes to
    elif os.geteuid() == 0:
        blocked.write_text("in the way\n")
    else:
        subprocess.run(["chmod", "-R", "a-w", str(workdir)], check=True)
        blocked = workdir / "logs"
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    capsys.readouterr()
    try:
        code = main(["report", "--workdir", str(workdir)])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error")]
        assert code == 2 and len(errors) == 1 and "internal error" not in err and "Traceback" not in err, err
        assert f"{blocked}: cannot write the report there" in errors[0] and "copy it somewhere writable" in errors[0]
        assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    finally:
        if mounted:
            subprocess.run(["umount", str(workdir)], check=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(workdir)], check=True)


def _planted_victim(tmp_path: Path) -> tuple[Path, dict]:
    """Issue 25 item 1: a folder outside the workdir holding hidden temp-named files of its own."""
    victim = tmp_path / "V"
    (victim / "deep").mkdir(parents=True)
    (victim / ".notes.tmp").write_text("x\n")
    (victim / "deep" / ".draft.tmp").write_text("x\n")
    return victim, {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err and "internal error" not in err, err
    return errors[0]


@pytest.mark.parametrize("argv", [["report"], ["run", "--restart"], ["run"]], ids=["report", "run --restart", "run"])
@pytest.mark.parametrize("linked", ["report", "results", "state.d", "logs", "embeddings/esm2"])
def test_a_symlinked_workdir_folder_is_refused_and_nothing_is_written_or_deleted_through_it(
        quiet_demo_run, tmp_path, capsys, argv, linked, demo_models):
    """Issue 25 item 1: `report` walked a symlinked W/report into V, deleted V's hidden .tmp files
    (recursively) and wrote index.html there; --restart kept the link (rmtree's refusal ignored)."""
    import shutil

    workdir = tmp_path / "W"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    victim, before = _planted_victim(tmp_path)
    shutil.rmtree(workdir / linked)
    (workdir / linked).symlink_to(victim, target_is_directory=True)
    if argv[0] == "run":
        from virnucpro.orchestration.config import RunConfig
        from virnucpro.paths import Workdir

        argv = ["run", RunConfig.load(Workdir(workdir)).inputs_list, "--demo", "--models", str(demo_models), *argv[1:]]
    capsys.readouterr()
    assert main([*argv, "--workdir", str(workdir), "--quiet"]) == 2
    line = _one_error(capsys)
    assert f"{workdir / linked}: a symbolic link inside the workdir" in line, line
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before  # nothing deleted, nothing written
    assert (workdir / linked).is_symlink()


def test_removing_temp_files_never_follows_a_link(tmp_path):
    """Issue 25 item 1, the shared mechanism: a shard's owner clearing temp files refuses a linked
    folder (or a file whose folder is a link) before removing anything."""
    from virnucpro.atomic import remove_stale_temp_files

    victim, before = _planted_victim(tmp_path)
    owned = tmp_path / "W" / "embeddings"
    owned.mkdir(parents=True)
    (owned / ".00001.h5.abc.tmp").write_bytes(b"mine")
    (owned / "esm2").symlink_to(victim)
    (tmp_path / "W" / "results").symlink_to(victim)
    for paths in ([owned], [tmp_path / "W" / "results" / "reads.tsv"], [tmp_path / "W" / "results"]):
        with pytest.raises(StateError, match="a symbolic link inside the workdir"):
            remove_stale_temp_files(paths)
    assert {p: p.read_bytes() for p in victim.rglob("*") if p.is_file()} == before
    assert (owned / ".00001.h5.abc.tmp").exists()  # refused before removing anything
    (owned / "esm2").unlink()
    assert remove_stale_temp_files([owned]) == 1
