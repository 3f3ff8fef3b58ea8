"""Hand freed heap memory back to the operating system between prediction phases (glibc only).

Prediction allocates and frees tensors of 8-40 MB per window batch (activations, window
outputs) next to a few long-lived arrays (the network-grid image, the label map, a block's
accumulators). glibc's malloc raises its mmap threshold to the largest block freed so far
(up to 32 MB), after which such tensors come from the heap, and the heap keeps freed memory
resident: ~90 MB after a warm-up prediction for the 512x512x300 CT benchmark (629 MB resident
against 541 MB when large blocks are mapped on their own).
``malloc_trim(0)`` after each phase (the input prepared, each block reduced to labels)
returns the free pages, at the cost of one call per phase.

Fixing the mmap threshold instead (``mallopt(M_MMAP_THRESHOLD)``, or Dask's
``MALLOC_TRIM_THRESHOLD_``) maps and unmaps every large tensor of every window batch:
measured +47 % CPU seconds per prediction of a 96x96x72 CT corner with 118 classes on this
CPU, so medseg does not do that.

Only glibc has ``malloc_trim``; elsewhere (macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Return the heap's free pages to the operating system; True where glibc did it."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
