"""bench/gpu_session.sh on the CPU with a tiny model (VIRNUCPRO_BENCH_DEVICE=cpu), so the one call a
GPU session gets cannot rot: its steps, its JSON lines and its time budget (issue 23)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("esm")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_session.sh"
STEPS = ["install_wheels", "machine", "quick", "gpu_tests", "esm2_throughput", "dnabert_fp16", "dnabert_fp32"]
pytestmark = pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None,
                                reason="needs bash and coreutils timeout")


def session(out: Path, **env) -> tuple[list[dict], list[dict], float]:
    environment = {**os.environ, "OUT": str(out), "VIRNUCPRO_BENCH_DEVICE": "cpu",
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    started = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    figures_path = out / "figures.jsonl"
    figures = [json.loads(line) for line in figures_path.read_text().splitlines()] if figures_path.exists() else []
    return steps, figures, seconds


def test_every_step_runs_and_each_figure_is_a_json_line(tmp_path):
    steps, figures, _ = session(tmp_path)
    assert [s["step"] for s in steps] == STEPS
    status = {s["step"]: s["status"] for s in steps}
    assert status["quick"] == status["gpu_tests"] == status["esm2_throughput"] == "ok", steps
    # fp16 DNABERT-S needs CUDA: that step fails here, and the script goes on to the next one
    assert status["dnabert_fp16"] == "failed" and status["dnabert_fp32"] == "ok"
    assert "needs a CUDA device" in (tmp_path / "session.log").read_text()
    assert all({"step", "figure", "value", "unit", "time"} <= set(f) for f in figures)
    quick = {(f["figure"], f.get("dtype")): f for f in figures if f["step"] == "quick"}
    assert quick[("bitwise_repeat", None)]["value"] is True
    assert quick[("engine_tokens_per_s", None)]["value"] > 0
    assert quick[("gemm_bound_tokens_per_s", "fp32")]["value"] > 0
    assert quick[("gemm_bound_tokens_per_s", "fp8")]["value"] is None  # skipped on a CPU, saying why
    assert "varlen_signature" in {f for f, _ in quick}
    esm2 = {f["method"]: f for f in figures if f["step"] == "esm2_throughput"}
    assert {"(a) fair-esm fp32", "(c) packed fp32", "(c) packed bf16", "(c) packed bf16 res=compute"} <= set(esm2)
    assert esm2["(c) packed fp32"]["max_rel_err_vs_fair_esm_fp32"] <= 1e-5
    assert 0 < esm2["(c) packed bf16"]["max_rel_err_vs_fair_esm_fp32"] <= 5e-2
    assert {f["way"] for f in figures if f["step"] == "dnabert_fp32"} == {
        "original (one per call)", "remote (batched, masks)", "native (fp32)"}
    # the quick part's figures are written before anything slower starts
    order = [f["step"] for f in figures]
    assert order.index("esm2_throughput") > max(i for i, s in enumerate(order) if s == "quick")


def test_steps_that_do_not_fit_the_budget_are_skipped(tmp_path):
    budget = 30  # below every benchmark step's estimate: only the two small steps run
    steps, figures, seconds = session(tmp_path, VIRNUCPRO_BENCH_BUDGET_S=str(budget))
    assert [s["step"] for s in steps] == STEPS
    for s in steps:
        assert (s["status"] == "skipped") == (s["estimate_s"] > s["left_s"]), s
    assert {s["step"] for s in steps if s["status"] == "skipped"} >= {"quick", "gpu_tests", "esm2_throughput"}
    assert figures == []
    assert seconds < budget + 15
