"""The state file under concurrent writers, and the atomic-write helper."""

import json
import multiprocessing as mp
import os

import pytest

from virnucpro.atomic import atomic_open, atomic_write_text
from virnucpro.orchestration.state import DONE, StateFile


def _worker(args):
    path, lock, worker, rounds, no_lock = args
    if no_lock:  # what flock does across nodes on Lustre -o localflock and some NFS set-ups: nothing
        import contextlib

        from virnucpro.orchestration import state as state_module
        state_module.exclusive_lock = lambda path, **kwargs: contextlib.nullcontext()
    state = StateFile(path, lock)
    for r in range(rounds):
        shard = worker * rounds + r
        state.mark_running("esm2", shard)
        state.mark_done("esm2", shard, {"worker": worker})
        # every intermediate file must parse
        if os.path.exists(path):
            json.loads(open(path).read())
    return worker


@pytest.mark.parametrize("no_lock", [False, pytest.param(True, marks=pytest.mark.xfail(
    strict=True, reason="issue 13 item 6 not done: updates still depend on flock (per-task records not built)"))],
    ids=["flock", "flock-a-no-op"])
def test_32_concurrent_processes_lose_no_update(tmp_path, no_lock):
    path, lock = tmp_path / "state.json", tmp_path / ".state.lock"
    workers, rounds = 32, 4
    ctx = mp.get_context("spawn")  # fork after torch threads started can hang
    with ctx.Pool(32) as pool:
        assert sorted(pool.map(_worker, [(path, lock, w, rounds, no_lock) for w in range(workers)])) == list(range(workers))
    state = StateFile(path, lock).load()["esm2"]
    assert len(state) == workers * rounds
    assert all(entry.status == DONE and entry.attempts == 1 for entry in state.values())
    assert lock.exists()  # the lock file is never unlinked


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "out.tsv"
    atomic_write_text(target, "complete\n")
    with pytest.raises(OSError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "complete\n"
    assert os.listdir(tmp_path) == ["out.tsv"]  # no temp file left behind
