"""Patch sampling with foreground oversampling (nnU-Net style), 3D or 2D/2.5D.

Random parameter sampling (:func:`sample_center`) is kept apart from the deterministic
crop (:func:`crop_patch`), so the crop can be tested with hand-picked centres.

With probability ``foreground_ratio`` a patch is centred on a voxel of a foreground class
chosen uniformly among the classes present in the case (so a small lesion is sampled as
often as a large organ); otherwise the centre is uniform over the volume.
"""

from __future__ import annotations

import numpy as np

MAX_LOCATIONS_PER_CLASS = 10_000


def class_locations(label: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to 10k voxel indices (N, 3) per foreground class of a (X, Y, Z) label map."""
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for cls in np.unique(label):
        if cls == 0:
            continue
        idx = np.argwhere(label == cls)
        if len(idx) > MAX_LOCATIONS_PER_CLASS:
            idx = idx[rng.choice(len(idx), MAX_LOCATIONS_PER_CLASS, replace=False)]
        out[int(cls)] = idx.astype(np.int32)
    return out


def sample_center(
    shape: tuple[int, int, int],
    locations: dict[int, np.ndarray],
    foreground_ratio: float,
    rng: np.random.Generator,
) -> tuple[int, int, int]:
    """Pick a patch centre (voxel indices) in a volume of ``shape``."""
    if locations and rng.random() < foreground_ratio:
        cls = list(locations)[rng.integers(len(locations))]
        pts = locations[cls]
        return tuple(int(v) for v in pts[rng.integers(len(pts))])  # type: ignore[return-value]
    return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]


def crop_patch(array: np.ndarray, center: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """Crop ``size`` voxels around ``center`` from (C, *spatial), zero-padding outside.

    The patch is shifted to stay inside the volume where the volume is large enough, so a
    centre near the border still gives a patch that is mostly image.
    """
    spatial = array.shape[1:]
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(center, size, spatial, strict=True):
        start = c - s // 2
        start = min(max(start, 0), n - s) if n >= s else (n - s) // 2
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    locations: dict[int, np.ndarray],
    patch_size: tuple[int, ...],
    foreground_ratio: float,
    rng: np.random.Generator,
    slice_axis: int = 2,
    slab_slices: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample one training patch: image (C', *patch), label (1, *patch).

    3D (``len(patch_size) == 3``): a (C, px, py, pz) box. 2D: a slab of ``slab_slices``
    slices along ``slice_axis`` around the centre; its slices become channels
    (C * slab_slices), and the label is the centre slice.
    """
    center = sample_center(label.shape, locations, foreground_ratio, rng)  # type: ignore[arg-type]
    if len(patch_size) == 3:
        return crop_patch(image, center, patch_size), crop_patch(label[None], center, patch_size)
    size3 = list(patch_size)
    size3.insert(slice_axis, slab_slices)
    img = crop_patch(image, center, tuple(size3))
    lab = crop_patch(label[None], center, tuple(size3))
    img = np.moveaxis(img, 1 + slice_axis, 1).reshape(-1, *patch_size)  # (C*slab, H, W)
    lab = np.take(lab, slab_slices // 2, axis=1 + slice_axis)
    return img, lab
