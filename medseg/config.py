"""Typed pipeline configuration: YAML -> dataclasses, validated before any compute.

A pipeline file holds only what differs from the defaults below. Loading checks every
key and value: unknown keys name the closest valid key, wrong types and impossible values
name the field, the value and what is expected. Nothing in a config is ever executed.

This module deliberately imports nothing heavy (no torch, no MONAI) so that a typo in a
pipeline is reported in well under a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from medseg.registry_names import AUGMENTATION_PRESETS, LOSS_NAMES, NETWORK_NAMES


class ConfigError(ValueError):
    """A pipeline configuration is invalid; the message names the key and the fix."""


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


@dataclass
class DataConfig:
    """Dataset, preprocessing and patch sampling.

    Spacings are in mm, in the canonical (RAS) axis order X, Y, Z; sizes are in voxels.
    """

    manifest: str | None = None
    """Path to a Decathlon/nnU-Net dataset.json or a CSV manifest (``--data`` replaces it)."""
    target_spacing: list[float] | None = None
    """Resample to this spacing (mm). None: the dataset's median spacing (fingerprint)."""
    normalization: Literal["auto", "zscore", "ct", "none"] = "auto"
    """auto: 'ct' when the manifest's modality is CT, else per-case 'zscore'."""
    ct_clip: list[float] | None = None
    """CT: [low, high] HU clip; None: the 0.5/99.5 foreground percentiles of the dataset."""
    crop_foreground: bool = True
    """Crop each case to the bounding box of its non-zero (body) region before training."""
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    """Training patch in voxels (3 values for 3D, 2 for 2D networks)."""
    batch_size: int = 2
    foreground_ratio: float = 0.33
    """Fraction of patches centred on a foreground voxel (nnU-Net uses 1/3)."""
    augmentation: str = "light"
    """Augmentation preset name: none, light, limited_data."""
    augmentation_probabilities: dict[str, float] = field(default_factory=dict)
    """Override a preset's per-transform probabilities, e.g. {elastic: 0.0, gamma: 0.5}."""
    label_resampling: Literal["linear", "nearest"] = "linear"
    """How rotation/scaling/elastic augmentation resamples label maps. linear: each label's
    mask interpolated linearly, then the label of the largest value (nnU-Net's order-1
    label resampling: sub-voxel boundaries); nearest: nearest neighbour (staircase
    boundaries, the behaviour before this field existed)."""
    val_fraction: float = 0.2
    """Fraction of training cases held out for validation when ``folds`` is 0."""
    folds: int = 0
    """k for k-fold cross-validation (0: a single seeded train/val split)."""
    fold: int = 0
    slice_axis: int = 2
    """2D networks: the canonical axis (0=X, 1=Y, 2=Z) along which slices are drawn."""
    slab_slices: int = 1
    """2D networks: neighbouring slices given as channels (1 = plain 2D, 3/5 = 2.5D)."""
    mirror_axes: list[int] | None = None
    """Canonical axes (0=X, 1=Y, 2=Z) along which training patches are mirrored and along
    which mirroring TTA flips (None: every axis, nnU-Net's default). Restrict it where a
    mirrored image is impossible anatomy: e.g. [0] (left-right only) when labels are named
    by position along another axis (hippocampus head "Anterior" vs tail "Posterior"). For a
    2D network the slice axis is never mirrored."""
    cache: Literal["memory", "disk", "none"] = "memory"
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Network choice and shape. ``name`` is looked up in medseg.models.registry."""

    name: str = "unet"
    spatial_dims: Literal[2, 3] = 3
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Feature maps per resolution level (len = depth)."""
    strides: list[int] | None = None
    """Down-sampling factor of each of the len(channels) - 1 steps between levels, 1 or 2
    (None: 2 everywhere); patch sizes must be multiples of their product. MONAI's UNet
    (unet, residual_unet) applies the first stride in its first block, so with all 2s it
    never computes features at full resolution; strides [1, 2, 2, ...] give it a
    full-resolution level. attention_unet and dynunet keep their first level at full
    resolution and down-sample by these strides after it; segresnet takes only the default."""
    num_res_units: int = 0
    """Residual units per block (residual_unet: >= 1; unet: 0)."""
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0
    upsample: Literal["deconv", "nontrainable", "pixelshuffle"] = "deconv"
    """deconv: transposed conv; nontrainable: interpolation then conv; pixelshuffle."""
    deep_supervision: bool = False


