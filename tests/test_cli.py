"""The command line: help with examples, --version, one-line errors, --debug, --quiet, logs, colours,
--min-score."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from virnucpro import __version__
from virnucpro.cli import build_parser, main
from virnucpro.paths import Workdir

CLI = [sys.executable, "-m", "virnucpro.cli"]
COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-7]m")  # an ANSI foreground colour (bold alone is not a colour)


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, **kwargs)


def command_names() -> list[str]:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(subparsers.choices)


def test_the_report_command_is_registered():
    assert {"run", "status", "report"} <= set(command_names())


@pytest.mark.parametrize("command", [None, *command_names()])
def test_help_of_every_command_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"] if command else ["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text.lower() and "virnucpro-slurm " in text.split("example", 1)[1], text


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser of the command line with the words that reach it: (), ("run",), ("embed", "esm2"), ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def test_every_option_and_argument_of_every_command_has_help():
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # its commands, each with a line of help
                missing += [(*path, choice.dest) for choice in action._choices_actions if not (choice.help or "").strip()]
            elif action.help != argparse.SUPPRESS and not (action.help or "").strip():
                missing.append((*path, "/".join(action.option_strings) or action.dest))
    assert not missing, missing


@pytest.mark.parametrize("kind", ["esm2", "dnabert"])
def test_embed_model_help_is_that_models_own(kind, capsys):
    def help_of(*words):
        with pytest.raises(SystemExit) as stop:
            main([*words, "--help"])
        assert stop.value.code == 0
        return capsys.readouterr().out

    general, own = help_of("embed"), help_of("embed", kind)
    assert own != general and "esm2" in general and "dnabert" in general
    assert f"virnucpro-slurm embed {kind} " in own.split("example", 1)[1]
    assert ("--no-packing" in own) == (kind == "esm2") and ("--dnabert-remote-code" in own) == (kind == "dnabert")
    for flag in ("--device", "--precision", "--token-budget", "--out", "--model"):
        assert flag in own


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"virnucpro {__version__}"


def test_a_bad_inputs_list_is_one_line_without_traceback(tmp_path, demo_models):
    missing = tmp_path / "no-such-list.txt"
    done = cli("run", missing, "--workdir", tmp_path / "w", "--models", demo_models)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout


INTERNAL_ERROR = (
    "import sys\n"
    "import virnucpro.orchestration.status as status\n"
    "def broken(*args, **kwargs):\n"
    "    raise RuntimeError('summary exploded')\n"
    "status.summarise = broken\n"  # a bug inside a real command's code path
    "from virnucpro.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_internal_errors_are_one_line_unless_debug(quiet_demo_run):
    workdir = str(quiet_demo_run.workdir)
    plain = subprocess.run([sys.executable, "-c", INTERNAL_ERROR, "status", "--workdir", workdir], capture_output=True, text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        "error: internal error: RuntimeError: summary exploded; re-run with --debug for the traceback"]
    debug = subprocess.run([sys.executable, "-c", INTERNAL_ERROR, "status", "--workdir", workdir, "--debug"],
                           capture_output=True, text=True)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "in broken" in debug.stderr
    assert debug.stderr.strip().endswith("RuntimeError: summary exploded")


def test_quiet_run_prints_nothing_and_logs_to_the_workdir(quiet_demo_run):
    assert quiet_demo_run.returncode == 0, quiet_demo_run.stderr
    assert quiet_demo_run.stdout == "" and quiet_demo_run.stderr == ""
    logs = list(Workdir(quiet_demo_run.workdir).logs.glob("virnucpro-*.log"))
    assert len(logs) == 1 and re.fullmatch(r"virnucpro-\d{8}-\d{6}\.log", logs[0].name)
    text = logs[0].read_text()
    # --quiet silences the console, not the log: stage progress, engine logs and the demo warning are there
    for stage in ("prepare", "dnabert", "esm2", "predict", "consensus"):
        assert f"{stage}: done in" in text
    assert "virnucpro.esm2" in text and "WARNING" in text and "DEMO MODELS" in text


def test_colours_only_on_a_terminal_and_never_with_no_color(tmp_path):
    args = ("status", "--workdir", tmp_path / "not-a-run")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    piped = cli(*args, env=env)
    forced = cli(*args, env={**env, "FORCE_COLOR": "1", "TERM": "xterm-256color"})  # what a terminal gets
    no_color = cli(*args, env={**env, "FORCE_COLOR": "1", "TERM": "xterm-256color", "NO_COLOR": "1"})
    assert piped.returncode == forced.returncode == no_color.returncode == 2
    assert COLOUR.search(forced.stderr), "the terminal case must be coloured, else this test proves nothing"
    assert not COLOUR.search(piped.stderr) and "\x1b[" not in piped.stderr
    assert not COLOUR.search(no_color.stderr)
    assert "not a virnucpro workdir" in no_color.stderr


def test_piped_output_is_neither_wrapped_nor_padded(tmp_path):
    """A log file, a SLURM .out or CI gets each message on one line, as long as it is, with no spaces
    padding it to a terminal's width (a terminal still gets rich's wrapped layout)."""
    words = " ".join(f"word{i}" for i in range(40))  # ~280 characters, no break a pipe should see
    script = ("import logging\n"
              "from virnucpro import console\n"
              "console.configure()\n"
              f"logging.getLogger('virnucpro.test').info('logged {words}')\n"
              f"console.info('shown {words}')\n"
              f"console.warn('warned {words}')\n"
              "console.info('short')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM", "COLUMNS")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for kind in ("logged", "shown", "warned"):
        assert any(line.endswith(f"{kind} {words}") for line in lines), done.stderr
    assert len(lines) == 4 and "short" in lines[3], done.stderr
    assert not [line for line in lines if line != line.rstrip()], "padded: " + repr(done.stderr)


def test_piped_submission_summary_keeps_the_log_line_whole(tmp_path, capsys):
    from types import SimpleNamespace

    from virnucpro.cli.cluster import print_submission

    workdir = Workdir(tmp_path / ("a-long-folder-name-" * 4) / "W")
    job = SimpleNamespace(stage="esm2", tasks=[0, 1], shards=[0, 1, 2], waits_for=[])
    print_submission(workdir, [job], {"stages": {"esm2": {"job_id": "12345"}}})
    out = capsys.readouterr().out
    assert f"logs: {workdir.logs}/<stage>/<job>_<task>.err   follow: virnucpro-slurm status -w {workdir.root} --watch" \
        in out.splitlines(), out


def test_min_score_reruns_consensus_only_and_changes_the_calls(quiet_demo_run, demo_models, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(quiet_demo_run.workdir, workdir)
    reads = workdir / "results" / "sample_a" / "reads.tsv"
    rows = [line.split("\t") for line in reads.read_text().splitlines()[1:]]
    scores = sorted(float(r[5]) for r in rows if r[5] != "NA")
    threshold = scores[len(scores) // 2]  # a median: some reads above, some below
    before = {stage: entry["0"]["finished"] for stage, entry in
              json.loads((workdir / "state.json").read_text())["stages"].items()}
    done = cli("run", "--demo", "--models", demo_models, "--workdir", workdir, "--min-score", threshold, "--quiet")
    assert done.returncode == 0, done.stderr
    after = json.loads((workdir / "state.json").read_text())["stages"]
    assert [s for s in before if after[s]["0"]["finished"] != before[s]] == ["consensus"]
    for read_id, length, chunks, frames, viral, best, call, *_ in (l.split("\t") for l in reads.read_text().splitlines()[1:]):
        expected = "no_frames" if best == "NA" else ("virus" if float(best) >= threshold else "others")
        assert call == expected, read_id
    page = (workdir / "report" / "index.html").read_text()
    assert f"max_virus_score &ge; {threshold:g}" in page
    refused = cli("run", "--demo", "--models", demo_models, "--workdir", workdir, "--min-score", "1.5")
    assert refused.returncode == 2 and "not a score between 0 and 1" in refused.stderr


def test_reproduce_command_keeps_the_engine_choices(quiet_demo_run):
    """provenance.json's `reproduce` line recreates --no-compile and --esm-residual too (the
    residual changes the numbers, so it is in the fingerprint)."""
    import shlex
    from dataclasses import replace

    from virnucpro.cli import build_parser
    from virnucpro.orchestration.config import RunConfig
    from virnucpro.paths import Workdir
    from virnucpro.orchestration.provenance import reproduce_command

    workdir = Workdir(quiet_demo_run.workdir)
    config = RunConfig.load(workdir)
    default = build_parser().parse_args(shlex.split(reproduce_command(config, workdir))[1:])
    assert default.compile is None and default.esm_residual == "fp32"
    chosen = replace(config, compile=False, esm_residual="compute")
    args = build_parser().parse_args(shlex.split(reproduce_command(chosen, workdir))[1:])
    assert args.compile is False and args.esm_residual == "compute"
