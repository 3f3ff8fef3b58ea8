"""Class probabilities on the network grid -> a label map in the input's exact geometry.

The inverse of :func:`medseg.data.preprocess.prepare_case`, step by step:

1. resample the probabilities (K, X', Y', Z') back to the cropped canonical grid and take
   the argmax there (:func:`resample_argmax`), slab by slab so that full-resolution
   probabilities for all classes never exist at once (a 512x512x300 CT with 41 classes
   would need 13 GB for them);
2. paste the labels into the full canonical grid, background outside the crop;
3. undo the reorientation with ``inverse_ornt`` (a lossless flip/permute).

Resampling uses the same linear interpolation and field-of-view convention
(``align_corners=False``) as the forward resampling, so the network grid maps back onto
exactly the input's voxel centres. Trilinear interpolation is separable: we interpolate
along Z with explicit two-tap weights (the same formula as PyTorch), then in-plane with
``F.interpolate(mode="bilinear")`` over a slab of Z slices; the result equals
``F.interpolate(mode="trilinear")`` on the whole volume up to float rounding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, inv_ornt_aff

from medseg.data.preprocess import PreparedCase, inverse_ornt

SLAB_BYTES = 64 * 2**20
"""Memory budget (bytes) of one slab of full-resolution probabilities."""


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-tap linear interpolation from ``n_in`` to ``n_out`` samples, align_corners=False.

    Returns (i0, i1, w1): output sample j is ``(1 - w1[j]) * x[i0[j]] + w1[j] * x[i1[j]]``.
    Same convention as PyTorch's ``F.interpolate(..., align_corners=False)``: the source
    coordinate of output j is ``(j + 0.5) * n_in / n_out - 0.5``, clamped at 0.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def _slab_size(num_classes: int, plane: int, z_out: int) -> int:
    per_slice = max(1, num_classes * plane * 4 * 2)  # probabilities + interpolation temporaries
    return int(max(1, min(z_out, SLAB_BYTES // per_slice)))


def resample_argmax(probs: torch.Tensor, shape: tuple[int, int, int], dtype: type = np.uint8) -> np.ndarray:
    """Argmax over classes of ``probs`` (K, X', Y', Z') linearly resampled to ``shape``.

    Works in slabs of output Z slices (about :data:`SLAB_BYTES` each), so peak extra
    memory is one slab, not K full-resolution volumes. Returns an (X, Y, Z) array of class
    indices; when resampled it is in Fortran order (X fastest: NIfTI's on-disk order, so
    no full-resolution transpose is ever needed).
    """
    probs = probs.float()
    k, *src_shape = probs.shape
    if tuple(src_shape) == tuple(shape):
        return running_argmax(probs[None])[0].numpy().astype(dtype, copy=False)
    # (Z', K, Y', X'): a slab of Z is contiguous, and planes come out as (Y, X).
    zkyx = probs.permute(3, 0, 2, 1).contiguous()
    out_zyx: np.ndarray = np.empty((shape[2], shape[1], shape[0]), dtype=dtype)
    i0, i1, w1 = linear_taps(src_shape[2], shape[2])
    same_z = src_shape[2] == shape[2]
    same_plane = tuple(src_shape[:2]) == tuple(shape[:2])
    step = _slab_size(k, shape[0] * shape[1], shape[2])
    for z0 in range(0, shape[2], step):
        z1 = min(shape[2], z0 + step)
        if same_z:
            slab = zkyx[z0:z1]
        else:  # linear along Z with PyTorch's taps: (1 - w) * a + w * b
            w = torch.from_numpy(w1[z0:z1]).view(-1, 1, 1, 1)
            a = zkyx[torch.from_numpy(i0[z0:z1])]
            b = zkyx[torch.from_numpy(i1[z0:z1])]
            slab = a.mul_(1.0 - w).add_(b.mul_(w))  # (dz, K, Y', X')
        if not same_plane:
            slab = F.interpolate(slab, size=(shape[1], shape[0]), mode="bilinear", align_corners=False)
        out_zyx[z0:z1] = running_argmax(slab).numpy()
    return out_zyx.transpose(2, 1, 0)


def running_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 1 of (N, K, ...) as a running max over classes; uint8 (int16 above 255 classes).

    Same result as ``scores.argmax(1)`` (the first class wins ties) but about 10x faster on
    CPU for small K, where torch reduces over a non-contiguous dimension slowly.
    """
    k = scores.shape[1]
    best = scores[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8 if k <= 256 else torch.int16, device=scores.device)
    for c in range(1, k):
        better = scores[:, c] > best
        best = torch.maximum(best, scores[:, c])
        index.masked_fill_(better, c)
    return index


def labels_to_input(labels_crop: np.ndarray, prepared: PreparedCase, input_affine: np.ndarray) -> np.ndarray:
    """Paste cropped canonical labels into the full canonical grid, then undo the reorientation.

    ``labels_crop``: (X, Y, Z) on the cropped canonical grid (``prepared.bbox``). Returns
    the label map in the input's voxel order and shape (possibly a flipped/transposed
    view, keeping the memory layout of ``labels_crop``). Raises RuntimeError if the grid
    recovered by undoing the orientation is not the input's (a bug, never silent).
    """
    order: Literal["C", "F"] = "F" if labels_crop.flags.f_contiguous and not labels_crop.flags.c_contiguous else "C"
    full = np.zeros(prepared.canonical_shape, dtype=labels_crop.dtype, order=order)
    full[prepared.bbox] = labels_crop
    canonical_affine = np.asarray(input_affine) @ inv_ornt_aff(prepared.ornt, input_shape(prepared))
    inverse = inverse_ornt(prepared.ornt)
    # As preprocess.reorient, without its C-contiguous copy (flips/permutations are views).
    back = apply_orientation(full, inverse)
    back_affine = canonical_affine @ inv_ornt_aff(inverse, full.shape)
    if not np.allclose(back_affine, input_affine, atol=1e-4, rtol=0):
        raise RuntimeError(
            f"undoing the orientation gave affine {back_affine.tolist()}, expected the input's "
            f"{np.asarray(input_affine).tolist()}; this is a bug in medseg's inverse geometry"
        )
    return back


def input_shape(prepared: PreparedCase) -> tuple[int, int, int]:
    """The input's spatial shape, from the canonical shape and the orientation transform."""
    shape = [0, 0, 0]
    for src, (dst, _flip) in enumerate(prepared.ornt):
        shape[src] = prepared.canonical_shape[int(dst)]
    return tuple(shape)  # type: ignore[return-value]
