"""A 3D fully connected CRF on the network's class probabilities (off by default).

Krähenbühl & Koltun (NeurIPS 2011) mean field with Potts compatibility and two kernels,
as DeepMedic (Kamnitsas et al. 2017) used on 3D brain-lesion probabilities:

* smoothness: ``w_s exp(-|p_i - p_j|^2 / 2 sigma_s^2)`` over positions ``p`` in mm,
  computed exactly with a separable Gaussian convolution (sigma in voxels = sigma_mm /
  spacing per axis, so anisotropic spacing is honoured);
* appearance (bilateral): ``w_b exp(-|p_i - p_j|^2 / 2 sigma_b^2 - |I_i - I_j|^2 / 2
  sigma_I^2)`` over positions in mm and *all* input channels ``I`` (normalised network
  input), computed with the permutohedral lattice (:mod:`medseg.inference.permutohedral`).

Both kernels are normalised (divided by the kernel applied to ones), so a weight is the
most a neighbourhood can add to a class's log-probability. Why our own torch version:
SimpleCRF (the usual 3D dense CRF wheel) does not build against NumPy 2 and MONAI's CRF
layer needs MONAI's C++ extension, which its wheels do not ship.

Memory and time are bounded by working per structure: the classes predicted within the
structure's bounding box plus ``margin_mm``, never every class over a whole CT at once,
and a box of more than ``2 max_voxels / classes`` voxels is refined on an
integer-downsampled grid whose result is interpolated back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.config import CrfConfig, suggest
from medseg.data.preprocess import linear_taps
from medseg.inference.permutohedral import Lattice

EPS = 1e-6
SLAB_VOXELS = 1 << 20
"""Voxels per slab in the slab-by-slab passes over a box (argmax, pooling, write-back)."""


def resolve_structures(cfg: CrfConfig, labels: Mapping[str, int]) -> list[int]:
    """Label ids refined by the CRF (every foreground structure when ``cfg.structures`` is empty)."""
    known = {n: i for n, i in labels.items() if i != 0}
    if not cfg.structures:
        return sorted(known.values())
    ids = []
    for name in cfg.structures:
        if name not in known:
            raise ValueError(
                f"inference.crf.structures: {name!r} is not one of the model's structures {list(known)}."
                + suggest(name, known)
            )
        ids.append(known[name])
    return ids


def crf_settings(cfg: CrfConfig, labels: Mapping[str, int], apply_postprocess: bool = True,
                 force: bool | None = None) -> CrfConfig:
    """The CRF a predictor runs: the config's, off with ``--no-postprocess``, and
    ``force`` (``--crf``) winning over both. Structure names are checked here, up front."""
    enabled = cfg.enabled and apply_postprocess if force is None else force
    out = dataclasses.replace(cfg, enabled=enabled, structures=list(cfg.structures))
    if enabled:
        resolve_structures(out, labels)
    return out


def _gaussian_blur(x: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` (V, X, Y, Z) with per-axis sigma in voxels (zero padded)."""
    out = x[None]
    for axis, sigma in enumerate(sigma_vox):
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        v = out.shape[1]
        out = F.conv3d(F.pad(out, pad), (k / k.sum()).reshape(shape).repeat(v, 1, 1, 1, 1), groups=v)
    return out[0]


