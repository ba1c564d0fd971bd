"""Training input pipeline and epoch throughput at real widths (DNABERT-S 768 + ESM-2 3B 2560).

For each embedding dtype (float32, float16) and row count (default 100K and 1M frames, 6 frames a
read, shards of 50K frames), synthetic shard files are written with the project's writers
(tests/training_shards.py) into --folder (default: a temp dir; 1M rows take 13.3 GB as float32,
6.7 GB as float16; each set is deleted after it is measured unless --keep). Then, in a fresh
process per set (so peak RSS is that set's alone):

  index     reading the frame tables, labels and the split by read (training.rows.RowIndex)
  input     one epoch of training batches (32 rows, shuffled, float32) from the files, no model:
            the files are first evicted from the page cache (posix_fadvise DONTNEED, these files
            only), so this is read from disk
  held-out  the held-out rows' pass (read by runs)
  epoch     --epoch-batches batches of the recipe (forward, backward, SGD step) on --device,
            after 20 warm-up batches; rows/s extrapolates to the epoch
  peak RSS  of the process after the input pass, and after the epoch batches

  python bench/train_throughput.py                               # 100K and 1M, float32 and float16
  python bench/train_throughput.py --rows 100000 --dtype float16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WIDTHS = (768, 2560)
FRAMES_PER_READ = 6
ROWS_PER_SHARD = 50_000
INPUTS = 4


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss it does not carry the peak of
    the parent that forked it, which wrote the files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_set(folder: Path, rows: int, dtype: str) -> int:
    from training_shards import write_training_shards

    shards = -(-rows // ROWS_PER_SHARD)
    write_training_shards(folder, shards=shards, reads=rows // FRAMES_PER_READ, frames_per_read=FRAMES_PER_READ,
                          inputs=INPUTS, widths=WIDTHS, dtype=dtype)
    return shards


def evict(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(folder: Path, shards: int, epoch_batches: int, device: str) -> dict:
    import torch

    from training_shards import shard_paths
    from virnucpro.training.fit import TrainingInterrupted, _Training
    from virnucpro.training.recipe import ORIGINAL
    from virnucpro.training.rows import RowIndex, RowStream

    sources = [shard_paths(folder, k) for k in range(shards)]
    labels = [i % 2 for i in range(INPUTS)]
    out = {}
    start = time.perf_counter()
    index = RowIndex(sources, labels, 42, 0.1)
    out["index_s"] = time.perf_counter() - start
    out["rows"], out["training_rows"], out["held_out_rows"] = \
        index.training_rows + index.held_out_rows, index.training_rows, index.held_out_rows
    evict([path for source in sources for path in (source.dnabert, source.esm2)])
    with RowStream(index) as stream:
        start, rows = time.perf_counter(), 0
        for _, labels_batch in stream.training_batches(0, ORIGINAL.batch_size):
            rows += len(labels_batch)
        out["input_rows_per_s"] = rows / (time.perf_counter() - start)
        start, rows = time.perf_counter(), 0
        for _, labels_batch in stream.held_out_batches(4096):
            rows += len(labels_batch)
        out["held_out_rows_per_s"] = rows / (time.perf_counter() - start)
        out["peak_rss_input_mb"] = peak_rss_mb()

        training = _Training(index, ORIGINAL, 42, 0.1, labels, device)
        calls, marks = iter(range(10**9)), {}

        def stop() -> bool:
            call = next(calls)
            if call == 20:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                marks["start"] = time.perf_counter()
            if call == 20 + epoch_batches:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                marks["stop"] = time.perf_counter()
                return True
            return False

        try:
            training.train_epoch(stream, stop, lambda: None)  # stopped after the batches timed; no checkpoint
        except TrainingInterrupted:
            pass
        if "stop" in marks:
            out["epoch_rows_per_s"] = epoch_batches * ORIGINAL.batch_size / (marks["stop"] - marks["start"])
        out["peak_rss_epoch_mb"] = peak_rss_mb()
    out["torch_threads"] = torch.get_num_threads()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    parser.add_argument("--folder", type=Path, help="where the shard files go (default: a temp dir)")
    parser.add_argument("--epoch-batches", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the shard files")
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]), args.epoch_batches, args.device)))
        return
    base = args.folder or Path(tempfile.mkdtemp(prefix="train-throughput-"))
    print(f"{os.cpu_count()} CPUs, device {args.device}, files in {base}")
    print(f"{'dtype':8} {'rows':>9} {'write s':>8} {'index s':>8} {'input rows/s':>13} {'held-out rows/s':>16} "
          f"{'epoch rows/s':>13} {'RSS input MB':>13} {'RSS epoch MB':>13}")
    for dtype in args.dtype:
        for rows in args.rows:
            folder = base / f"{dtype}-{rows}"
            start = time.perf_counter()
            shards = write_set(folder, rows, dtype)
            written = time.perf_counter() - start
            result = subprocess.run([sys.executable, __file__, "--measure", str(folder), str(shards),
                                     "--epoch-batches", str(args.epoch_batches), "--device", args.device],
                                    check=True, capture_output=True, text=True)
            got = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{dtype:8} {got['rows']:>9} {written:>8.1f} {got['index_s']:>8.1f} "
                  f"{got['input_rows_per_s']:>13,.0f} "
                  f"{got['held_out_rows_per_s']:>16,.0f} {got.get('epoch_rows_per_s', 0):>13,.0f} "
                  f"{got['peak_rss_input_mb']:>13,.0f} {got['peak_rss_epoch_mb']:>13,.0f}", flush=True)
            if not args.keep:
                shutil.rmtree(folder)
    if not args.keep and not args.folder:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
