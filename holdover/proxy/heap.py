"""How the C heap of a proxy process keeps the memory it frees.

Every read from a socket makes a ``bytes`` of up to 256 KiB, freed a moment later.
glibc's malloc, left to its defaults, gives the top of its heap back to the kernel as
soon as more than 128 KiB of it are free, and serves blocks above its mmap threshold
with fresh mappings: the next buffer then faults its pages in again, zeroed by the
kernel.  Measured on 1 MiB responses (bench/results/speed.md), that page faulting was
half of the proxy's CPU time per request.  ``keep_freed_memory`` raises both thresholds
once at start-up, so the heap settles at what the proxy uses at its busiest (bounded by
its buffer limits) and stays there; memory beyond ``TRIM_THRESHOLD`` is still returned.
On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 16 * 1024 * 1024  # free bytes at the heap's top kept for reuse
MMAP_THRESHOLD = 4 * 1024 * 1024  # blocks this large or larger get their own mapping


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above; False where that is not possible."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
