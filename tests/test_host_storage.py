"""Storage written once and referred to: stale or shifted files refused naming their producer,
the float16 path, and a checkpoint file that resumes bitwise-identically after a kill."""

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucpro.errors import StaleInputError
from virnucpro.orchestration.config import RunConfig
from virnucpro.orchestration.runner import StageContext
from virnucpro.paths import Workdir
from virnucpro.stages import consensus, predict
from virnucpro.stages.embedding import embed_shard, windows
from virnucpro.storage import ShardCheckpoint, ShardIds, ids_digest, read_matrix, read_shard_frames

CLI = [sys.executable, "-m", "virnucpro.cli"]


def run(inputs, workdir, models, *extra):
    done = subprocess.run([*CLI, "run", str(inputs), "--workdir", str(workdir), "--models", str(models), "--shards", "3",
                           "--device", "cpu", *extra], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Workdir(workdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_models, example_inputs) -> Workdir:
    return run(example_inputs, tmp_path_factory.mktemp("run") / "w", demo_models)


@pytest.fixture
def copy(finished, tmp_path) -> Workdir:
    shutil.copytree(finished.root, tmp_path / "w")
    return Workdir(tmp_path / "w")


def context(workdir: Workdir) -> StageContext:
    return StageContext(workdir=workdir, config=RunConfig.load(workdir))


def test_frame_ids_are_stored_once(finished):
    for path in [*finished.root.glob("embeddings/*/*.h5"), *finished.root.glob("predictions/*.h5")]:
        with h5py.File(path) as h5:
            assert "ids" not in h5 and {"frames", "ids_sha256"} <= set(h5.attrs)


def test_predict_refuses_shifted_and_missing_embeddings_naming_their_producer(copy):
    process = predict.open_stage(context(copy))
    process(0)  # the intact shard passes
    shutil.copy(copy.embeddings("esm2", 1), copy.embeddings("esm2", 0))  # another shard's rows
    with pytest.raises(StaleInputError, match="does not match the shard's frames") as caught:
        process(0)
    assert (caught.value.stage, caught.value.shard) == ("esm2", 0)
    copy.embeddings("dnabert", 2).unlink()
    with pytest.raises(StaleInputError, match="missing") as caught:
        process(2)
    assert (caught.value.stage, caught.value.shard) == ("dnabert", 2)
    copy.embeddings("dnabert", 1).write_bytes(b"not hdf5")
    with pytest.raises(StaleInputError) as caught:
        process(1)
    assert (caught.value.stage, caught.value.shard) == ("dnabert", 1)


def test_same_count_other_ids_is_refused(copy):
    """A file whose row count fits but whose ids differ (a re-made frame table) is refused too."""
    ids = read_shard_frames(copy.shard_frames(0)).frame_ids
    renamed = ShardIds(ids[:-1] + [ids[-1] + "x"])
    read_matrix(copy.embeddings("esm2", 0), ids, producer=("esm2", 0))
    with pytest.raises(StaleInputError, match="other frames' ids"):
        read_matrix(copy.embeddings("esm2", 0), renamed, producer=("esm2", 0))


def test_damaged_frame_table_names_prepare(copy):
    table = copy.shard_frames(1)
    table.write_bytes(table.read_bytes()[:-3])
    with pytest.raises(StaleInputError) as caught:
        predict.open_stage(context(copy))(1)
    assert (caught.value.stage, caught.value.shard) == ("prepare", 0)


def test_consensus_refuses_shifted_predictions_naming_predict(copy):
    shutil.copy(copy.predictions(2), copy.predictions(1))
    with pytest.raises(StaleInputError) as caught:
        consensus.consensus(context(copy))
    assert (caught.value.stage, caught.value.shard) == ("predict", 1)


def test_float16_stage_stores_the_float32_rows_rounded(copy):
    """The stage's float16 path on known float32 rows (the finished run's), in several windows:
    the stored bytes are numpy's round-to-nearest-even of those rows, whatever the window order."""
    ctx = context(copy)
    ctx.config.embedding_dtype = "float16"
    for kind in ("dnabert", "esm2"):
        for shard in range(3):
            _, rows = read_matrix(copy.embeddings(kind, shard))
            copy.embeddings(kind, shard).unlink()
            given = []

            def embed(sequences, out):
                start = sum(len(g) for g in given)
                given.append(sequences)
                out[:] = rows[start:start + len(sequences)]
                return out

            metrics = embed_shard(ctx, kind, shard, lambda f: f.proteins if kind == "esm2" else f.nucleotides, embed,
                                  rows.shape[1], window_tokens=200)
            assert len(given) > 1 and metrics["frames"] == len(rows)
            with h5py.File(copy.embeddings(kind, shard)) as h5:
                assert h5["embeddings"].dtype == np.float16
                assert h5["embeddings"][:].tobytes() == rows.astype(np.float16).tobytes()


def test_float16_run_scores_like_float32(finished, tmp_path, demo_models, example_inputs):
    half = run(example_inputs, tmp_path / "w16", demo_models, "--embedding-dtype", "float16")
    for kind in ("dnabert", "esm2"):
        for shard in range(3):
            with h5py.File(half.embeddings(kind, shard)) as h5, h5py.File(finished.embeddings(kind, shard)) as full:
                assert h5["embeddings"].dtype == np.float16 and h5["embeddings"].shape == full["embeddings"].shape
                # float16 keeps 11 significant bits (the exact rounding is the test above)
                np.testing.assert_allclose(h5["embeddings"][:], full["embeddings"][:], rtol=2 ** -10, atol=1e-6)
    for name in ("sample_a", "sample_b"):
        lines = [(half.result_dir(name) / "prediction_results.txt").read_text().splitlines()[1:],
                 (finished.result_dir(name) / "prediction_results.txt").read_text().splitlines()[1:]]
        (ids16, labels16, _, s16), (ids32, labels32, _, s32) = (zip(*(line.split("\t") for line in ls)) for ls in lines)
        assert ids16 == ids32
        delta = np.abs(np.array(s16, float) - np.array(s32, float))
        assert delta.max() < 5e-3, delta.max()  # measured on this demo run: see README, performance
        flips = sum(a != b for a, b in zip(labels16, labels32))
        assert flips <= max(1, len(ids32) // 100)


def test_checkpoint_after_a_kill_resumes_bitwise_identically(tmp_path):
    ids = ShardIds(f"r{i}_chunk_1F{i % 3 + 1}" for i in range(2000))
    rows = np.random.default_rng(5).random((len(ids), 24), dtype=np.float32)
    cuts = windows([7] * len(ids), 0, 7 * 150)

    def embed(folder: Path, final: Path, stop_after: int | None = None) -> None:
        checkpoint = ShardCheckpoint(folder, final, ids, 24, attrs={"model": "m"})
        start = checkpoint.resume()
        for done, (a, b) in enumerate((w for w in cuts if w[0] >= start), 1):
            checkpoint.append(a, rows[a:b])
            if done == stop_after:
                return  # "killed": no finish, file descriptor left open as a dying process leaves it
        checkpoint.finish()

    embed(tmp_path / "clean.partial", tmp_path / "clean.h5")
    folder, final = tmp_path / "k.partial", tmp_path / "k.h5"
    embed(folder, final, stop_after=4)
    assert not final.exists()  # no file at the final path before it is complete
    # what a kill between a window's write and its record leaves: rows on disk nobody recorded
    record = ShardCheckpoint(folder, final, ids, 24, attrs={"model": "m"})
    record_json, valid = record.verify()
    offset, row_bytes = record_json["offset"], 24 * 4
    with open(folder / "embeddings.h5", "r+b") as handle:
        handle.seek(offset + 4 * 150 * row_bytes)
        handle.write(b"\xff" * (150 * row_bytes))
    # and a recorded window whose bytes were damaged afterwards: it and everything after are redone
    with open(folder / "embeddings.h5", "r+b") as handle:
        handle.seek(offset + 3 * 150 * row_bytes + 5)
        handle.write(b"\x00\x01")
    assert ShardCheckpoint(folder, final, ids, 24, attrs={"model": "m"}).resume() == 3 * 150
    embed(folder, final, stop_after=2)
    embed(folder, final)
    assert final.read_bytes() == (tmp_path / "clean.h5").read_bytes()
    assert not folder.exists()
    _, matrix = read_matrix(final, ids, dim=24, producer=("esm2", 0))
    assert matrix.tobytes() == rows.tobytes()
    # another shard's record (different ids) is never resumed
    embed(folder, final, stop_after=1)
    assert ShardCheckpoint(folder, final, ShardIds(ids[1:]), 24, attrs={"model": "m"}).resume() == 0


def test_a_partial_shard_of_the_crc32_format_is_recomputed_not_trusted(tmp_path):
    """Format 3 checksums windows with XXH3-64 (7x as fast as CRC-32 here); a partial shard left by
    a format-2 run (CRC-32 fields) is started again from row 0, and ends byte-identical."""
    ids = ShardIds(f"r{i}_chunk_1F1" for i in range(600))
    rows = np.random.default_rng(9).random((len(ids), 24), dtype=np.float32)
    folder, final = tmp_path / "s.partial", tmp_path / "s.h5"
    checkpoint = ShardCheckpoint(folder, final, ids, 24)
    checkpoint.resume()
    checkpoint.append(0, rows[:300])
    checkpoint.close()
    progress = folder / "progress.json"
    record = json.loads(progress.read_text())
    assert record["format"] == 3 and set(record["windows"][0]) == {"start", "rows", "xxh3_64"}
    old = {key: value for key, value in record.items() if key != "skeleton_xxh3_64"}
    old.update(format=2, skeleton_crc32=0, windows=[{"start": 0, "rows": 300, "crc32": zlib.crc32(rows[:300].tobytes())}])
    progress.write_text(json.dumps(old))
    again = ShardCheckpoint(folder, final, ids, 24)
    assert again.resume() == 0
    again.append(0, rows[:300])
    again.append(300, rows[300:])
    again.finish()
    assert read_matrix(final, ids, dim=24)[1].tobytes() == rows.tobytes()



def test_the_next_shard_table_is_read_ahead_and_read_again_once_replaced(copy):
    """read_ahead: the next table comes from the helper thread while unchanged; a table renamed
    over it meanwhile (prepare rewriting it), or a damaged one, gives what reading it now gives."""
    import threading

    from virnucpro.atomic import atomic_write_text
    from virnucpro.storage import read_ahead

    threads = []

    def load(path):
        threads.append(threading.current_thread().name)
        return read_shard_frames(path)

    first, second, third = (copy.shard_frames(s) for s in range(3))
    got = read_ahead(load, first, then=(second,))
    read_ahead.future.result()
    assert got.frame_ids == read_shard_frames(first).frame_ids
    assert threads[0] == "MainThread" and threads[1].startswith("table-read-ahead")
    got = read_ahead(load, second, then=(third,))
    read_ahead.future.result()
    assert got.frame_ids == read_shard_frames(second).frame_ids
    assert len(threads) == 3 and threads[2].startswith("table-read-ahead")  # second taken, third read ahead
    header, *lines = third.read_text().splitlines(keepends=True)
    atomic_write_text(third, header + "".join(lines[:1]))  # replaced after it was read ahead
    assert read_ahead(load, third).frame_ids == read_shard_frames(third).frame_ids
    assert len(read_shard_frames(third)) == 1 and threads[-1] == "MainThread"

    read_ahead(load, first, then=(second,))
    second.write_text("not a frame table\n")  # damaged in place, same inode: size differs
    with pytest.raises(StaleInputError, match="not a frame table"):
        read_ahead(load, second)


def test_each_shard_a_stage_runs_reads_the_next_ones_table_ahead(copy, monkeypatch):
    """The runner tells the stage which shard comes next; predict reads that shard's table ahead
    (the last one reads none), and its predictions are the same bytes."""
    from virnucpro.orchestration.runner import run_stage_shards
    from virnucpro.orchestration.state import StateFile

    before = [copy.predictions(s).read_bytes() for s in range(3)]
    asked = []
    real = predict.read_ahead

    def recording(load, path, *args, then=None):
        asked.append((path.name, then and then[0].name))
        return real(load, path, *args, then=then)

    monkeypatch.setattr(predict, "read_ahead", recording)
    outcome = run_stage_shards(context(copy), StateFile(copy.state), "predict", [0, 1, 2])
    assert not outcome.failed and not outcome.stale
    names = [copy.shard_frames(s).name for s in range(3)]
    assert asked == [(names[0], names[1]), (names[1], names[2]), (names[2], None)]
    assert [copy.predictions(s).read_bytes() for s in range(3)] == before


def test_frame_table_columns_and_the_damage_they_refuse(copy):
    """Each column is the plain split of every line; a line with a field moved to the next one
    (the tab count still right in total), a non-digit input index and invalid UTF-8 are refused."""
    path = copy.shard_frames(0)
    header, *lines = path.read_text().splitlines(keepends=True)
    frames = read_shard_frames(path)
    fields = [line[:-1].split("\t") for line in lines]
    assert len(frames) == len(lines) > 2
    for number, name in enumerate(["input_index", "read_ids", "chunk_ids", "frame_ids", "nucleotides", "proteins"]):
        got = getattr(frames, name)
        want = [f[number] for f in fields]
        assert (got.tolist() if name == "input_index" else got) == (list(map(int, want)) if number == 0 else want)
    assert frames.frame_ids.digest == ids_digest([f[3] for f in fields])

    def damaged(*new_lines, raw: bytes = b""):
        path.write_bytes((header + "".join(new_lines)).encode() + raw)
        with pytest.raises(StaleInputError, match="truncated or malformed|unreadable"):
            read_shard_frames(path)

    first, second = lines[0].split("\t"), lines[1].split("\t")
    damaged("\t".join(first[:2]) + first[2] + "\t" + "\t".join(first[3:]),  # four tabs here ...
            "\t".join(second[:2]) + "\t\t" + "\t".join(second[2:]), *lines[2:])  # ... seven there
    damaged("x" + lines[0], *lines[1:])
    damaged("\t" + lines[0].split("\t", 1)[1], *lines[1:])  # an empty input index
    damaged(*lines, raw=b"0\tr\tc\tf\t\xff\tP\n")
    damaged(*lines[:-1], lines[-1][:-1])  # cut before its newline
