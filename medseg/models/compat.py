"""Checkpoints written by earlier medseg versions whose networks are built differently now.

Before medseg honoured ``model.norm`` for ``attention_unet``, that network was MONAI's
``AttentionUnet`` with its hard-coded norms (batch norm, and non-affine instance norm in
the merge convolutions), whatever the config said. Such a checkpoint holds batch-norm
running statistics the network built today (affine instance norm by default) has no
place for. :func:`network_for_state` recognises it by its tensor names and rebuilds the
network it was trained as, so it predicts exactly as before; continuing its training under
the current network is refused with an error saying why (:func:`check_resumable`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from medseg.config import ConfigError, ModelConfig
from medseg.models.registry import build_network, monai_attention_unet

log = logging.getLogger("medseg.models")

LEGACY_NORMS = (
    "an attention_unet trained with MONAI's hard-coded norms (batch norm; written before medseg "
    "honoured model.norm for attention_unet)"
)


def _is_legacy(cfg: ModelConfig, in_ch: int, out_ch: int, names: set[str], current: set[str]) -> bool:
    if cfg.name != "attention_unet" or names == current:
        return False
    return set(monai_attention_unet(cfg, in_ch, out_ch).state_dict()) == names


def network_for_state(cfg: ModelConfig, in_ch: int, out_ch: int, state: Mapping[str, Any]) -> tuple[nn.Module, str]:
    """The network of ``cfg`` laid out like ``state`` (the net's tensors by name), and a note if legacy.

    The note is empty for a checkpoint of the current layout; a mismatch that is not a known
    legacy layout is left for ``load_state_dict`` to report.
    """
    net = build_network(cfg, in_ch, out_ch)
    names = set(state)
    if _is_legacy(cfg, in_ch, out_ch, names, set(net.state_dict())):
        note = f"checkpoint is {LEGACY_NORMS}: loaded with those norms, as it was trained"
        log.warning(note)
        return monai_attention_unet(cfg, in_ch, out_ch), note
    return net, ""


def check_resumable(cfg: ModelConfig, in_ch: int, out_ch: int, state: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError if ``state`` (the net's tensors) is a legacy layout training cannot continue."""
    current = set(build_network(cfg, in_ch, out_ch).state_dict())
    if _is_legacy(cfg, in_ch, out_ch, set(state), current):
        raise ConfigError(
            f"{source}: the checkpoint is {LEGACY_NORMS}, and the attention_unet built now uses "
            f"model.norm: {cfg.norm} everywhere, so its training cannot continue; predict with it as it is "
            "(medseg predict loads it with its original norms), or start a new run with init_from: "
            "pointing at it to reuse its convolution weights"
        )
