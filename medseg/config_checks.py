"""Cross-field and range checks of a pipeline config, against the catalogue, before any compute.

:func:`validate` is the one up-front pass: names are looked up in :mod:`medseg.catalogue`
(networks, augmentation presets and their transforms, losses), model options in
:mod:`medseg.models.options`, loggers in :mod:`medseg.training.loggers` (torch-free), so a
pipeline that cannot run fails in well under a second, before the dataset is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medseg.catalogue import AUGMENTATION_PRESETS, LOSS_NAMES, NETWORK_NAMES, WEIGHTED_LOSSES
from medseg.lookup import ConfigError, lookup

if TYPE_CHECKING:
    from medseg.config import PipelineConfig


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}: {value} is impossible, expected a value {expected}")


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Cross-field and range checks; raises ConfigError naming the key and the fix."""
    from medseg.config import network_divisor  # (config imports this module)

    d, m, t = cfg.data, cfg.model, cfg.trainer
    lookup(m.name, dict.fromkeys(NETWORK_NAMES), "model.name")
    transforms = lookup(d.augmentation, AUGMENTATION_PRESETS, "data.augmentation")
    lookup(cfg.loss.name, dict.fromkeys(LOSS_NAMES), "loss.name")
    for key, value in d.augmentation_probabilities.items():
        lookup(key, dict.fromkeys(transforms), f"data.augmentation_probabilities (preset {d.augmentation!r})")
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.augmentation_probabilities.{key}: {value} is not in [0, 1]")
    if cfg.loss.class_weights is not None and cfg.loss.name not in WEIGHTED_LOSSES:
        raise ConfigError(
            f"loss.class_weights: {cfg.loss.name!r} has no cross-entropy or focal term to weight; "
            f"use loss.name {' or '.join(WEIGHTED_LOSSES)}, or drop class_weights"
        )
    _positive("trainer.max_epochs", t.max_epochs)
    _positive("trainer.steps_per_epoch", t.steps_per_epoch)
    _positive("trainer.val_every_n_epochs", t.val_every_n_epochs)
    _positive("trainer.max_time_minutes", t.max_time_minutes, allow_zero=True)
    _positive("trainer.devices", t.devices)
    _positive("trainer.early_stopping_patience", t.early_stopping_patience, allow_zero=True)
    _positive("trainer.progress_interval_seconds", t.progress_interval_seconds)
    from medseg.training.loggers import check_logger_names  # light; imports ConfigError from here

    check_logger_names(t.loggers)
    _positive("data.batch_size", d.batch_size)
    _positive("optim.lr", cfg.optim.lr)
    _positive("optim.grad_clip", cfg.optim.grad_clip, allow_zero=True)
    _positive("optim.loaded_lr_scale", cfg.optim.loaded_lr_scale)
    _positive("optim.decoder_warmup_epochs", cfg.optim.decoder_warmup_epochs, allow_zero=True)
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(
            f"optim.ema_decay: {cfg.optim.ema_decay} is not in [0, 1); use 0 for no weight averaging "
            "or e.g. 0.999 to average over ~1000 steps"
        )
    if not 0.0 <= d.foreground_ratio <= 1.0:
        raise ConfigError(f"data.foreground_ratio: {d.foreground_ratio} is not in [0, 1]")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {d.val_fraction} is not in [0, 1)")
    if d.folds == 1 or d.folds < 0:
        raise ConfigError(f"data.folds: {d.folds} is impossible, expected 0 (single split) or >= 2")
    if d.folds and not 0 <= d.fold < d.folds:
        raise ConfigError(f"data.fold: {d.fold} is not in [0, {d.folds - 1}] for data.folds={d.folds}")
    if d.target_spacing is not None and (len(d.target_spacing) != 3 or min(d.target_spacing) <= 0):
        raise ConfigError(f"data.target_spacing: {d.target_spacing} must be 3 positive spacings in mm (X, Y, Z)")
    if d.ct_clip is not None and (len(d.ct_clip) != 2 or d.ct_clip[0] >= d.ct_clip[1]):
        raise ConfigError(f"data.ct_clip: {d.ct_clip} must be [low, high] with low < high")
    if d.slice_axis not in (0, 1, 2):
        raise ConfigError(f"data.slice_axis: {d.slice_axis} must be 0, 1 or 2")
    if d.mirror_axes is not None and (
        any(a not in (0, 1, 2) for a in d.mirror_axes) or len(set(d.mirror_axes)) != len(d.mirror_axes)
    ):
        raise ConfigError(
            f"data.mirror_axes: {d.mirror_axes} must list distinct canonical axes among 0 (X), 1 (Y), 2 (Z); "
            "e.g. [0] for left-right only, [] for no mirroring, or null for all axes"
        )
    if d.slab_slices < 1 or d.slab_slices % 2 == 0:
        raise ConfigError(f"data.slab_slices: {d.slab_slices} must be an odd number >= 1")
    if len(d.patch_size) != m.spatial_dims:
        raise ConfigError(
            f"data.patch_size: {d.patch_size} has {len(d.patch_size)} values but "
            f"model.spatial_dims is {m.spatial_dims}; give {m.spatial_dims} sizes in voxels"
        )
    if len(m.channels) < 2 or min(m.channels) < 1:
        raise ConfigError(f"model.channels: {m.channels} must list >= 2 positive widths")
    if m.strides is not None and (len(m.strides) != len(m.channels) - 1 or any(v not in (1, 2) for v in m.strides)):
        raise ConfigError(
            f"model.strides: {m.strides} must give len(model.channels) - 1 = {len(m.channels) - 1} factors, "
            f"each 1 or 2 (e.g. {[1] + [2] * (len(m.channels) - 2)} for a full-resolution first level), or null"
        )
    factor = network_divisor(m)
    for size in d.patch_size:
        if size < factor or size % factor:
            raise ConfigError(
                f"data.patch_size: {d.patch_size} is not allowed for a {len(m.channels)}-level "
                f"network: each size must be a positive multiple of {factor} "
                f"(the product of the strides); e.g. {[max(factor, round(s / factor) * factor) for s in d.patch_size]}"
            )
        if size > 512:
            raise ConfigError(f"data.patch_size: {size} > 512 voxels is larger than allowed")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: {m.dropout} is not in [0, 1)")
    if m.num_res_units < 0:
        raise ConfigError(f"model.num_res_units: {m.num_res_units} must be >= 0")
    if not 0.0 <= cfg.inference.overlap < 1.0:
        raise ConfigError(f"inference.overlap: {cfg.inference.overlap} is not in [0, 1)")
    _positive("inference.sw_batch_size", cfg.inference.sw_batch_size)
    crf = cfg.inference.crf
    for key in ("iterations", "spatial_sigma_mm", "bilateral_sigma_mm", "bilateral_sigma_intensity", "max_voxels"):
        _positive(f"inference.crf.{key}", getattr(crf, key))
    for key in ("spatial_weight", "bilateral_weight", "margin_mm"):
        _positive(f"inference.crf.{key}", getattr(crf, key), allow_zero=True)
    _validate_limited_labels(cfg)
    from medseg.models.options import check_model_options  # torch-free; imports this module

    check_model_options(m)  # what the chosen network would not honour, before any compute
    return cfg


