"""Issue 23: checkpoint windows bounded by measured time as well as tokens (stages/embedding.py).

The engine here is a stand-in whose "work" advances a fake clock (1 s per sequence, like a slow
fp32 --no-packing forward) and whose rows are a function of the sequence alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import types

import h5py
import numpy as np
import pytest

from virnucpro.orchestration.config import RunConfig
from virnucpro.paths import Workdir
from virnucpro.pipeline import ShardInterrupted, StageContext
from virnucpro.stages import embedding
from virnucpro.stages.embedding import checkpointing, embed_shard
from virnucpro.storage import read_shard_frames

DIM = 8
SECONDS_PER_SEQUENCE = 1.0


class SlowEngine:
    """Records each call's sequences; each sequence costs SECONDS_PER_SEQUENCE of the fake clock."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = []

    def embed(self, sequences, out):
        self.calls.append(list(sequences))
        for i, s in enumerate(sequences):
            digest = hashlib.sha256(s.encode()).digest()
            out[i] = np.frombuffer(digest, dtype=np.uint8)[:DIM].astype(np.float32)
        self.clock.now += SECONDS_PER_SEQUENCE * len(sequences)
        return out


@pytest.fixture
def workdir(quiet_demo_run, tmp_path, monkeypatch):
    assert quiet_demo_run.returncode == 0, quiet_demo_run.stderr
    shutil.copytree(quiet_demo_run.workdir, tmp_path / "w")
    clock = types.SimpleNamespace(now=0.0)
    clock.perf_counter = lambda: clock.now
    monkeypatch.setattr(embedding, "time", clock)  # embed_shard's timing only
    return Workdir(tmp_path / "w"), clock


def _run(wd, engine, stop=lambda: False, **window):
    """embed_shard from scratch; returns the engine (its calls are the blocks)."""
    ctx = StageContext(workdir=wd, config=RunConfig.load(wd), stop_requested=stop)
    wd.embeddings("esm2", 0).unlink(missing_ok=True)
    shutil.rmtree(wd.embedding_parts("esm2", 0), ignore_errors=True)
    try:
        embed_shard(ctx, "esm2", 0, lambda f: f.proteins, engine.embed, DIM, **window)
    except ShardInterrupted:
        pass
    return engine


def _windows(wd):
    progress = wd.embedding_parts("esm2", 0) / "progress.json"
    return json.loads(progress.read_text())["windows"] if progress.exists() else None


def test_windows_end_by_the_measured_time_and_the_token_cap(workdir):
    wd, clock = workdir
    proteins = read_shard_frames(wd.shard_frames(0)).proteins
    assert len(proteins) >= 20
    costs = np.array([len(p) + 2 for p in proteins])
    block = int(np.median(costs) * 2)  # about two sequences a block: ~2 s of "work"
    # stop before the last window so that progress.json (the record of each window) stays
    blocks_seen = []

    def stop():
        return len(blocks_seen) and sum(map(len, blocks_seen)) >= len(proteins) - 5

    engine = SlowEngine(clock)
    original = engine.embed

    def embed(sequences, out):
        blocks_seen.append(sequences)
        return original(sequences, out)

    ctx = StageContext(workdir=wd, config=RunConfig.load(wd), stop_requested=stop)
    wd.embeddings("esm2", 0).unlink(missing_ok=True)
    with pytest.raises(ShardInterrupted):
        embed_shard(ctx, "esm2", 0, lambda f: f.proteins, embed, DIM, window_tokens=10 ** 9, block_tokens=block,
                    window_seconds=5.0)
    windows = _windows(wd)
    assert len(windows) >= 3
    # Each window takes blocks while its measured work plus the last block's time (the estimate of the
    # next one) stays within 5 s, and ends once it would not (1 s a sequence). Blocks of unequal
    # sequence counts (frames of 150-bp reads and of 500-bp chunks) may take a window past 5 s by the
    # difference of two blocks, so the rule is checked block by block.
    seconds = [len(b) * SECONDS_PER_SEQUENCE for b in blocks_seen]
    for number, window in enumerate(windows):
        taken = []
        while sum(map(len, taken)) < window["rows"]:
            taken.append(blocks_seen.pop(0))
        assert sum(map(len, taken)) == window["rows"], (number, windows)
        spent = [len(b) * SECONDS_PER_SEQUENCE for b in taken]
        assert all(sum(spent[:k + 1]) + spent[k] <= 5 for k in range(len(spent) - 1)), (number, spent)
        if number < len(windows) - 1:  # the last window was cut by the stop
            assert sum(spent) + spent[-1] > 5, (number, spent)
    assert max(seconds) < 5  # a block fits in a window: the windows above hold several blocks
    # without a time bound the same blocks are one window each (explicit --checkpoint-tokens) ...
    single = SlowEngine(clock)
    _run(wd, single, stop=lambda: len(single.calls) >= 4, window_tokens=block)
    assert [w["rows"] for w in _windows(wd)] == [len(c) for c in single.calls]
    # ... and the token cap ends a window too
    capped = SlowEngine(clock)
    _run(wd, capped, stop=lambda: sum(map(len, capped.calls)) >= len(proteins) - 5, window_tokens=3 * block,
         block_tokens=block, window_seconds=1e9)
    spans = [sum(costs[w["start"]:w["start"] + w["rows"]]) for w in _windows(wd)]
    assert max(spans) <= 3 * block and len(capped.calls) > len(_windows(wd))


def test_stop_mid_window_keeps_its_blocks_and_resumes_bitwise(workdir):
    wd, clock = workdir
    proteins = read_shard_frames(wd.shard_frames(0)).proteins
    window = dict(window_tokens=10 ** 9, block_tokens=int(np.median([len(p) + 2 for p in proteins]) * 3),
                  window_seconds=30.0)
    whole = _run(wd, SlowEngine(clock), **window)
    with h5py.File(wd.embeddings("esm2", 0)) as h5:
        want = h5["embeddings"][:].tobytes()
    calls = []

    def stop_after_four_blocks():
        return len(calls) >= 4

    first = SlowEngine(clock)
    original = first.embed
    first.embed = lambda s, out: (calls.append(s), original(s, out))[1]
    ctx = StageContext(workdir=wd, config=RunConfig.load(wd), stop_requested=stop_after_four_blocks)
    wd.embeddings("esm2", 0).unlink()
    with pytest.raises(ShardInterrupted):
        embed_shard(ctx, "esm2", 0, lambda f: f.proteins, first.embed, DIM, **window)
    windows = _windows(wd)
    assert sum(w["rows"] for w in windows) == sum(map(len, calls))  # the stopped window's blocks were kept
    resumed = SlowEngine(clock)
    ctx = StageContext(workdir=wd, config=RunConfig.load(wd))
    embed_shard(ctx, "esm2", 0, lambda f: f.proteins, resumed.embed, DIM, **window)
    assert calls + resumed.calls == whole.calls  # the same blocks, interrupted or not
    with h5py.File(wd.embeddings("esm2", 0)) as h5:
        assert h5["embeddings"][:].tobytes() == want


def test_default_checkpointing_is_time_bounded_unless_tokens_are_given():
    assert checkpointing(5000, 400_000, 65_536) == {"window_tokens": 5000}
    default = checkpointing(None, 400_000, 65_536)
    assert default == {"window_tokens": 400_000, "block_tokens": 65_536, "window_seconds": embedding.WINDOW_SECONDS}
    assert embedding.WINDOW_SECONDS <= 10
