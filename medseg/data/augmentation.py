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

Rotation/scaling ("affine") and elastic deformation ("elastic") keep separate, overridable
probabilities but run as one resampling (``medseg.data.spatial_augment``), which is what
makes ``limited_data`` affordable on a CPU (~5 ms per 40x56x40 patch instead of ~23 ms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monai import transforms as mt

from medseg.catalogue import AUGMENTATION_PRESETS
from medseg.config import ConfigError, suggest
from medseg.data.spatial_augment import RandSpatialAugmentd

KEYS = ("image", "label")


@dataclass(frozen=True)
class Patch:
    """What a builder needs to know about the patches it augments."""

    dims: int
    """Spatial dimensions of a patch (2 or 3)."""
    size: tuple[int, ...]
    """Patch size in voxels."""
    probs: dict[str, float]
    """Every entry's resolved probability (an entry may build another's transform)."""
    mirror_axes: tuple[int, ...]
    """Patch axes (0-based spatial) that may be mirrored."""
    label_mode: str
    """Interpolation of label maps in spatial transforms (see RandSpatialAugmentd)."""


Builder = Callable[[float, Patch], list[mt.Transform]]


@dataclass(frozen=True)
class Entry:
    name: str
    prob: float
    build: Builder
    """(probability, patch description) -> transforms."""
    carries: tuple[str, ...] = ()
    """Other entries whose transform this entry builds (it is built when any of them fires)."""


def _flip(p: float, patch: Patch) -> list[mt.Transform]:
    return [mt.RandFlipd(KEYS, prob=p, spatial_axis=axis) for axis in patch.mirror_axes]


def _spatial(rot_deg: float, scale: tuple[float, float]) -> Builder:
    """Rotation/scaling, fused with the preset's elastic deformation (if any) into one resampling."""

    def build(p: float, patch: Patch) -> list[mt.Transform]:
        return [
            RandSpatialAugmentd(
                KEYS,
                patch.size,
                modes=("bilinear", patch.label_mode),
                affine_prob=p,
                rotate_deg=rot_deg,
                scale_range=scale,
                elastic_prob=patch.probs.get("elastic", 0.0),
            )
        ]

    return build


def _folded_into_spatial(p: float, patch: Patch) -> list[mt.Transform]:
    """Elastic deformation is drawn by the spatial transform of the "affine" entry."""
    return []


def _intensity(factory: Callable[[float], mt.Transform]) -> Builder:
    return lambda p, patch: [factory(p)]


def _low_res(p: float, patch: Patch) -> list[mt.Transform]:
    mode = "bilinear" if patch.dims == 2 else "trilinear"
    return [mt.RandSimulateLowResolutiond(("image",), prob=p, zoom_range=(0.5, 1.0), upsample_mode=mode)]


PRESETS: dict[str, list[Entry]] = {
    "none": [],
    "light": [
        Entry("flip", 0.5, _flip),
        Entry("affine", 0.2, _spatial(15.0, (0.9, 1.1))),
        Entry("intensity_scale", 0.15, _intensity(lambda p: mt.RandScaleIntensityd("image", factors=0.1, prob=p))),
        Entry("intensity_shift", 0.15, _intensity(lambda p: mt.RandShiftIntensityd("image", offsets=0.1, prob=p))),
        Entry("noise", 0.1, _intensity(lambda p: mt.RandGaussianNoised("image", prob=p, std=0.05))),
    ],
    "limited_data": [
        Entry("flip", 0.5, _flip),
        Entry("affine", 0.25, _spatial(30.0, (0.7, 1.4)), carries=("elastic",)),
        Entry("elastic", 0.2, _folded_into_spatial),
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
if {k: tuple(e.name for e in v) for k, v in PRESETS.items()} != AUGMENTATION_PRESETS:  # pragma: no cover - guards config validation
    raise RuntimeError("medseg.catalogue.AUGMENTATION_PRESETS is out of date")


LABEL_MODES = {"linear": "label_linear", "nearest": "nearest"}
"""data.label_resampling -> RandSpatialAugmentd's label interpolation mode."""


def preset_probabilities(name: str) -> dict[str, float]:
    """The default per-transform probabilities of a preset."""
    return {e.name: e.prob for e in PRESETS[name]}


def build_augmentation(
    name: str,
    spatial_dims: int,
    patch_size: tuple[int, ...],
    overrides: dict[str, float] | None = None,
    mirror_axes: Sequence[int] | None = None,
    label_resampling: str = "linear",
) -> mt.Compose:
    """Compose the preset's transforms with probabilities from ``overrides`` where given.

    ``mirror_axes``: the patch axes (0-based spatial) that "flip" may mirror, each with the
    flip probability independently (None: all; see :func:`medseg.config.patch_mirror_axes`).
    ``label_resampling``: "linear" (per-label masks interpolated, nnU-Net's order 1) or
    "nearest", for label maps in the rotation/scaling/elastic resampling.

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
    probs = {e.name: overrides.get(e.name, e.prob) for e in entries}
    axes = tuple(range(spatial_dims)) if mirror_axes is None else tuple(mirror_axes)
    if any(not 0 <= a < spatial_dims for a in axes):
        raise ConfigError(f"mirror axes {axes}: a {spatial_dims}D patch has axes 0..{spatial_dims - 1}")
    if label_resampling not in LABEL_MODES:
        raise ConfigError(
            f"data.label_resampling: {label_resampling!r}; expected one of {', '.join(LABEL_MODES)}."
            + suggest(label_resampling, LABEL_MODES)
        )
    patch = Patch(spatial_dims, tuple(patch_size), probs, axes, LABEL_MODES[label_resampling])
    transforms: list[mt.Transform] = []
    for entry in entries:
        if any(probs[n] > 0 for n in (entry.name, *entry.carries)):
            transforms.extend(entry.build(probs[entry.name], patch))
    return mt.Compose(transforms)
