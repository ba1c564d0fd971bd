"""Train then evaluate through the real CLI, as a lab would: a labeled set whose classes differ
learnably (GC content) through the demo models, the 150-bp chunk length, the classifier written as
safetensors + json and read back by `evaluate` and `run` without unpickling anything."""

import hashlib
import html
import json
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from virnucpro.modelstore.demo import is_demo_model

HELD_OUT_ACCURACY = 0.9  # stated in the README: GC-rich 'virus' against AT-rich 'other' reads


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def evaluation_folder(workdir, classifier):
    """W/evaluation/NAME: the classifier's name and the first 12 hex digits of its SHA-256."""
    return workdir / "evaluation" / f"{classifier.stem}-{hashlib.sha256(classifier.read_bytes()).hexdigest()[:12]}"


def labeled_set(folder, seed: int, reads: int):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, gc in (("gc_rich", 0.7), ("at_rich", 0.3)):
        with open(folder / f"{name}.fa", "w") as handle:
            for i in range(reads):
                bases = "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT")
                                for _ in range(rng.randint(150, 320)))
                handle.write(f">{name}_{i}\n{bases}\n")
    labels = folder / "labels.tsv"
    labels.write_text("# FASTA\tlabel\ngc_rich.fa\tvirus\nat_rich.fa\tother\n")
    return labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_models):
    root = tmp_path_factory.mktemp("train")
    labels = labeled_set(root / "train-set", seed=1, reads=60)
    done = cli("train", labels, "-w", root / "T", "--models", demo_models, "--chunk-length", 150, "--seed", 3, cwd=root)
    return root, done


def test_train_writes_a_classifier_of_the_original_recipe_split_by_sequence(trained):
    root, done = trained
    assert done.returncode == 0, done.stderr
    meta = json.loads((root / "T" / "classifier" / "classifier.json").read_text())
    assert meta["chunk_length"] == 150 and meta["classes"] == ["other", "virus"]
    assert meta["recipe"] == {"hidden": 512, "classes": 2, "init": "xavier_uniform", "loss": "cross_entropy",
                              "optimizer": "sgd", "learning_rate": 0.0002, "momentum": 0.9, "batch_size": 32,
                              "lr_step_epochs": 10, "lr_gamma": 0.85, "max_epochs": 200, "patience": 5}
    assert meta["split"].startswith("by sequence content") and meta["holdout_window"] == 0 and meta["seed"] == 3 and meta["holdout"] == 0.1
    assert 1 <= meta["best_epoch"] <= meta["epochs"] <= 200
    assert meta["held_out_metrics"]["accuracy"] >= HELD_OUT_ACCURACY
    assert {i["label"] for i in meta["training_inputs"]} == {"virus", "other"}
    # trained on demo models' embeddings: it is a demo model too, and says so
    assert is_demo_model(root / "T" / "classifier" / "classifier.safetensors")
    assert "MEANINGLESS" in done.stderr + done.stdout


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAINING_FIGURES = {"training.loss.png", "training.frames.png", "stages.png"}


