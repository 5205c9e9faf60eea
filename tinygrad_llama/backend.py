"""The one place that names the array module.

Everything in tinygrad_llama does `from .backend import xp` and calls `xp.<fn>` instead of importing
NumPy itself, so a NumPy-compatible module (CuPy, for instance) can stand in for it by changing the
line below. Tests and data_tools use NumPy directly: they run on the host.
"""
import numpy as xp

DEFAULT_FLOAT = xp.float32  # training runs in float32; float64 is kept when given (gradient checks)


def is_float(dtype):
    return xp.issubdtype(dtype, xp.floating)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory():
    """Let freed arrays' memory be reused instead of going back to the operating system.

    NumPy allocates every temporary afresh. glibc's malloc serves blocks above its mmap threshold
    (128 KiB at first) with a fresh mmap, and returns the top of its heap to the system once
    enough is free, so the next step's arrays page-fault their memory in again: about 900 page
    faults per step for the small `seed` model, a few percent of its step time. Raising both
    thresholds (to glibc's largest mmap threshold, 32 MiB, and 1 GiB) keeps that memory in the
    heap for reuse. The peak memory use does not grow; memory once used stays with the process.
    Returns True when the allocator took the settings, False where it is not glibc's.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