def _validate_limited_labels(cfg: PipelineConfig) -> None:
    s, p = cfg.semi_supervised, cfg.pretrain
    if cfg.data.labelled_cases is not None and cfg.data.labelled_cases < 1:
        raise ConfigError(
            f"data.labelled_cases: {cfg.data.labelled_cases} is impossible, expected >= 1 labelled case "
            "(or null to use every label)"
        )
    _positive("semi_supervised.consistency_weight", s.consistency_weight, allow_zero=True)
    _positive("semi_supervised.rampup_epochs", s.rampup_epochs, allow_zero=True)
    _positive("semi_supervised.noise_std", s.noise_std, allow_zero=True)
    _positive("semi_supervised.unlabelled_batch_size", s.unlabelled_batch_size, allow_zero=True)
    if not 0.0 <= s.teacher_decay < 1.0:
        raise ConfigError(f"semi_supervised.teacher_decay: {s.teacher_decay} is not in [0, 1); e.g. 0.99")
    if not 0.0 < p.mask_ratio < 1.0:
        raise ConfigError(f"pretrain.mask_ratio: {p.mask_ratio} is not in (0, 1); e.g. 0.6 masks 60 % of the blocks")
    if p.mask_block < 1 or any(p.mask_block > size for size in cfg.data.patch_size):
        raise ConfigError(
            f"pretrain.mask_block: {p.mask_block} voxels must be >= 1 and fit in data.patch_size {cfg.data.patch_size}"
        )


def check_class_count(cfg: PipelineConfig, num_classes: int) -> None:
    """What can only be checked once the dataset's labels are known (the manifest, not the
    images): one ``loss.class_weights`` value per class, background included."""
    weights = cfg.loss.class_weights
    if weights is not None and len(weights) != num_classes:
        raise ConfigError(
            f"loss.class_weights: {weights} has {len(weights)} values; "
            f"expected {num_classes} (one per class, background included)"
        )
