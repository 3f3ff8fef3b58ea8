"""Where the sliding windows fall and how the network grid is cut into blocks.

Block-wise prediction (:mod:`medseg.inference.blockwise`) keeps class probabilities for one
block of the network grid at a time, so that memory does not grow with ``classes x
volume``. This module is the pure geometry of it, in voxels of the network grid:

* :func:`window_grid`: the window positions of MONAI's ``sliding_window_inference`` for a
  whole image (same scan interval, same clamping of the last window, same centred
  padding of an image smaller than the window, same order: the last axis fastest), so
  that a block sums exactly the windows, weights and order the whole-volume path sums;
* :func:`plan_blocks`: boxes that tile the grid, cut at window starts, as few and as
  large as a byte budget allows, chosen to minimise the number of network evaluations
  (a window that overlaps two blocks is evaluated for each of them).

Every box is half-open ``[lo, hi)`` per axis; ``evaluated`` adds one voxel on the high
side of each axis (where the grid has it), which linear resampling back to the input grid
needs (output voxels are assigned to the block holding their lower interpolation tap).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Box = tuple[tuple[int, int], ...]
"""Half-open ``(lo, hi)`` per spatial axis."""


@dataclass(frozen=True)
class WindowGrid:
    """Window positions of one sliding-window pass over an image of spatial ``shape``.

    ``starts`` are per axis, in the coordinates of the image padded by ``pad`` (``(before,
    after)`` per axis; non-zero only where the image is smaller than the window).
    """

    shape: tuple[int, ...]
    roi: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    pad: tuple[tuple[int, int], ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(n + b + a for n, (b, a) in zip(self.shape, self.pad, strict=True))

    def windows(self, flip: Sequence[int] = ()) -> Iterator[tuple[int, ...]]:
        """Window starts in image coordinates (may be negative where padded), MONAI's order.

        ``flip``: spatial axes (0-based) of a mirrored pass. MONAI runs the same grid on the
        flipped image; in the image's own frame that window starts at the mirrored position,
        and the centred padding of a flipped axis lies mirrored too.
        """
        for combo in itertools.product(*self.starts):
            out = []
            for axis, start in enumerate(combo):
                before, after = self.pad[axis]
                if axis in flip:
                    out.append(self.padded_shape[axis] - self.roi[axis] - start - after)
                else:
                    out.append(start - before)
            yield tuple(out)

    def count(self) -> int:
        return math.prod(len(s) for s in self.starts)


def scan_interval(size: int, roi: int, overlap: float) -> int:
    """MONAI's step between windows: ``int(roi * (1 - overlap))`` (at least 1), ``roi`` if it fills the axis."""
    if roi == size:
        return roi
    return max(1, int(roi * (1 - overlap)))


def axis_starts(size: int, roi: int, interval: int) -> tuple[int, ...]:
    """Window starts along one axis as MONAI's ``dense_patch_slices``: every ``interval``,
    the last moved back to end at ``size``."""
    roi = min(roi, size)
    count = next((d for d in range(math.ceil(size / interval)) if d * interval + roi >= size), 0) + 1
    return tuple(i * interval - max(i * interval + roi - size, 0) for i in range(count))


