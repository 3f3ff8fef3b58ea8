"""Dataset fingerprint: spacing, size and intensity statistics -> a preprocessing plan.

``medseg plan MANIFEST`` writes a proposed pipeline from this; training calls
:func:`make_plan` to fill what the pipeline leaves open (target spacing = the dataset's
median spacing, CT clip = 0.5/99.5 foreground percentiles, as nnU-Net does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.config import PipelineConfig
from medseg.data.grid import canonical_transform, to_canonical
from medseg.data.io import read_label, read_volume
from medseg.data.manifest import Case, Manifest
from medseg.data.preprocess import PreprocessingPlan

MAX_INTENSITY_SAMPLES = 20_000


@dataclass
class Fingerprint:
    spacings: list[list[float]] = field(default_factory=list)
    """Per case, canonical (RAS) order, mm."""
    shapes: list[list[int]] = field(default_factory=list)
    """Per case, canonical order, voxels."""
    foreground_intensities: list[float] = field(default_factory=list)
    """Sampled first-channel intensities inside the labelled foreground (over whole images
    when no case has a label, as for pretraining data)."""
    centroids: list[dict[int, list[float]]] = field(default_factory=list)
    """Per labelled case: label id -> centre of mass in world (RAS+) coordinates, mm."""

    @property
    def median_spacing(self) -> list[float]:
        return [float(v) for v in np.median(np.asarray(self.spacings), axis=0)]

    @property
    def median_shape(self) -> list[int]:
        return [int(v) for v in np.median(np.asarray(self.shapes), axis=0)]


def class_centroids(label: np.ndarray, affine: np.ndarray) -> dict[int, list[float]]:
    """Centre of mass of each foreground label in world coordinates (mm, RAS+ as in NIfTI)."""
    ids = [int(c) for c in np.unique(label) if c != 0]
    centres = ndimage.center_of_mass(np.ones(label.shape, np.uint8), label, ids)  # one pass over the volume
    return {c: [float(v) for v in affine[:3, :3] @ np.asarray(centre) + affine[:3, 3]] for c, centre in zip(ids, centres, strict=True)}


def compute_fingerprint(cases: list[Case], seed: int = 0) -> Fingerprint:
    """Read every case once (image header + label) and collect the statistics."""
    rng = np.random.default_rng(seed)
    fp = Fingerprint()
    per_case = max(1, MAX_INTENSITY_SAMPLES // max(1, len(cases)))
    whole: list[float] = []
    for case in cases:
        vol = read_volume(case.images[0])
        ornt = canonical_transform(vol.affine)
        fp.spacings.append(to_canonical(vol.spacing, ornt))
        fp.shapes.append([int(v) for v in to_canonical(vol.spatial_shape, ornt)])
        if case.label is not None:
            lab = read_label(case.label).array
            img = vol.array if vol.array.ndim == 3 else vol.array[0]
            if lab.shape == img.shape:
                fp.centroids.append(class_centroids(lab, vol.affine))
                values = img[lab > 0]
                if values.size:
                    take = rng.choice(values.size, min(per_case, values.size), replace=False)
                    fp.foreground_intensities.extend(float(v) for v in values[take])
        elif not fp.foreground_intensities:
            flat = (vol.array if vol.array.ndim == 3 else vol.array[0]).ravel()
            whole.extend(float(v) for v in flat[rng.choice(flat.size, min(per_case, flat.size), replace=False)])
    if not fp.foreground_intensities:
        # Images without labels (pretraining data): intensity statistics over whole images.
        fp.foreground_intensities = whole
    return fp


def make_plan(cfg: PipelineConfig, manifest: Manifest, fingerprint: Fingerprint | None = None) -> PreprocessingPlan:
    """Resolve the preprocessing for ``cfg`` on ``manifest``; fingerprint only what is open."""
    d = cfg.data
    norm = d.normalization
    if norm == "auto":
        norm = "ct" if manifest.is_ct else "zscore"
    if (d.target_spacing is None or norm == "ct") and fingerprint is None:
        fingerprint = compute_fingerprint(manifest.training, seed=cfg.trainer.seed)
    plan = PreprocessingPlan(
        target_spacing=list(d.target_spacing) if d.target_spacing else fingerprint.median_spacing,  # type: ignore[union-attr]
        normalization=norm,
        channel_names=list(manifest.channel_names),
        labels=dict(manifest.labels),
        ct_clip=list(d.ct_clip) if d.ct_clip else None,
        crop_foreground=d.crop_foreground,
    )
    if norm == "ct":
        values = np.asarray(fingerprint.foreground_intensities or [0.0], dtype=np.float64)  # type: ignore[union-attr]
        if plan.ct_clip is None:
            plan.ct_clip = [float(np.percentile(values, 0.5)), float(np.percentile(values, 99.5))]
        clipped = np.clip(values, plan.ct_clip[0], plan.ct_clip[1])
        plan.ct_mean, plan.ct_std = float(clipped.mean()), float(max(clipped.std(), 1e-8))
    return plan
