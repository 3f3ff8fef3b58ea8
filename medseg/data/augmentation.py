"""Augmentation presets for limited-data training, built from MONAI dict transforms.

Each preset is a list of (name, probability, factory) entries; a pipeline selects a preset
by name (``data.augmentation``) and may override any probability by its name
(``data.augmentation_probabilities: {elastic: 0.0, gamma: 0.5}``). Transforms act on
patches ``{"image": (C, *spatial), "label": (1, *spatial)}`` of 2D or 3D data.

Presets:

* ``none``: nothing.
* ``light``: mirroring, mild rotation/scaling, intensity scale/shift, Gaussian noise.
* ``limited_data``: what nnU-Net's default augmentation does, in MONAI terms: mirroring,
  rotation (±30°) and scaling (0.7-1.4), elastic deformation, gamma, contrast, Gaussian
  noise and blur, bias field, and low-resolution simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from monai import transforms as mt

from medseg.config import ConfigError, suggest
from medseg.registry_names import AUGMENTATION_PRESETS

KEYS = ("image", "label")


@dataclass(frozen=True)
class Entry:
    name: str
    prob: float
    build: Callable[[float, int, tuple[int, ...]], list[mt.Transform]]
    """(probability, spatial_dims, patch_size) -> transforms."""


def _flip(p: float, dims: int, patch: tuple[int, ...]) -> list[mt.Transform]:
    return [mt.RandFlipd(KEYS, prob=p, spatial_axis=axis) for axis in range(dims)]


def _affine(rot_deg: float, scale: tuple[float, float]) -> Callable[[float, int, tuple[int, ...]], list[mt.Transform]]:
    def build(p: float, dims: int, patch: tuple[int, ...]) -> list[mt.Transform]:
        r = math.radians(rot_deg)
        rotate = (r,) if dims == 2 else (r, r, r)
        return [
            mt.RandAffined(
                KEYS,
                prob=p,
                rotate_range=rotate,
                scale_range=(scale[0] - 1.0, scale[1] - 1.0),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                spatial_size=patch,
                cache_grid=True,
            )
        ]

    return build


def _elastic(p: float, dims: int, patch: tuple[int, ...]) -> list[mt.Transform]:
    if dims == 2:
        return [mt.Rand2DElasticd(KEYS, spacing=(16, 16), magnitude_range=(1, 3), prob=p, mode=("bilinear", "nearest"))]
    return [
        mt.Rand3DElasticd(
            KEYS, sigma_range=(5, 8), magnitude_range=(50, 150), prob=p, mode=("bilinear", "nearest"), padding_mode="zeros"
        )
    ]


def _intensity(factory: Callable[[float], mt.Transform]) -> Callable[[float, int, tuple[int, ...]], list[mt.Transform]]:
    return lambda p, dims, patch: [factory(p)]


def _low_res(p: float, dims: int, patch: tuple[int, ...]) -> list[mt.Transform]:
    mode = "bilinear" if dims == 2 else "trilinear"
    return [mt.RandSimulateLowResolutiond(("image",), prob=p, zoom_range=(0.5, 1.0), upsample_mode=mode)]


PRESETS: dict[str, list[Entry]] = {
    "none": [],
    "light": [
        Entry("flip", 0.5, _flip),
        Entry("affine", 0.2, _affine(15.0, (0.9, 1.1))),
        Entry("intensity_scale", 0.15, _intensity(lambda p: mt.RandScaleIntensityd("image", factors=0.1, prob=p))),
        Entry("intensity_shift", 0.15, _intensity(lambda p: mt.RandShiftIntensityd("image", offsets=0.1, prob=p))),
        Entry("noise", 0.1, _intensity(lambda p: mt.RandGaussianNoised("image", prob=p, std=0.05))),
    ],
    "limited_data": [
        Entry("flip", 0.5, _flip),
        Entry("affine", 0.25, _affine(30.0, (0.7, 1.4))),
        Entry("elastic", 0.1, _elastic),
        Entry("noise", 0.15, _intensity(lambda p: mt.RandGaussianNoised("image", prob=p, std=0.1))),
        Entry(
            "blur",
            0.15,
            _intensity(
                lambda p: mt.RandGaussianSmoothd(
                    "image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=p
                )
            ),
        ),
        Entry("contrast", 0.15, _intensity(lambda p: mt.RandScaleIntensityd("image", factors=0.25, prob=p))),
        Entry("gamma", 0.3, _intensity(lambda p: mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=p))),
        Entry("bias_field", 0.1, _intensity(lambda p: mt.RandBiasFieldd("image", coeff_range=(0.0, 0.1), prob=p))),
        Entry("low_resolution", 0.15, _low_res),
    ],
}
if tuple(PRESETS) != AUGMENTATION_PRESETS:  # pragma: no cover - guards the names used by config validation
    raise RuntimeError("medseg.registry_names.AUGMENTATION_PRESETS is out of date")


def preset_probabilities(name: str) -> dict[str, float]:
    """The default per-transform probabilities of a preset."""
    return {e.name: e.prob for e in PRESETS[name]}


def build_augmentation(
    name: str, spatial_dims: int, patch_size: tuple[int, ...], overrides: dict[str, float] | None = None
) -> mt.Compose:
    """Compose the preset's transforms with probabilities from ``overrides`` where given.

    An override for a transform that the preset does not have is an error naming the
    valid transform names (a silent no-op would hide a typo).
    """
    if name not in PRESETS:
        raise ConfigError(f"data.augmentation: unknown preset {name!r}." + suggest(name, PRESETS))
    overrides = dict(overrides or {})
    entries = PRESETS[name]
    known = [e.name for e in entries]
    for key in overrides:
        if key not in known:
            raise ConfigError(
                f"data.augmentation_probabilities.{key}: preset {name!r} has no transform {key!r} "
                f"(it has: {', '.join(known) or 'none'})." + suggest(key, known)
            )
    transforms: list[mt.Transform] = []
    for entry in entries:
        p = overrides.get(entry.name, entry.prob)
        if p > 0:
            transforms.extend(entry.build(p, spatial_dims, tuple(patch_size)))
    return mt.Compose(transforms)
