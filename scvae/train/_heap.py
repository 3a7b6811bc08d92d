"""Keep the memory of freed tensors in the process heap while a model trains on the CPU.

A training step allocates and frees several tensors of minibatch x genes (8.5 MB each at 128
cells x 16,579 genes). glibc's ``malloc`` serves allocations above its mmap threshold (128 KiB
at start, raised on the fly up to 32 MiB) with fresh ``mmap`` pages and returns them on
``free``, and it trims the top of the heap when more than its trim threshold is free: every
step then faults in and zeroes the same pages again. On this package's CPU benchmark the page
faults took about a quarter of the training time (``docs/benchmarks.md``).

:func:`reuse_freed_memory` raises both thresholds (``mallopt``) so that freed blocks stay in
the heap and the next step reuses them, and hands the free memory back to the system
(``malloc_trim``) when training ends. The thresholds stay raised for the rest of the process
(glibc offers no way to read the values they replace); ``SCVAE_MALLOC_TUNING=0`` in the
environment turns all of this off. Other C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Iterator

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_freed_memory"]

_LOG = logging.getLogger("scvae")
#: allocations up to this size come from the heap (glibc's own upper limit is 64 MiB here)
MMAP_THRESHOLD = 64 << 20
#: free memory at the top of the heap kept for reuse before glibc trims it
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_ENV = "SCVAE_MALLOC_TUNING"


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None."""
    if os.environ.get(_ENV, "1").strip() == "0" or platform.system() != "Linux":
        return None
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, freed tensors' memory stays in the heap; trimmed at the end.

    Yields
    ------
    bool
        Whether the tuning is in effect (glibc, not switched off by ``SCVAE_MALLOC_TUNING=0``).
    """
    libc = _glibc()
    active = False
    if libc is not None:
        active = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        if not active:
            _LOG.debug("mallopt refused the thresholds; the heap is left as it was.")
    try:
        yield active
    finally:
        if active:
            libc.malloc_trim(0)  # give the free memory back to the system