@dataclass
class LossConfig:
    name: str = "dice_ce"
    include_background: bool = False
    class_weights: list[float] | None = None
    """One weight per class including background (cross-entropy / focal part)."""
    batch_dice: bool = True
    """Dice over the whole batch as one volume (true, nnU-Net's batch Dice: stable when a
    patch lacks a structure) or per sample, then averaged (false)."""


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    scheduler: Literal["poly", "cosine", "none"] = "poly"
    warmup_epochs: int = 0
    grad_clip: float = 12.0
    """Clip the gradient norm (0: off)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay per step (0: off;
    e.g. 0.999 averages over ~1000 steps). Validation, best/last checkpoints, predictions
    and ``init_from`` use the averaged weights; ``--resume`` restores both."""


@dataclass
class TrainerConfig:
    max_epochs: int = 50
    steps_per_epoch: int = 50
    """Optimiser steps per epoch: epochs are defined by steps, not by passes over the data."""
    max_time_minutes: float = 0.0
    """Stop training after this wall time (0: no limit); the best checkpoint is kept."""
    val_every_n_epochs: int = 5
    precision: Literal["32", "bf16-mixed", "16-mixed", "auto"] = "32"
    """auto: bf16-mixed on a GPU with bf16 (else 16-mixed) and on a CPU with native bf16
    (AVX512-BF16 / AMX), else 32; the choice is logged and saved in run_manifest.json.
    bf16 on a CPU without native support is emulated and many times slower than fp32."""
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    """Layout of the network's weights and batches while training. auto: on a CPU, whichever of
    channels-last and PyTorch's default trains this network faster (timed on a few steps at
    the start; 1.29x for the hippocampus DynUNet), PyTorch's default on a GPU."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"
    early_stopping_patience: int = 0
    """Stop after this many validations without improvement (0: off)."""
    seed: int = 42
    deterministic: bool = False
    progress_bar: bool = True


@dataclass
class CrfConfig:
    """3D fully connected CRF on the network-grid probabilities (:mod:`medseg.inference.crf`)."""

    enabled: bool = False
    structures: list[str] = field(default_factory=list)
    """Structure names refined; empty: every structure."""
    iterations: int = 5
    spatial_sigma_mm: float = 1.0
    """Smoothness (Gaussian) kernel width, mm."""
    spatial_weight: float = 1.0
    bilateral_sigma_mm: float = 3.0
    """Appearance (bilateral) kernel width in space, mm."""
    bilateral_sigma_intensity: float = 1.0
    """Appearance kernel width in intensity, in the normalised units of the network input."""
    bilateral_weight: float = 2.0
    margin_mm: float = 10.0
    """Margin around each structure's bounding box, mm."""
    max_voxels: int = 1_000_000
    """Larger boxes are refined on a coarser grid (integer downsampling) to bound memory
    (about +0.32 GB peak at 1M voxels, one input channel, measured on a 256x256x300 grid)."""


