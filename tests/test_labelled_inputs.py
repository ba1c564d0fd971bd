"""Issue 33 item 10: a LABELS file and what it lists, refused in one true line (a FIFO or a device
is not "not found", a folder in the GenBank column is not "not a FASTA file", one content under two
labels is refused), and a training's prepare does not promise header-only results; `status --json`
into a full or closed stdout is one line or a quiet non-zero exit, never an internal error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.errors import InputError
from virnucpro.orchestration.labels import read_labels
from virnucpro.orchestration.plan import RunRequest, plan_run
from virnucpro.pipeline import TRAINING

EXAMPLE = Path(__file__).resolve().parents[1] / "virnucpro" / "data" / "example"


@pytest.fixture
def two_fastas(tmp_path) -> Path:
    for name, source in (("a.fa", "sample_a.fasta"), ("b.fa", "sample_b.fasta")):
        shutil.copy(EXAMPLE / source, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("kind", ["FIFO", "/dev/zero"])
def test_a_labels_file_that_is_a_fifo_or_a_device_is_named_for_what_it_is(tmp_path, kind):
    labels = tmp_path / "labels.tsv"
    if kind == "FIFO":
        os.mkfifo(labels)
    else:
        labels.symlink_to("/dev/zero")
    with pytest.raises(InputError) as caught:
        read_labels(labels)  # opened neither to wait on the FIFO nor to read /dev/zero for ever
    message = str(caught.value)
    expected = "a FIFO" if kind == "FIFO" else "a character device"
    assert message.startswith(f"{labels}: is {expected}, not a text file") and "not found" not in message


def test_a_genbank_column_naming_a_folder_says_it_is_a_folder(two_fastas):
    (two_fastas / "annotations").mkdir()
    labels = two_fastas / "labels.tsv"
    labels.write_text("a.fa\tvirus\tannotations\nb.fa\tother\n")
    with pytest.raises(InputError) as caught:
        read_labels(labels)
    message = str(caught.value)
    assert message.startswith(f"{two_fastas / 'annotations'}: is a directory, not a GenBank file")
    assert "FASTA" not in message


def test_the_same_content_under_both_labels_is_refused_when_planned(two_fastas, demo_models, tmp_path):
    """A copy of a file labelled the other way: every frame would be trained as both classes."""
    shutil.copy(two_fastas / "a.fa", two_fastas / "copy.fa")
    labels = two_fastas / "labels.tsv"
    labels.write_text("a.fa\tvirus\nb.fa\tother\ncopy.fa\tother\n")
    with pytest.raises(InputError) as caught:
        plan_run(RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models, kind=TRAINING))
    message = str(caught.value)
    assert message.startswith(f"{labels}: {two_fastas / 'copy.fa'} (other) has the same content (SHA-256 ")
    assert f"as {two_fastas / 'a.fa'} (virus); a sequence cannot be both 'virus' and 'other'" in message
    assert not (tmp_path / "T" / "run.json").exists()
    labels.write_text("a.fa\tvirus\nb.fa\tother\ncopy.fa\tvirus\n")  # the same label twice: accepted
    plan_run(RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models, kind=TRAINING))


def test_a_training_input_without_frames_is_not_promised_header_only_results(two_fastas, capsys):
    from virnucpro import console
    from virnucpro.stages.prepare import InputTotals

    console.configure(quiet=False)
    for has_results, said in ((False, "it adds no example to the training"), (True, "results will be header-only")):
        totals = InputTotals("a", two_fastas / "a.fa", training=not has_results)
        totals.counts["reads"] = 1  # one read, no stop-free frame
        totals.finish()
        err = capsys.readouterr().err
        assert said in err and ("header-only" in err) == has_results


def test_prepare_of_a_training_says_an_input_adds_no_example(tmp_path, two_fastas, demo_models, capsys):
    from virnucpro import console
    from virnucpro.pipeline import StageContext
    from virnucpro.stages.prepare import prepare

    short = two_fastas / "short.fa"
    short.write_text(">s1\nAC\n")  # shorter than a codon: no frame
    labels = two_fastas / "labels.tsv"
    labels.write_text("a.fa\tvirus\nb.fa\tother\nshort.fa\tother\n")
    workdir, config, _ = plan_run(RunRequest(inputs_list=labels, workdir=tmp_path / "T", models_dir=demo_models,
                                             kind=TRAINING, chunk_length=150))
    console.configure(quiet=False)
    capsys.readouterr()
    prepare(StageContext(workdir, config))
    err = capsys.readouterr().err
    assert f"{short}: no read yields a stop-free frame; it adds no example to the training" in " ".join(err.split())
    assert "header-only" not in err


# ------------------------------------------------------------------ status into a full or closed stdout

@pytest.fixture
def workdir(tmp_path, two_fastas, demo_models) -> Path:
    inputs = two_fastas / "inputs.txt"
    inputs.write_text("a.fa\n")
    plan_run(RunRequest(inputs_list=inputs, workdir=tmp_path / "W", models_dir=demo_models))
    return tmp_path / "W"


STATUS_INTO = """
import os, subprocess, sys
mode, workdir, *extra = sys.argv[1:]
command = [sys.executable, "-m", "virnucpro.cli", "status", "-w", workdir, *extra]
if mode == "full":
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
elif mode == "pipe closed":
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True)
else:  # stdout closed before the command starts
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: os.close(1))
print(done.returncode)
print(done.stderr, end="")
"""


@pytest.mark.parametrize("extra", [["--json"], []], ids=["json", "table"])
@pytest.mark.parametrize("mode", ["full", "pipe closed", "stdout closed"])
def test_status_into_a_full_or_closed_stdout_is_no_internal_error(workdir, mode, extra):
    done = subprocess.run([sys.executable, "-c", STATUS_INTO, mode, str(workdir), *extra], capture_output=True,
                          text=True, timeout=120, check=True)
    returncode, _, stderr = done.stdout.partition("\n")
    assert "internal error" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    if mode == "full":
        assert returncode == "2" and stderr == ("error: standard output: No space left on device while writing; "
                                                "nothing more was written (free space, or send the output elsewhere)\n")
    else:  # the reader went away: a quiet non-zero exit, as `| head` expects
        assert returncode == "1" and stderr == ""
