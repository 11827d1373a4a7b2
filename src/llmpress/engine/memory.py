"""Process memory as the OS counts it: RSS, peak RSS, and how much of a set of tensors is resident.

The engine's KV cache lives in anonymous mmap pages that become resident only when written
(`model_runner._lazy_zeros`), so "RSS minus the KV budget" would flatter a freshly loaded engine:
`resident_bytes` asks the kernel (mincore) which of the tensors' pages are really in memory, so a
benchmark can subtract the KV bytes actually resident. `release_file_pages` drops from RSS the pages
of a memory-mapped weight file that no tensor uses any more (float weights the engine fused into new
tensors). Linux only; elsewhere the functions return None (or release nothing).
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def _status(field: str) -> float | None:
    """A `/proc/self/status` field (kB) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Resident set size of this process, MiB."""
    return _status("VmRSS")


def peak_rss_mb() -> float | None:
    """The process's high-water RSS (VmHWM), MiB: what loading needed at its worst moment."""
    return _status("VmHWM")


_libc: ctypes.CDLL | None = None


def _libc_fn(name: str) -> Any:
    """A libc function with its argument types set (mincore / madvise), or None off Linux."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(_libc, name)
    except (OSError, AttributeError):
        return None
    third = ctypes.POINTER(ctypes.c_ubyte) if name == "mincore" else ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, third]
    fn.restype = ctypes.c_int
    return fn


def resident_bytes(tensors: Iterable[torch.Tensor]) -> int | None:
    """Bytes of the pages under `tensors`' storages that are resident in RAM (each page counted once).

    Pages of a never-written anonymous mapping are not resident; pages shared with other data
    (a heap page holding the tensor's edge) count whole. None when mincore is unavailable.
    """
    fn = _libc_fn("mincore")
    if fn is None:
        return None
    page = mmap.PAGESIZE
    pages: set[int] = set()
    for t in tensors:
        st = t.untyped_storage()
        n = st.nbytes()
        if n == 0 or t.device.type != "cpu":
            continue
        start = st.data_ptr() // page * page
        end = st.data_ptr() + n
        count = (end - start + page - 1) // page
        vec = (ctypes.c_ubyte * count)()
        if fn(ctypes.c_void_p(start), ctypes.c_size_t(end - start), vec) != 0:
            return None
        pages.update(start + i * page for i in range(count) if vec[i] & 1)
    return len(pages) * page


MADV_DONTNEED = 4


def _file_mapping(start: int, end: int) -> bool:
    """True when [start, end) lies inside one private file-backed mapping of this process."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= start and end <= hi:
            return len(parts) >= 6 and parts[4] != "0" and parts[1].endswith("p") and parts[5].startswith("/")
    return False


def release_file_pages(storages: list[torch.UntypedStorage]) -> int:
    """Drop from this process's RSS the whole pages of `storages` that no tensor uses any more and that
    lie in a private mapping of a file (a weight file memory-mapped by from_pretrained); returns bytes.

    Why: the engine fuses q/k/v and gate/up into new tensors; the originals' pages of the mapped
    safetensors file were read to copy them and stay resident (counted in RSS) for as long as the file
    stays mapped for the other weights. Only storages whose sole owner is the caller's reference
    qualify, and only pages wholly inside them: a page shared with a live neighbour is kept, and a
    dropped page would re-read the file's bytes if anything touched it again. Linux only; else 0.
    """
    fn = _libc_fn("madvise")
    if fn is None or not hasattr(torch._C, "_storage_Use_Count"):
        return 0
    page = mmap.PAGESIZE
    done = 0
    for st in storages:
        if st.device.type != "cpu" or torch._C._storage_Use_Count(st._cdata) != 1:
            continue  # someone still holds a tensor on these bytes
        lo = -(-st.data_ptr() // page) * page
        hi = (st.data_ptr() + st.nbytes()) // page * page
        if hi <= lo or not _file_mapping(lo, hi):
            continue
        if fn(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) == 0:
            done += hi - lo
    return done
