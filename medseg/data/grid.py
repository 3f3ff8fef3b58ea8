"""The voxel grid: one home for what medseg knows about an image's geometry.

A grid is a spatial shape (X, Y, Z) in voxels plus a 4x4 affine taking voxel indices to RAS+
world coordinates in mm (nibabel's convention, see :mod:`medseg.data.io`). This module holds

* :data:`AFFINE_ATOL_MM`, the one tolerance under which two affines are the same grid;
* :func:`voxel_spacing`: voxel size (mm) along the array axes, from the affine;
* orientation: :func:`canonical_transform` (array axes -> RAS), :func:`reorient` and
  :func:`inverse_ornt` (lossless flips/permutations), :func:`to_canonical` (per-axis values in
  RAS order), :func:`canonical_spacing`, :func:`canonical_shape`, :func:`ras_order`;
* :func:`same_grid` and :func:`affine_difference`: the same-grid check;
* :func:`label_dtype`: the integer type a label map is stored in.

Every other module asks here instead of computing its own ``np.linalg.norm(affine[:3, :3])``
or ``np.allclose(a, b, atol=...)``: a second copy of a tolerance is a bug waiting to diverge.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

AFFINE_ATOL_MM = 1e-3
"""Largest absolute difference (mm) between two affines' entries that still counts as one grid.

1 µm: far below any voxel size, and above what storage loses. NIfTI keeps the sform as float32,
which rounds a coordinate by up to half its step: 1.5e-5 mm between 256 and 512 mm, 3e-5 mm up
to 1,024 mm, 6e-5 mm up to 2,048 mm (an origin of -611.123456 mm came back 1.8e-5 mm off,
measured). The earlier 1e-5 tolerance of the written-mask check therefore removed correct masks
of NRRD/MHA/DICOM inputs whose origin lies beyond 256 mm and is not itself a float32 number (the
sample CT series' origin is one: difference 0); 1e-4 would leave under a factor 2 of margin.
"""

_RAS = nib.orientations.axcodes2ornt("RAS")


# ------------------------------------------------------------------ spacing


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the array's X, Y, Z axes: the lengths of the affine's columns."""
    x, y, z = (float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))
    return x, y, z


# ------------------------------------------------------------------ orientation


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (3, 2) taking the array's axes to RAS.

    Row ``a`` is ``[world axis of array axis a, +1 or -1 flip]`` (nibabel's ``ornt``).
    """
    return nib.orientations.ornt_transform(nib.orientations.io_orientation(np.asarray(affine, float)), _RAS)


def reorient(
    array: np.ndarray, affine: np.ndarray, ornt: np.ndarray, contiguous: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Apply an orientation transform to a (..., X, Y, Z) array; return (array, new affine).

    Lossless: only flips and axis permutations, so world coordinates of every voxel are kept.
    ``contiguous``: return a C-contiguous array (a copy unless ``ornt`` is the identity on a
    contiguous array); False returns a strided view (no memory, for display and pasting).
    """
    spatial = array.shape[-3:]
    lead = array.ndim - 3
    out = array
    # nibabel's apply_orientation works on leading spatial axes; move channels last.
    if lead:
        out = np.moveaxis(out, list(range(lead)), list(range(-lead, 0)))
    out = nib.orientations.apply_orientation(out, ornt)
    if lead:
        out = np.moveaxis(out, list(range(-lead, 0)), list(range(lead)))
    new_affine = np.asarray(affine) @ nib.orientations.inv_ornt_aff(ornt, spatial)
    return (np.ascontiguousarray(out) if contiguous else out), new_affine


def inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``ornt``."""
    inv = np.zeros_like(ornt)
    for src, (dst, flip) in enumerate(ornt):
        inv[int(dst)] = [src, flip]
    return inv


def to_canonical(values: Sequence[float], ornt: np.ndarray) -> list[float]:
    """Per-array-axis ``values`` (spacing, size ...) reordered along the canonical axes.

    ``ornt`` as from :func:`canonical_transform`; flips do not change per-axis values.
    """
    out = [0.0, 0.0, 0.0]
    for src, (dst, _flip) in enumerate(ornt):
        out[int(dst)] = float(values[src])
    return out


def canonical_spacing(affine: np.ndarray) -> list[float]:
    """Voxel size (mm) along the array axes closest to R, A, S (in that order)."""
    return to_canonical(voxel_spacing(affine), canonical_transform(affine))


def canonical_shape(shape: Sequence[int], affine: np.ndarray) -> list[int]:
    """Voxel counts along the array axes closest to R, A, S (in that order)."""
    return [int(v) for v in to_canonical([float(s) for s in shape[-3:]], canonical_transform(affine))]


def ras_order(affine: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Array axis that points along R-L, A-P, S-I (in that order), and each axis's (low, high) letters.

    Returns (perm, letters): ``perm[k]`` is the array axis closest to world axis k;
    ``letters[a]`` is e.g. "LR" for an array axis a whose index grows towards R.
    """
    ornt = canonical_transform(affine)
    perm = np.zeros(3, dtype=int)
    letters = []
    for axis, (world, sign) in enumerate(ornt):
        perm[int(world)] = axis
        pair = ("RL", "AP", "SI")[int(world)]  # (positive, negative) direction letters
        letters.append(pair[1] + pair[0] if sign > 0 else pair)
    return perm, letters


# ------------------------------------------------------------------ same grid


def affine_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference (mm) between two 4x4 affines' entries."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def same_grid(
    shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray,
    atol: float = AFFINE_ATOL_MM,
) -> bool:
    """Same spatial shape (last three entries of each) and affines within ``atol`` mm."""
    if tuple(int(s) for s in shape_a[-3:]) != tuple(int(s) for s in shape_b[-3:]):
        return False
    return affine_difference(affine_a, affine_b) <= atol


# ------------------------------------------------------------------ label dtype


def label_dtype(max_label: int) -> type[np.unsignedinteger]:
    """Storage type of a label map whose largest label id is ``max_label``: uint8 up to 255,
    else uint16 (a class count K needs ``label_dtype(K - 1)``)."""
    if max_label < 0 or max_label > 65535:
        raise ValueError(f"label id {max_label} is outside [0, 65535]; label maps are stored as uint8/uint16")
    return np.uint8 if max_label <= 255 else np.uint16
