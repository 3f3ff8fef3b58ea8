"""Typed pipeline configuration: YAML -> dataclasses, validated before any compute.

A pipeline file holds only what differs from the defaults below. Loading checks every
key and value: unknown keys name the closest valid key, wrong types and impossible values
name the field, the value and what is expected. Nothing in a config is ever executed.

This module deliberately imports nothing heavy (no torch, no MONAI) so that a typo in a
pipeline is reported in well under a second.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medseg.config_checks import validate
from medseg.config_parse import build, set_dotted
from medseg.lookup import ConfigError, suggest

__all__ = [
    "ConfigError", "CrfConfig", "DataConfig", "InferenceConfig", "LossConfig", "ModelConfig", "OptimConfig", "PipelineConfig",
    "PretrainConfig", "SemiSupervisedConfig", "TrainerConfig", "dump", "from_dict", "load", "network_divisor",
    "network_strides", "patch_mirror_axes", "set_dotted", "suggest", "validate",
]


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
    labelled_cases: int | None = None
    """Label budget: keep the labels of a seeded subset of this many training cases and treat
    the rest of the training split as unlabelled (used by ``semi_supervised``, else unused);
    the validation split is untouched. None: every label is used."""


@dataclass
class ModelConfig:
    """Network choice and shape. ``name`` is looked up in medseg.models.registry."""

    name: str = "unet"
    spatial_dims: Literal[2, 3] = 3
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Feature maps per resolution level (len = depth); segresnet: doubling widths only."""
    strides: list[int] | None = None
    """Down-sampling factor of each of the len(channels) - 1 steps between levels, 1 or 2
    (None: 2 everywhere); patch sizes must be multiples of their product. MONAI's UNet
    (unet, residual_unet) applies the first stride in its first block, so with all 2s it
    never computes features at full resolution; strides [1, 2, 2, ...] give it a
    full-resolution level. attention_unet and dynunet keep their first level at full
    resolution and down-sample by these strides after it; segresnet takes only the default."""
    num_res_units: int = 0
    """Residual units per block: unet any (0: plain); residual_unet any (0 means 2); dynunet 0 or 1;
    attention_unet and segresnet 0 only (see medseg.models.options)."""
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = 0.0
    upsample: Literal["deconv", "interp", "pixelshuffle", "nontrainable"] = "deconv"
    """Decoder up-sampling, every network: deconv (transposed convolution), interp
    (interpolation then a convolution; ``nontrainable``, MONAI's name, is the same) or
    pixelshuffle (sub-pixel convolution). See medseg.models.upsample."""
    interp_mode: Literal["nearest", "linear"] = "linear"
    """Interpolation of upsample: interp: nearest, or linear (bilinear in 2D, trilinear in 3D)."""
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
    loaded_lr_scale: float = 1.0
    """Learning-rate multiplier for the tensors that ``init_from`` loaded or adapted (e.g. 0.1:
    pretrained layers move slowly while the re-initialised head, and anything the source did
    not have, learn at ``optim.lr``). 1.0: one rate for all; no effect without ``init_from``.
    Measured on hippocampus after masked-volume pretraining (everything but the head loaded),
    600 steps: 0.1 cost 0.03-0.04 held-out Dice against 1.0 (benchmarks/RESULTS.md)."""
    decoder_warmup_epochs: int = 0
    """Decoder-only warm-up after ``init_from`` (as nnssl's fine-tuning): for this many epochs
    the encoder's loaded tensors (:mod:`medseg.models.encoder`) stay fixed while the decoder
    and the re-initialised head learn; then the encoder's learning rate rises linearly to the
    schedule over as many epochs again. 0: off; no effect without ``init_from``."""
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
    precision: Literal["32", "bf16-mixed", "16-mixed", "auto"] = "auto"
    """auto (default): bf16-mixed on a GPU with bf16 (else 16-mixed) and on a CPU with native bf16
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
    """Show progress: a bar in a terminal, plain lines in a log file (see progress_interval_seconds)."""
    progress_interval_seconds: float = 30.0
    """Not in a terminal: at most one progress line per this many seconds, plus one per epoch."""
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    """Experiment loggers: csv (required), tensorboard, mlflow (pip install 'medseg[mlflow]')."""


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
    bilateral_sigma_intensity: float = 0.25
    """Appearance kernel width in intensity, in the normalised units of the network input
    (z-scores for MRI). Small enough to stop at a weak edge: the hippocampus differs from
    its surroundings by about 0.4 standard deviations of T1, so at 1.0 the appearance
    kernel barely sees the edge and only smooths (erodes) the thin structure."""
    bilateral_weight: float = 2.0
    margin_mm: float = 10.0
    """Margin around each structure's bounding box, mm."""
    max_voxels: int = 1_000_000
    """Larger boxes are refined on a coarser grid (integer downsampling) to bound memory
    (about +0.32 GB peak at 1M voxels, one input channel, measured on a 256x256x300 grid);
    a box holding K > 2 predicted classes gets ``2 max_voxels / K`` voxels."""


