"""Network registry: name -> factory building a MONAI network from the model config.

An explicit dict (no import-walking): the names are listed in medseg.registry_names so
configs validate without importing torch; unknown names get a "did you mean" error.

Upsampling support (``model.upsample``):

* ``unet``, ``residual_unet`` (MONAI ``UNet``): transposed convolution only. MONAI's UNet
  hard-codes ``Convolution(is_transposed=True)`` in its up path, so ``nontrainable`` and
  ``pixelshuffle`` are rejected with an error rather than silently ignored.
* ``attention_unet`` (MONAI ``AttentionUnet``): transposed convolution only, same reason.
* ``dynunet`` (MONAI ``DynUNet``, nnU-Net's architecture): transposed convolution only;
  the only network here with deep supervision.
* ``segresnet`` (MONAI ``SegResNet``): ``deconv``, ``nontrainable`` (interpolation then
  1x1 conv) and ``pixelshuffle``.

``model.strides`` (the down-sampling between levels) is passed to every network but
``segresnet``, which halves the resolution at every level and rejects anything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from medseg.config import ConfigError, ModelConfig, network_strides, suggest
from medseg.registry_names import NETWORK_NAMES

Factory = Callable[[ModelConfig, int, int], nn.Module]


def _norm(cfg: ModelConfig) -> tuple[str, dict[str, bool]] | str:
    return ("instance", {"affine": True}) if cfg.norm == "instance" else "batch"


def _only_deconv(cfg: ModelConfig) -> None:
    if cfg.upsample != "deconv":
        raise ConfigError(
            f"model.upsample: {cfg.upsample!r} is not supported by {cfg.name!r} (MONAI hard-codes "
            "transposed convolutions there); use upsample: deconv, or model.name: segresnet"
        )


def _no_deep_supervision(cfg: ModelConfig) -> None:
    if cfg.deep_supervision:
        raise ConfigError(
            f"model.deep_supervision: {cfg.name!r} has no deep supervision heads; "
            "use model.name: dynunet or set deep_supervision: false"
        )


def _default_strides_only(cfg: ModelConfig) -> None:
    if network_strides(cfg) != [2] * (len(cfg.channels) - 1):
        raise ConfigError(
            f"model.strides: {cfg.strides} is not supported by {cfg.name!r} (it halves the resolution at "
            "every level); remove model.strides, or use unet, residual_unet, attention_unet or dynunet"
        )


def _unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import UNet

    _only_deconv(cfg)
    _no_deep_supervision(cfg)
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=cfg.channels,
        strides=network_strides(cfg),
        num_res_units=cfg.num_res_units,
        norm=_norm(cfg),
        dropout=cfg.dropout,
    )


def _residual_unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    # residual_unet means residual units: 0 in the config gets MONAI's usual 2 (config untouched)
    return _unet(dataclasses.replace(cfg, num_res_units=cfg.num_res_units or 2), in_ch, out_ch)


def _attention_unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    _only_deconv(cfg)
    _no_deep_supervision(cfg)
    return AttentionUnet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=cfg.channels,
        strides=network_strides(cfg),
        dropout=cfg.dropout,
    )


def _dynunet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    _only_deconv(cfg)
    levels = len(cfg.channels)
    kernels = [[3] * cfg.spatial_dims] * levels
    strides = [[1] * cfg.spatial_dims] + [[s] * cfg.spatial_dims for s in network_strides(cfg)]
    return DynUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=cfg.channels,
        norm_name=_norm(cfg),
        dropout=cfg.dropout or None,
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=max(1, min(2, levels - 2)),
        res_block=cfg.num_res_units > 0,
    )


def _segresnet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    _no_deep_supervision(cfg)
    _default_strides_only(cfg)
    mode = {"deconv": "deconv", "nontrainable": "nontrainable", "pixelshuffle": "pixelshuffle"}[cfg.upsample]
    return SegResNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        init_filters=cfg.channels[0],
        blocks_down=tuple([1] + [2] * (len(cfg.channels) - 1)),
        blocks_up=tuple([1] * (len(cfg.channels) - 1)),
        norm=_norm(cfg),
        dropout_prob=cfg.dropout or None,
        upsample_mode=mode,
    )


NETWORKS: dict[str, Factory] = {
    "unet": _unet,
    "attention_unet": _attention_unet,
    "residual_unet": _residual_unet,
    "dynunet": _dynunet,
    "segresnet": _segresnet,
}
if tuple(NETWORKS) != NETWORK_NAMES:  # pragma: no cover - guards the names used by config validation
    raise RuntimeError("medseg.registry_names.NETWORK_NAMES is out of date")


def build_network(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """Build the network named by ``cfg.name`` for ``in_channels`` inputs and ``out_channels`` classes."""
    if cfg.name not in NETWORKS:
        raise ConfigError(
            f"model.name: unknown network {cfg.name!r} (known: {', '.join(NETWORKS)})."
            + suggest(cfg.name, NETWORKS)
        )
    return NETWORKS[cfg.name](cfg, in_channels, out_channels)
