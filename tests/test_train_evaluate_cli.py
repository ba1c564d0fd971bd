"""Train then evaluate through the real CLI, as a lab would: a labeled set whose classes differ
learnably (GC content) through the demo models, the 150-bp chunk length, the classifier written as
safetensors + json and read back by `evaluate` and `run` without unpickling anything."""

import html
import json
import random
import re
import shutil
import subprocess
import sys

import pytest

from virnucpro.modelstore.demo import is_demo_model

HELD_OUT_ACCURACY = 0.9  # stated in the README: GC-rich 'virus' against AT-rich 'other' reads


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


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


def test_train_writes_a_classifier_of_the_original_recipe_split_by_read(trained):
    root, done = trained
    assert done.returncode == 0, done.stderr
    meta = json.loads((root / "T" / "classifier" / "classifier.json").read_text())
    assert meta["chunk_length"] == 150 and meta["classes"] == ["other", "virus"]
    assert meta["recipe"] == {"hidden": 512, "classes": 2, "init": "xavier_uniform", "loss": "cross_entropy",
                              "optimizer": "sgd", "learning_rate": 0.0002, "momentum": 0.9, "batch_size": 32,
                              "lr_step_epochs": 10, "lr_gamma": 0.85, "max_epochs": 200, "patience": 5}
    assert meta["split"].startswith("by read") and meta["seed"] == 3 and meta["holdout"] == 0.1
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
    folder = root / "E" / "evaluation"
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
