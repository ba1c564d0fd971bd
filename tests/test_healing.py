"""One planning rule for `run` and `submit`, and healing: a stage recorded done whose file is
missing or damaged is recomputed (with what is made from it) by the next run.

Real CLI runs on the demo models, 3 shards; which pairs a `run` computed is read from the
attempts in state.json, which pairs `submit --dry-run` would submit from its script headers."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import pipeline, storage
from virnucpro.orchestration.config import ModelSpec, RunConfig
from virnucpro.orchestration.state import DONE, FAILED, PENDING, ShardState, StateFile
from virnucpro.paths import Workdir

SHARDS = 3
# the readers raise StaleInputError for a damaged file once issue 14's storage is merged
READERS_HEAL = "StaleInputError" in Path(storage.__file__).read_text()


def cli(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "1000"})  # one message, one line
    if check:
        assert done.returncode == 0, done.stderr
    return done


def run_args(workdir, demo_models, example_inputs, *extra):
    return ("run", example_inputs, "--models", demo_models, "--workdir", workdir, "--shards", SHARDS, "--quiet", *extra)


def attempts(workdir: Path) -> dict[tuple[str, int], tuple]:
    """(attempts, start time) per pair: a pair whose entry was reset still shows a new start."""
    stages = json.loads((workdir / "state.json").read_text())["stages"]
    return {(stage, int(shard)): (entry["attempts"], entry["started"])
            for stage, entries in stages.items() for shard, entry in entries.items()}


def ran(before: dict, after: dict) -> list[tuple[str, int]]:
    return sorted((pair for pair in after if after[pair] != before.get(pair)), key=lambda p: (pipeline.STAGES.index(p[0]), p[1]))


def dry_run_pairs(stdout: str) -> list[tuple[str, int]]:
    """The (stage, shard) pairs in the dry run's script headers: '-- esm2: 1 task(s), shard 1' or
    '-- predict: 3 task(s), 3 shards (0-2)'."""
    pairs = []
    for stage, one, ranges in re.findall(r"^# ==== \S+ -- (\w+): \d+ task\(s\), (?:shard (\d+)|\d+ shards \(([\d,-]+)\))",
                                         stdout, re.M):
        for part in ([one] if one else ranges.split(",")):
            first, _, last = part.partition("-")
            pairs += [(stage, k) for k in range(int(first), int(last or first) + 1)]
    return pairs


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_models, example_inputs) -> Path:
    workdir = tmp_path_factory.mktemp("finished") / "w"
    cli(*run_args(workdir, demo_models, example_inputs))
    return workdir


def copy_of(finished: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    return workdir


def outputs(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted((workdir / "results").rglob("*")) if p.is_file()}


def assert_same_results(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Same files, rows, ids and calls; scores equal to float32 print precision. A recomputed shard
    runs in a new process, and CPU kernels may round the last printed digit differently there
    (REFERENCE.md section 8: the default mode is not bit-reproducible across batch layouts)."""
    assert sorted(got) == sorted(want)
    for name in want:
        rows_got, rows_want = got[name].decode().splitlines(), want[name].decode().splitlines()
        assert len(rows_got) == len(rows_want), name
        for a, b in zip(rows_got, rows_want):
            fields_a, fields_b = a.split("\t"), b.split("\t")
            assert len(fields_a) == len(fields_b), (name, a, b)
            for x, y in zip(fields_a, fields_b):
                try:
                    assert abs(float(x) - float(y)) <= 1e-6, (name, a, b)
                except ValueError:
                    assert x == y, (name, a, b)


def assert_rerun_heals(workdir: Path, demo_models, example_inputs, expected: list[tuple[str, int]], said: str,
                       results: dict[str, bytes] | None = None) -> None:
    """The next plain run recomputes `expected`, says so, and ends with `results` (default: the
    workdir's results before it)."""
    before, results = attempts(workdir), results or outputs(workdir)
    done = cli(*run_args(workdir, demo_models, example_inputs)[:-1])  # not --quiet: the note is a warning
    assert ran(before, attempts(workdir)) == expected
    (note,) = [line for line in done.stderr.splitlines() if said in line]
    assert note.endswith("recomputing " + pipeline.describe_pairs(expected))
    assert_same_results(outputs(workdir), results)
    assert all(e["status"] == DONE for entries in json.loads((workdir / "state.json").read_text())["stages"].values()
               for e in entries.values())


