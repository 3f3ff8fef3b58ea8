"""Deterministic preprocessing shared by training and inference, with its exact inverse.

Training and prediction must see identical inputs, and predictions must go back to the
input's exact geometry. We therefore implement the deterministic steps here, as plain
functions on (C, X, Y, Z) arrays with their affines, instead of MONAI's invertible dict
transforms: the inverse of each step is explicit and cheap (orientation is a lossless
flip/permute, resampling is the same interpolation run backwards on the same grid
definition), and inference never has to keep MONAI's transform stack or full-resolution
logits alive (the memory blow-up of ``Invertd`` on large CTs).

Grid convention for resampling: the field of view is kept (``align_corners=False``):
``n`` voxels of spacing ``s`` become ``n'`` voxels of spacing ``s * n / n'``, and the
affine is updated accordingly, so resampling back to ``n`` voxels is the exact inverse grid.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.grid import canonical_transform, label_dtype, reorient, voxel_spacing
from medseg.utils import atomic_write_text


@dataclass
class PreprocessingPlan:
    """Everything needed to preprocess a case identically at training and inference.

    Saved as ``preprocessing.json`` in every run directory; the predictor reads it so
    nothing has to be re-specified at inference time.
    """

    target_spacing: list[float]
    """mm, canonical (RAS) axis order."""
    normalization: str
    """'zscore' (per case, per channel), 'ct' (clip + dataset z-score) or 'none'."""
    channel_names: list[str] = field(default_factory=lambda: ["image"])
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0})
    ct_clip: list[float] | None = None
    ct_mean: float = 0.0
    ct_std: float = 1.0
    crop_foreground: bool = True

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1

    def save(self, path: Path | str) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path | str) -> PreprocessingPlan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


# ------------------------------------------------------------------ resampling


def target_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: list[float]) -> tuple[int, int, int]:
    """Voxel count after resampling ``shape`` at ``spacing`` (mm) to ``target`` (mm)."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


