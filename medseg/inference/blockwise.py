"""Class probabilities for one block of the network grid, exactly as the whole-volume pass has them.

For a 3D network, the block sums the windows of the whole-volume sliding-window grid
(:func:`medseg.inference.blocks.window_grid`) that overlap it, each weighted by MONAI's
importance map (Gaussian or constant), in MONAI's window order, divided by the same sum of
weights; then softmax; mirroring TTA repeats this for every combination of the axes
mirrored in training, on the mirrored window grid that MONAI would use on the flipped
image, and averages the probabilities. A window that overlaps two blocks is evaluated for
each (the cost that :func:`medseg.inference.blocks.plan_blocks` minimises); only its part
inside the block is accumulated. A 2D network's windows lie within a slice, so a block of
slices is exact by construction (:func:`medseg.inference.window.predict_probabilities`
on the slices).

A network whose last layer is a pointwise convolution (DynUNet, AttentionUnet, SegResNet;
:mod:`medseg.models.head`) is blended as its F-channel *features* when that holds fewer
bytes than its K-class probabilities (:func:`feature_split`): the windows run
without the head, and :class:`medseg.inference.block_source.BlockSource` applies the head
and the softmax slab by slab. The result is the same (blending is linear) but neither the
windows nor the block ever hold ``classes x voxels``: with 118 classes and F = 8 a block
holds 15x fewer numbers and the windows run at the configured batch size.

Memory per block voxel: :func:`bytes_per_voxel`; plus one window batch of network output
and activations, bounded by :data:`WINDOW_BYTES` (:func:`window_batch`), and one slab of probabilities
(:data:`medseg.inference.block_source.SLAB_BYTES`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map

from medseg.config import ModelConfig, PipelineConfig, network_strides
from medseg.inference import block_source as sources
from medseg.inference.block_source import BlockSource, FeatureMember, compact_pass, softmax_
from medseg.inference.blocks import BlockPlan, Box, WindowGrid, intersects, plan_blocks, window_grid
from medseg.inference.resample import running_argmax
from medseg.inference.window import (
    flips_for,
    layout_managed,
    manage_layout,
    network_runner,
    predict_probabilities,
)
from medseg.models.head import SplitNetwork, split_head

BLOCK_BYTES = 512 * 2**20
"""Default budget (bytes) of one block's state (:func:`bytes_per_voxel`). The 256x256x300
network grid of a 512x512x300 CT at 1.6 mm with 3 classes (16 bytes a voxel: 315 MB) stays
one block, so the common case evaluates every window once; a DynUNet with 118 classes
(features: 36 bytes a voxel) gets two whole-plane blocks, 1.22x the windows
(benchmarks/RESULTS.md, "Many classes")."""

WINDOW_BYTES = 192 * 2**20
"""Budget of one window batch: its outputs (and their flipped copy) and the network's
activations (:func:`window_batch`); ``sw_batch_size`` shrinks below the configured one for
many classes or wide full-resolution levels."""

ACTIVATION_MAPS = 7
"""Full-resolution feature maps of the first level's width alive at once in one window's
forward pass (convolution, normalisation and activation outputs, the skip, the up-sampled
and concatenated decoder maps). Measured on the many-class benchmark's DynUNet (8-16-32-64,
64^3 windows, CPU): each window more in a batch raised the peak by ~56 MB, 6.7 such maps;
batch 2 ran as many windows per second as batch 4 on 2 cores (benchmarks/RESULTS.md)."""


def network_grid(cfg: PipelineConfig, shape: Sequence[int]) -> WindowGrid:
    """The whole-volume window grid of a 3D network on a grid of ``shape``."""
    return window_grid(shape, tuple(cfg.data.patch_size), cfg.inference.overlap)


def _crop(image: torch.Tensor, start: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """(C, *roi) window of ``image`` (C, *spatial) at ``start``; zeros outside the image."""
    shape = image.shape[1:]
    if all(s >= 0 and s + r <= n for s, r, n in zip(start, roi, shape, strict=True)):
        return image[(slice(None), *(slice(s, s + r) for s, r in zip(start, roi, strict=True)))]
    out = image.new_zeros((image.shape[0], *roi))
    src, dst = [], []
    for s, r, n in zip(start, roi, shape, strict=True):
        lo, hi = max(s, 0), min(s + r, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def _overlap(start: Sequence[int], roi: Sequence[int], box: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(window slices, block slices) of the part of a window inside ``box``."""
    win, blk = [], []
    for s, r, (lo, hi) in zip(start, roi, box, strict=True):
        a, b = max(s, lo), min(s + r, hi)
        win.append(slice(a - s, b - s))
        blk.append(slice(a - lo, b - lo))
    return tuple(win), tuple(blk)


