"""Issue 33 items 1 and 2: every JSON file the tool reads back goes through one bounded reader (a
FIFO, a link to /dev/zero, a sparse file of gigabytes or 5,000 nested brackets are one line naming
the file, at once), and a classifier description's fields are checked as the command line's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.classifier_meta import FORMAT, ClassifierFileError, read_classifier_meta
from virnucpro.json_files import JsonFileError, read_json

CODING = "ATG" + "GCTGAAAAACTG" * 30


def hostile(path: Path, kind: str) -> Path:
    """Put a hostile thing of this kind at `path`."""
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse 20 GB file":
        with open(path, "wb") as handle:
            handle.truncate(20 << 30)
    elif kind == "5000-deep nesting":
        path.write_text("[" * 5000 + "]" * 5000)
    elif kind == "folder":
        path.mkdir()
    elif kind == "not UTF-8":
        path.write_bytes(b'{"a": "\xff"}')
    return path


KINDS = ["FIFO", "link to /dev/zero", "sparse 20 GB file", "5000-deep nesting", "folder", "not UTF-8"]
REASONS = {"FIFO": "is a FIFO, not a regular file", "link to /dev/zero": "is a character device",
           "sparse 20 GB file": "holds 21,474,836,480 bytes, more than", "5000-deep nesting": "nested deeper than 32",
           "folder": "is a folder", "not UTF-8": "not UTF-8 text"}

READ_IN_A_CHILD = """
import sys
from virnucpro.json_files import JsonFileError, read_json
try:
    read_json(sys.argv[1])
except JsonFileError as exc:
    print(exc)
"""


@pytest.mark.parametrize("kind", KINDS)
def test_the_reader_refuses_at_once_in_one_line_naming_the_file(tmp_path, kind):
    path = hostile(tmp_path / "x.json", kind)
    # in a child process with a timeout: a reader that blocks on the FIFO or reads /dev/zero for ever fails here
    done = subprocess.run([sys.executable, "-c", READ_IN_A_CHILD, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.startswith(f"{path}: ") and REASONS[kind] in done.stdout and done.stdout.count("\n") == 1


def test_the_reader_reads_what_the_tool_writes(tmp_path):
    document = {"a": [1, 2.5, {"b": 'q\\"[{'}], "c": None, "deep": [[[[[[[[1]]]]]]]]}
    (tmp_path / "x.json").write_text(json.dumps(document))
    assert read_json(tmp_path / "x.json") == document
    (tmp_path / "link.json").symlink_to(tmp_path / "x.json")  # links are followed (shared model folders)
    assert read_json(tmp_path / "link.json") == document
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    (tmp_path / "big.json").write_text(json.dumps("x" * 2000))
    with pytest.raises(JsonFileError, match="more than the 1,000"):
        read_json(tmp_path / "big.json", max_bytes=1000)


def write_inputs(folder: Path) -> Path:
    (folder / "reads.fa").write_text(f">r1\n{CODING}\n")
    (folder / "inputs.txt").write_text("reads.fa\n")
    return folder / "inputs.txt"


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_classifier_description_is_one_line_and_nothing_hangs(tmp_path, demo_models, kind):
    """The issue's case: a FIFO as classifier.json hung `run` for ever while it held the workdir's lock;
    /dev/zero or a sparse file ended in MemoryError, deep nesting in RecursionError."""
    classifier = tmp_path / "classifier.safetensors"
    classifier.write_bytes(b"weights")
    hostile(tmp_path / "classifier.json", kind)
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "run", str(write_inputs(tmp_path)), "-w",
                           str(tmp_path / "W"), "--models", str(demo_models), "--classifier", str(classifier),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2 and len(errors) == 1 and "internal error" not in done.stderr, done.stderr
    assert f"{tmp_path / 'classifier.json'}: unreadable classifier description ({REASONS[kind]}" in errors[0]


@pytest.mark.parametrize("where", ["run.json", "state record", "jobs.json"])
def test_hostile_run_files_are_one_line_for_status(tmp_path, demo_models, where):
    from virnucpro.orchestration.plan import RunRequest, plan_run

    workdir, _, _ = plan_run(RunRequest(inputs_list=write_inputs(tmp_path), workdir=tmp_path / "W",
                                        models_dir=demo_models))
    path = {"run.json": workdir.config, "state record": workdir.state_records / "prepare" / "0.json",
            "jobs.json": workdir.jobs}[where]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "status", "-w", str(workdir.root)],
                          capture_output=True, text=True, timeout=60)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2 and len(errors) == 1 and "internal error" not in done.stderr, done.stderr
    assert f"{path}: " in errors[0] and "FIFO" in errors[0]


# ------------------------------------------------------------------ item 2: the description's fields

def description(**fields) -> dict:
    return {"format": FORMAT, "input_widths": {"dnabert": 8, "esm2": 12}, "chunk_length": 150, "hidden": 512,
            "classes": ["other", "virus"], "weights_sha256": "ab" * 32, **fields}


BAD_FIELDS = [
    ({"chunk_length": 1}, "chunk_length: 1 is not a chunk length from 30 to 3000"),
    ({"chunk_length": 10 ** 12}, "chunk_length: 1000000000000 is not a chunk length from 30 to 3000"),
    ({"chunk_length": True}, "chunk_length: True is not a chunk length from 30 to 3000"),
    ({"chunk_length": 150.0}, "chunk_length: 150.0 is not a chunk length"),
    ({"chunk_length": "150"}, "chunk_length: '150' is not a chunk length"),
    ({"hidden": True}, "hidden must be a positive integer"),
    ({"input_widths": {"dnabert": True, "esm2": 12}}, "input_widths must give"),
    ({"weights_sha256": "x"}, "weights_sha256 must be the 64 hex digits"),
    ({"models": {"esm2": "esm2_t6"}}, "models must map dnabert and esm2 to objects"),
    ({"models": {"dnabert": {"name": 7}}}, "models must map dnabert and esm2 to objects"),
]


@pytest.mark.parametrize("fields,message", BAD_FIELDS, ids=[str(f) for f, _ in BAD_FIELDS])
def test_every_field_of_a_classifier_description_is_checked_as_the_command_line_is(tmp_path, fields, message):
    weights = tmp_path / "c.safetensors"
    weights.with_suffix(".json").write_text(json.dumps(description(**fields)))
    with pytest.raises(ClassifierFileError) as caught:
        read_classifier_meta(weights)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{weights.with_suffix('.json')}: not a VirNucPro classifier description")


def test_the_command_line_and_the_description_share_one_chunk_length_rule(tmp_path):
    from virnucpro.cli import build_parser

    weights = tmp_path / "c.safetensors"
    for value in (30, 3000):
        weights.with_suffix(".json").write_text(json.dumps(description(chunk_length=value)))
        assert read_classifier_meta(weights)["chunk_length"] == value
        assert build_parser().parse_args(["translate", "x.fa", "--chunk-length", str(value), "--nucleotide-out", "n", "--protein-out", "p"]).chunk_length == value
    for value in (29, 3001):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["translate", "x.fa", "--chunk-length", str(value), "--nucleotide-out", "n", "--protein-out", "p"])
