"""How long `virnucpro-slurm status` takes on a run of 10,000 shards (3 sharded stages).

    python bench/status_speed.py [--shards 10000] [--repeat 5]

Builds a synthetic workdir (run.json + state.json shaped like a real run's) in a temp folder,
then times the whole command as a user runs it (new Python process, imports included) and the
in-process work alone (read state, summarise, render). Target: under 1 s end to end.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, shards: int) -> None:
    stages = {"prepare": {"0": {"status": "done", "seconds": 60.0}}, "consensus": {"0": {"status": "pending"}}}
    for k, stage in enumerate(("dnabert", "esm2", "predict")):
        stages[stage] = {str(s): {
            "status": "done" if s < shards * 0.9 else "running" if s < shards * 0.91 else "pending",
            "attempts": 1, "requeues": int(s % 13 == 0), "started": 1.7e9, "finished": 1.7e9 + 240, "seconds": 240.0,
            "error": None, "log": f"{root}/logs/{stage}/{100 + k}_{s}.err", "host": "gpu017", "job_id": f"{100 + k}_{s}",
            "metrics": {"frames": 41234, "tokens": 2100000, "computed_tokens": 2100000, "resumed_from": 0,
                        "compute_seconds": 230.1, "tokens_per_second": 91304.3, "wall_seconds": 238.2}}
            for s in range(shards)}
    (root / "state.json").write_text(json.dumps({"version": 1, "stages": stages}, indent=1, sort_keys=True))
    (root / "run.json").write_text(json.dumps({
        "inputs_list": "inputs.txt", "inputs": ["a.fa"], "input_names": ["a"], "chunk_length": 500, "shards": shards,
        "models": {"esm": "esm2_t36_3B_UR50D", "dnabert": "zhihan1996/DNABERT-S", "classifier": "500_model.pth"}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from virnucpro.orchestration.status import render_status, status_report
    from virnucpro.paths import Workdir

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.shards)
        size = (root / "state.json").stat().st_size / 1e6
        inner, outer = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            render_status(status_report(Workdir(root)))
            inner.append(time.perf_counter() - started)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "virnucpro.cli", "status", "-w", tmp], capture_output=True, text=True)
            outer.append(time.perf_counter() - started)
            assert done.returncode == 1 and "esm2" in done.stdout, done.stderr
        print(f"{args.shards} shards x 3 stages, state.json {size:.1f} MB")
        print(f"  read + summarise + render: median {statistics.median(inner) * 1000:.0f} ms")
        print(f"  'virnucpro-slurm status' command (new process): median {statistics.median(outer) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