@dataclass
class InferenceConfig:
    overlap: float = 0.5
    sw_batch_size: int = 4
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """The networks' forward passes: fp32; bf16 (autocast: 2.4x the windows/s of fp32 on a CPU
    with AVX512-BF16 or AMX, emulated and slow without); auto: bf16 where the CPU or GPU computes
    it natively (fp16 on a GPU without bf16), else fp32. Blending, softmax and argmax stay fp32."""
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    """The tensor layout of a predictor's networks: auto times a window batch in both layouts
    once per network on a CPU and keeps the faster (channels-last wins for some networks and
    loses for others: benchmarks/RESULTS.md), PyTorch's default on a GPU; a network in
    training keeps the layout ``trainer.memory_format`` chose."""
    keep_largest_component: list[str] = field(default_factory=list)
    """Structure names for which only the largest connected component is kept."""
    min_component_ml: dict[str, float] = field(default_factory=dict)
    """Structure name -> remove islands smaller than this volume (mL)."""
    fill_holes: list[str] = field(default_factory=list)
    crf: CrfConfig = field(default_factory=CrfConfig)


@dataclass
class SemiSupervisedConfig:
    """Learning from unlabelled images while training on labelled ones.

    mean_teacher (Tarvainen & Valpola 2017; Yu et al. 2019 in 3D): a teacher network, the
    exponential moving average of the trained one, predicts every patch; the trained network
    is pulled towards the teacher's softmax on a differently perturbed copy of the same patch
    (mean squared error), with a weight ramped up from 0 over the first epochs.
    """

    method: Literal["none", "mean_teacher"] = "none"
    unlabelled: list[str] = field(default_factory=list)
    """Extra unlabelled images: manifests (their cases without a label and every case's
    image) or folders of NIfTI images (``--unlabelled`` appends here). Cases without a label
    in ``data.manifest`` (Decathlon ``test``, nnU-Net ``imagesTs``, CSV rows with no label)
    are always unlabelled."""
    consistency_weight: float = 1.0
    """Weight of the consistency loss after ramp-up (the supervised loss has weight 1)."""
    rampup_epochs: int = 20
    """Epochs over which the consistency weight rises as exp(-5 (1 - t)^2) (Laine & Aila)."""
    teacher_decay: float = 0.99
    """Teacher weights = decay * teacher + (1 - decay) * trained weights, after every step."""
    noise_std: float = 0.1
    """Standard deviation of the Gaussian noise (normalised intensity units, clipped at 2x)
    added independently to the teacher's and the trained network's copy of each patch."""
    unlabelled_batch_size: int = 0
    """Unlabelled patches per step (0: ``data.batch_size``)."""


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (``medseg pretrain``): masked-volume reconstruction.

    As in Wald et al. 2024 (nnssl's MAE for CNN U-Nets): random blocks of each patch are
    zeroed and the network, with one output channel per input channel, is trained to restore
    the image there (mean squared error on the masked voxels only).
    """

    method: Literal["masked", "genesis"] = "masked"
    """The pretext task: ``masked`` (masked-volume reconstruction, above) or ``genesis``
    (Models Genesis, Zhou et al.: restore whole patches after local shuffling, a random
    intensity curve and in-/out-painting; ``medseg.training.genesis``)."""
    mask_ratio: float = 0.6
    """Fraction of blocks zeroed in each patch."""
    mask_block: int = 8
    """Edge of a masked block in voxels (a cube; a square for 2D networks)."""


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    init_from: str | None = None
    """Run directory (its best checkpoint) or checkpoint file to fine-tune from: tensors whose
    name and shape fit are loaded, an output head of another class count is re-initialised,
    a first convolution with another input channel count adapted (init_from_report.json)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def from_dict(values: dict[str, Any], overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Build and validate a config from a raw mapping plus ``key=value`` overrides."""
    values = dict(values or {})
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for assignment in overrides:
        set_dotted(values, assignment)
    return validate(build(PipelineConfig, values))


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
