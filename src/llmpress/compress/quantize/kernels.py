"""Our small-batch int8 / int4 weight-only kernels (kernels.cpp), built on first use.

`get()` returns the compiled module, or None when it cannot be used here (no C++ compiler,
no AVX-512, or LLMPRESS_KERNELS=aten); callers then use the aten kernels. The build runs
once per machine and takes ~30-60 s on 2 cores; a failed build is reported once, with the
reason, and never stops a run. Without AVX-512 (`hardware.cpu_has_avx512`) nothing is
built: the kernels would only be scalar code.

The build lives in `$LLMPRESS_KERNELS_DIR` (default ~/.cache/llmpress/kernels), one directory per
torch version and source hash. torch guards a build with a `lock` file that it waits on forever
when a killed build left it behind (the likely cause of a CI run that hung 85 min in the
build); we hold an OS lock (flock,
released when its process dies) around the build, so a `lock` file found while we hold it is
stale and is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmpress.hardware import cpu_flags, cpu_has_avx512

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {}


def build_dir() -> Path:
    """Where the kernels are built: one directory per torch version, kernels.cpp content and path, and CPU
    feature set (the build is -march=native: a cache shared by machines with other CPUs must not hand over a
    binary with instructions this one lacks). The path counts because torch rebuilds when a build directory's
    recorded source path changes: two checkouts sharing one directory rebuilt it for each other on every
    start (a minute of compiling each time)."""
    import torch

    root = Path(os.environ.get("LLMPRESS_KERNELS_DIR", Path.home() / ".cache" / "llmpress" / "kernels"))
    h = hashlib.sha256(Path(__file__).with_name("kernels.cpp").read_bytes())
    h.update(" ".join(sorted(cpu_flags() or ())).encode())
    h.update(str(Path(__file__).resolve().parent).encode())
    digest = h.hexdigest()[:12]
    return root.expanduser() / f"torch-{torch.__version__.replace('+', '-')}-{digest}"


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold an flock on `directory` and clear the torch baton a killed build may have left there."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "llmpress-build.flock", "a") as fh:  # closing the file releases the flock
        try:
            import fcntl
        except ImportError:  # not POSIX: no stale-lock recovery, torch's own baton only
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits only for a live builder; the OS drops a dead one's lock
        baton = directory / "lock"
        if baton.exists():
            log.warning("removing %s, a build lock left behind by a killed kernel build", baton)
            baton.unlink()
        yield


def _build() -> Any:
    import torch.utils.cpp_extension as ext

    try:  # the ninja wheel's binary lives next to the interpreter, which may not be on PATH
        import ninja

        bin_dir = getattr(ninja, "BIN_DIR", None)
    except ImportError:
        bin_dir = None
    path_parts = [p for p in (bin_dir, str(Path(sys.executable).parent)) if p]
    os.environ["PATH"] = os.pathsep.join([*path_parts, os.environ.get("PATH", "")])
    src = Path(__file__).with_name("kernels.cpp")
    directory = build_dir()
    with _exclusive(directory):
        return ext.load(name="llmpress_kernels", sources=[str(src)], build_directory=str(directory),
                        # -fno-trapping-math lets -O3 vectorise the softmax exp (its clamp is a compare; no reassociation)
                        extra_cflags=["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"], extra_ldflags=["-fopenmp"],
                        verbose=False)


def get() -> Any:
    """The compiled kernels, or None (then use aten). Thread-safe; builds at most once per process."""
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" in _state:
            return _state["mod"]
        mod = None
        if os.environ.get("LLMPRESS_KERNELS", "").lower() == "aten":
            pass
        elif not cpu_has_avx512():
            log.warning("this CPU has no AVX-512, so llmpress's int8/int4 kernels are not built; using aten's "
                        "weight-only kernels")
        else:
            try:
                mod = _build()
                if not mod.vectorized():
                    log.warning("llmpress kernels built without AVX-512; using aten's weight-only kernels")
                    mod = None
            except Exception as e:  # noqa: BLE001 - any build failure means: fall back, say why once
                log.warning("could not build llmpress's int8/int4 kernels (%s); using aten's kernels, which are "
                            "slower for float32 activations. Install a C++ compiler and `ninja` to enable them.",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                mod = None
        if mod is not None:
            mod.set_q8_min_rows(q8_min_rows())
            mod.set_bf16a_min_rows(bf16a_min_rows())
        _state["mod"] = mod
        return mod


# The fused decoder's (engine/fastpath.py) int8-weight-only matmuls with at least this many rows quantize
# the activations to int8 (per row, per 32-block, like llama.cpp's Q8_0) and use AVX512-VNNI integer dot
# products, where the CPU has them (decided at build time: the build is -march=native and its directory
# is keyed by the CPU flags). Below it, without VNNI, and in the modules' own forward (exact float32
# dot products), the float32-activation kernel runs.
# OFF by default: it failed its quality gate. Measured on SmolLM2-135M int8-weight-only
# (benchmarks/results/decode_profile_q8_quality.md): perplexity +0.30 % against the 0.1 % allowed, for
# ~1.3x on a batch-32 matmul (576x1536, one thread). LLMPRESS_Q8=N turns it on from N rows.
Q8_DEFAULT_MIN_ROWS = 0


def _rows_setting(env: str, default: int) -> int:
    """A row threshold from the environment: a number, on (8 rows), off (0), or unset (`default`)."""
    raw = os.environ.get(env, "").strip().lower()
    if raw in ("0", "off", "false", "no"):
        return 0
    if raw in ("1", "on", "true", "yes"):
        return 8
    return int(raw) if raw.isdigit() else default


def q8_min_rows() -> int:
    return _rows_setting("LLMPRESS_Q8", Q8_DEFAULT_MIN_ROWS)


def set_q8_min_rows(rows: int) -> int:
    """Set the VNNI threshold at run time (0 = off); returns what the kernels took (0 without VNNI)."""
    mod = get()
    return int(mod.set_q8_min_rows(int(rows))) if mod is not None else 0


# The fused decoder's int8-weight-only matmuls (and the decode step's int8 head) with at least this many rows
# round the activations to bfloat16 and use AVX512-BF16 dot products (vdpbf16ps: twice the multiply-adds of
# a float32 FMA), where the CPU has them (decided at build time, like VNNI). The weights stay exact (int8
# values are bf16 integers); only the activations lose precision (8-bit mantissa, rounded to nearest).
# Gate (benchmarks/decode_profile.py --quality): perplexity within 0.1 % of the current path.
BF16A_DEFAULT_MIN_ROWS = 8


def bf16a_min_rows() -> int:
    return _rows_setting("LLMPRESS_BF16A", BF16A_DEFAULT_MIN_ROWS)


def set_bf16a_min_rows(rows: int) -> int:
    """Set the AVX512-BF16 threshold at run time (0 = off); returns what the kernels took (0 without it)."""
    mod = get()
    return int(mod.set_bf16a_min_rows(int(rows))) if mod is not None else 0


def available() -> bool:
    return get() is not None