def test_a_deleted_embedding_is_recomputed_with_what_is_made_from_it(finished, tmp_path, demo_models, example_inputs):
    workdir = copy_of(finished, tmp_path)
    Workdir(workdir).embeddings("esm2", 1).unlink()
    assert_rerun_heals(workdir, demo_models, example_inputs, [("esm2", 1), ("predict", 1), ("consensus", 0)],
                       f"{Workdir(workdir).embeddings('esm2', 1)} is missing")
    again = attempts(workdir)
    cli(*run_args(workdir, demo_models, example_inputs))
    assert attempts(workdir) == again  # healed for good: nothing more to do


def test_a_deleted_frame_table_reruns_prepare_and_consensus(finished, tmp_path, demo_models, example_inputs):
    workdir = copy_of(finished, tmp_path)
    Workdir(workdir).shard_frames(2).unlink()
    assert_rerun_heals(workdir, demo_models, example_inputs, [("prepare", 0), ("consensus", 0)], "is missing")


@pytest.mark.xfail(not READERS_HEAL, strict=True, reason="needs issue 14's readers, which raise StaleInputError")
@pytest.mark.parametrize("damaged, expected", [
    (("dnabert", 0), [("dnabert", 0), ("predict", 0), ("consensus", 0)]),
    (("predict", 2), [("predict", 2), ("consensus", 0)]),
])
def test_a_damaged_file_is_recomputed_with_what_is_made_from_it(finished, tmp_path, demo_models, example_inputs,
                                                                 damaged, expected):
    workdir = copy_of(finished, tmp_path)
    stage, shard = damaged
    path = Workdir(workdir).embeddings(stage, shard) if stage != "predict" else Workdir(workdir).predictions(shard)
    path.write_bytes(b"not an HDF5 file\n" * 100)
    assert_rerun_heals(workdir, demo_models, example_inputs, expected, str(path))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_read_table_reruns_prepare_and_consensus(damage, finished, tmp_path, demo_models, example_inputs):
    """The read tables are read by consensus alone, so consensus must have to run again: here
    because --min-score changes back to the default after a run with 0.5."""
    workdir = copy_of(finished, tmp_path)
    cli(*run_args(workdir, demo_models, example_inputs, "--min-score", "0.5"))
    table = Workdir(workdir).reads_table(0)
    table.write_text("junk\n" if damage == "garbage" else "".join(table.read_text().splitlines(True)[:5]))
    assert_rerun_heals(workdir, demo_models, example_inputs, [("prepare", 0), ("consensus", 0)], str(table),
                       results=outputs(finished))


def test_status_counts_a_done_pair_whose_file_is_missing_as_the_next_run_plans_it(finished, tmp_path, demo_models,
                                                                                  example_inputs):
    workdir = copy_of(finished, tmp_path)
    gone = Workdir(workdir).embeddings("esm2", 1)
    gone.unlink()
    status = cli("status", "--workdir", workdir, "--json", check=False)
    report = json.loads(status.stdout)
    assert status.returncode == 1 and not report["complete"]
    planned = dry_run_pairs(cli("submit", example_inputs, "--models", demo_models, "--workdir", workdir, "--shards", SHARDS,
                                "--partition", "gpu", "--dry-run").stdout)
    assert planned == [("esm2", 1), ("predict", 1), ("consensus", 0)]
    assert {s["stage"]: s["pending"] for s in report["stages"]} == {s: sum(p == s for p, _ in planned) for s in pipeline.PREDICTION_STAGES}
    assert report["missing"] == [{"stage": "esm2", "shard": 1, "path": str(gone),
                                  "recomputed": "esm2 shard 1, predict shard 1 and consensus"}]
    shown = cli("status", "--workdir", workdir, check=False).stdout
    assert f"{gone} is missing: will be recomputed by the next run/submit (esm2 shard 1, predict shard 1 and consensus)" in shown


