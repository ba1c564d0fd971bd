"""End to end on demo models: the CLI, the original method as oracle, resume after a crash."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virnucpro.orchestration.state import DONE, RUNNING, StateFile
from virnucpro.paths import Workdir

CLI = [sys.executable, "-m", "virnucpro.cli"]


def run_cli(*args, check=True, **kwargs):
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, demo_models, example_inputs):
    workdir = tmp_path_factory.mktemp("reference") / "w"
    run_cli("run", example_inputs, "--workdir", workdir, "--models", demo_models, "--shards", "3")
    return workdir


def results_of(workdir: Path) -> dict:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted((workdir / "results").rglob("*")) if p.is_file()}


def original_method(inputs: list[Path], models: Path, chunk_length: int = 500) -> list[tuple[str, str, float, float]]:
    """VirNucPro's prediction.py, one step at a time: one-at-a-time DNABERT-S, fair-esm padded
    2048-token batches, concatenation by frame id, MLP softmax, torch.max labels."""
    import torch

    from virnucpro.engines.classifier import load_classifier
    from virnucpro.engines.dnabert import DnabertEmbedder
    from virnucpro.engines.esm2 import ESM2Reference
    from virnucpro.fasta import read_fasta
    from virnucpro.sequences import frames_of_read

    rows = []
    dnabert = DnabertEmbedder(str(models / "dnabert-s-demo"))
    esm = ESM2Reference(str(models / "esm2_t2_demo.pt"), toks_per_batch=2048)
    mlp = load_classifier(models / f"{chunk_length}_model.pth")
    for path in inputs:
        frames = [f for read in read_fasta(path) for f in frames_of_read(read, chunk_length)]
        dna = {f.frame_id: e for f, e in zip(frames, dnabert.embed_one_at_a_time([f.nucleotide for f in frames]))}
        protein = {f.frame_id: e for f, e in zip(frames, esm.embed([f.protein for f in frames]))}
        features = torch.from_numpy(np.stack([np.concatenate([dna[f.frame_id], protein[f.frame_id]]) for f in frames]))
        with torch.no_grad():
            probabilities = torch.softmax(mlp(features), dim=1)
            _, predicted = torch.max(probabilities, 1)
        for frame, label, p in zip(frames, predicted.tolist(), probabilities.numpy()):
            rows.append((frame.frame_id, {1: "virus", 0: "others"}[label], float(p[0]), float(p[1])))
    return rows


def test_demo_run_matches_the_original_method(reference_run, demo_models, example_inputs):
    from virnucpro.fasta import read_inputs_list

    inputs = read_inputs_list(example_inputs)
    expected = original_method(inputs, demo_models)
    produced = []
    for name in ("sample_a", "sample_b"):
        lines = (reference_run / "results" / name / "prediction_results.txt").read_text().splitlines()
        assert lines[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
        produced += [(f[0], f[1], float(f[2]), float(f[3])) for f in (line.split("\t") for line in lines[1:])]
    assert [r[0] for r in produced] == [r[0] for r in expected]  # same frames, same order
    assert [r[1] for r in produced] == [r[1] for r in expected]
    np.testing.assert_allclose([r[2:] for r in produced], [r[2:] for r in expected], atol=2e-6)


def test_status_and_rerun_skips_everything(reference_run, demo_models, example_inputs):
    status = run_cli("status", "--workdir", reference_run, "--json")
    report = json.loads(status.stdout)
    assert report["complete"] and all(s["failed"] == 0 for s in report["stages"])
    before = results_of(reference_run)
    again = run_cli("run", example_inputs, "--workdir", reference_run, "--models", demo_models, "--shards", "3")
    assert "already done" in again.stderr
    assert results_of(reference_run) == before


def test_resume_after_a_crash_redoes_only_unfinished_shards(tmp_path, reference_run, demo_models, example_inputs):
    workdir = tmp_path / "w"
    run_cli("run", example_inputs, "--workdir", workdir, "--models", demo_models, "--shards", "3")
    paths = Workdir(workdir)
    state = StateFile(paths.state, paths.state_lock)
    # Make it look like a run killed inside esm2 shard 1: shard 1 'running' without output,
    # shard 2 never started, nothing downstream done.
    paths.embeddings("esm2", 1).unlink()
    paths.embeddings("esm2", 2).unlink()
    state.update("esm2", 1, status=RUNNING)
    state.update("esm2", 2, status="pending")
    for stage in ("predict", "consensus"):
        for shard in state.load()[stage]:
            state.update(stage, shard, status="pending")
    for p in (workdir / "results").rglob("*.txt"):
        p.unlink()
    # temp files a kill -9 leaves behind (a shard's can hold gigabytes): its next owner clears them
    stale = [paths.embeddings("esm2", 1).parent / ".00001.h5.k2j4.tmp",
             paths.embedding_parts("esm2", 2) / ".rows-000000000-000000004.h5.x9.tmp",
             paths.results / "sample_a" / ".prediction_results.txt.q1.tmp",
             paths.root / ".state.json.a8.tmp", paths.state_records / "esm2" / ".1.json.b3.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    run_cli("run", example_inputs, "--workdir", workdir, "--models", demo_models, "--shards", "3")
    assert [p for p in stale if p.exists()] == []
    assert not list(workdir.rglob("*.tmp"))
    final = state.load()
    assert [final["dnabert"][s].attempts for s in range(3)] == [1, 1, 1]
    assert [final["esm2"][s].attempts for s in range(3)] == [1, 2, 2]
    assert all(e.status == DONE for stage in final.values() for e in stage.values())
    assert results_of(workdir) == results_of(reference_run)


def test_fingerprint_mismatch_is_refused(tmp_path, reference_run, demo_models, example_inputs):
    result = run_cli("run", example_inputs, "--workdir", reference_run, "--models", demo_models, "--shards", "2", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "shards 3 -> 2" in result.stderr and "--restart" in result.stderr


def test_translate_writes_the_original_identified_files(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">r1 x\nATGAAACCCGGGTTTAAACCCGGG\n>r2\nNNNN\n")
    run_cli("translate", fasta, "--chunk-length", "500", "--nucleotide-out", tmp_path / "n.fa", "--protein-out", tmp_path / "p.faa")
    assert (tmp_path / "n.fa").read_text() == (
        ">r1_chunk_1F1\nATGAAACCCGGGTTTAAACCCGGG\n>r1_chunk_1R1\nCCCGGGTTTAAACCCGGGTTTCAT\n>r1_chunk_1R2\nCCGGGTTTAAACCCGGGTTTCA\n")
    assert (tmp_path / "p.faa").read_text() == ">r1_chunk_1F1\nMKPGFKPG\n>r1_chunk_1R1\nPGFKPGFH\n>r1_chunk_1R2\nPGLNPGF\n"


def test_embed_command_writes_hdf5(tmp_path, demo_models):
    from virnucpro.storage import read_matrix

    faa = tmp_path / "p.faa"
    faa.write_text(">a\nMKPGFKPG\n>b\nPGFKPGFHW\n")
    run_cli("embed", "esm2", faa, "--model", demo_models / "esm2_t2_demo.pt", "--out", tmp_path / "e.h5", "--device", "cpu")
    ids, matrix = read_matrix(tmp_path / "e.h5")
    assert ids == ["a", "b"] and matrix.shape == (2, 64) and np.isfinite(matrix).all()
