"""Boundary IoU (Cheng et al., CVPR 2021) on anisotropic voxel grids.

The inner boundary band of width d (mm) of a mask G is the set of voxels of G whose centre
lies within d of the centre of a voxel outside G (outside the image counts as outside);
voxels with a face neighbour outside G always belong to it, so the band is never empty
when d is smaller than the spacing. Boundary IoU = |B(G) ∩ B(P)| / |B(G) ∪ B(P)|.

Each band is computed on its mask's own bounding box, by eroding with the set of voxel
offsets within d (a few shifted ANDs), or with a distance transform when that set is large.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medseg.evaluation.surface import Box

_MAX_SHIFTS = 64  # above this many offsets, a distance transform is faster than shifted ANDs
_FACES = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def band_offsets(spacing: tuple[float, float, float], width_mm: float) -> list[tuple[int, int, int]]:
    """Voxel offsets (other than 0) within ``width_mm``, plus the six face neighbours."""
    reach = [math.floor(width_mm / s) for s in spacing]
    ranges = [np.arange(-r, r + 1) for r in reach]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.sqrt(((grid * np.asarray(spacing)) ** 2).sum(axis=1))
    within = grid[(dist <= width_mm) & (dist > 0)]
    inside: set[tuple[int, int, int]] = {(int(a), int(b), int(c)) for a, b, c in within}
    return sorted(inside | set(_FACES))


def _erode(crop: np.ndarray, offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """Voxels of ``crop`` whose every offset neighbour is inside (outside the crop is outside)."""
    r = [max(abs(o[k]) for o in offsets) for k in range(3)]
    padded = np.pad(crop, [(v, v) for v in r])
    eroded = crop.copy()
    n0, n1, n2 = crop.shape
    for a, b, c in offsets:
        eroded &= padded[r[0] + a : r[0] + a + n0, r[1] + b : r[1] + b + n1, r[2] + c : r[2] + c + n2]
    return eroded


def inner_band(crop: np.ndarray, spacing: tuple[float, float, float], width_mm: float) -> np.ndarray:
    """The inner boundary band (bool, same shape) of a boolean mask ``crop`` that holds the
    whole mask (everything outside the crop is outside the mask)."""
    crop = crop.astype(bool, copy=False)
    offsets = band_offsets(spacing, width_mm)
    if len(offsets) <= _MAX_SHIFTS:
        return crop & ~_erode(crop, offsets)
    face_band = crop & ~_erode(crop, _FACES)
    dist = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return face_band | (crop & (dist <= width_mm))


def _overlap(a: Box, b: Box) -> tuple[Box, Box] | None:
    """The slices of boxes ``a`` and ``b`` (each relative to itself) covering their overlap."""
    lo = [max(x.start, y.start) for x, y in zip(a, b, strict=True)]
    hi = [min(x.stop, y.stop) for x, y in zip(a, b, strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return None
    in_a = tuple(slice(low - x.start, h - x.start) for low, h, x in zip(lo, hi, a, strict=True))
    in_b = tuple(slice(low - y.start, h - y.start) for low, h, y in zip(lo, hi, b, strict=True))
    return in_a, in_b  # type: ignore[return-value]


def boundary_iou(
    ref_crop: np.ndarray,
    ref_box: Box,
    pred_crop: np.ndarray,
    pred_box: Box,
    spacing: tuple[float, float, float],
    width_mm: float,
) -> float:
    """Boundary IoU of two masks given as crops over their own bounding boxes (voxels)."""
    band_ref = inner_band(ref_crop, spacing, width_mm)
    band_pred = inner_band(pred_crop, spacing, width_mm)
    n_ref, n_pred = int(band_ref.sum()), int(band_pred.sum())
    overlap = _overlap(ref_box, pred_box)
    both = 0 if overlap is None else int((band_ref[overlap[0]] & band_pred[overlap[1]]).sum())
    union = n_ref + n_pred - both
    return both / union if union else math.nan
