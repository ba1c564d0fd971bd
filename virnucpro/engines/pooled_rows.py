"""The pooled rows of one embed call, shared by both packed engines.

Each pack's rows are scattered on the device (index_copy_) into one buffer for the whole call,
the caller's `out` itself on the CPU, and copied to the host once at the end: no host scatter
and one D2H transfer per call (a checkpoint window), never one per pack.
"""

from __future__ import annotations

import numpy as np
import torch


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
