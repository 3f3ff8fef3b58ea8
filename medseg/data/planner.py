"""``medseg plan``: dataset fingerprint -> a proposed pipeline (only non-default fields).

Target spacing is the median spacing; the patch covers the median (cropped) case shape at
that spacing, rounded to the network's divisibility and capped at a voxel budget sized
for CPU training (96^3 ~ 0.9 M voxels), shrinking the longest axis first (nnU-Net's rule).

Mirroring is restricted to the axes along which the structures have no consistent order
(:func:`propose_mirror_axes`): when one structure lies anterior of another in (nearly)
every case, as the hippocampus head lies anterior of its tail, or left of another, as the
liver lies right of the spleen, a mirror image along that axis is impossible anatomy and
teaches the network to ignore a cue it needs (TotalSegmentator switches mirroring off for
its left/right classes for the same reason).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.data.fingerprint import Fingerprint, compute_fingerprint
from medseg.data.manifest import Manifest

MAX_PATCH_VOXELS = 96**3
ORDER_CONSISTENCY = 0.9
"""Fraction of cases in which two structures must lie in the same order along an axis."""
MIN_ORDER_CASES = 3
MIN_ORDER_SHARE = 0.3
"""Part of two structures' separation (|component| / distance) that an ordered axis carries."""


def propose_patch(median_shape_vox: list[float], levels: int, budget: int = MAX_PATCH_VOXELS) -> list[int]:
    """Patch size (voxels) covering the median shape, divisible by 2^(levels-1), within budget."""
    factor = 2 ** (levels - 1)
    patch = [max(factor, int(np.ceil(s / factor)) * factor) for s in median_shape_vox]
    while int(np.prod(patch)) > budget:
        axis = int(np.argmax(patch))
        if patch[axis] <= factor:
            break
        patch[axis] -= factor
    return patch


def propose_mirror_axes(fp: Fingerprint) -> list[int]:
    """Canonical axes (0=X, 1=Y, 2=Z) along which mirroring keeps the anatomy plausible.

    An axis is left out when, for some pair of structures, the offset between their
    centroids (i) has the same sign along it in at least 90 % of the >= 3 cases holding
    both, (ii) is a large part of their separation (median |component| / distance >= 0.3)
    and (iii) spans at least two voxels (median). One-structure datasets mirror every axis.
    """
    spacing = fp.median_spacing if fp.spacings else [1.0, 1.0, 1.0]
    offsets: dict[tuple[int, int], list[np.ndarray]] = {}
    for case in fp.centroids:
        ids = sorted(case)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                offsets.setdefault((a, b), []).append(np.subtract(case[a], case[b]))
    ordered: set[int] = set()
    for pair in offsets.values():
        if len(pair) < MIN_ORDER_CASES:
            continue
        values = np.stack(pair)  # (cases, 3) mm
        share = np.abs(values) / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-6)
        for axis in range(3):
            v = values[:, axis]
            consistent = max(np.mean(v > 0), np.mean(v < 0)) >= ORDER_CONSISTENCY
            if consistent and np.median(share[:, axis]) >= MIN_ORDER_SHARE and np.median(np.abs(v)) >= 2 * spacing[axis]:
                ordered.add(axis)
    return [axis for axis in range(3) if axis not in ordered]


def proposed_network(levels: int) -> dict[str, Any]:
    """MONAI's DynUNet (nnU-Net's architecture: two convolutions per level in the encoder and
    the decoder, deep supervision) with thin levels 8-16-32-64-128(-256...), ``levels - 1``
    down-samplings below full resolution and a last level that keeps its input resolution:
    the hippocampus benchmark's network. It learned more per step than MONAI's UNet with a
    full-resolution level and ended higher at the same 30-minute CPU budget in fewer steps
    (benchmarks/RESULTS.md)."""
    return {"name": "dynunet", "spatial_dims": 3, "channels": [8 * 2**i for i in range(levels + 1)],
            "strides": [2] * (levels - 1) + [1], "deep_supervision": True}


def propose_pipeline(manifest: Manifest, fingerprint: Fingerprint | None = None, levels: int = 4) -> dict[str, Any]:
    """A pipeline dict: the fingerprint's target spacing, patch size, normalisation and mirror
    axes, with the recipe of the hippocampus benchmark (thin DynUNet with deep supervision,
    limited_data augmentation, precision chosen for the machine)."""
    fp = fingerprint or compute_fingerprint(manifest.training)
    spacing = fp.median_spacing
    shapes_mm = np.asarray(fp.shapes, dtype=float) * np.asarray(fp.spacings, dtype=float)
    median_vox = list(np.median(shapes_mm, axis=0) / np.asarray(spacing))
    patch = propose_patch(median_vox, levels)
    normalization = "ct" if manifest.is_ct else "zscore"
    data: dict[str, Any] = {
        "manifest": str(manifest.path),
        "target_spacing": [round(s, 4) for s in spacing],
        "normalization": normalization,
        "patch_size": patch,
    }
    mirror = propose_mirror_axes(fp)
    if mirror != [0, 1, 2]:
        data["mirror_axes"] = mirror
    if normalization == "ct":
        values = np.asarray(fp.foreground_intensities or [0.0])
        data["ct_clip"] = [round(float(np.percentile(values, 0.5)), 1), round(float(np.percentile(values, 99.5)), 1)]
    # batch 2, as nnU-Net's minimum: on the hippocampus benchmark it beat batch 4 even for a
    # small patch (twice the optimiser steps for the same cases seen)
    data["batch_size"] = 2
    data["augmentation"] = "limited_data"
    return {
        "name": manifest.name.lower().replace(" ", "_"),
        "data": data,
        "model": proposed_network(levels),
        "trainer": {"precision": "auto"},
    }