def edit_state(workdir: Path, changes: dict[tuple[str, int], dict]) -> None:
    """Through the per-pair records: they are the truth, state.json is folded from them."""
    state = StateFile(Workdir(workdir).state, Workdir(workdir).state_lock)
    for (stage, shard), fields in changes.items():
        state.update(stage, shard, **fields)


@pytest.mark.parametrize("case", ["fresh", "partly done", "embedding failed and retried", "changed --min-score"])
def test_run_and_submit_dry_run_plan_the_same_pairs(case, finished, tmp_path, demo_models, example_inputs):
    extra = ()
    if case == "fresh":
        workdir = tmp_path / "w"
    else:
        workdir = copy_of(finished, tmp_path)
    if case == "partly done":  # e.g. killed: an embedding shard and a prediction not finished
        edit_state(workdir, {("esm2", 1): {"status": PENDING}, ("predict", 2): {"status": PENDING}})
    elif case == "embedding failed and retried":
        edit_state(workdir, {("dnabert", 0): {"status": FAILED, "error": "CUDA error"}})
    elif case == "changed --min-score":
        extra = ("--min-score", "0.4")
    dry = workdir.parent / "dry"
    if workdir.exists():
        shutil.copytree(workdir, dry)
    planned = cli("submit", example_inputs, "--models", demo_models, "--workdir", dry, "--shards", SHARDS,
                  "--partition", "gpu", "--dry-run", *extra).stdout
    before = attempts(workdir) if workdir.exists() else {}
    cli(*run_args(workdir, demo_models, example_inputs, *extra))
    expected = {"fresh": [(s.name, k) for s in pipeline.stages_of(RunConfig.load(Workdir(workdir))) for k in range(s.shard_count(RunConfig.load(Workdir(workdir))))],
                "partly done": [("esm2", 1), ("predict", 1), ("predict", 2), ("consensus", 0)],
                "embedding failed and retried": [("dnabert", 0), ("predict", 0), ("consensus", 0)],
                "changed --min-score": [("consensus", 0)]}[case]
    assert ran(before, attempts(workdir)) == expected
    assert dry_run_pairs(planned) == expected


def config_of(shards: int) -> RunConfig:
    return RunConfig(inputs_list="x", inputs=["a.fa"], input_names=["a"], chunk_length=500, shards=shards,
                     models=ModelSpec("esm", "dnabert", "cls"))


def states(done: dict[str, list[int]]) -> dict:
    return {s.name: {k: ShardState(status=DONE if k in done.get(s.name, ()) else PENDING) for k in range(s.shard_count(config_of(3)))}
            for s in pipeline.STAGE_TABLE}


def test_the_recompute_rule():
    config = config_of(3)
    everything = {"prepare": [0], "dnabert": [0, 1, 2], "esm2": [0, 1, 2], "predict": [0, 1, 2], "consensus": [0]}
    assert not pipeline.plan(config, states(everything))
    # prepare redone alone: its frame tables come out the same, so only consensus follows
    plan = pipeline.plan(config, states({**everything, "prepare": []}))
    assert plan.pairs() == [("prepare", 0), ("consensus", 0)] and plan.reset == {"consensus": [0]}
    # an embedding shard redone: its prediction and consensus follow
    plan = pipeline.plan(config, states({**everything, "dnabert": [0, 2]}))
    assert plan.pairs() == [("dnabert", 1), ("predict", 1), ("consensus", 0)]
    assert plan.reset == {"predict": [1], "consensus": [0]}
    assert pipeline.dependents("esm2", 2, config) == [("esm2", 2), ("predict", 2), ("consensus", 0)]
    assert pipeline.reset_by_options(config, config) == []
    assert pipeline.reset_by_options(config, RunConfig(**{**vars(config), "min_score": 0.5})) == ["consensus"]
