"""Calibrated virus probabilities through the real CLI with the demo models: train on reads whose
classes differ in GC content but overlap, evaluate on new labelled reads (which writes
calibration.json), then run on held-out mixtures of known composition (10% and 50% viral) with
--calibration and --max-fdr 0.1, and compare the estimated virus share and the FDR of the calls
with the truth.

Tolerances (each can fail): the estimated share within SHARE_TOLERANCE of the mixture's true share
and the true share inside its 95% interval; among the reads called at --max-fdr 0.1, the
realised FDR (called others / called) at most 0.1 + FDR_TOLERANCE (binomial noise of a few dozen
calls) and within FDR_TOLERANCE of the FDR the table itself states for them (mean of 1 −
virus_probability)."""

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.calibration_meta import read_calibration
from virnucpro.orchestration.state import StateFile

SHARE_TOLERANCE = 0.05
FDR_TOLERANCE = 0.08
GC = {"virus": 0.6, "other": 0.4}  # per base: reads of 150-300 bp overlap in GC content


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def reads(rng: random.Random, label: str, count: int, prefix: str) -> list[str]:
    out = []
    for i in range(count):
        bases = "".join(rng.choice("GC") if rng.random() < GC[label] else rng.choice("AT")
                        for _ in range(rng.randint(150, 300)))
        out.append(f">{prefix}_{label}_{i}\n{bases}\n")
    return out


def labelled(folder, seed: int, per_class: int):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for label in GC:
        (folder / f"{label}.fa").write_text("".join(reads(rng, label, per_class, folder.name)))
    (folder / "labels.tsv").write_text("virus.fa\tvirus\nother.fa\tother\n")
    return folder / "labels.tsv"


def mixture(path, seed: int, total: int, viral: int) -> None:
    rng = random.Random(seed)
    records = reads(rng, "virus", viral, path.stem) + reads(rng, "other", total - viral, path.stem)
    rng.shuffle(records)
    path.write_text("".join(records))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, demo_models):
    root = tmp_path_factory.mktemp("calibrated")
    models = ("--esm-model", demo_models / "esm2_t2_demo.pt", "--dnabert-model", demo_models / "dnabert-s-demo")
    trained = cli("train", labelled(root / "train", 1, 200), "-w", root / "T", "--models", demo_models,
                  "--chunk-length", 150, "--seed", 3, cwd=root)
    assert trained.returncode == 0, trained.stderr
    classifier = root / "T" / "classifier" / "classifier.safetensors"
    evaluated = cli("evaluate", labelled(root / "test", 2, 1000), "-w", root / "E", "--classifier", classifier, *models,
                    cwd=root)
    assert evaluated.returncode == 0, evaluated.stderr
    mixture(root / "mix10.fa", 3, 1000, 100)
    mixture(root / "mix50.fa", 4, 1000, 500)
    (root / "mixtures.txt").write_text("mix10.fa\nmix50.fa\n")
    calibration = evaluation_folder(root) / "calibration.json"
    run = cli("run", root / "mixtures.txt", "-w", root / "P", "--classifier", classifier, *models,
              "--calibration", calibration, "--max-fdr", 0.1, cwd=root)
    assert run.returncode == 0, run.stderr
    assert "estimated virus share" in evaluated.stdout + evaluated.stderr  # the classifier's own calibration
    return root, classifier, calibration, models, run


