"""The run report (HTML + PNG) and provenance.json: numbers, self-containment, a real browser."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.state import StateFile
from virnucpro.paths import Workdir
from virnucpro.pipeline import PREDICTION_STAGES as STAGES  # a prediction's stages
from virnucpro.orchestration.provenance import update_provenance
from virnucpro.report import INDEX, STAGES_PNG, input_figure_names, write_report
from virnucpro.report.data import BLOCK_ROWS, SCORE_BINS, TOP_READS, gather, load_state

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_ERROR = "<script>alert(1)</script> disk full"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- a synthetic workdir

def make_synthetic_run(root: Path, seed: int = 7) -> tuple[Workdir, RunConfig, dict]:
    """Two inputs (one empty), random reads and scores, and a state with a requeue, a failure and
    a pending stage; returns what the report should find, computed here the direct way."""
    rng = np.random.default_rng(seed)
    workdir = Workdir(root)
    config = RunConfig(inputs_list=str(root / "inputs.txt"), inputs=[str(root / "a.fa"), str(root / "b.fa")],
                       input_names=["a", "b"], chunk_length=500, shards=2,
                       models=ModelSpec(esm="esm2_t36_3B_UR50D", dnabert="zhihan1996/DNABERT-S", classifier="/m/500_model.pth"))
    config.save(workdir)
    lengths = rng.integers(1, 2600, size=57)
    lengths[:3] = [1, 2, 3]  # two reads too short to translate, one of exactly one codon
    chunks = np.maximum(1, -(-lengths // 500))
    frames = np.array([rng.integers(0, 6 * c + 1) if length >= 3 else 0 for c, length in zip(chunks, lengths)])
    read_ids = [f"r{i}" for i in range(len(lengths))]
    prepare_rows = "".join(f"{r}\t{n}\t{c}\t{f}\n" for r, n, c, f in zip(read_ids, lengths, chunks, frames))
    workdir.prepare_dir.mkdir(parents=True)
    workdir.reads_table(0).write_text("read_id\tlength\tchunks\tframes\n" + prepare_rows)
    workdir.reads_table(1).write_text("read_id\tlength\tchunks\tframes\n")
    summary = {"inputs": [
        {"name": "a", "reads": len(lengths), "bases": int(lengths.sum()), "chunks": int(chunks.sum()),
         "frames": int(frames.sum()), "reads_without_frames": int((frames == 0).sum())},
        {"name": "b", "reads": 0, "bases": 0, "chunks": 0, "frames": 0, "reads_without_frames": 0}]}
    workdir.prepare_summary.write_text(json.dumps(summary))

    frame_scores = rng.random(int(frames.sum())).astype(np.float32)
    best, calls = [], []
    lines, k = [], 0
    for read, count in zip(read_ids, frames):
        scores = frame_scores[k:k + count]
        k += count
        for j, s2 in enumerate(scores):
            lines.append(f"{read}_chunk_1F{j}\t{'virus' if s2 > 0.5 else 'others'}\t{str(np.float32(1) - s2)}\t{str(s2)}\n")
        best.append(str(scores.max()) if count else "NA")
        calls.append("no_frames" if count == 0 else ("virus" if scores.max() > 0.7 else "others"))
    results = workdir.result_dir("a")
    results.mkdir(parents=True)
    (results / "prediction_results.txt").write_text("Sequence_ID\tPrediction\tscore1\tscore2\n" + "".join(lines))
    (results / "reads.tsv").write_text(
        "read_id\tlength\tchunks\tframes\tviral_chunks\tmax_virus_score\tcall\n"
        + "".join(f"{r}\t{n}\t{c}\t{f}\t0\t{b}\t{call}\n" for r, n, c, f, b, call in zip(read_ids, lengths, chunks, frames, best, calls)))
    for name in ("prediction_results.txt", "reads.tsv"):  # the empty input gets header-only results
        (workdir.result_dir("b") / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir.result_dir("b") / name).write_text((results / name).read_text().splitlines()[0] + "\n")

    state = StateFile(workdir.state, workdir.state_lock)
    state.initialise({"prepare": 1, "dnabert": 2, "esm2": 2, "predict": 2, "consensus": 1})
    state.mark_running("prepare", 0)
    state.mark_done("prepare", 0, {"frames": int(frames.sum())})
    for shard, (tokens, seconds) in enumerate(((1000, 2.0), (3000, 4.0))):
        for stage in ("dnabert", "esm2"):
            state.mark_running(stage, shard, job_id=f"77_{shard}")
            if stage == "dnabert" and shard == 1:  # preempted once, then resumed
                state.mark_interrupted(stage, shard, {"computed_tokens": 10})
                state.mark_running(stage, shard, job_id="78_1")
            state.mark_done(stage, shard, {"computed_tokens": tokens, "compute_seconds": seconds})
    state.mark_running("predict", 0)
    state.mark_done("predict", 0)
    state.mark_running("predict", 1)
    state.mark_failed("predict", 1, HOSTILE_ERROR)
    expected = {
        "lengths": lengths, "chunks": chunks, "frames": frames, "frame_scores": frame_scores,
        "read_best": np.array([float(b) for b in best if b != "NA"]),
        "calls": {c: calls.count(c) for c in ("virus", "others", "no_frames")},
        "possible": int(6 * chunks[lengths >= 3].sum()),
    }
    return workdir, config, expected


def test_gather_counts_match_a_direct_computation(tmp_path):
    workdir, config, want = make_synthetic_run(tmp_path / "w")
    report = gather(workdir, config, load_state(workdir), block_rows=5)  # many blocks: the streaming path
    a, b = report.inputs
    assert (a.reads, a.chunks, a.frames) == (len(want["lengths"]), want["chunks"].sum(), want["frames"].sum())
    assert a.reads_too_short == 2
    assert a.possible_frames == want["possible"]
    assert a.frames_lost_to_stops == want["possible"] - want["frames"].sum()
    assert a.chunks_per_read.counts.tolist() == np.bincount(want["chunks"]).tolist()
    assert a.frames_per_read.counts.tolist() == np.bincount(want["frames"]).tolist()
    assert a.frame_scores.counts.tolist() == np.histogram(want["frame_scores"], bins=SCORE_BINS)[0].tolist()
    assert a.read_scores.counts.tolist() == np.histogram(want["read_best"], bins=SCORE_BINS)[0].tolist()
    assert a.calls == want["calls"]
    assert a.frame_labels["virus"] == int((want["frame_scores"] > 0.5).sum())
    assert b.has_results and b.reads == 0 and b.frame_scores.total == 0 and b.share("virus") is None
    one_block = gather(workdir, config, load_state(workdir))
    assert one_block.inputs[0].frame_scores.counts.tolist() == a.frame_scores.counts.tolist()

    stages = report.stages
    assert stages["esm2"]["tokens_per_second"] == pytest.approx(4000 / 6.0, abs=0.1)
    assert stages["dnabert"]["requeues"] == 1 and stages["dnabert"]["attempts"] == 3
    assert stages["dnabert"]["job_ids"] == ["77_0", "78_1"]
    assert stages["predict"]["failed"] == 1 and stages["predict"]["failures"][0]["error"] == HOSTILE_ERROR
    assert stages["predict"]["elapsed_seconds"] is None  # not finished: no elapsed time to claim
    assert stages["consensus"]["pending"] == 1 and not report.complete


def test_gather_reads_prepares_summary_once_however_many_inputs(tmp_path, monkeypatch):
    """The summary lists every input: read once per input it made a 10,000-input report quadratic."""
    workdir, config, _ = make_synthetic_run(tmp_path / "w")
    reads = []
    from virnucpro.report import data

    def counting(path, *args, **kwargs):
        if Path(path) == workdir.prepare_summary:
            reads.append(path)
        return real(path, *args, **kwargs)

    real = data.read_json  # every JSON file is read through virnucpro.json_files
    monkeypatch.setattr(data, "read_json", counting)
    report = gather(workdir, config, load_state(workdir))
    assert len(report.inputs) == 2 and report.inputs[0].prepared and len(reads) == 1


def test_report_page_escapes_and_marks_an_unfinished_run(tmp_path):
    workdir, config, _ = make_synthetic_run(tmp_path / "w")
    index = write_report(workdir, config)
    page = index.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; disk full" in page
    assert "Run in progress" in page and "DEMO MODELS" not in page
    for name in ("a", "b"):
        for png in input_figure_names(name):
            assert (workdir.report_dir / png).read_bytes().startswith(PNG_MAGIC)
    provenance = json.loads(workdir.provenance.read_text())
    assert provenance["stages"]["predict"]["failures"][0]["shard"] == 1
    assert provenance["slurm"]["job_ids_by_stage"]["esm2"] == ["77_0", "77_1"]
    assert provenance["updated_by"] == "report"


def test_top_reads_are_the_runs_best_scores_first_whatever_the_blocks(tmp_path):
    workdir, config, _ = make_synthetic_run(tmp_path / "w")
    rows = [line.split("\t") for line in (workdir.result_dir("a") / "reads.tsv").read_text().splitlines()[1:]]
    scored = [(float(r[5]), -row, r[0], int(r[2]), r[6]) for row, r in enumerate(rows) if r[5] != "NA"]
    expected = [("a", read_id, score, chunks, call) for score, _, read_id, chunks, call in sorted(scored, reverse=True)[:TOP_READS]]
    for block_rows in (5, 7, BLOCK_ROWS):
        report = gather(workdir, config, load_state(workdir), block_rows=block_rows)
        assert [(s.name, read_id, score, chunks, call) for s, score, read_id, chunks, call in report.top_reads()] == expected


def test_report_page_has_the_top_reads_every_result_link_and_what_ran(tmp_path):
    workdir, config, _ = make_synthetic_run(tmp_path / "w")
    page = write_report(workdir, config).read_text()
    top = page[page.index('<section id="top-reads">'):]
    top = top[:top.index("</section>")]
    assert top.count("<tr>") == TOP_READS + 1 and "max virus score" in top
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv", "viral.fna"):
        assert f'href="../results/a/{name}"' in page
    assert 'href="../results/index.tsv"' in page and 'href="../results/virnucpro_mqc.tsv"' in page
    run = page[page.index('<section id="run">'):]
    assert "<td class=text>device</td><td class=text>auto <span class=muted>(requested; nothing has run yet)" in run
    state = StateFile(workdir.state, workdir.state_lock)
    for shard in (0, 1):  # what the stages record once they ran: --device auto and --precision auto resolved
        state.mark_done("esm2", shard, {"device": "cuda", "precision": "fp16"})
        state.mark_done("dnabert", shard, {"device": "cuda", "precision": "fp32"})
    run = write_report(workdir, config).read_text()
    run = run[run.index('<section id="run">'):]
    assert "<td class=text>precision</td><td class=text>dnabert fp32; esm2 fp16</td>" in run
    assert "<td class=text>device</td><td class=text>dnabert cuda; esm2 cuda</td>" in run
    assert json.loads(workdir.provenance.read_text())["stages"]["esm2"]["precisions"] == ["fp16"]


@pytest.mark.parametrize("calls", [{"virus": 10, "others": 0, "no_frames": 0}, {"virus": 1, "others": 8, "no_frames": 1}])
def test_read_calls_axis_ends_at_100_percent_with_every_label_inside(calls):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from virnucpro.report.data import InputStats
    from virnucpro.report.figures import read_calls

    figure = Figure(figsize=(5, 3))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    read_calls(ax, InputStats(index=0, name="a", path="a.fa", reads=10, has_results=True, calls=calls))
    assert ax.get_xlim() == (0, 100)
    renderer = figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, text.get_text()


# ---------------------------------------------------------------- the demo run's report

class PageParts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("a", "link") and attrs.get("href"):
            self.links.append(attrs["href"])


def test_demo_run_report_is_self_contained(quiet_demo_run):
    assert quiet_demo_run.returncode == 0, quiet_demo_run.stderr
    report_dir = Workdir(quiet_demo_run.workdir).report_dir
    parts = PageParts()
    parts.feed((report_dir / INDEX).read_text())
    assert "script" not in parts.tags
    files = {p.name: p.read_bytes() for p in report_dir.glob("*.png")}
    assert sorted(files) == sorted([STAGES_PNG, *input_figure_names("sample_a"), *input_figure_names("sample_b")])
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in parts.images if src.startswith("data:image/png;base64,")]
    assert len(embedded) == len(parts.images) == len(files)
    assert sorted(embedded) == sorted(files.values())  # the page embeds exactly the PNGs written beside it
    for href in parts.links:  # only in-page anchors, data: and relative links to the workdir's own files
        assert href.startswith(("#", "data:", "../")), href
        if href.startswith("../"):
            assert (report_dir / href).resolve().is_file(), href


def test_demo_run_report_counts_agree_with_reads_tsv(quiet_demo_run):
    workdir = Workdir(quiet_demo_run.workdir)
    config = RunConfig.load(workdir)
    report = gather(workdir, config, load_state(workdir))
    assert report.complete
    for stats in report.inputs:
        header, *rows = (workdir.result_dir(stats.name) / "reads.tsv").read_text().splitlines()
        calls = [row.split("\t")[header.split("\t").index("call")] for row in rows]
        assert stats.calls == {c: calls.count(c) for c in ("virus", "others", "no_frames")}
        assert stats.reads == len(rows)
        frames_rows = (workdir.result_dir(stats.name) / "prediction_results.txt").read_text().splitlines()[1:]
        assert stats.frame_scores.total == len(frames_rows) == stats.frames


@pytest.mark.parametrize("damage", ["truncated", "cut short"])
def test_report_of_a_damaged_read_table_is_one_line_naming_it(quiet_demo_run, tmp_path, damage):
    workdir = Workdir(shutil.copytree(quiet_demo_run.workdir, tmp_path / "w"))
    table = workdir.reads_table(1)
    lines = table.read_text().splitlines(True)
    table.write_text("".join(lines[:5]) if damage == "truncated" else "".join(lines)[:-8])
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "report", "--workdir", str(workdir.root)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "1000"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if str(table) in line]
    assert "prepare's read table is damaged; delete it and run" in line


def test_demo_run_provenance(quiet_demo_run, demo_models, example_inputs):
    workdir = Workdir(quiet_demo_run.workdir)
    record = json.loads(workdir.provenance.read_text())
    assert record["updated_by"] == "consensus" and {"plan", "consensus"} <= set(record["environments"])
    for package in ("torch", "fair-esm", "transformers", "h5py", "numpy"):
        assert record["versions"][package] == metadata.version(package)
    inputs = [Path(line.strip()) for line in example_inputs.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert [item["sha256"] for item in record["inputs"]] == [sha256(example_inputs.parent / p) for p in inputs]
    assert record["models"]["classifier"]["sha256"] == sha256(demo_models / "500_model.pth")
    assert record["models"]["esm"]["sha256"] == sha256(demo_models / "esm2_t2_demo.pt")
    assert record["parameters"]["chunk_length"] == 500 and record["parameters"]["min_score"] is None
    assert all(record["stages"][stage]["done"] == record["stages"][stage]["shards"] == 1 for stage in STAGES)
    assert record["stages"]["consensus"]["finished"] is not None
    assert record["stages"]["esm2"]["tokens_per_second"] > 0
    assert f"--classifier {demo_models / '500_model.pth'}" in record["reproduce"]


def test_provenance_reads_versions_without_importing_torch():
    code = ("import sys\n"
            "from virnucpro.orchestration.provenance import environment, torch_cuda_build\n"
            "import virnucpro.orchestration.plan, virnucpro.report.data\n"
            "env = environment()\n"
            "assert 'torch' not in sys.modules, 'provenance imported torch'\n"
            "import torch\n"
            "assert env['cuda'] == torch.version.cuda == torch_cuda_build(), (env['cuda'], torch.version.cuda)\n"
            "assert env['versions']['torch'] == torch.__version__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_gpu_task_adds_its_environment_and_gpu_model(tmp_path):
    workdir, config, _ = make_synthetic_run(tmp_path / "w")
    update_provenance(workdir, config, "report")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    code = (f"from virnucpro.orchestration.provenance import record_environment\nfrom virnucpro.paths import Workdir\n"
            f"record_environment(Workdir({str(workdir.root)!r}), 'stage:esm2')\n")
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242_3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads(workdir.provenance.read_text())
    assert record["gpus"] == ["NVIDIA H100 80GB HBM3"]
    assert record["environments"]["stage:esm2"]["slurm_job_id"] == "4242_3"
    assert set(record["environments"]) == {"report", "stage:esm2"}
    assert record["updated_by"] == "stage:esm2" and record["events"][-1]["event"] == "stage:esm2"
    assert record["stages"]["predict"]["failed"] == 1  # the rest of the record is kept
    update_provenance(workdir, config, "consensus")  # a later full update keeps the GPU task's environment
    assert json.loads(workdir.provenance.read_text())["gpus"] == ["NVIDIA H100 80GB HBM3"]


# ---------------------------------------------------------------- a real browser

def chrome_or_skip():
    """Selenium driving Debian's chromium; in CI (env CI set) a missing browser is a failure."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        why = "browser test needs apt packages chromium + chromium-driver and pip package selenium"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.mark.browser