def window_grid(shape: Sequence[int], roi: Sequence[int], overlap: float) -> WindowGrid:
    """The windows MONAI's ``sliding_window_inference`` would run on an image of ``shape``."""
    if len(shape) != len(roi):
        raise ValueError(f"image shape {tuple(shape)} and window {tuple(roi)}: expected the same number of axes")
    pad = []
    for n, r in zip(shape, roi, strict=True):
        diff = max(r - n, 0)
        pad.append((diff // 2, diff - diff // 2))
    padded = [n + b + a for n, (b, a) in zip(shape, pad, strict=True)]
    starts = tuple(
        axis_starts(p, r, scan_interval(p, r, overlap)) for p, r in zip(padded, roi, strict=True)
    )
    return WindowGrid(tuple(shape), tuple(roi), starts, tuple(pad))


def intersects(start: Sequence[int], roi: Sequence[int], box: Box) -> bool:
    """Whether the window at ``start`` (image coordinates) overlaps ``box``."""
    return all(s < hi and s + r > lo for s, r, (lo, hi) in zip(start, roi, box, strict=True))


def evaluated(box: Box, shape: Sequence[int]) -> Box:
    """``box`` plus one voxel on the high side of each axis, within ``shape``."""
    return tuple((lo, min(hi + 1, n)) for (lo, hi), n in zip(box, shape, strict=True))


@dataclass(frozen=True)
class BlockPlan:
    """Boxes tiling the grid, and what they cost."""

    shape: tuple[int, ...]
    blocks: tuple[Box, ...]
    evaluations: int
    """Network windows evaluated over all blocks (per pass: flips and members multiply it)."""
    whole_volume_evaluations: int
    """Windows of one whole-volume pass (the minimum)."""

    @property
    def overhead(self) -> float:
        return self.evaluations / max(1, self.whole_volume_evaluations)


def _cuts(size: int, starts: Sequence[int], per_block: int) -> list[tuple[int, int]]:
    """Split an axis at every ``per_block``-th window start."""
    edges = sorted({s for s in starts if 0 < s < size})
    cuts = [0, *edges[per_block - 1 :: per_block], size] if per_block <= len(edges) else [0, size]
    cuts = sorted(set(cuts))
    return list(itertools.pairwise(cuts))


def _windows_on(lo: int, hi: int, starts: Sequence[int], roi: int) -> int:
    return sum(1 for s in starts if s < hi and s + roi > lo)


def plan_blocks(
    shape: Sequence[int], grids: Sequence[WindowGrid], bytes_per_voxel: int, budget_bytes: int
) -> BlockPlan:
    """Cut ``shape`` into boxes whose ``evaluated`` size times ``bytes_per_voxel`` fits ``budget_bytes``.

    ``grids``: the window grid of every network that predicts (an ensemble's members may
    differ in window size). Cuts fall on window starts of the first grid; among the
    uniform cuttings (every k-th start per axis) that fit, the one with the fewest network
    evaluations wins (ties: fewer blocks, then the smallest largest block: the lowest memory
    peak). The whole volume is one block when it fits.
    When even one window-step per block does not fit, the smallest cutting is used (its
    memory is then above the budget, by less than one window step per axis).
    """
    shape = tuple(shape)
    if not grids:
        raise ValueError("plan_blocks needs at least one window grid")
    ref = grids[0]
    image_starts = [tuple(max(0, s - b) for s in st) for st, (b, _) in zip(ref.starts, ref.pad, strict=True)]
    whole = sum(g.count() for g in grids)
    options = [range(1, len(st) + 1) for st in image_starts]
    best: tuple[tuple[int, int, int], list[list[tuple[int, int]]]] | None = None
    smallest: tuple[int, list[list[tuple[int, int]]]] | None = None
    for per_block in itertools.product(*options):
        cuts = [_cuts(n, st, k) for n, st, k in zip(shape, image_starts, per_block, strict=True)]
        biggest = math.prod(max(min(hi + 1, n) - lo for lo, hi in c) for c, n in zip(cuts, shape, strict=True))
        if smallest is None or biggest < smallest[0]:
            smallest = (biggest, cuts)
        if biggest * bytes_per_voxel > budget_bytes:
            continue
        cost = _evaluations(cuts, grids, shape)
        key = (cost, math.prod(len(c) for c in cuts), biggest)
        if best is None or key < best[0]:
            best = (key, cuts)
    if best is not None:
        cuts = best[1]
    else:
        if smallest is None:  # pragma: no cover - product over non-empty ranges
            raise RuntimeError("no block cutting")
        cuts = smallest[1]
    blocks = tuple(tuple(box) for box in itertools.product(*cuts))
    return BlockPlan(shape, blocks, _evaluations(cuts, grids, shape), whole)


def _evaluations(cuts: list[list[tuple[int, int]]], grids: Sequence[WindowGrid], shape: tuple[int, ...]) -> int:
    total = 0
    for g in grids:
        per_axis = []
        for axis, axis_cuts in enumerate(cuts):
            before = g.pad[axis][0]
            starts = [s - before for s in g.starts[axis]]
            n = shape[axis]
            per_axis.append(sum(_windows_on(lo, min(hi + 1, n), starts, g.roi[axis]) for lo, hi in axis_cuts))
        total += math.prod(per_axis)
    return total