def _pool_factor(shape: Sequence[int], classes: int, max_voxels: int) -> int:
    """Integer downsampling factor of a grid of ``shape`` refined over ``classes`` classes:
    at most ``2 max_voxels / classes`` voxels after ceil-mode average pooling."""
    budget = max(1, max_voxels * 2 // max(2, classes))
    factor = max(1, math.ceil((math.prod(shape) / budget) ** (1 / 3)))
    while factor > 1 and math.prod(math.ceil(s / factor) for s in shape) > budget:
        factor += 1  # ceil_mode pooling of sizes that are not multiples of the factor
    return factor


def _avg_pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling of ``x`` (V, X, Y, Z) by ``factor``, the last window of an axis
    clipped (ceil mode); an axis shorter than ``factor`` becomes one plane, its mean."""
    kernel = tuple(min(factor, n) for n in x.shape[1:])
    return F.avg_pool3d(x[None], kernel, kernel, ceil_mode=True)[0]


def crf_refine(probs: np.ndarray | torch.Tensor, image: np.ndarray | torch.Tensor, spacing: Sequence[float],
               cfg: CrfConfig) -> torch.Tensor:
    """Refine class probabilities ``probs`` (K, X, Y, Z), summing to one over K, with the
    image ``image`` (C, X, Y, Z): K-class mean field with Potts compatibility.

    ``spacing``: voxel size in mm along X, Y, Z. Returns the refined probabilities
    (K, X, Y, Z) float32. A grid of more than ``cfg.max_voxels * 2 / K`` voxels is refined
    on a grid downsampled by an integer factor (average pooling) and interpolated back, so
    that memory (which grows with voxels x classes) stays that of a two-class refinement of
    ``max_voxels`` voxels.
    """
    p = torch.as_tensor(probs, dtype=torch.float32)
    img = torch.as_tensor(image, dtype=torch.float32)
    if img.ndim == 3:
        img = img[None]
    shape = tuple(p.shape[1:])
    factor = _pool_factor(shape, p.shape[0], cfg.max_voxels)
    if factor > 1:
        p = _avg_pool(p, factor)
        img = _avg_pool(img, factor)
    sp = [float(s) * factor for s in spacing]
    q = _mean_field(p, img, sp, cfg)
    if factor > 1:
        q = F.interpolate(q[None], size=shape, mode="trilinear", align_corners=False)[0]
    return q


def crf_binary(prob: np.ndarray | torch.Tensor, image: np.ndarray | torch.Tensor, spacing: Sequence[float],
               cfg: CrfConfig) -> torch.Tensor:
    """Refine a foreground probability ``prob`` (X, Y, Z) against the rest (two classes);
    returns the refined foreground probability (X, Y, Z). See :func:`crf_refine`."""
    p = torch.as_tensor(prob, dtype=torch.float32)
    return crf_refine(torch.stack([1 - p, p]), image, spacing, cfg)[1].contiguous()


def _mean_field(p: torch.Tensor, img: torch.Tensor, spacing: Sequence[float], cfg: CrfConfig) -> torch.Tensor:
    """Mean field on ``p`` (K, X, Y, Z); returns Q (K, X, Y, Z)."""
    k, shape = p.shape[0], p.shape[1:]
    n = shape.numel()
    unary = torch.log(p.clamp_min(EPS))
    q = torch.softmax(unary, 0)
    lattice = None
    if cfg.bilateral_weight > 0:
        axes = [torch.arange(s, dtype=torch.float32) * (sp / cfg.bilateral_sigma_mm) for s, sp in zip(shape, spacing, strict=True)]
        pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(n, 3)
        feats = torch.cat([pos, img.reshape(img.shape[0], n).T / cfg.bilateral_sigma_intensity], 1)
        del pos
        lattice = Lattice(feats)
        del feats
        norm_b = lattice.filter(torch.ones(n, 1)).clamp_min(EPS)
    sigma_vox = [cfg.spatial_sigma_mm / s for s in spacing]
    if cfg.spatial_weight > 0:
        norm_s = _gaussian_blur(torch.ones(1, *shape), sigma_vox).clamp_min(EPS)
    for _ in range(cfg.iterations):
        message = torch.zeros_like(q)
        if lattice is not None:
            message += cfg.bilateral_weight * (lattice.filter(q.reshape(k, n).T) / norm_b).T.reshape(q.shape)
        if cfg.spatial_weight > 0:
            message += cfg.spatial_weight * _gaussian_blur(q, sigma_vox) / norm_s
        # Potts: a class pays for the mass of the other classes around it; minus a constant
        # that is the same for every class, that is a reward for its own mass
        q = torch.softmax(unary + message, 0)
    return q


def _box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    if idx[0].size == 0:
        return None
    return tuple(slice(max(0, int(i[0]) - m), min(s, int(i[-1]) + 1 + m))
                 for i, m, s in zip(idx, margin, mask.shape, strict=True))


def _slabs(shape: Sequence[int], multiple: int = 1) -> list[slice]:
    """Slabs along the first of ``shape`` (X, Y, Z) of about ``SLAB_VOXELS`` voxels each,
    their length a multiple of ``multiple`` (so that pooling windows do not straddle two)."""
    per_slab = max(1, SLAB_VOXELS // max(1, math.prod(shape[1:])))
    step = max(multiple, per_slab // multiple * multiple)
    return [slice(start, min(shape[0], start + step)) for start in range(0, shape[0], step)]


def _argmax(probs: torch.Tensor) -> torch.Tensor:
    """Argmax over the classes of ``probs`` (K, X, Y, Z) as uint8 (int16 beyond 256
    classes), slab by slab: never the whole grid's int64 argmax (8 bytes a voxel)."""
    out = torch.empty(probs.shape[1:], dtype=torch.uint8 if probs.shape[0] <= 256 else torch.int16)
    for s in _slabs(probs.shape[1:]):
        out[s] = probs[:, s].argmax(0).to(out.dtype)
    return out


def _classes_in(argmax: torch.Tensor, k: int) -> list[int]:
    """The classes present in ``argmax`` (a box of the argmax map), slab by slab."""
    seen = torch.zeros(k, dtype=torch.bool)
    for s in _slabs(argmax.shape):
        seen |= torch.bincount(argmax[s].reshape(-1).long(), minlength=k)[:k] > 0
    return [int(c) for c in torch.nonzero(seen).reshape(-1)]


def _pooled_box(sub: torch.Tensor, classes: list[int], image: np.ndarray, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The box's probabilities of ``classes`` (class 0, the background, also holds the
    classes not listed) and its image, average-pooled by ``factor``; built slab by slab, so
    that the full-resolution copies are one slab at a time."""
    probs, images = [], []
    for s in _slabs(sub.shape[1:], factor):
        part = sub[:, s]
        local = part[classes]  # a copy (advanced indexing)
        local[0] += (part.sum(0) - local.sum(0)).clamp_min(0)  # classes not predicted here
        img = torch.as_tensor(np.ascontiguousarray(image[:, s]), dtype=torch.float32)
        if factor > 1:
            local = _avg_pool(local, factor)
            img = _avg_pool(img, factor)
        probs.append(local)
        images.append(img)
    return torch.cat(probs, 1), torch.cat(images, 1)


def _upsampled_rows(q: torch.Tensor, shape: Sequence[int]) -> Callable[[slice], torch.Tensor]:
    """Trilinear interpolation (``align_corners=False``, as ``F.interpolate``) of ``q``
    (x, y, z) to ``shape``, one slab of rows along X at a time: bilinear over Y and Z once
    (x Y Z values), then linear along X per requested slab."""
    yz = F.interpolate(q[None], size=tuple(shape[1:]), mode="bilinear", align_corners=False)[0]
    lo, hi, w = (torch.from_numpy(a) for a in linear_taps(q.shape[0], shape[0]))

    def rows(s: slice) -> torch.Tensor:
        ws = w[s][:, None, None]
        return yz[lo[s]] * (1 - ws) + yz[hi[s]] * ws

    return rows


def _refine_box(probs: torch.Tensor, box: tuple[slice, ...], label: int, classes: list[int], image: np.ndarray,
                spacing: Sequence[float], cfg: CrfConfig) -> None:
    """Refine ``label`` in ``box`` of ``probs`` (in place) by a mean field over ``classes``."""
    sub = probs[(slice(None), *box)]
    shape = tuple(sub.shape[1:])
    factor = _pool_factor(shape, len(classes), cfg.max_voxels)
    local, img = _pooled_box(sub, classes, image[(slice(None), *box)], factor)
    q = _mean_field(local, img, [float(s) * factor for s in spacing], cfg)[classes.index(label)]
    del local, img
    rows = _upsampled_rows(q, shape) if factor > 1 else (lambda s: q[s])
    for s in _slabs(shape):
        part = sub[:, s]
        after = rows(s)
        rest = part.sum(0) - part[label]  # the other classes' total, before
        tiny = rest <= EPS  # nothing to rescale: the freed mass goes to the background
        part.mul_(torch.where(tiny, torch.zeros_like(rest), (1 - after) / rest.clamp_min(EPS))[None])
        part[0] += torch.where(tiny, 1 - after, torch.zeros_like(after))
        part[label] = after


def refine_probabilities(probs: torch.Tensor, image: np.ndarray, spacing: Sequence[float], cfg: CrfConfig,
                         labels: Mapping[str, int]) -> torch.Tensor:
    """Refine the class probabilities ``probs`` (K, X, Y, Z) in place, structure by structure.

    Each structure in ``cfg.structures`` (all when empty) that the argmax predicts
    somewhere is refined within its bounding box plus ``cfg.margin_mm``, by a mean field
    over the classes the argmax predicts in that box (with the background; the probability
    of the other classes is counted as background there). Only the structure's own
    probability is written back; the other classes in the box are rescaled so that the
    probabilities still sum to one (where they held nothing, the freed probability goes to
    the background). Structures are refined in label order, each from the probabilities
    left by the previous ones. ``image``: the network input (C, X, Y, Z) on the same grid;
    ``spacing``: mm per axis.

    Why every class in the box, not the structure against the rest: neighbouring
    structures of the same intensity (the hippocampus head and body) would count as
    "rest", so the appearance kernel would pull the structure refined first into its
    neighbour (it cost the anterior hippocampus 0.17 Dice on a weak model).

    Memory beyond ``probs`` itself: a uint8 argmax and a mask of the grid, the refined
    structure's probability on the (downsampled) mean-field grid bilinearly resampled
    over Y and Z, and slabs of about ``SLAB_VOXELS`` voxels; a box's full-resolution class
    probabilities are never copied whole (on the 512x512x300 CT this kept the CRF within
    0.5 GB of prediction without it; benchmarks/RESULTS.md, "CRF").
    """
    ids = resolve_structures(cfg, labels)
    margin = [math.ceil(cfg.margin_mm / s) for s in spacing]
    k = probs.shape[0]
    for label in ids:
        if label >= k:
            continue
        argmax = _argmax(probs)
        box = _box((argmax == label).numpy(), margin)
        if box is None:
            continue
        classes = sorted({0, label, *_classes_in(argmax[box], k)})
        del argmax
        _refine_box(probs, box, label, classes, image, spacing, cfg)
    return probs