def _pass_outputs(
    run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, grid: WindowGrid, box: Box,
    flip: tuple[int, ...], weight: torch.Tensor, sw_batch: int, channels: int,
) -> torch.Tensor:
    """Blended outputs (C, *box) of one (possibly mirrored) sliding-window pass of ``run``
    (logits, or a trunk's features), divided by the sum of the weights, on ``weight``'s device."""
    device = weight.device
    dims = [2 + a for a in flip]  # of a window batch (B, C, *spatial)
    shape = tuple(hi - lo for lo, hi in box)
    acc = torch.zeros((channels, *shape), dtype=torch.float32, device=device)
    count = torch.zeros(shape, dtype=torch.float32, device=device)
    w = torch.flip(weight, list(flip)) if flip else weight
    starts = [s for s in grid.windows(flip) if intersects(s, grid.roi, box)]
    for i in range(0, len(starts), sw_batch):
        batch = starts[i : i + sw_batch]
        x = torch.stack([_crop(image, s, grid.roi) for s in batch]).to(device)
        if dims:
            x = torch.flip(x, dims)
        out_batch = torch.as_tensor(run(x)).float()
        if dims:
            out_batch = torch.flip(out_batch, dims)
        for start, out in zip(batch, out_batch, strict=True):
            win, blk = _overlap(start, grid.roi, box)
            part = out[(slice(None), *win)]
            part.mul_(w[win])  # in place, as MONAI: no second window-sized copy of the outputs
            acc[(slice(None), *blk)] += part
            count[blk] += w[win]
        del out_batch, x
    return acc.div_(count)


_SPLITS: weakref.WeakKeyDictionary[torch.nn.Module, SplitNetwork | None] = weakref.WeakKeyDictionary()


def member_split(net: torch.nn.Module, cfg: PipelineConfig, num_classes: int, in_channels: int) -> SplitNetwork | None:
    """The 3D network's trunk and pointwise head (verified once per network), or None."""
    if cfg.model.spatial_dims != 3 or net.training:  # training mode: verified only in eval
        return None
    if net not in _SPLITS:
        total = [1, 1, 1]
        for s in network_strides(cfg.model):
            total = [t * s for t in total]
        split = split_head(net, num_classes, tuple(2 * t for t in total), in_channels)
        if split is not None and layout_managed(net):
            manage_layout(split.trunk)  # shares the network's weights: a Predictor's to lay out
        _SPLITS[net] = split
    return _SPLITS[net]


def _passes(cfg: PipelineConfig) -> int:
    return len(flips_for(cfg, cfg.inference.tta))


def _feature_bytes(width: int, passes: int) -> int:
    """Bytes a voxel of a feature member: its passes (finished ones compacted where several)
    and the float32 pass being blended beside them."""
    stored = sources.PASS_DTYPE.itemsize if passes > 1 else 4
    return stored * width * passes + (4 * width if stored < 4 else 0)


def feature_split(net: torch.nn.Module, cfg: PipelineConfig, num_classes: int, in_channels: int) -> SplitNetwork | None:
    """The split to blend features with, where that holds fewer bytes per voxel than the
    member's probabilities would (their sum and, with TTA, the pass being blended); else None."""
    split = member_split(net, cfg, num_classes, in_channels)
    if split is None:
        return None
    passes = _passes(cfg)
    probabilities = 4 * num_classes * (2 if passes > 1 else 1)
    return split if _feature_bytes(split.head.in_channels, passes) < probabilities else None


def full_resolution_width(model: ModelConfig) -> float:
    """Channels per window voxel of the network's widest full-resolution level: its first
    level's, an eighth of it where MONAI's UNet applies the first stride in its first block
    (``unet``/``residual_unet`` with ``strides[0] == 2``: no full-resolution level)."""
    width = float(model.channels[0])
    strides = network_strides(model)
    if model.name in ("unet", "residual_unet") and strides and strides[0] == 2:
        width /= 2 ** model.spatial_dims
    return width


