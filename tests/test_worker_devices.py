"""Issue 23: a multi-GPU task's workers on distinct GPUs even where the site sets no
CUDA_VISIBLE_DEVICES (orchestration/task.py), the GPU count faked on this CPU machine."""

from __future__ import annotations

import subprocess
import sys

from virnucpro.orchestration import task
from virnucpro.stages import embedding


def test_workers_get_gpu_i_of_the_count_when_the_site_binds_none(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(embedding, "cuda_device_count", lambda: 3)
    count = task.gpus_for_workers("auto")
    assert count == 3
    commands = task.worker_commands(tmp_path, "esm2", [[0, 3], [1], [2]], "auto", "9_0", None, count)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["0", "1", "2"]
    assert task.gpus_for_workers("cpu") == 0  # CPU workers are given no GPU
    assert all("CUDA_VISIBLE_DEVICES" not in env
               for _, env in task.worker_commands(tmp_path, "esm2", [[0], [1]], "cpu", None, None, 0))


def test_the_sites_binding_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setattr(embedding, "cuda_device_count", lambda: 8)
    assert task.gpus_for_workers("cuda") == 0
    commands = task.worker_commands(tmp_path, "esm2", [[0], [1]], "cuda", None, None, task.gpus_for_workers("cuda"))
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["4", "6"]


def test_orchestration_still_imports_no_torch():
    code = ("import sys, virnucpro.orchestration.task, virnucpro.orchestration.runner, virnucpro.pipeline; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_compile_is_on_for_cuda_only_unless_asked_and_the_options_reach_the_run():
    """Issue 23 item 2's switches: run/submit/embed compile by default on CUDA, --no-compile turns it
    off, --compile turns it on for a CPU; --esm-residual compute is a fingerprinted choice."""
    from virnucpro.cli import build_parser
    from virnucpro.stages.esm2 import compile_enabled

    assert compile_enabled(None, "cuda") and compile_enabled(None, "cuda:1") and not compile_enabled(None, "cpu")
    assert compile_enabled(True, "cpu") and not compile_enabled(False, "cuda")
    parser = build_parser()
    for command in (["run", "in.txt"], ["submit", "in.txt"], ["embed", "esm2", "x.faa", "--model", "m", "--out", "o.h5"]):
        assert parser.parse_args(command).compile is None
        assert parser.parse_args([*command, "--no-compile"]).compile is False
        assert parser.parse_args([*command, "--compile"]).compile is True
        assert parser.parse_args([*command, "--esm-residual", "compute"]).esm_residual == "compute"
