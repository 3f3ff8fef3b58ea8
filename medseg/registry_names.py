"""Names of the registered networks, augmentation presets and losses.

Kept free of heavy imports so that configs are validated before torch/MONAI load. The
factories behind these names live in medseg.models.registry, medseg.data.augmentation and
medseg.training.losses; a test checks that both lists agree.
"""

from __future__ import annotations

NETWORK_NAMES: tuple[str, ...] = ("unet", "attention_unet", "residual_unet", "dynunet", "segresnet")
AUGMENTATION_PRESETS: tuple[str, ...] = ("none", "light", "limited_data")
LOSS_NAMES: tuple[str, ...] = ("dice", "dice_ce", "dice_focal")
