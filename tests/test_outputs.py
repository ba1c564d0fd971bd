"""What a run hands to the next tool: safe result names, viral.fna, --compress, the index (issue 24/25)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from virnucpro.fasta import read_records
from virnucpro.orchestration.config import RunConfig, input_names, is_safe_result_name
from virnucpro.orchestration.state import StateFile
from virnucpro.paths import Workdir
from virnucpro.pipeline import stage_names

CLI = [sys.executable, "-m", "virnucpro.cli"]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"})


def test_result_names_are_plain_folder_names_whatever_the_file_names():
    files = ["...fa", "..fa", ".fa", ".hidden.fa.gz", "-.fasta", "a\nb\x01c.fa", "x" * 300 + ".fa", "index.tsv",
             "virnucpro_mqc.tsv", "reads.fa", "other/reads.fa"]
    names = input_names([Path("/data") / f for f in files])
    assert names[:4] == ["input", "input-2", "input-3", "hidden"]
    assert names[5] == "a_b_c" and len(names[6]) == 200
    assert names[7:9] == ["index.tsv-2", "virnucpro_mqc.tsv-2"]  # never the run's own files in results/
    assert names[9:] == ["reads", "reads-2"]
    assert len(set(names)) == len(names) and all(map(is_safe_result_name, names))
    for unsafe in ("", ".", "..", ".x", "a/b", "a\nb", "index.tsv", "x" * 300):
        assert not is_safe_result_name(unsafe)


def test_inputs_named_dots_get_their_results_under_results_end_to_end(tmp_path, demo_models, example_inputs):
    """`...fa` and `..fa` used to become `..` and `.`: results at the top of W, over a user's file there."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    sample = example_inputs.parent / next(line.strip() for line in example_inputs.read_text().splitlines()
                                          if line.strip() and not line.startswith("#"))
    for name in ("...fa", "..fa"):
        shutil.copy(sample, folder / name)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{folder / '...fa'}\n{folder / '..fa'}\n")
    workdir = Workdir(tmp_path / "w")
    done = run_cli("run", listing, "--workdir", workdir.root, "--models", demo_models, "--quiet")
    assert done.returncode == 0, done.stderr
    index = [line.split("\t") for line in workdir.results_index.read_text().splitlines()]
    assert index == [["input", "results"], [str(folder / "...fa"), "input"], [str(folder / "..fa"), "input-2"]]
    for name in ("input", "input-2"):
        assert [p.name for p in workdir.result_files(name)] == ["prediction_results.txt",
                                                                "prediction_results_highestscore.csv",
                                                                "reads.tsv", "viral.fna"]
        assert all(p.is_file() for p in workdir.result_files(name))
    assert sorted(p.name for p in workdir.results.iterdir()) == ["index.tsv", "input", "input-2", "virnucpro_mqc.tsv"]
    assert not {"reads.tsv", "prediction_results.txt", "viral.fna"} & {p.name for p in workdir.root.iterdir()}


def test_viral_fasta_holds_exactly_the_reads_called_virus(quiet_demo_run, example_inputs):
    workdir = Workdir(quiet_demo_run.workdir)
    config = RunConfig.load(workdir)
    called = 0
    for name, path in zip(config.input_names, config.inputs):
        header, *rows = [line.split("\t") for line in workdir.result_file(name, "reads.tsv").read_text().splitlines()]
        virus = [row[0] for row in rows if row[header.index("call")] == "virus"]
        viral = workdir.result_file(name, "viral.fna")
        records = list(read_records(viral)) if viral.stat().st_size else []
        assert [read_id for read_id, _ in records] == virus
        assert dict(records).items() <= dict(read_records(path)).items()  # the input's own sequences
        called += len(virus)
    assert called > 0  # the demo's random models call some reads virus


def test_a_run_json_naming_a_result_folder_outside_results_is_refused(quiet_demo_run, tmp_path):
    workdir = Workdir(shutil.copytree(quiet_demo_run.workdir, tmp_path / "w"))
    data = json.loads(workdir.config.read_text())
    data["input_names"][0] = "../escape"
    workdir.config.write_text(json.dumps(data))
    done = run_cli("report", "--workdir", workdir.root)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{workdir.config}: damaged run configuration (input_names: '../escape' is not a plain folder name)" \
        in done.stderr
    assert not (tmp_path / "escape").exists()


def test_compress_redoes_consensus_only_and_status_and_report_follow(quiet_demo_run, demo_models, tmp_path):
    workdir = Workdir(shutil.copytree(quiet_demo_run.workdir, tmp_path / "w"))
    before = StateFile(workdir.state, workdir.state_lock).load()
    done = run_cli("run", "--demo", "--quiet", "--models", demo_models, "--workdir", workdir.root, "--compress")
    assert done.returncode == 0, done.stderr
    after = StateFile(workdir.state, workdir.state_lock).load()
    redone = [stage for stage in stage_names(RunConfig.load(workdir)) if after[stage][0].finished != before[stage][0].finished]
    assert redone == ["consensus"]
    config = RunConfig.load(workdir)
    for name in config.input_names:
        assert sorted(p.name for p in workdir.result_dir(name).iterdir()) == sorted(
            p.name for p in workdir.result_files(name, compress=True))
    status = run_cli("status", "--workdir", workdir.root)
    assert status.returncode == 0 and "missing" not in status.stdout + status.stderr
    page = workdir.report_index.read_text()
    assert 'href="../results/sample_a/reads.tsv.gz"' in page and 'href="../results/sample_a/viral.fna.gz"' in page
    # the report's counts read from the gzipped tables are those of the plain ones
    plain = (Path(quiet_demo_run.workdir) / "report" / "index.html").read_text()
    section = '<section id="summary">'
    assert page[page.index(section):page.index("</section>", page.index(section))] == \
        plain[plain.index(section):plain.index("</section>", plain.index(section))]