def page_text(index) -> str:
    """The page's text (tags, styles and embedded images left out), white space collapsed."""
    page = re.sub(r"<style>.*?</style>|src=\"data:[^\"]*\"", "", index.read_text(), flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def assert_training_report(workdir):
    """Issue 30 item 7: a training's own report: loss per epoch, held-out metrics, frames per class
    and input, the recipe; only its own figures beside it."""
    meta = json.loads((workdir / "classifier" / "classifier.json").read_text())
    prepared = json.loads((workdir / "prepare" / "summary.json").read_text())["inputs"]
    report = workdir / "report"
    assert {p.name for p in report.iterdir()} == {"index.html", *TRAINING_FIGURES}
    assert all((report / name).read_bytes().startswith(PNG_MAGIC) for name in TRAINING_FIGURES)
    page = (report / "index.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["Summary", "Loss per epoch", "Held-out metrics", "Training data",
                                                   "Recipe", "Stages", "Run"]
    assert page.count('src="data:image/png;base64,') == 3 and "DEMO MODELS" in page and "Training complete." in page
    text = page_text(report / "index.html")
    assert f"epochs trained {meta['epochs']} (stopped by" in text and f"best epoch (its weights kept) {meta['best_epoch']}" in text
    assert f"accuracy {meta['held_out_metrics']['accuracy']:.4f}" in text
    rows = meta["rows"]
    for entry, label in zip(prepared, ("virus", "other")):  # frames per input, and per class on each side
        assert f"{entry['name']} {label} - {entry['reads']} {entry['chunks']} {entry['frames']:,}" in text
        assert f"{label} {entry['frames']:,} {rows[f'training_{label}']:,} {rows[f'held_out_{label}']:,}" in text
    assert "learning_rate 0.0002" in text and "patience 5" in text and f"seed {meta['seed']}" in text
    assert re.search(r"device dnabert \w+; esm2 \w+; train \w+ ", text)  # what the train stage ran on


def test_train_writes_a_training_report_and_report_rewrites_it(trained):
    root, done = trained
    assert done.returncode == 0, done.stderr
    workdir = root / "T"
    assert_training_report(workdir)
    shutil.rmtree(workdir / "report")
    # `report -w T` crashed (KeyError 'predict') and left the prediction report's PNGs without an index.html
    again = cli("report", "-w", workdir, cwd=root)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert_training_report(workdir)


def test_report_of_a_stopped_training_shows_the_epochs_so_far(trained, tmp_path):
    from virnucpro.orchestration.state import StateFile
    from virnucpro.paths import Workdir

    root, done = trained
    assert done.returncode == 0, done.stderr
    workdir = tmp_path / "T"
    shutil.copytree(root / "T", workdir)
    paths = Workdir(workdir)
    StateFile(paths.state, paths.state_lock).mark_interrupted("train", 0, {"epoch": 3, "batch": 0})
    progress = json.loads((workdir / "training" / "checkpoint.json").read_text())
    shown = cli("report", "-w", workdir, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = page_text(workdir / "report" / "index.html")
    assert f"Training in progress or stopped: {len(progress['history'])} epoch(s) finished" in text
    assert "Held-out metrics Known when the training has finished." in text


@pytest.mark.browser
def test_training_report_renders_in_chromium_without_console_errors(trained):
    from selenium.webdriver.common.by import By
    from test_report import chrome_or_skip

    root, done = trained
    assert done.returncode == 0, done.stderr
    browser = chrome_or_skip()
    try:
        browser.get((root / "T" / "report" / "index.html").as_uri())
        assert browser.title == "VirNucPro training report: T"
        images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 3 and all(complete and width > 0 for complete, width in images)
        header = browser.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(31, 58, 77, 1)"  # the prediction report's look
        assert [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []
    finally:
        browser.quit()


def test_evaluate_a_trained_classifier_on_new_labeled_reads(trained, demo_models):
    root, done = trained
    assert done.returncode == 0, done.stderr
    labels = labeled_set(root / "test-set", seed=2, reads=30)
    classifier = root / "T" / "classifier" / "classifier.safetensors"
    evaluated = cli("evaluate", labels, "--classifier", classifier, "-w", root / "E",
                    "--esm-model", demo_models / "esm2_t2_demo.pt", "--dnabert-model", demo_models / "dnabert-s-demo",
                    "--target-fdr", 0.1, cwd=root)
    assert evaluated.returncode == 0, evaluated.stderr
    folder = evaluation_folder(root / "E", classifier)
    result = json.loads((folder / "metrics.json").read_text())
    assert set(result["levels"]) == {"chunk", "read"} and result["target_fdr"] == 0.1
    read = result["levels"]["read"]
    assert read["n"] == 60 and read["positives"] == 30
    assert read["accuracy"] >= HELD_OUT_ACCURACY and read["auroc"] >= HELD_OUT_ACCURACY
    assert {p.name for p in folder.iterdir()} >= {"index.html", "roc.png", "precision-recall.png",
                                                   "thresholds-chunk.tsv", "thresholds-read.tsv"}
    # the chunk length came from the classifier's description, not from a flag
    assert json.loads((root / "E" / "run.json").read_text())["chunk_length"] == 150
    # and a prediction run takes the same classifier with no pickle in sight
    inputs = root / "test-set" / "inputs.txt"
    inputs.write_text("gc_rich.fa\n")
    predicted = cli("run", inputs, "-w", root / "P", "--classifier", classifier,
                    "--esm-model", demo_models / "esm2_t2_demo.pt", "--dnabert-model", demo_models / "dnabert-s-demo",
                    cwd=root)
    assert predicted.returncode == 0, predicted.stderr
    reads = (root / "P" / "results" / "gc_rich" / "reads.tsv").read_text().splitlines()
    assert len(reads) == 31


def demo_model_options(demo_models):
    return ["--esm-model", demo_models / "esm2_t2_demo.pt", "--dnabert-model", demo_models / "dnabert-s-demo"]


def calls_in_reads_tables(workdir, labels):
    """(tp, fp, reads called virus) from reads.tsv of each input of an evaluation (virus: gc_rich)."""
    tp = fp = 0
    for name, virus in (("gc_rich", True), ("at_rich", False)):
        header, *rows = [line.split("\t") for line in (workdir / "results" / name / "reads.tsv").read_text().splitlines()]
        called = sum(row[header.index("call")] == "virus" for row in rows)
        tp, fp = (tp + called, fp) if virus else (tp, fp + called)
    return tp, fp


def test_every_threshold_row_is_what_run_min_score_gives_and_the_evaluation_is_marked_demo(trained, demo_models):
    """The read-level threshold table against `--min-score T` itself (consensus then writes
    reads.tsv with those calls): the row named for the target FDR and a grid row; reads without a
    frame (many AT-rich reads of 150-320 bp) are never called, so the placeholder score 0 is never
    named."""
    root, done = trained
    assert done.returncode == 0, done.stderr
    labels = labeled_set(root / "threshold-set", seed=5, reads=40)
    classifier = root / "T" / "classifier" / "classifier.safetensors"
    workdir = root / "E-thresholds"
    command = ["evaluate", labels, "--classifier", classifier, "-w", workdir, *demo_model_options(demo_models),
               "--target-fdr", 0.2]
    first = cli(*command, cwd=root)
    assert first.returncode == 0, first.stderr
    folder = evaluation_folder(workdir, classifier)
    result = json.loads((folder / "metrics.json").read_text())
    read = result["levels"]["read"]
    assert read["without_score"] > 0  # the case that matters: reads without a stop-free frame
    # chunks without a frame are left out of the chunk level, and counted
    prepared = json.loads((workdir / "prepare" / "summary.json").read_text())["inputs"]
    chunk = result["levels"]["chunk"]
    assert chunk["left_out"] == sum(i["chunks"] for i in prepared) - chunk["n"] > 0
    assert f"{chunk['left_out']:,} chunk(s) without a stop-free frame are left out" in (folder / "index.html").read_text()
    # and the command says what matters: AUROC, F1, the --min-score to use
    said = first.stdout + first.stderr
    assert f"per read: AUROC {read['auroc']:.3f}, F1 {read['f1']:.3f}" in said
    assert f"--min-score {str(np.float32(read['min_score_for_target_fdr']))} for FDR <= 0.2" in said
    header, *rows = [line.split("\t") for line in (folder / "thresholds-read.tsv").read_text().splitlines()]
    table = {row[0]: dict(zip(header, row)) for row in rows}
    chosen = read["min_score_for_target_fdr"]
    assert chosen is not None and chosen > 0
    for min_score in (str(np.float32(chosen)), "0.5"):
        again = cli(*command, "--min-score", min_score, cwd=root)
        assert again.returncode == 0, again.stderr
        tp, fp = calls_in_reads_tables(workdir, labels)
        assert (tp, fp) == (int(table[min_score]["tp"]), int(table[min_score]["fp"])), min_score
        recall = tp / read["positives"]
        assert float(table[min_score]["recall"]) == pytest.approx(recall, abs=1e-6)
    # demo models and a demo-trained classifier: the evaluation says so, in its files and on its pages
    assert result["demo_models"] is True
    assert "MEANINGLESS" in (folder / "index.html").read_text()
    assert "DEMO" in (workdir / "evaluation" / "index.html").read_text()


def test_a_second_classifier_evaluated_in_one_workdir_keeps_the_first(trained, demo_models):
    root, done = trained
    assert done.returncode == 0, done.stderr
    other = cli("train", root / "train-set" / "labels.tsv", "-w", root / "T2", "--models", demo_models,
                "--chunk-length", 150, "--seed", 9, cwd=root)
    assert other.returncode == 0, other.stderr
    labels = labeled_set(root / "compare-set", seed=6, reads=20)
    workdir = root / "E-compare"
    classifiers = [root / "T" / "classifier" / "classifier.safetensors", root / "T2" / "classifier" / "classifier.safetensors"]
    for classifier in classifiers:
        evaluated = cli("evaluate", labels, "--classifier", classifier, "-w", workdir, *demo_model_options(demo_models),
                        cwd=root)
        assert evaluated.returncode == 0, evaluated.stderr
    folders = [evaluation_folder(workdir, c) for c in classifiers]
    assert folders[0] != folders[1] and all((f / "metrics.json").exists() for f in folders)
    first = json.loads((folders[0] / "metrics.json").read_text())
    assert first["context"]["classifier"] == str(classifiers[0])  # not replaced by the second
    page = (workdir / "evaluation" / "index.html").read_text()
    assert all(f'href="{f.name}/index.html"' in page for f in folders)


def test_the_natural_command_with_a_trained_classifier_and_a_models_folder(trained, demo_models):
    """--classifier MINE.safetensors --models DIR --chunk-length 150: DIR gives the embedding
    models and is not searched for a classifier (it holds 300_/500_model.pth, none for 150 bp), for
    run, evaluate and submit --dry-run alike; a real contradiction is still refused."""
    root, done = trained
    assert done.returncode == 0, done.stderr
    classifier = root / "T" / "classifier" / "classifier.safetensors"
    labels = labeled_set(root / "natural-set", seed=8, reads=10)
    inputs = root / "natural-set" / "inputs.txt"
    inputs.write_text("gc_rich.fa\n")
    given = ["--classifier", classifier, "--models", demo_models, "--chunk-length", 150]
    ran = cli("run", inputs, "-w", root / "natural-run", *given, cwd=root)
    assert ran.returncode == 0, ran.stderr
    evaluated = cli("evaluate", labels, "-w", root / "natural-evaluation", *given, cwd=root)
    assert evaluated.returncode == 0, evaluated.stderr
    previewed = cli("submit", inputs, "-w", root / "natural-submit", *given, "--partition", "gpu", "--dry-run", cwd=root)
    assert previewed.returncode == 0, previewed.stderr
    assert "previews only, not for sbatch by hand" in previewed.stderr
    # a released classifier's file name says 300 bp: 150 contradicts it
    contradiction = cli("run", inputs, "-w", root / "natural-refused", "--classifier", demo_models / "300_model.pth",
                        "--models", demo_models, "--chunk-length", 150, cwd=root)
    assert contradiction.returncode != 0 and "--chunk-length 150 contradicts the classifier 300_model.pth" in \
        contradiction.stderr and "Traceback" not in contradiction.stderr
    # a trained classifier's chunk length is part of it: --force-chunk-length does not apply, and the line says so
    forced = cli("run", inputs, "-w", root / "natural-refused", *given[:4], "--chunk-length", 300, "--force-chunk-length",
                 cwd=root)
    assert forced.returncode != 0 and "trained on 150-bp chunks (--force-chunk-length applies to a released " \
        "300_/500_model.pth only" in forced.stderr
    assert not (root / "natural-refused").exists()


STATUS_WHILE_RUNNING = """
import sys
from rich.console import Console
import virnucpro.cli.run as commands
from virnucpro.cli import main
from virnucpro.orchestration.status import render_status, status_report

def stages_as_status_sees_them(ctx, state):  # what `status` shows while the stages run
    Console(width=300).print(render_status(status_report(ctx.workdir, ctx.config)))
    sys.exit(0)

commands.run_locally = stages_as_status_sees_them
main(sys.argv[1:])
"""


def test_status_names_the_training_holder_and_train_help_says_the_recipe_is_fixed(tmp_path, demo_models):
    labels = labeled_set(tmp_path / "set", seed=1, reads=5)
    shown = subprocess.run([sys.executable, "-c", STATUS_WHILE_RUNNING, "train", str(labels), "-w", str(tmp_path / "T"),
                            "--models", str(demo_models)], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "in use by 'virnucpro-slurm train'" in shown.stdout
    root = tmp_path
    helped = cli("train", "--help", cwd=root)
    text = " ".join(helped.stdout.split())
    assert "The recipe is the original VirNucPro train.py's and is fixed" in text and "unbalanced classes" in text
    assert "--holdout-window BASES" in text
    assert "a trained classifier's chunk length is part of it and is never overridden" in \
        " ".join(cli("run", "--help", cwd=root).stdout.split())


def test_few_genomes_are_refused_before_any_gpu_work_and_train_in_windows(tmp_path, demo_models):
    rng = random.Random(9)
    for name, gc in (("phage", 0.65), ("host", 0.35)):
        bases = "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(9000))
        (tmp_path / f"{name}.fa").write_text(f">{name}_genome\n{bases}\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text("phage.fa\tvirus\nhost.fa\tother\n")
    command = ["train", labels, "-w", tmp_path / "T", "--models", demo_models, "--chunk-length", 150]
    refused = cli(*command, cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "side of the split (--holdout 0.1, --seed 42) has no" in refused.stderr and "--holdout-window" in refused.stderr
    assert not (tmp_path / "T" / "embeddings").exists() or not any((tmp_path / "T" / "embeddings").rglob("*.h5"))
    windows = cli(*command, "--holdout-window", 300, cwd=tmp_path)
    assert windows.returncode == 0, windows.stderr
    meta = json.loads((tmp_path / "T" / "classifier" / "classifier.json").read_text())
    assert meta["holdout_window"] == 300 and all(meta["rows"][k] for k in ("held_out_virus", "held_out_other",
                                                                           "training_virus", "training_other"))
