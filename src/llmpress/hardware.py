"""What this machine is: CPU model and feature flags, threads, torch version, git commit (a leaf module).

Every benchmark result records `machine_info()`, and every CPU-specific path (our AVX-512 kernels, bf16
autocast, VNNI) asks `cpu_flags()` at run time: sessions land on different CPUs (Intel with AMX, AMD
EPYC with AVX512-BF16 and no AMX), so nothing assumes a feature.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

# Flags that decide which kernels and precisions pay off; `machine_info` lists these, not all ~150.
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags() -> set[str] | None:
    """The CPU feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    text = _cpuinfo()
    if text is None:
        return None
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the platform's guess."""
    for line in (_cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


# Flags with which bf16 autocast is the training default (`--bf16 auto` in tune and distill); decided
# per CPU family by benchmarks/bf16_training.py (interleaved fp32 / bf16 training steps).
BF16_AUTOCAST_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def bf16_autocast_pays(flags: set[str] | None) -> bool:
    """True when a CPU with these flags trains faster under bf16 autocast (see `cpu_has_bf16`)."""
    return flags is not None and any(f in flags for f in BF16_AUTOCAST_FLAGS)


def cpu_has_bf16() -> bool:
    """True when bf16 autocast is this CPU's training default: AMX bf16 tiles or AVX512-BF16.

    AMX (this project's 2-core Intel machine, idle): a 512x576 @ 576x1536 GEMM takes 1.2 ms in bf16
    against 5.9 ms in float32, and training runs faster under autocast.
    AVX512-BF16 without AMX (2-core AMD EPYC, quiet machine, 2026-12-05): benchmarks/bf16_training.py
    (SmolLM2-135M LoRA, batch 4 x 128, interleaved blocks) runs 0.926 steps/s under autocast against
    0.504 in float32, 1.84x, at equal peak RSS (2384 vs 2448 MB). Tiny models (tiny-llama) gain nothing
    there (casts outweigh their small GEMMs), so `--bf16 off` stays available; `--bf16 on` opts in elsewhere.
    """
    return bf16_autocast_pays(cpu_flags())


def cpu_has_avx512() -> bool:
    """True when the CPU has AVX-512F, which our int8/int4 kernels need; also when flags can't be read
    (then the kernel build itself tells)."""
    flags = cpu_flags()
    return flags is None or "avx512f" in flags


def git_commit(path: str | Path | None = None) -> str | None:
    """The checkout's HEAD commit (with `+dirty` when tracked files changed), or None outside git.

    Other runs' results (`benchmarks/results/`) do not make it dirty: they are not the code being measured."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)benchmarks/results"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """What a benchmark result must record: CPU model and flags, cores, threads, torch, git commit."""
    import torch

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "flags": sorted(f for f in RELEVANT_FLAGS if flags and f in flags),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }



def machine_summary(info: dict[str, Any] | None = None) -> str:
    """One markdown line for a benchmark result: what ran it, so numbers are read against their machine."""
    m = info or machine_info()
    return (f"Machine: {m['cpu_model']} ({m['cores']} cores), flags {' '.join(m['flags']) or 'none of note'}, "
            f"{m['threads']} torch threads, torch {m['torch']}, Python {m['python']}, "
            f"commit {m['git_commit'] or 'unknown'}.")


def benchmark_record(argv: list[str]) -> dict[str, Any]:
    """What every benchmark JSON carries besides its numbers: the machine and the exact command."""
    import shlex
    import sys

    return {"machine": machine_info(), "command": shlex.join([Path(argv[0]).as_posix(), *argv[1:]]),
            "python_executable": sys.executable}


def world_size() -> int:
    """Ranks of a data-parallel run (`torch.distributed.run` sets WORLD_SIZE; `llmpress.scale.launch` starts it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a plain process): the one that writes artifacts and registry rows."""
    return int(os.environ.get("RANK", "0")) == 0
