"""What this machine can do: memory bandwidth, the decode ceiling it sets, native bf16, AVX-512.

Batch-1 decode reads every weight byte once per token, so `bandwidth / weight bytes` is the
tok/s no runner can beat; benchmarks state their batch-1 numbers as a fraction of it.
"""

from __future__ import annotations

import time
from pathlib import Path
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


def cpu_has_bf16() -> bool:
    """True when the CPU has AMX bf16 tiles, where bf16 autocast pays off.

    Measured on this project's 2-core AMX machine (idle): a 512x576 @ 576x1536 GEMM takes 1.2 ms in
    bf16 against 5.9 ms in float32. AVX512-BF16 alone (no AMX) gives no such gain, and autocast's bf16
    weight copies cost memory, so it stays off there. Training's `--bf16 on|off` overrides.
    """
    flags = cpu_flags()
    return flags is not None and "amx_bf16" in flags


def cpu_has_avx512() -> bool:
    """True when the CPU has AVX-512F, which our int8/int4 kernels need; also when flags can't be read
    (then the kernel build itself tells)."""
    flags = cpu_flags()
    return flags is None or "avx512f" in flags


def cpu_flags() -> set[str] | None:
    """The CPU feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