@dataclass
class InferenceConfig:
    overlap: float = 0.5
    sw_batch_size: int = 4
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    keep_largest_component: list[str] = field(default_factory=list)
    """Structure names for which only the largest connected component is kept."""
    min_component_ml: dict[str, float] = field(default_factory=dict)
    """Structure name -> remove islands smaller than this volume (mL)."""
    fill_holes: list[str] = field(default_factory=list)
    crf: CrfConfig = field(default_factory=CrfConfig)


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    init_from: str | None = None
    """Checkpoint to fine-tune from (tensors matched by name and shape)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A decimal number in scientific or plain notation (what float fields accept as text)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key + ".")
    if origin is Literal:
        choices = get_args(tp)
        # YAML may give 32 for "32": compare as strings when the choices are strings.
        for choice in choices:
            if value == choice or (isinstance(choice, str) and str(value) == choice):
                return choice
        raise ConfigError(
            f"{key}: {value!r} is not one of {list(choices)}." + suggest(str(value), map(str, choices))
        )
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad
        return [_coerce(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, get_args(tp)[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            # PyYAML reads YAML 1.1, where 3e-5 (no decimal point) is a string, not a float.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - all annotations above are handled


def _build(cls: Any, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{prefix}{key}: unknown key (valid keys here: {', '.join(names)})."
                + suggest(key, names)
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}: {value} is impossible, expected a value {expected}")


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Cross-field and range checks; raises ConfigError naming the key and the fix."""
    d, m, t = cfg.data, cfg.model, cfg.trainer
    if m.name not in NETWORK_NAMES:
        raise ConfigError(
            f"model.name: unknown network {m.name!r} (known: {', '.join(NETWORK_NAMES)})."
            + suggest(m.name, NETWORK_NAMES)
        )
    if d.augmentation not in AUGMENTATION_PRESETS:
        raise ConfigError(
            f"data.augmentation: unknown preset {d.augmentation!r} "
            f"(known: {', '.join(AUGMENTATION_PRESETS)})." + suggest(d.augmentation, AUGMENTATION_PRESETS)
        )
    if cfg.loss.name not in LOSS_NAMES:
        raise ConfigError(
            f"loss.name: unknown loss {cfg.loss.name!r} (known: {', '.join(LOSS_NAMES)})."
            + suggest(cfg.loss.name, LOSS_NAMES)
        )
    for key, value in d.augmentation_probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.augmentation_probabilities.{key}: {value} is not in [0, 1]")
    _positive("trainer.max_epochs", t.max_epochs)
    _positive("trainer.steps_per_epoch", t.steps_per_epoch)
    _positive("trainer.val_every_n_epochs", t.val_every_n_epochs)
    _positive("trainer.max_time_minutes", t.max_time_minutes, allow_zero=True)
    _positive("trainer.devices", t.devices)
    _positive("trainer.early_stopping_patience", t.early_stopping_patience, allow_zero=True)
    _positive("data.batch_size", d.batch_size)
    _positive("optim.lr", cfg.optim.lr)
    _positive("optim.grad_clip", cfg.optim.grad_clip, allow_zero=True)
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
    return cfg


def network_strides(m: ModelConfig) -> list[int]:
    """The strides between the network's levels (``model.strides``, default 2 everywhere)."""
    return list(m.strides) if m.strides is not None else [2] * (len(m.channels) - 1)


def network_divisor(m: ModelConfig) -> int:
    """Every patch size must be a multiple of this: the network's total down-sampling."""
    return int(math.prod(network_strides(m)))


def patch_mirror_axes(cfg: PipelineConfig) -> tuple[int, ...]:
    """``data.mirror_axes`` as spatial dimensions of a training patch (0-based, no channel).

    3D patches keep the canonical axis order. A 2D patch holds the two canonical axes other
    than ``data.slice_axis``, in order; a mirror axis equal to the slice axis is dropped.
    """
    d = cfg.data
    axes = (0, 1, 2) if d.mirror_axes is None else tuple(sorted(d.mirror_axes))
    if cfg.model.spatial_dims == 3:
        return axes
    in_plane = [a for a in (0, 1, 2) if a != d.slice_axis]
    return tuple(in_plane.index(a) for a in axes if a != d.slice_axis)


def set_dotted(values: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.sub=value`` override (value parsed as YAML) to a raw dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. trainer.max_epochs=3")
    dotted, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    node = values
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(values: dict[str, Any], overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Build and validate a config from a raw mapping plus ``key=value`` overrides."""
    values = dict(values or {})
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for assignment in overrides:
        set_dotted(values, assignment)
    return validate(_build(PipelineConfig, values))


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML file; relative ``data.manifest`` paths resolve against the CWD."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found; pass a YAML file from pipelines/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = from_dict(raw, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if cfg.name == "pipeline":
        cfg.name = path.stem
    return cfg


def dump(cfg: PipelineConfig, path: str | Path) -> None:
    """Write the fully resolved config (every field) as YAML, atomically."""
    from medseg.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
