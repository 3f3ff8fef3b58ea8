"""Models Genesis corruptions (Zhou et al. 2019/2021, "Models Genesis"): the pretext task that
``pretrain.method: genesis`` restores.

Each patch of a batch is, independently and with the reference implementation's rates:

* locally shuffled (probability ``LOCAL_RATE``): the voxels inside every small block (edge
  1 to a tenth of the patch per axis) are permuted, so the network must learn texture;
* put through a random monotone intensity curve (``NONLINEAR_RATE``): a cubic Bezier curve
  from (0, 0) to (1, 1) with two random control points, increasing or (half of the time)
  decreasing, applied to the patch's intensities rescaled to [0, 1] and mapped back;
* painted (``PAINT_RATE``): out-painting (``OUTPAINT_RATE`` of the time; all but one to five
  large boxes replaced by noise, so the network must extrapolate the anatomy) or in-painting
  (one to five boxes of a sixth to a third of the patch per axis replaced by noise).

Noise is uniform over the patch's own intensity range (the reference's ``rand()`` on images
scaled to [0, 1]). The network restores the whole original patch (mean squared error over
every voxel). The reference's flips are not repeated here: the pipeline's augmentation
already flips the patches it samples.

Everything runs on the batch's device; with ``generator`` (a CPU ``torch.Generator``, used
for the fixed validation corruptions) every random draw is made on the CPU from it and moved.
"""

from __future__ import annotations

import math

import torch

LOCAL_RATE = 0.5
NONLINEAR_RATE = 0.9
PAINT_RATE = 0.9
OUTPAINT_RATE = 0.8
CURVE_POINTS = 1001


class _Draws:
    """Random numbers from ``generator`` (CPU, then moved) or the global RNG of ``device``."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator, self.device = generator, device

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high], both included."""
        return low + int(torch.randint(0, max(1, high - low + 1), (), generator=self.generator))

    def tensor(self, *shape: int) -> torch.Tensor:
        if self.generator is None:
            return torch.rand(shape, device=self.device)
        return torch.rand(shape, generator=self.generator).to(self.device)