def window_batch(cfg: PipelineConfig, roi: Sequence[int], channels: int) -> int:
    """Windows per network call: ``inference.sw_batch_size``, fewer where a batch's outputs
    (``channels`` per voxel, and their flipped copy) and activations
    (:data:`ACTIVATION_MAPS` x :func:`full_resolution_width`) exceed :data:`WINDOW_BYTES`."""
    roi_voxels = 1
    for r in roi:
        roi_voxels *= r
    per_window = roi_voxels * 4 * (2 * channels + ACTIVATION_MAPS * full_resolution_width(cfg.model))
    return max(1, min(cfg.inference.sw_batch_size, int(WINDOW_BYTES // per_window)))


def _window_setup(cfg: PipelineConfig, image: torch.Tensor, channels: int, device: torch.device
                  ) -> tuple[WindowGrid, torch.Tensor, int]:
    grid = network_grid(cfg, image.shape[1:])
    sw_batch = window_batch(cfg, grid.roi, channels)
    # MONAI's weights, built on the CPU (it reads their minimum back) and moved once
    weight = compute_importance_map(grid.roi, mode=cfg.inference.blend, device="cpu", dtype=torch.float32).to(device)
    return grid, weight, sw_batch


@torch.no_grad()
def member_features(split: SplitNetwork, image: torch.Tensor, cfg: PipelineConfig, box: Box) -> FeatureMember:
    """The blended trunk features of every mirrored pass of one member over ``box``; with
    several passes, each finished one compacted (:func:`medseg.inference.block_source.compact_pass`)."""
    device = next(split.trunk.parameters()).device
    grid, weight, sw_batch = _window_setup(cfg, image, split.head.in_channels, device)
    run = network_runner(split.trunk, cfg, (sw_batch, image.shape[0], *grid.roi))
    flips = flips_for(cfg, cfg.inference.tta)
    member = FeatureMember(split.head, [])
    for flip in flips:
        features = _pass_outputs(run, image, grid, box, flip, weight, sw_batch, split.head.in_channels)
        stored, scale = compact_pass(features) if len(flips) > 1 else (features, 1.0)
        del features
        member.passes.append(stored)
        member.scales.append(scale)
    return member


@torch.no_grad()
def member_probabilities(net: torch.nn.Module, image: torch.Tensor, cfg: PipelineConfig, box: Box,
                         num_classes: int) -> torch.Tensor:
    """Softmax probabilities (K, *box) of one network over ``box``, averaged over its TTA passes.

    ``image``: the whole preprocessed image (C, *spatial) on any device; windows are cut
    from it and run on the network's device, where the result stays.
    """
    device = next(net.parameters()).device
    flips = flips_for(cfg, cfg.inference.tta)
    if cfg.model.spatial_dims == 2:
        return _slices_2d(net, image, cfg, box, flips).to(device)
    grid, weight, sw_batch = _window_setup(cfg, image, num_classes, device)
    run = network_runner(net, cfg, (sw_batch, image.shape[0], *grid.roi))
    total: torch.Tensor | None = None
    for flip in flips:
        probs = softmax_(_pass_outputs(run, image, grid, box, flip, weight, sw_batch, num_classes))
        total = probs if total is None else total.add_(probs)
        del probs
    if total is None:  # pragma: no cover - flips is never empty
        raise RuntimeError("no passes")
    return total.div_(len(flips)) if len(flips) > 1 else total


def _slices_2d(net: torch.nn.Module, image: torch.Tensor, cfg: PipelineConfig, box: Box,
               flips: list[tuple[int, ...]]) -> torch.Tensor:
    """A 2D network over the slices of ``box`` (slice axis ``data.slice_axis``), in-plane whole.

    Blocks of a 2D network cut only the slice axis, so the in-plane box is the whole plane
    and the existing slice-by-slice prediction gives exactly the whole-volume result.
    """
    axis = cfg.data.slice_axis
    lo, hi = box[axis]
    half = cfg.data.slab_slices // 2
    a, b = max(0, lo - half), min(image.shape[1 + axis], hi + half)
    sub = image.narrow(1 + axis, a, b - a)
    # the slab neighbours of [lo, hi): real slices, zeros beyond the image as in the whole-volume
    # path; predict_probabilities pads ``half`` zero slices at both ends again, whose
    # predictions are cut off below
    pads = [0, 0] * 3
    pads[2 * (2 - axis)] = a - (lo - half)
    pads[2 * (2 - axis) + 1] = (hi + half) - b
    sub = F.pad(sub, pads) if any(pads) else sub
    probs = predict_probabilities(net, sub, cfg, tta=len(flips) > 1)
    return probs.narrow(1 + axis, half, hi - lo) if half else probs


@torch.no_grad()
def block_source(
    members: Sequence[tuple[torch.nn.Module, PipelineConfig]], image: torch.Tensor, box: Box, num_classes: int
) -> BlockSource:
    """The ensemble's probabilities over ``box``: members with a pointwise head as blended
    features (where smaller, :func:`feature_split`), the others as probabilities summed on
    the first such member's device (the order of operations of the whole-volume path)."""
    if not members:
        raise ValueError("block_source needs at least one network")
    total: torch.Tensor | None = None
    features: list[FeatureMember] = []
    for net, cfg in members:
        split = feature_split(net, cfg, num_classes, int(image.shape[0]))
        if split is not None:
            features.append(member_features(split, image, cfg, box))
            continue
        probs = member_probabilities(net, image, cfg, box, num_classes)
        total = probs if total is None else total.add_(probs.to(total.device))
        del probs
    shape = tuple(hi - lo for lo, hi in box)
    return BlockSource(shape, num_classes, total, features, len(members))


def block_probabilities(
    members: Sequence[tuple[torch.nn.Module, PipelineConfig]], image: torch.Tensor, box: Box, num_classes: int
) -> torch.Tensor:
    """Probabilities (K, *box): each member's mean over its TTA passes, averaged over members
    (materialised: ``classes x box`` floats; prediction itself goes slab by slab)."""
    return block_source(members, image, box, num_classes).full()


def bytes_per_voxel(
    members: Sequence[tuple[torch.nn.Module, PipelineConfig]], num_classes: int, in_channels: int = 1
) -> int:
    """Peak bytes per network-grid voxel of a block: what each member leaves (features of
    every pass, or probabilities summed in one tensor, plus a pass and a member being added
    to it) and the weight sum of the pass being blended.
    A multi-pass feature member's finished passes are kept in
    :data:`medseg.inference.block_source.PASS_DTYPE` (:func:`_feature_bytes`)."""
    per = 4  # the pass's weight sum
    probability_members = []
    for net, cfg in members:
        split = feature_split(net, cfg, num_classes, in_channels)
        if split is not None:
            per += _feature_bytes(split.head.in_channels, _passes(cfg))
        else:
            probability_members.append(cfg)
    if probability_members:
        per += 4 * num_classes  # the sum
        if any(_passes(cfg) > 1 for cfg in probability_members):
            per += 4 * num_classes  # a pass being blended while the member's sum exists
        if len(probability_members) > 1:
            per += 4 * num_classes  # a member being added to the sum
    return per


def plan_for(
    members: Sequence[tuple[torch.nn.Module, PipelineConfig]], shape: Sequence[int], num_classes: int,
    budget_bytes: int, in_channels: int = 1,
) -> BlockPlan:
    """Blocks of a network grid of ``shape`` for these members within ``budget_bytes``.

    3D networks: :func:`medseg.inference.blocks.plan_blocks` over their window grids. With
    a 2D member, blocks cut only its slice axis (its windows lie in the plane).
    """
    shape = tuple(shape)
    per_voxel = bytes_per_voxel(members, num_classes, in_channels)
    two_d = [cfg for _, cfg in members if cfg.model.spatial_dims == 2]
    if not two_d:
        return plan_blocks(shape, [network_grid(cfg, shape) for _, cfg in members], per_voxel, budget_bytes)
    axes = {cfg.data.slice_axis for cfg in two_d}
    whole = tuple((0, n) for n in shape)
    if len(axes) > 1 or len(two_d) < len(members):  # mixed ensembles: one block
        return BlockPlan(shape, (whole,), 0, 0)
    axis = axes.pop()
    plane = 1
    for a, n in enumerate(shape):
        plane *= n if a != axis else 1
    per_block = max(1, budget_bytes // (per_voxel * plane) - 1)
    blocks = []
    for lo in range(0, shape[axis], per_block):
        box = list(whole)
        box[axis] = (lo, min(shape[axis], lo + per_block))
        blocks.append(tuple(box))
    return BlockPlan(shape, tuple(blocks), 0, 0)


@torch.no_grad()
def grid_labels(
    members: Sequence[tuple[torch.nn.Module, PipelineConfig]], image: torch.Tensor, num_classes: int,
    budget_bytes: int = BLOCK_BYTES,
) -> torch.Tensor:
    """Argmax labels on the network grid (uint8, int16 above 256 classes), block by block
    and slab by slab.

    What validation needs: no ``classes x volume`` array, and the labels on ``image``'s device
    (in training, the label's), whatever device the networks run on.
    """
    shape = tuple(image.shape[1:])
    plan = plan_for(members, shape, num_classes, budget_bytes, int(image.shape[0]))
    out = torch.empty(shape, dtype=torch.uint8 if num_classes <= 256 else torch.int16, device=image.device)
    for box in plan.blocks:
        source = block_source(members, image, box, num_classes)
        for lo, hi in source.slabs():
            labels = running_argmax(source.slab(lo, hi)[None])[0]
            out[(*(slice(a, b) for a, b in box[:2]), slice(box[2][0] + lo, box[2][0] + hi))] = labels.to(image.device)
        del source
    return out
