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


@pytest.mark.parametrize("no_lock", [False, True], ids=["flock", "flock-a-no-op"])
def test_32_concurrent_processes_lose_no_update(tmp_path, no_lock):
    path, lock = tmp_path / "state.json", tmp_path / ".state.lock"
    workers, rounds = 32, 4
    ctx = mp.get_context("spawn")  # fork after torch threads started can hang
    with ctx.Pool(32) as pool:
        assert sorted(pool.map(_worker, [(path, lock, w, rounds, no_lock) for w in range(workers)])) == list(range(workers))
    state = StateFile(path, lock).load()["esm2"]
    assert len(state) == workers * rounds
    assert all(entry.status == DONE and entry.attempts == 1 for entry in state.values())
    assert {entry.metrics["worker"] for entry in state.values()} == set(range(workers))
    StateFile(path, lock).fold()
    assert len(json.loads(path.read_text())["stages"]["esm2"]) == workers * rounds


def _written_bytes(monkeypatch, action) -> int:
    from virnucpro.orchestration import state as state_module

    written = []
    real = state_module.atomic_write_text
    monkeypatch.setattr(state_module, "atomic_write_text", lambda path, text: (written.append(len(text)), real(path, text)))
    action()
    monkeypatch.setattr(state_module, "atomic_write_text", real)
    return sum(written)


@pytest.mark.parametrize("shards", [10, 10_000])
def test_one_update_costs_the_same_at_any_shard_count(tmp_path, monkeypatch, shards):
    state = StateFile(tmp_path / "state.json")
    state.initialise({"prepare": 1, "esm2": shards, "predict": shards})
    cost = _written_bytes(monkeypatch, lambda: (state.mark_running("esm2", shards - 1),
                                                state.mark_done("esm2", shards - 1, {"tokens": 12345})))
    assert cost < 1000  # two small records, never the whole state (10,000 shards: megabytes)
    assert state.load()["esm2"][shards - 1].status == DONE
    assert state.load()["predict"][shards - 1].status == "pending"


def test_the_folded_view_sees_every_record_written_after_it(tmp_path):
    state = StateFile(tmp_path / "state.json")
    state.initialise({"esm2": 3})
    state.mark_running("esm2", 1)
    state.fold()
    assert json.loads((tmp_path / "state.json").read_text())["stages"]["esm2"]["1"]["status"] == "running"
    other = StateFile(tmp_path / "state.json")  # another process, after the fold
    for _ in range(3):  # several rewrites of one record within a timestamp tick: each is seen
        other.mark_done("esm2", 1, {"n": _})
        assert state.load()["esm2"][1].metrics == {"n": _}
    assert state.load()["esm2"][0].status == "pending"


def test_a_damaged_state_json_is_rebuilt_from_the_records(tmp_path, capsys):
    state = StateFile(tmp_path / "state.json")
    state.initialise({"esm2": 2})
    state.mark_running("esm2", 0)
    state.mark_done("esm2", 0)
    state.fold()
    (tmp_path / "state.json").write_text('{"stages": {"esm2": {"0": {"status": "do')  # truncated
    entries = state.load()["esm2"]
    assert entries[0].status == DONE and entries[1].status == "pending"
    assert "rebuilt" in capsys.readouterr().err
    state.fold()
    assert json.loads((tmp_path / "state.json").read_text())["stages"]["esm2"]["0"]["status"] == DONE


def test_a_reset_stage_forgets_its_records(tmp_path):
    state = StateFile(tmp_path / "state.json")
    state.initialise({"esm2": 2, "consensus": 1})
    state.mark_done("esm2", 1)
    state.mark_done("consensus", 0)
    state.reset(["consensus"])
    loaded = state.load()
    assert loaded["esm2"][1].status == DONE and loaded["consensus"][0].status == "pending"


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "out.tsv"
    atomic_write_text(target, "complete\n")
    with pytest.raises(OSError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "complete\n"
    assert os.listdir(tmp_path) == ["out.tsv"]  # no temp file left behind