def resampled_affine(affine: np.ndarray, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """Affine of the same field of view sampled with ``new_shape`` voxels (align_corners=False)."""
    scale = np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    return affine @ step


def resample(array: np.ndarray | torch.Tensor, new_shape: tuple[int, ...], order: int = 1) -> torch.Tensor:
    """Resample a (C, X, Y, Z) array to ``new_shape`` (order 1: trilinear, 0: nearest).

    Returns a float32 tensor; when the shape is unchanged the data is returned as is.
    """
    t = torch.as_tensor(array)
    if t.dtype != torch.float32:
        t = t.float()
    if tuple(t.shape[-3:]) == tuple(new_shape):
        return t
    mode = "trilinear" if order == 1 else "nearest-exact"
    kwargs: dict[str, Any] = {"align_corners": False} if order == 1 else {}
    return F.interpolate(t[None], size=tuple(int(s) for s in new_shape), mode=mode, **kwargs)[0]


SLAB_BYTES = 64 * 2**20
"""An image whose float32 copy is larger is resampled in slabs along Z (:func:`resample_image`)."""


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


def resample_image(array: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear (``align_corners=False``) resampling of a (C, X, Y, Z) image of any real
    dtype (a strided view is fine) into a new float32 array (C, *new_shape).

    Up to :data:`SLAB_BYTES` of float32 this is :func:`resample` on one float32 copy. A larger
    image (a CT: 157 MB as int16, 315 MB as float32) goes in slabs along Z: each slab is
    converted, interpolated along Z with :func:`linear_taps` and then in-plane by its
    bilinear mode, so no float32 copy of the whole input ever exists. The result equals the
    one-pass trilinear interpolation up to float rounding (separable weights; exact where an
    axis keeps its size).
    """
    c, x, y, z = array.shape
    shape = tuple(int(s) for s in new_shape)
    if c * x * y * z * 4 <= SLAB_BYTES:
        return resample(np.array(array, dtype=np.float32, order="C"), shape, order=1).numpy()
    nx, ny, nz = shape
    out = np.empty((c, nx, ny, nz), dtype=np.float32)
    i0, i1, lam = linear_taps(z, nz)
    step = max(1, SLAB_BYTES // (c * x * y * 4 * 2))  # output slices per slab (<= 2 source slices each)
    for a in range(0, nz, step):
        b = min(nz, a + step)
        lo, hi = int(i0[a]), int(i1[b - 1]) + 1
        # Z-major (slices, C, X, Y): whole planes are contiguous for the gathers and the bilinear pass
        slab = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array[..., lo:hi], -1, 0), dtype=np.float32))
        w = torch.from_numpy(lam[a:b]).view(-1, 1, 1, 1)
        along_z = slab.index_select(0, torch.from_numpy(i0[a:b] - lo))
        along_z += (slab.index_select(0, torch.from_numpy(i1[a:b] - lo)) - along_z) * w  # t0 + (t1 - t0) w
        del slab
        if (x, y) != (nx, ny):
            along_z = F.interpolate(along_z, size=(nx, ny), mode="bilinear", align_corners=False)
        out[..., a:b] = np.moveaxis(along_z.numpy(), 0, -1)
    return out


# ------------------------------------------------------------------ intensity


def normalize(image: np.ndarray, plan: PreprocessingPlan) -> np.ndarray:
    """Normalise a (C, X, Y, Z) float32 image in place per the plan.

    zscore: per channel over the non-zero region when the image has a zero background
    (under 90% non-zero voxels, as in skull-stripped MRI; background stays 0), else over
    all voxels. ct: clip to ``ct_clip`` then subtract/divide the dataset's foreground
    mean/std.
    """
    if plan.normalization == "none":
        return image
    if plan.normalization == "ct":
        lo, hi = plan.ct_clip if plan.ct_clip is not None else (-1024.0, 3071.0)
        np.clip(image, lo, hi, out=image)
        image -= plan.ct_mean
        image /= max(plan.ct_std, 1e-8)
        return image
    for c in range(image.shape[0]):
        chan = image[c]
        mask = chan != 0
        use_mask = 0 < mask.mean() < 0.9
        values = chan[mask] if use_mask else chan
        mean, std = float(values.mean()), float(values.std())
        if use_mask:
            chan[mask] = (chan[mask] - mean) / max(std, 1e-8)
        else:
            chan -= mean
            chan /= max(std, 1e-8)
    return image


# ------------------------------------------------------------------ cropping


def foreground_bbox(image: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Bounding box of voxels that are non-zero in any channel of a (C, X, Y, Z) image.

    The whole volume when everything is zero (or nothing is zero).
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


# ------------------------------------------------------------------ whole case


@dataclass
class PreparedCase:
    """A case on the network's grid, plus what is needed to map results back."""

    image: np.ndarray
    """(C, X', Y', Z') float32, canonical orientation, target spacing, normalised."""
    label: np.ndarray | None
    """(X', Y', Z') uint8 (uint16 above label 255) on the same grid, when a label was given."""
    ornt: np.ndarray
    """Orientation transform applied (input -> RAS)."""
    canonical_shape: tuple[int, int, int]
    """Spatial shape after reorientation, before cropping and resampling."""
    bbox: tuple[slice, slice, slice]
    """Crop applied on the canonical grid."""
    affine: np.ndarray
    """Affine of the prepared grid (RAS mm)."""


def prepare_case(
    image: np.ndarray,
    affine: np.ndarray,
    plan: PreprocessingPlan,
    label: np.ndarray | None = None,
) -> PreparedCase:
    """Reorient to RAS, crop to the non-zero region, resample to the plan's spacing, normalise.

    ``image``: (C, X, Y, Z) or (X, Y, Z) of any real dtype, left unchanged; ``label``:
    (X, Y, Z) integer or None.
    """
    if image.ndim == 3:
        image = image[None]
    ornt = canonical_transform(affine)
    # flips and axis swaps as a view of the caller's array, whatever its dtype (int16 CT):
    # the float32 copy below is the only full-size copy of the input
    img, can_affine = reorient(image, affine, ornt, contiguous=False)
    lab = reorient(label, affine, ornt)[0] if label is not None else None
    canonical_shape = img.shape[1:]
    bbox = foreground_bbox(img) if plan.crop_foreground else tuple(slice(0, n) for n in canonical_shape)
    img = img[(slice(None), *bbox)]
    if lab is not None:
        lab = lab[bbox]
    offset = np.eye(4)
    offset[:3, 3] = [b.start for b in bbox]
    crop_affine = can_affine @ offset
    new_shape = target_shape(img.shape[1:], voxel_spacing(crop_affine), plan.target_spacing)
    # a new array even for a float32 input: normalisation below works in place and must
    # never change the caller's image
    img_t = resample_image(img, new_shape)
    out_affine = resampled_affine(crop_affine, img.shape[1:], new_shape)
    if lab is not None:
        lab = resample(lab[None].astype(np.float32), new_shape, order=0)[0].numpy().astype(label_dtype(int(lab.max(initial=0))))
    img_t = normalize(np.ascontiguousarray(img_t, dtype=np.float32), plan)
    return PreparedCase(img_t, lab, ornt, canonical_shape, bbox, out_affine)  # type: ignore[arg-type]
