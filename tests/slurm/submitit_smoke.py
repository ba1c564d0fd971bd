"""submitit against the private test cluster (tests/slurm/start-cluster.sh).

    source /tmp/virnucpro-slurm/env.sh && python3 tests/slurm/submitit_smoke.py

Submits a single job returning 42 (partition cpu), a 4-task array via map_array, and a
GPU job (partition gpu, 1 fake GPU) that returns its CUDA_VISIBLE_DEVICES; prints timings.
Not collected by pytest (no test_ prefix).
"""

import os
import sys
import tempfile
import time


def answer():
    return 42


def square(x):
    return x * x


def visible_gpus():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def main() -> int:
    import submitit

    if "SLURM_CONF" not in os.environ:
        print("SLURM_CONF not set: source DIR/env.sh first", file=sys.stderr)
        return 2
    base = os.path.join(os.environ.get("VIRNUCPRO_SLURM_DIR", "/tmp"), "tmp")
    folder = tempfile.mkdtemp(prefix="submitit.", dir=base)

    ex = submitit.AutoExecutor(folder=folder)
    ex.update_parameters(slurm_partition="cpu", timeout_min=5, cpus_per_task=1)
    t0 = time.time()
    job = ex.submit(answer)
    res = job.result()
    t1 = time.time()
    assert res == 42, res
    print(f"ok: job {job.job_id} returned {res} in {t1 - t0:.1f} s; state={job.state}")

    ex.update_parameters(slurm_array_parallelism=4)
    t0 = time.time()
    jobs = ex.map_array(square, range(4))
    out = [j.result() for j in jobs]
    t1 = time.time()
    assert out == [0, 1, 4, 9], out
    print(f"ok: map_array {[j.job_id for j in jobs]} -> {out} in {t1 - t0:.1f} s")

    gex = submitit.AutoExecutor(folder=folder)
    gex.update_parameters(slurm_partition="gpu", gpus_per_node=1, timeout_min=5)
    t0 = time.time()
    gjob = gex.submit(visible_gpus)
    cvd = gjob.result()
    t1 = time.time()
    assert cvd is not None and cvd.isdigit(), cvd
    print(f"ok: gpu job {gjob.job_id} saw CUDA_VISIBLE_DEVICES={cvd} in {t1 - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
