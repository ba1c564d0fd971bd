"""The pooled rows of one embed call, shared by both packed engines.

Each pack's rows are scattered on the device (index_copy_) into one buffer for the whole call,
the caller's `out` itself on the CPU, and copied to the host once at the end: no host scatter
and one D2H transfer per call (a checkpoint window), never one per pack.

`segment_means` is the pooling of both: a segment sum whose order is fixed by the data alone.
"""

from __future__ import annotations

import numpy as np
import torch


def segment_means(rows: torch.Tensor, divisor: torch.Tensor, *, lengths: torch.Tensor | None = None,
                  offsets: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [B, d]: the sum of each run of consecutive `rows` (run b given by `lengths[b]` or by
    `offsets[b]:offsets[b + 1]`) divided by `divisor[b]`.

    Why segment_reduce and not index_add_: on CUDA index_add_ is a float atomicAdd per element, so
    the order of each sum (and its last bits) follows thread scheduling and changes run to run;
    segment_reduce reduces each segment in a fixed order on every device (a loop per segment and
    column, or CUB's segmented reduce), so a window computed twice gives bitwise-identical rows,
    and it is allowed under torch.use_deterministic_algorithms(True). On the CPU it sums in the
    same order as index_add_ did. unsafe=True skips a check of sum(lengths) against the row count,
    which would synchronise with the GPU; the packers guarantee it (and PooledRows checks that
    every input row is produced exactly once).
    """
    sums = torch.segment_reduce(rows, "sum", lengths=lengths, offsets=offsets, axis=0, unsafe=True)
    return sums / divisor[:, None]


class PooledRows:
    def __init__(self, out: np.ndarray, device: torch.device):
        self.out = out
        self.on_host = device.type == "cpu"
        self.rows = torch.from_numpy(out) if self.on_host else \
            torch.empty(out.shape, dtype=torch.float32, device=device)
        self.times = np.zeros(len(out), dtype=np.int64)  # how often each row was put: exactly once

    def put(self, host_index: np.ndarray, device_index: torch.Tensor, pooled: torch.Tensor) -> None:
        self.rows.index_copy_(0, device_index, pooled)
        self.times[host_index] += 1

    def finish(self, engine: str) -> np.ndarray:
        if not (self.times == 1).all():
            raise RuntimeError(f"{engine}: {int((self.times != 1).sum())} of {len(self.out)} sequences were embedded "
                               "zero or several times")
        if not self.on_host:
            torch.from_numpy(self.out).copy_(self.rows)
        return self.out
