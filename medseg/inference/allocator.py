"""Hand large freed buffers back to the operating system during prediction (glibc only).

Prediction allocates and frees tensors of 8-40 MB per window batch (activations, window
outputs) next to a few long-lived arrays (the network-grid image, the label map, a block's
accumulators). glibc's malloc raises its mmap threshold to the size of the largest block
freed so far (up to 32 MB), after which such tensors come from the heap, and a heap keeps
what is freed inside it: on the 512x512x300 CT of the inference benchmark that retained
memory is ~90 MB of the peak (benchmarks/RESULTS.md, "Many classes"). A fixed threshold
keeps every block of :data:`THRESHOLD_BYTES` or more in its own mapping, returned on free,
at the cost of a page fault per fresh page of those blocks.

Only glibc has ``mallopt``; elsewhere (macOS, musl, Windows) this does nothing. A threshold
the user set in the environment (``MALLOC_MMAP_THRESHOLD_``) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

THRESHOLD_BYTES = 4 * 2**20
"""Blocks of this size or more are mapped on their own (glibc's default starts at 128 KiB and grows)."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""

_done: bool | None = None


def return_large_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process, once; True when set.

    Idempotent and safe to call from every predictor (worker processes call it too).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    return _done
