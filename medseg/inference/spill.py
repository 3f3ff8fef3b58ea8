"""An array kept in an unlinked temporary file while the memory it took is needed elsewhere.

A batch with statistics or previews needs the case's input intensities again after the
prediction; holding them in memory through it (157 MB for an int16 512x512x300 CT) adds to
the prediction's peak. :func:`spilled` writes them to a file in the temporary directory
(``TMPDIR``; the page cache, not the process, holds them until the kernel writes them out)
and maps them back read-only when read.
"""

from __future__ import annotations

import tempfile

import numpy as np

SPILL_BYTES = 64 * 2**20
"""Arrays smaller than this stay in memory (writing them out saves too little)."""


def spilled(array: np.ndarray, min_bytes: int | None = None) -> np.ndarray:
    """``array``'s values apart from its memory (so that dropping ``array`` and any array it
    is a view of frees them): a read-only memory map of an unlinked temporary file, in the
    array's own memory order, removed when the map is no longer referenced; a copy where
    smaller than ``min_bytes`` (default :data:`SPILL_BYTES`)."""
    if array.nbytes < (SPILL_BYTES if min_bytes is None else min_bytes):
        return array.copy(order="K")
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    with tempfile.TemporaryFile(prefix="medseg-spill-") as f:
        (array.T if fortran else array).tofile(f)  # tofile writes C order
        f.flush()
        # the map keeps its own descriptor: closing (and so deleting) the file is safe
        return np.memmap(f, dtype=array.dtype, mode="r", shape=array.shape, order="F" if fortran else "C")
