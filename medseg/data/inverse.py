"""The inverse of :func:`medseg.data.preprocess.prepare_case`: from the network grid back to the input's.

Beside the forward preprocessing on purpose: every step of ``prepare_case`` has its inverse
here or in :mod:`medseg.data.grid`.

1. linear resampling from the network grid back to the cropped canonical grid uses
   :func:`linear_taps` (the forward resampling's own, re-exported here): the same interpolation and field-of-view convention
   (``align_corners=False``) as the forward resampling, so the network grid maps back onto
   exactly the input's voxel centres (the argmax of resampled class probabilities is taken
   by :mod:`medseg.inference.resample`);
2. :func:`labels_to_input` pastes the labels into the full canonical grid, background
   outside the crop, and undoes the reorientation (a lossless flip/permute).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from nibabel.orientations import inv_ornt_aff

from medseg.data.grid import AFFINE_ATOL_MM, affine_difference, inverse_ornt, reorient, to_canonical
from medseg.data.preprocess import PreparedCase, linear_taps

__all__ = ["input_shape", "labels_to_input", "linear_taps"]


def labels_to_input(labels_crop: np.ndarray, prepared: PreparedCase, input_affine: np.ndarray) -> np.ndarray:
    """Paste cropped canonical labels into the full canonical grid, then undo the reorientation.

    ``labels_crop``: (X, Y, Z) on the cropped canonical grid (``prepared.bbox``). Returns
    the label map in the input's voxel order and shape (possibly a flipped/transposed
    view, keeping the memory layout of ``labels_crop``). Raises RuntimeError if the grid
    recovered by undoing the orientation is not the input's (a bug, never silent).
    """
    order: Literal["C", "F"] = "F" if labels_crop.flags.f_contiguous and not labels_crop.flags.c_contiguous else "C"
    if tuple(labels_crop.shape) == tuple(prepared.canonical_shape):  # no crop: no second full-size map
        full = labels_crop
    else:
        full = np.zeros(prepared.canonical_shape, dtype=labels_crop.dtype, order=order)
        full[prepared.bbox] = labels_crop
    canonical_affine = np.asarray(input_affine) @ inv_ornt_aff(prepared.ornt, input_shape(prepared))
    # flips/permutations only: a view, no copy of the full-resolution label map
    back, back_affine = reorient(full, canonical_affine, inverse_ornt(prepared.ornt), contiguous=False)
    if affine_difference(back_affine, input_affine) > AFFINE_ATOL_MM:
        raise RuntimeError(
            f"undoing the orientation gave affine {back_affine.tolist()}, expected the input's "
            f"{np.asarray(input_affine).tolist()}; this is a bug in medseg's inverse geometry"
        )
    return back


def input_shape(prepared: PreparedCase) -> tuple[int, int, int]:
    """The input's spatial shape, from the canonical shape and the orientation transform."""
    x, y, z = (int(n) for n in to_canonical(prepared.canonical_shape, inverse_ornt(prepared.ornt)))
    return x, y, z
