"""Our small-batch int8 / int4 weight-only kernels (kernels.cpp), built on first use.

`get()` returns the compiled module, or None when it cannot be used here (no C++ compiler,
no AVX-512, or LLMPRESS_KERNELS=aten); callers then use the aten kernels. The build runs
once per machine (torch caches it under ~/.cache/torch_extensions, keyed by the source) and
takes ~30-60 s on 2 cores; a failed build is reported once, with the reason, and never stops
a run.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {}


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
    return ext.load(name="llmpress_kernels", sources=[str(src)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False)


def get() -> Any:
    """The compiled kernels, or None (then use aten). Thread-safe; builds at most once per process."""
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" in _state:
            return _state["mod"]
        mod = None
        if os.environ.get("LLMPRESS_KERNELS", "").lower() != "aten":
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
        _state["mod"] = mod
        return mod


def available() -> bool:
    return get() is not None