def evaluation_folder(root) -> Path:
    """E/evaluation/NAME/: the one classifier evaluated in E (NAME: its file name and SHA-256 prefix)."""
    folders = [p for p in (root / "E" / "evaluation").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def table(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_evaluate_writes_a_read_calibration_of_this_classifier(calibrated):
    root, classifier, calibration, _, _ = calibrated
    document = read_calibration(calibration)
    described = json.loads(classifier.with_suffix(".json").read_text())
    assert document["level"] == "read" and document["classifier_sha256"] == described["weights_sha256"]
    assert document["chunk_length"] == 150 and document["counts"] == {
        "reads": 2000, "virus": 1000, "other": 1000, "frameless": document["counts"]["frameless"]}
    assert document["counts"]["frameless"]["reads"] > 0  # AT-rich reads: more stop codons
    assert document["validation"]["auroc"] < 0.999  # the classes overlap: a calibration has work to do
    assert (evaluation_folder(root) / "calibration-chunk.json").is_file()
    assert "calibration.json" in (evaluation_folder(root) / "index.html").read_text()
    assert (evaluation_folder(root) / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # train stored one of its own, fitted on its held-out reads
    own = read_calibration(classifier.with_suffix(".json"))
    assert own["classifier_sha256"] == described["weights_sha256"] and own["fitted_on"]["reads"] > 0


@pytest.mark.parametrize("name,share", [("mix10", 0.1), ("mix50", 0.5)])
def test_estimated_share_and_the_fdr_of_the_calls_hold_against_the_truth(calibrated, name, share):
    root = calibrated[0]
    summary = {row["Sample"]: row for row in csv.DictReader(
        (line for line in open(root / "P" / "results" / "virnucpro_mqc.tsv") if not line.startswith("#")), delimiter="\t")}
    estimate, low, high = (float(summary[name][k]) for k in ("estimated_virus_share", "virus_share_low", "virus_share_high"))
    assert abs(estimate - share) <= SHARE_TOLERANCE, (estimate, low, high)
    assert low <= share <= high, (estimate, low, high)
    rows = table(root / "P" / "results" / name / "reads.tsv")
    assert len(rows) == 1000
    fdr = [float(r["fdr"]) for r in rows]
    called = [r for r, f in zip(rows, fdr) if r["call"] == "virus"]
    assert {r["read_id"] for r in called} == {r["read_id"] for r, f in zip(rows, fdr) if f <= 0.1}  # exactly fdr <= Q
    assert len(called) >= 0.3 * share * 1000  # the calls reach a useful part of the viral reads
    realised = sum("_other_" in r["read_id"] for r in called) / len(called)
    stated = sum(1 - float(r["virus_probability"]) for r in called) / len(called)
    assert realised <= 0.1 + FDR_TOLERANCE, realised
    assert abs(realised - stated) <= FDR_TOLERANCE, (realised, stated)
    records = (root / "P" / "results" / name / "viral.fna").read_text().count(">")
    assert records == len(called)
    page = (root / "P" / "report" / "index.html").read_text()
    assert f"{summary[name]['estimated_virus_share']} ({summary[name]['virus_share_low']}&ndash;" in page
    assert (root / "P" / "report" / f"{name}.fdr.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_shows_the_calibration_and_its_reliability_diagram(calibrated):
    root, _, calibration, _, _ = calibrated
    page = (root / "P" / "report" / "index.html").read_text()
    assert 'id="calibration"' in page and str(calibration) in page
    assert (root / "P" / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "reads called virus at each --max-fdr" in page


def finished(workdir) -> dict:
    state = StateFile(workdir / "state.json", workdir / ".state.lock").load()
    return {stage: [entry.finished for entry in shards.values()] for stage, shards in state.items()}


def test_options_are_recorded_and_a_given_share_reruns_consensus_only(calibrated):
    root, classifier, calibration, models, run = calibrated
    provenance = json.loads((root / "P" / "provenance.json").read_text())
    assert f"--calibration {calibration}" in provenance["reproduce"] and "--max-fdr 0.1" in provenance["reproduce"]
    before = finished(root / "P")
    again = cli("run", root / "mixtures.txt", "-w", root / "P", "--classifier", classifier, *models,
                "--calibration", calibration, "--max-fdr", 0.1, "--virus-share", 0.3, cwd=root)
    assert again.returncode == 0, again.stderr
    assert "virus share 0.3 (--virus-share)" in again.stderr + again.stdout
    after = finished(root / "P")
    assert all(after[stage] == before[stage] for stage in ("prepare", "dnabert", "esm2", "predict"))
    assert after["consensus"] != before["consensus"]
    assert "\t0.3\tNA\tNA" in (root / "P" / "results" / "virnucpro_mqc.tsv").read_text()


def test_refused_before_any_work(calibrated, demo_models):
    root, classifier, calibration, models, _ = calibrated
    # a calibration of another classifier: the demo's 500_model.pth
    other = cli("run", root / "mixtures.txt", "-w", root / "X", "--models", demo_models, "--chunk-length", 500,
                "--calibration", calibration, cwd=root)
    assert other.returncode != 0 and "calibrated for" in other.stderr and "but this run uses" in other.stderr
    assert "Traceback" not in other.stderr and not (root / "X" / "run.json").exists()
    both = cli("run", root / "mixtures.txt", "-w", root / "X", "--classifier", classifier, *models,
               "--calibration", calibration, "--max-fdr", 0.1, "--min-score", 0.5, cwd=root)
    assert both.returncode != 0 and "not allowed with argument" in both.stderr
    alone = cli("run", root / "mixtures.txt", "-w", root / "X", "--models", demo_models, "--chunk-length", 500,
                "--max-fdr", 0.1, cwd=root)  # a released-format .pth carries no calibration
    assert alone.returncode != 0 and "--max-fdr needs a calibration" in alone.stderr
    assert not (root / "X" / "run.json").exists()
    damaged = root / "damaged.json"
    document = json.loads(calibration.read_text())
    document["fit"]["bands"][0]["values"][0] = 1.5
    damaged.write_text(json.dumps(document))
    bad = cli("run", root / "mixtures.txt", "-w", root / "X", "--classifier", classifier, *models,
              "--calibration", damaged, cwd=root)
    assert bad.returncode != 0 and "damaged.json: field fit.bands[0].values" in bad.stderr
    assert not (root / "X" / "run.json").exists()
