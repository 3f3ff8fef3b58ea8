"""Loss registry: Dice, Dice + cross-entropy, Dice + focal (MONAI), with deep supervision.

Labels arrive as (B, 1, *spatial) integer maps and are one-hot encoded by MONAI
(``to_onehot_y``); ``include_background`` controls whether the Dice term covers class 0;
``class_weights`` (one per class, background included) weight the CE / focal term;
``batch_dice`` computes Dice over the batch as one volume rather than per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from medseg.catalogue import LOSS_NAMES
from medseg.config import ConfigError, LossConfig, PipelineConfig, suggest
from medseg.config_checks import check_class_count


def _weights(cfg: LossConfig, num_classes: int) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    check_class_count(PipelineConfig(loss=cfg), num_classes)
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def _common(cfg: LossConfig) -> dict[str, object]:
    return {"to_onehot_y": True, "softmax": True, "include_background": cfg.include_background, "batch": cfg.batch_dice,
            "smooth_nr": 1e-5, "smooth_dr": 1e-5}


def _dice(cfg: LossConfig, k: int) -> torch.nn.Module:
    return DiceLoss(**_common(cfg))  # type: ignore[arg-type]


def _dice_ce(cfg: LossConfig, k: int) -> torch.nn.Module:
    return DiceCELoss(weight=_weights(cfg, k), **_common(cfg))  # type: ignore[arg-type]


class DiceSoftmaxFocalLoss(torch.nn.Module):
    """Softmax Dice + softmax focal loss over every class (focal in the place of Dice + CE's CE).

    MONAI's ``DiceFocalLoss`` computes its focal term with a per-channel sigmoid on the
    foreground channels only: it penalises a right, confident softmax prediction (the other
    classes' logits at 0 read as p = 0.5) and cannot take one weight per class with the
    background excluded. Here, as the CE term of ``DiceCELoss``, the focal term covers every
    class (background included) on the softmax; ``include_background`` applies to Dice.
    """

    def __init__(self, cfg: LossConfig, num_classes: int) -> None:
        super().__init__()
        self.dice = DiceLoss(**_common(cfg))  # type: ignore[arg-type]
        self.focal = FocalLoss(include_background=True, to_onehot_y=True, use_softmax=True, gamma=2.0,
                               weight=_weights(cfg, num_classes))

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, label) + self.focal(logits, label)  # type: ignore[no-any-return]


LOSSES: dict[str, Callable[[LossConfig, int], torch.nn.Module]] = {"dice": _dice, "dice_ce": _dice_ce, "dice_focal": DiceSoftmaxFocalLoss}
if tuple(LOSSES) != LOSS_NAMES:  # pragma: no cover - guards the name list used by config validation
    raise RuntimeError("medseg.catalogue.LOSS_NAMES is out of date")


def build_loss(cfg: LossConfig, num_classes: int) -> torch.nn.Module:
    if cfg.name not in LOSSES:
        raise ConfigError(f"loss.name: unknown loss {cfg.name!r}." + suggest(cfg.name, LOSSES))
    return LOSSES[cfg.name](cfg, num_classes)


def deep_supervision_loss(loss: torch.nn.Module, outputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Weighted sum over heads stacked on dim 1 (MONAI DynUNet), weights 1, 1/2, 1/4… normalised."""
    heads = outputs.shape[1]
    weights = torch.tensor([0.5**i for i in range(heads)])
    weights = weights / weights.sum()
    return sum(w * loss(outputs[:, i], label) for i, w in enumerate(weights))  # type: ignore[return-value]
