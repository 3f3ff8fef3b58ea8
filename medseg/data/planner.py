"""``medseg plan``: dataset fingerprint -> a proposed pipeline (only non-default fields).

Target spacing is the median spacing; the patch covers the median (cropped) case shape at
that spacing, rounded to the network's divisibility and capped at a voxel budget sized
for CPU training (96^3 ~ 0.9 M voxels), shrinking the longest axis first (nnU-Net's rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.data.fingerprint import Fingerprint, compute_fingerprint
from medseg.data.manifest import Manifest

MAX_PATCH_VOXELS = 96**3


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


def propose_pipeline(manifest: Manifest, fingerprint: Fingerprint | None = None, levels: int = 4) -> dict[str, Any]:
    """A pipeline dict with the fingerprint's target spacing, patch size and normalisation."""
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
    if normalization == "ct":
        values = np.asarray(fp.foreground_intensities or [0.0])
        data["ct_clip"] = [round(float(np.percentile(values, 0.5)), 1), round(float(np.percentile(values, 99.5)), 1)]
    return {
        "name": manifest.name.lower().replace(" ", "_"),
        "data": data,
        "model": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 64, 128][:levels] + [256] * max(0, levels - 4)},
    }
