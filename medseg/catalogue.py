"""The declarative catalogue of what a pipeline may name: networks, augmentation presets (with
their transforms), losses. Torch-free, so that ``medseg.config`` validates a pipeline against it
before any heavy import or compute.

The factories behind these names live in :mod:`medseg.models.registry`,
:mod:`medseg.data.augmentation` and :mod:`medseg.training.losses`; each checks at import
that it implements exactly what is listed here, and ``medseg.models.options`` lists which
model options each network honours.
"""

from __future__ import annotations

NETWORK_NAMES: tuple[str, ...] = ("unet", "attention_unet", "residual_unet", "dynunet", "segresnet")

AUGMENTATION_PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "light": ("flip", "affine", "intensity_scale", "intensity_shift", "noise"),
    "limited_data": ("flip", "affine", "elastic", "noise", "blur", "contrast", "gamma", "bias_field",
                     "low_resolution"),
}
"""preset -> the transforms whose probability ``data.augmentation_probabilities`` may set."""

LOSS_NAMES: tuple[str, ...] = ("dice", "dice_ce", "dice_focal")
WEIGHTED_LOSSES: tuple[str, ...] = ("dice_ce", "dice_focal")
"""Losses with a cross-entropy / focal term that ``loss.class_weights`` weights."""
