"""Rotation, scaling and elastic deformation as one resampling (a MONAI dict transform).

MONAI's ``RandAffined`` followed by ``Rand3DElasticd`` resamples a patch twice, and the
elastic transform smooths a dense full-resolution random field with a wide Gaussian
(~85 ms per 40x56x40 patch on one CPU core, 4x the rest of the augmentation together).
Training on a CPU budget cannot afford that, so this transform does what nnU-Net's and
TorchIO's spatial augmentation do instead:

* the elastic displacement is drawn on a coarse grid of control points (one every
  ``elastic_spacing`` voxels, TorchIO's ``RandomElasticDeformation`` model) and
  interpolated to the patch, which gives a smooth field at a tiny cost;
* rotation, isotropic scaling and the displacement are composed into one sampling grid,
  so the image (linear) and the label are resampled exactly once, from the larger crop
  that the patch sampler draws, into the patch;
* a label map is resampled either by nearest neighbour or, as nnU-Net does (its
  ``order_seg=1``), by linear interpolation of each label's mask followed by the label
  of the largest value: boundaries then follow the rotated/scaled anatomy to sub-voxel
  accuracy instead of the input grid's staircase;
* when neither fires, the patch is a plain centre crop (no resampling at all).

Each part has its own probability (``affine_prob``, ``elastic_prob``), so a preset keeps
one overridable probability per named augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform
from monai.transforms.utils import create_rotate


def rotation_matrix(angles: Sequence[float]) -> torch.Tensor:
    """Rotation by ``angles`` (radians): one angle in 2D, three (about axes 0, 1, 2) in 3D."""
    dims = 2 if len(angles) == 1 else 3
    return torch.as_tensor(create_rotate(dims, list(angles), backend="torch"), dtype=torch.float32)[:dims, :dims]


def _centre_start(crop: Sequence[int], patch: Sequence[int]) -> list[int]:
    """First voxel of a patch centred in the crop (the same on both paths of the transform)."""
    return [(c - p) // 2 for c, p in zip(crop, patch, strict=True)]


class RandSpatialAugmentd(RandomizableTransform, MapTransform):
    """Random rotation + scaling and/or control-point elastic deformation of ``keys``.

    Inputs are channel-first tensors ``(C, *crop)`` with ``crop >= patch_size`` on every
    axis; outputs are ``(C, *patch_size)``, centred on the input. ``modes`` gives the
    interpolation per key: ``"bilinear"`` for images; ``"nearest"`` or ``"label_linear"``
    (each label's mask interpolated linearly, then the label of the largest value) for
    label maps. Points sampled outside the input read zero (label 0).
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        patch_size: Sequence[int],
        modes: Sequence[str],
        affine_prob: float = 0.0,
        rotate_deg: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        elastic_prob: float = 0.0,
        elastic_spacing: int = 12,
        elastic_magnitude: float = 2.5,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(modes) != len(self.keys):
            raise ValueError(f"modes: {len(modes)} given for {len(self.keys)} keys; give one interpolation mode per key")
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"modes: unknown interpolation {mode!r}; expected one of {', '.join(MODES)}")
        self.patch = tuple(int(s) for s in patch_size)
        self.modes = tuple(modes)
        self.affine_prob, self.rotate, self.scale_range = affine_prob, math.radians(rotate_deg), scale_range
        self.elastic_prob, self.elastic_spacing, self.elastic_magnitude = elastic_prob, elastic_spacing, elastic_magnitude
        self._matrix: torch.Tensor | None = None
        self._control: torch.Tensor | None = None
        axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0 for n in self.patch]
        self._coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (dims, *patch), voxels from the centre

    def randomize(self, data: Any = None) -> None:
        dims = len(self.patch)
        self._matrix = None
        self._control = None
        if self.R.rand() < self.affine_prob:
            n_angles = 1 if dims == 2 else 3
            angles = self.R.uniform(-self.rotate, self.rotate, n_angles).tolist()
            scale = float(self.R.uniform(*self.scale_range))
            self._matrix = rotation_matrix(angles) * scale
        if self.R.rand() < self.elastic_prob:
            points = [max(2, math.ceil(s / self.elastic_spacing) + 1) for s in self.patch]
            # Uniform control-point displacements in voxels; their interpolation is smooth.
            control = self.R.uniform(-self.elastic_magnitude, self.elastic_magnitude, (dims, *points))
            self._control = torch.as_tensor(control, dtype=torch.float32)

    def _grid(self, crop: Sequence[int]) -> torch.Tensor:
        """Sampling positions for ``grid_sample``: (1, *patch, dims), normalised to the crop."""
        dims = len(self.patch)
        coords = self._coords
        if self._matrix is not None:
            coords = torch.einsum("ij,j...->i...", self._matrix, coords)
        if self._control is not None:
            mode = "bilinear" if dims == 2 else "trilinear"
            coords = coords + F.interpolate(self._control[None], size=self.patch, mode=mode, align_corners=True)[0]
        # The patch sits where the centre crop would; with align_corners=False voxel i of an
        # axis of length m is at (2 i + 1) / m - 1.
        dims_shape = (dims, *([1] * dims))
        centre = [s + (p - 1) / 2.0 for s, p in zip(_centre_start(crop, self.patch), self.patch, strict=True)]
        size = torch.tensor([float(c) for c in crop]).view(dims_shape)
        normalised = (2.0 * (coords + torch.tensor(centre).view(dims_shape)) + 1.0) / size - 1.0
        # grid_sample wants (x, y[, z]) = the spatial axes in reverse order, last.
        return normalised.flip(0).permute(*range(1, dims + 1), 0)[None]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        first = d[self.keys[0]]
        crop = tuple(first.shape[1:])
        if len(crop) != len(self.patch) or any(c < p for c, p in zip(crop, self.patch, strict=True)):
            raise ValueError(f"input spatial shape {crop} is smaller than the patch {self.patch}; crop at least the patch size")
        if self._matrix is None and self._control is None:
            start = _centre_start(crop, self.patch)
            window = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
            for key in self.keys:
                d[key] = torch.as_tensor(d[key])[(slice(None), *window)]
            return d
        grid = self._grid(crop)
        for key, mode in zip(self.keys, self.modes, strict=True):
            x = torch.as_tensor(d[key])
            if mode == "label_linear":
                d[key] = resample_labels_linear(x, grid)
            else:
                d[key] = F.grid_sample(x.float()[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
        return d


MODES = ("bilinear", "nearest", "label_linear")


def resample_labels_linear(label: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample a (1, *crop) label map at ``grid`` by linear interpolation of each label's mask.

    Every label present (and 0, which points outside the input read) gets its mask
    interpolated; each output voxel takes the label whose mask is largest there (ties go to
    0, then to the lower label). Labels must be non-negative integers. Returns a float
    (1, *patch) map holding the input's label values.
    """
    flat = label.reshape(-1).long()
    if int(flat.min()) < 0:
        raise ValueError(f"label map holds {int(flat.min())}; labels must be non-negative integers")
    counts = torch.bincount(flat)
    counts[0] = 1  # label 0 always takes part: it is what lies outside the input
    values = torch.nonzero(counts).flatten()  # ascending, 0 first
    masks = torch.stack([(label[0] == v).float() for v in values.tolist()])  # (K, *crop)
    weights = F.grid_sample(masks[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    # Largest mask per voxel by running comparisons (argmax over a leading dim of K small
    # maps is several times slower on a CPU); strict ">" leaves ties, and the all-zero
    # outside of the input, to the lower label.
    best, index = weights[0], torch.zeros(weights.shape[1:], dtype=torch.long)
    for k in range(1, len(values)):
        higher = weights[k] > best
        best = torch.where(higher, weights[k], best)
        index[higher] = k
    return values.float()[index][None]