def test_report_renders_in_chromium_without_console_errors(quiet_demo_run, tmp_path):
    from selenium.webdriver.common.by import By

    workdir = Workdir(quiet_demo_run.workdir)
    browser = chrome_or_skip()
    try:
        browser.get((workdir.report_dir / INDEX).as_uri())
        assert browser.title == f"VirNucPro report: {workdir.root.name}"
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert headings == ["Summary", "Top-scoring reads", "sample_a", "sample_b", "Stages", "Run"]
        top = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
               for row in browser.find_elements(By.CSS_SELECTOR, "#top-reads tbody tr")]
        assert top and [float(row[2]) for row in top] == sorted((float(row[2]) for row in top), reverse=True)
        run = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1].text
               for row in browser.find_elements(By.CSS_SELECTOR, "#run tbody tr")[:6]}
        assert run["device"] == "dnabert cpu; esm2 cpu; predict cpu" and run["precision"] == "dnabert fp32; esm2 fp32"
        links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#input-0 a")]
        assert any(href.endswith("/results/sample_a/prediction_results_highestscore.csv") for href in links)
        summary_rows = browser.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
        reads = json.loads(workdir.prepare_summary.read_text())["inputs"][0]["reads"]
        assert summary_rows[0].find_elements(By.TAG_NAME, "td")[1].text == str(reads)
        images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 5 and all(done and width > 0 for done, width in images)
        header = browser.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(31, 58, 77, 1)"  # the inline CSS applied
        problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert problems == []
        screenshot = Path(os.environ.get("VIRNUCPRO_SCREENSHOT_DIR", tmp_path)) / "report.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.read_bytes().startswith(PNG_MAGIC)
    finally:
        browser.quit()
