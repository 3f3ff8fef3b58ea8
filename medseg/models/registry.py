"""Network registry: name -> factory building a MONAI network from the model config.

An explicit dict (no import-walking): the names are listed in medseg.catalogue so
configs validate without importing torch; unknown names get a "did you mean" error.

Every network takes every ``model.upsample`` (deconv | interp | pixelshuffle) with
``model.interp_mode`` (nearest | linear), in 2D and 3D: MONAI's ``UNet`` (unet,
residual_unet), ``AttentionUnet`` and ``DynUNet`` are built with their transposed
convolutions, which :func:`medseg.models.upsample.apply_upsample` then replaces;
``SegResNet`` has the modes natively. ``attention_unet`` gets ``model.norm`` through
:func:`medseg.models.norm.apply_norm` (MONAI hard-codes batch norm there). What each
network does not honour (deep supervision: dynunet only; ``model.strides``: not
segresnet; ``model.num_res_units``: see :mod:`medseg.models.options`) is rejected by
:func:`medseg.models.options.check_model_options` before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from medseg.catalogue import NETWORK_NAMES
from medseg.config import ConfigError, ModelConfig, network_strides, suggest
from medseg.models.norm import apply_norm
from medseg.models.options import check_model_options
from medseg.models.upsample import apply_upsample, set_interp_mode, upsample_mode

Factory = Callable[[ModelConfig, int, int], nn.Module]


def _norm(cfg: ModelConfig) -> tuple[str, dict[str, bool]] | str:
    return ("instance", {"affine": True}) if cfg.norm == "instance" else "batch"


def _unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import UNet

    net = UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=cfg.channels,
        strides=network_strides(cfg),
        num_res_units=cfg.num_res_units,
        norm=_norm(cfg),
        dropout=cfg.dropout,
    )
    return apply_upsample(net, cfg)


def _residual_unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    # residual_unet means residual units: 0 in the config gets MONAI's usual 2 (config untouched)
    return _unet(dataclasses.replace(cfg, num_res_units=cfg.num_res_units or 2), in_ch, out_ch)


def monai_attention_unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    """MONAI's AttentionUnet with its own norms (what medseg built before it honoured
    ``model.norm``; see :mod:`medseg.models.compat`), up-sampling as configured."""
    from monai.networks.nets import AttentionUnet

    net = AttentionUnet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_ch,
        out_channels=out_ch,
        channels=cfg.channels,
        strides=network_strides(cfg),
        dropout=cfg.dropout,
    )
    return apply_upsample(net, cfg)


def _attention_unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    return apply_norm(monai_attention_unet(cfg, in_ch, out_ch), cfg)


def _dynunet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    levels = len(cfg.channels)
    kernels = [[3] * cfg.spatial_dims] * levels
    strides = [[1] * cfg.spatial_dims] + [[s] * cfg.spatial_dims for s in network_strides(cfg)]
    net = DynUNet(
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
    return apply_upsample(net, cfg)


def _segresnet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    mode = {"deconv": "deconv", "interp": "nontrainable", "pixelshuffle": "pixelshuffle"}[upsample_mode(cfg)]
    net = SegResNet(
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
    return set_interp_mode(net, cfg)


NETWORKS: dict[str, Factory] = {
    "unet": _unet,
    "attention_unet": _attention_unet,
    "residual_unet": _residual_unet,
    "dynunet": _dynunet,
    "segresnet": _segresnet,
}
if tuple(NETWORKS) != NETWORK_NAMES:  # pragma: no cover - guards the names used by config validation
    raise RuntimeError("medseg.catalogue.NETWORK_NAMES is out of date")


def build_network(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """Build the network named by ``cfg.name`` for ``in_channels`` inputs and ``out_channels`` classes."""
    if cfg.name not in NETWORKS:
        raise ConfigError(
            f"model.name: unknown network {cfg.name!r} (known: {', '.join(NETWORKS)})."
            + suggest(cfg.name, NETWORKS)
        )
    check_model_options(cfg)
    return NETWORKS[cfg.name](cfg, in_channels, out_channels)
