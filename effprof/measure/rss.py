"""Peak resident memory of this process on Linux, for peak memory on CPU.

torch keeps no allocator statistics on CPU, so effprof reads the kernel's view of the process: the
resident-set high-water mark `VmHWM` in /proc/self/status, after resetting it to the current resident
set by writing "5" to /proc/self/clear_refs (Linux >= 4.0, proc(5)). `peak_of(fn)` measures one call:
it first hands the C heap's free pages back to the system (glibc `malloc_trim(0)`), so that memory the
call allocates shows up as new resident pages even where malloc would otherwise reuse freed chunks, then
returns `VmHWM` after the call minus `VmRSS` before it, in bytes.

What it counts: every page the call touched and kept resident (tensors, workspaces, Python objects),
not only torch tensors. It is the process's figure, labelled as such (`METHOD`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

# Growth below this is not told apart from the allocator's and the interpreter's own pages (page size 4 KiB,
# glibc arenas and Python objects allocated during the call): recorded as below resolution, not as a number.
RESOLUTION_BYTES = 64 * 1024
METHOD = "cpu process resident set: VmHWM high-water mark of one call above VmRSS before it (after malloc_trim)"
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """The resident set now, in bytes (None where /proc is not readable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_bytes() -> int | None:
    """The resident-set high-water mark since the last `reset_peak()`, in bytes."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak() -> int | None:
    """Reset the high-water mark to the current resident set and return that resident set in bytes;
    None when the mark cannot be reset (then no window can be measured)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return rss_bytes()


@lru_cache(maxsize=None)
def _malloc_trim() -> Callable[[int], Any] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def peak_of(fn: Callable[[], Any]) -> int | None:
    """Resident-set growth at the peak of one call of `fn`, in bytes (None where it cannot be measured)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    before = reset_peak()
    if before is None:
        return None
    fn()
    peak = peak_bytes()
    return None if peak is None else max(0, peak - before)
