"""Which ``model.*`` options each network honours: every other value is an error.

A model option either changes the network that is built or is rejected for that network,
with a message naming the option, the network and the fix (the README promises no silent
fallback; ``tests/models/test_options.py`` walks every option of every network to prove it).
Torch-free, so a pipeline can be checked before any heavy import or compute.

Options every network honours: ``spatial_dims``, ``norm``, ``dropout``,
``upsample``. The restricted ones, per network, are in :data:`RESTRICTIONS`.
"""

from __future__ import annotations

from medseg.config import ConfigError, ModelConfig, network_strides

RESTRICTIONS: dict[str, dict[str, str]] = {
    "unet": {"deep_supervision": "false only"},
    "residual_unet": {"deep_supervision": "false only"},
    "attention_unet": {"deep_supervision": "false only", "num_res_units": "0 only"},
    "dynunet": {"num_res_units": "0 (plain blocks) or 1 (one residual block per level)"},
    "segresnet": {
        "channels": "doubling widths only (c, 2c, 4c, ...)",
        "deep_supervision": "false only",
        "num_res_units": "0 only",
        "strides": "default (all 2) only",
    },
}
"""network -> {option: the values it honours}; options not listed are honoured in full.
``interp_mode`` applies to ``upsample: interp`` only, for every network. residual_unet
reads ``num_res_units: 0`` (the default) as MONAI's usual 2: it has residual units by
definition."""


def _deep_supervision(cfg: ModelConfig) -> None:
    if cfg.deep_supervision and cfg.name != "dynunet":
        raise ConfigError(
            f"model.deep_supervision: {cfg.name!r} has no deep supervision heads; "
            "use model.name: dynunet or set deep_supervision: false"
        )


def _strides(cfg: ModelConfig) -> None:
    if cfg.name == "segresnet" and network_strides(cfg) != [2] * (len(cfg.channels) - 1):
        raise ConfigError(
            f"model.strides: {cfg.strides} is not supported by {cfg.name!r} (it halves the resolution at "
            "every level); remove model.strides, or use unet, residual_unet, attention_unet or dynunet"
        )


def _channels(cfg: ModelConfig) -> None:
    doubling = [cfg.channels[0] * 2**i for i in range(len(cfg.channels))]
    if cfg.name == "segresnet" and list(cfg.channels) != doubling:
        raise ConfigError(
            f"model.channels: {cfg.channels} is not supported by 'segresnet', which doubles its width at every "
            f"level from the first; use channels: {doubling}, or unet, residual_unet, attention_unet or dynunet "
            "for free widths"
        )


def _num_res_units(cfg: ModelConfig) -> None:
    n = cfg.num_res_units
    if cfg.name in ("attention_unet", "segresnet") and n != 0:
        what = (
            "has no residual units (MONAI's AttentionUnet uses plain double convolutions)"
            if cfg.name == "attention_unet"
            else "is residual by construction (its block counts follow model.channels)"
        )
        raise ConfigError(
            f"model.num_res_units: {n} is not supported by {cfg.name!r}, which {what}; remove "
            "model.num_res_units (0), or use residual_unet (any number) or dynunet (1) for residual blocks"
        )
    if cfg.name == "dynunet" and n > 1:
        raise ConfigError(
            f"model.num_res_units: {n} is not supported by 'dynunet', which has one residual block per "
            "level or none; use num_res_units: 1 (residual) or 0 (plain), or residual_unet for more units"
        )


def _interp_mode(cfg: ModelConfig) -> None:
    if cfg.interp_mode != "linear" and cfg.upsample not in ("interp", "nontrainable"):
        raise ConfigError(
            f"model.interp_mode: {cfg.interp_mode!r} only applies to model.upsample: interp, and "
            f"{cfg.name!r} is set to upsample: {cfg.upsample!r}; set model.upsample: interp or remove "
            "model.interp_mode"
        )


def check_model_options(cfg: ModelConfig) -> None:
    """Raise ConfigError for any ``model.*`` value that network ``cfg.name`` would not honour."""
    _deep_supervision(cfg)
    _channels(cfg)
    _strides(cfg)
    _num_res_units(cfg)
    _interp_mode(cfg)