def bezier_curve(control: torch.Tensor, decreasing: bool, points: int = CURVE_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the cubic Bezier curve (0, 0), ``control[0]``, ``control[1]``, (1, 1) at
    ``points`` values of its parameter, x sorted ascending and y sorted ascending (or
    descending when ``decreasing``): a monotone map of [0, 1] onto [0, 1]."""
    t = torch.linspace(0.0, 1.0, points, device=control.device, dtype=control.dtype)[:, None]
    p1, p2 = control[0][None], control[1][None]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # + (1 - t)^3 * (0, 0)
    x = curve[:, 0].sort().values
    y = curve[:, 1].sort(descending=decreasing).values
    return x, y


def interpolate(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``y(x)`` at ``u`` (``x`` ascending; ``u`` outside [x0, xn] clamped)."""
    flat = u.reshape(-1).clamp(x[0], x[-1]).contiguous()  # tensor bounds: no device sync
    right = torch.searchsorted(x, flat).clamp(1, x.numel() - 1)
    x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
    w = ((flat - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).reshape(u.shape)


def local_shuffle(patch: torch.Tensor, block: tuple[int, ...], offset: tuple[int, ...], keys: torch.Tensor) -> torch.Tensor:
    """``patch`` (C, *spatial) with the voxels of every ``block``-sized cell of the grid that
    starts at ``offset`` permuted (the same permutation for every channel; ``keys``: one random
    key per voxel of the grid, (cells, voxels per cell)); voxels outside the grid unchanged."""
    c, spatial = patch.shape[0], patch.shape[1:]
    grid = [(s - o) // b for s, o, b in zip(spatial, offset, block, strict=True)]
    if math.prod(grid) == 0:
        return patch
    region = tuple(slice(o, o + g * b) for o, g, b in zip(offset, grid, block, strict=True))
    cells = patch[(slice(None), *region)]
    split = [n for g, b in zip(grid, block, strict=True) for n in (g, b)]
    nd = len(spatial)
    to_cells = [0, *[1 + 2 * i for i in range(nd)], *[2 + 2 * i for i in range(nd)]]
    flat = cells.reshape(c, *split).permute(to_cells).reshape(c, math.prod(grid), math.prod(block))
    order = keys.argsort(dim=-1)
    shuffled = flat.gather(2, order.expand(c, -1, -1))
    from_cells = sorted(range(len(to_cells)), key=to_cells.__getitem__)  # the inverse permutation
    back = shuffled.reshape(c, *grid, *block).permute(from_cells).reshape(cells.shape)
    out = patch.clone()
    out[(slice(None), *region)] = back
    return out


def _box(draws: _Draws, spatial: tuple[int, ...], low: list[int], high: list[int]) -> tuple[slice, ...]:
    """A random box with edges in [low, high] per axis, kept 3 voxels from the border where
    the patch allows it (as the reference)."""
    box = []
    for s, lo, hi in zip(spatial, low, high, strict=True):
        size = min(s, draws.integer(max(1, lo), max(1, lo, hi)))
        margin = min(3, (s - size) // 2)
        start = draws.integer(margin, s - size - margin)
        box.append(slice(start, start + size))
    return tuple(box)


def _paint(patch: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, draws: _Draws, outpaint: bool) -> torch.Tensor:
    spatial = tuple(patch.shape[1:])
    noise = lo + draws.tensor(*patch.shape) * (hi - lo)
    if outpaint:  # noise everywhere but one to five boxes of 3/7 to 4/7 of the patch
        out = noise
        size_low = [s - (4 * s) // 7 for s in spatial]
        size_high = [s - (3 * s) // 7 for s in spatial]
        for i in range(5):
            if i > 0 and draws.uniform() >= 0.95:
                break
            box = (slice(None), *_box(draws, spatial, size_low, size_high))
            out[box] = patch[box]
        return out
    out = patch.clone()  # in-painting: up to five boxes of a sixth to a third of the patch
    for _ in range(5):
        if draws.uniform() >= 0.95:
            break
        box = (slice(None), *_box(draws, spatial, [s // 6 for s in spatial], [s // 3 for s in spatial]))
        out[box] = noise[box]
    return out


def corrupt_one(patch: torch.Tensor, draws: _Draws) -> torch.Tensor:
    """One (C, *spatial) patch through the Models Genesis corruptions."""
    spatial = tuple(patch.shape[1:])
    out = patch
    if draws.uniform() < LOCAL_RATE:
        block = tuple(draws.integer(1, max(1, s // 10)) for s in spatial)
        offset = tuple(draws.integer(0, s % b) for s, b in zip(spatial, block, strict=True))
        cells = math.prod((s - o) // b for s, o, b in zip(spatial, offset, block, strict=True))
        out = local_shuffle(out, block, offset, draws.tensor(cells, math.prod(block)))
    lo, hi = out.amin(), out.amax()
    span = (hi - lo).clamp(min=1e-6)
    if draws.uniform() < NONLINEAR_RATE:
        control = torch.tensor([[draws.uniform(), draws.uniform()], [draws.uniform(), draws.uniform()]],
                               device=patch.device, dtype=torch.float32)
        x, y = bezier_curve(control, decreasing=draws.uniform() < 0.5)
        out = lo + interpolate(((out - lo) / span).float(), x, y).to(out.dtype) * span
    if draws.uniform() < PAINT_RATE:
        out = _paint(out, lo, hi, draws, outpaint=draws.uniform() < OUTPAINT_RATE)
    return out


def genesis_corrupt(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, *spatial) -> the same batch with each sample corrupted independently."""
    draws = _Draws(generator, image.device)
    return torch.stack([corrupt_one(sample, draws) for sample in image])
