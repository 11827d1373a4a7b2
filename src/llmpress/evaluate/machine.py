"""What this machine can do: memory bandwidth and the decode ceiling it sets (CPU flags: `llmpress.hardware`).

Batch-1 decode reads every weight byte once per token, so `bandwidth / weight bytes` is the
tok/s no runner can beat; benchmarks state their batch-1 numbers as a fraction of it.
"""

from __future__ import annotations

import time
from typing import Any


def memory_bandwidth(mb: int = 512, repeats: int = 5) -> dict[str, float]:
    """Best-of-N read bandwidth (a float32 sum over `mb` MB with all torch threads) and copy
    bandwidth (bytes read + written), GB/s. The array is larger than any L3 here."""
    import torch

    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    read = []
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        read.append(x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    y = torch.empty_like(x)
    y.copy_(x)
    copy = []
    for _ in range(repeats):
        t = time.perf_counter()
        y.copy_(x)
        copy.append(2 * x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return {"read_gb_s": max(read), "copy_gb_s": max(copy), "array_mb": mb, "threads": torch.get_num_threads()}


def weight_bytes(model: Any) -> int:
    """Bytes of parameters and buffers one decode step reads (shared / tied tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.numel() == 0 or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total

