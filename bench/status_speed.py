"""How long `virnucpro-slurm status` takes on a run of 10,000 shards (3 sharded stages).

    python bench/status_speed.py [--shards 10000] [--repeat 5]

Builds a synthetic workdir laid out as a real run's (run.json, one record per (stage, shard) in
state.d/, state.d/shards.json, the done pairs' files, which status stats) in a temp folder, then
times the whole command as a user runs it (new Python process, imports included) and the in-process work alone (fold the records, summarise,
render): once with no state.json (every record read: the first status after a SLURM run, or
state.json deleted) and then with state.json folded (what a re-run or `status` normally finds).
Also times one state update (mark a shard done), which must not grow with the shard count.
Target: under 1 s end to end.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("prepare", "dnabert", "esm2", "predict", "consensus")


def build(root: Path, shards: int) -> None:
    records = root / "state.d"
    counts = {"prepare": 1, "dnabert": shards, "esm2": shards, "predict": shards, "consensus": 1}
    entries = {"prepare": {0: {"status": "done", "seconds": 60.0, "attempts": 1}}}
    for k, stage in enumerate(("dnabert", "esm2", "predict")):
        entries[stage] = {s: {
            "status": "done" if s < shards * 0.9 else "running", "attempts": 1, "requeues": int(s % 13 == 0),
            "started": 1.7e9, "finished": 1.7e9 + 240, "seconds": 240.0, "error": None,
            "log": f"{root}/logs/{stage}/{100 + k}_{s}.err", "host": "gpu017", "job_id": f"{100 + k}_{s}",
            "metrics": {"frames": 41234, "tokens": 2100000, "computed_tokens": 2100000, "resumed_from": 0,
                        "compute_seconds": 230.1, "tokens_per_second": 91304.3, "wall_seconds": 238.2}}
            for s in range(int(shards * 0.91))}  # the last 9 %: no record yet, pending
    for stage, by_shard in entries.items():
        (records / stage).mkdir(parents=True)
        for shard, entry in by_shard.items():
            (records / stage / f"{shard}.json").write_text(json.dumps(entry))
    (records / "shards.json").write_text(json.dumps(counts))
    from virnucpro.orchestration.config import CONFIG_VERSION, RunConfig

    (root / "run.json").write_text(json.dumps({  # every key a run.json of this tool's has (or it is no workdir)
        "version": CONFIG_VERSION, "fingerprint": {}, "inputs_list": "inputs.txt", "inputs": ["a.fa"],
        "input_names": ["a"], "chunk_length": 500, "shards": shards,
        "models": {"esm": "esm2_t36_3B_UR50D", "dnabert": "zhihan1996/DNABERT-S", "classifier": "500_model.pth"}}))
    # the files the done pairs wrote (empty: status only stats them to find missing ones)
    from virnucpro.paths import Workdir
    from virnucpro.pipeline import STAGE

    workdir = Workdir(root)
    config = RunConfig.load(workdir)
    for stage, by_shard in entries.items():
        for shard in by_shard:
            for path in STAGE[stage].outputs(workdir, shard, config):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()


def time_status(root: Path, repeat: int, fold_before) -> tuple[float, float]:
    from virnucpro.orchestration.config import RunConfig
    from virnucpro.orchestration.status import render_status, status_report
    from virnucpro.paths import Workdir

    inner, outer = [], []
    for _ in range(repeat):
        fold_before()
        started = time.perf_counter()
        render_status(status_report(Workdir(root), RunConfig.load(Workdir(root))))
        inner.append(time.perf_counter() - started)
        fold_before()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "status", "-w", str(root)],
                              capture_output=True, text=True)
        outer.append(time.perf_counter() - started)
        assert done.returncode == 1 and "esm2" in done.stdout, done.stderr
    return statistics.median(inner), statistics.median(outer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from virnucpro.orchestration.state import SETTLE_NS, StateFile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.shards)
        state = StateFile(root / "state.json", root / ".state.lock")
        cold = time_status(root, args.repeat, lambda: (root / "state.json").unlink(missing_ok=True))
        time.sleep(SETTLE_NS / 1e9 + 0.1)  # records older than the settle time: the fold trusts folder stamps
        state.fold()
        warm = time_status(root, args.repeat, lambda: None)
        size = (root / "state.json").stat().st_size / 1e6
        updates = []
        for shard in range(int(args.shards * 0.9), int(args.shards * 0.9) + 20):
            started = time.perf_counter()
            state.mark_done("esm2", shard)
            updates.append(time.perf_counter() - started)
        print(f"{args.shards} shards x 3 stages ({sum(1 for _ in root.glob('state.d/*/*.json'))} records), "
              f"state.json {size:.1f} MB")
        for name, (inner, outer) in (("no state.json (every record read)", cold), ("state.json folded", warm)):
            print(f"  {name}: fold + summarise + render median {inner * 1000:.0f} ms; "
                  f"'virnucpro-slurm status' command (new process) median {outer * 1000:.0f} ms")
        print(f"  one state update (mark a shard done): median {statistics.median(updates) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
