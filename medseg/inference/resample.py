"""The argmax of linearly resampled class probabilities, block by block, without resampling every class.

The label of an output voxel is the argmax over classes of its trilinear interpolation
from the 8 surrounding network-grid voxels (``align_corners=False``, the convention of the
forward resampling; taps from :func:`medseg.inference.geometry.linear_taps`). Computing it
for every class costs ``classes x output voxels`` and dominated prediction time at 100+
classes. Two exact shortcuts make it almost independent of the class count:

1. where the 8 neighbours share one argmax class, that class wins the interpolation (it is
   at least as probable as any other class at every neighbour, and first on ties);
2. elsewhere (along structure boundaries) the candidates are the neighbours' argmax
   classes: a class that is no neighbour's argmax is at most the neighbour's second-best
   probability there, so its interpolation is at most ``U = sum_s w_s second_s``; the best
   candidate wins when it exceeds ``U``. Voxels where it does not (rare) are computed over
   every class.

The result equals :func:`medseg.inference.geometry.resample_argmax` on the whole volume
except where two classes tie within float rounding (the 8-tap sum rounds differently from
the separable passes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medseg.inference.blocks import Box
from medseg.inference.geometry import linear_taps

CHUNK_VOXELS = 2**20
"""Output voxels handled at once (bounds the index arrays of boundary voxels)."""

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


def grid_taps(grid_shape: Sequence[int], out_shape: Sequence[int]) -> list[Taps]:
    """Per axis ``(i0, i1, w1)`` from the network grid to the output grid."""
    return [linear_taps(n, o) for n, o in zip(grid_shape, out_shape, strict=True)]


def top2(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, second-largest value) over dim 0 of (K, ...): first class wins ties.

    The argmax is uint8 (int16 above 256 classes), as :func:`medseg.inference.geometry.running_argmax`.
    """
    k = probs.shape[0]
    best = probs[0].clone()
    second = torch.full_like(best, float("-inf"))
    index = torch.zeros(best.shape, dtype=torch.uint8 if k <= 256 else torch.int16, device=probs.device)
    for c in range(1, k):
        x = probs[c]
        better = x > best
        second = torch.where(better, best, torch.maximum(second, x))
        best = torch.maximum(best, x)
        index.masked_fill_(better, c)
    return index, second


def output_range(i0: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Output indices whose lower tap lies in ``[lo, hi)`` (``i0`` is non-decreasing)."""
    return int(np.searchsorted(i0, lo, "left")), int(np.searchsorted(i0, hi, "left"))


def block_labels(probs: torch.Tensor, box: Box, taps: Sequence[Taps], out: np.ndarray) -> None:
    """Write into ``out`` (the whole output grid) the labels of the output voxels this block owns.

    ``probs``: (K, *evaluated) probabilities over ``box`` plus one voxel on each high side
    where the grid has it (:func:`medseg.inference.blocks.evaluated`); ``box``: the block
    on the network grid. An output voxel belongs to the block holding its lower tap.
    """
    probs = probs.float().cpu()
    labels, second = top2(probs)
    ranges = [output_range(t[0], lo, hi) for t, (lo, hi) in zip(taps, box, strict=True)]
    if any(j1 <= j0 for j0, j1 in ranges):
        return
    local = []
    for (i0, i1, w1), (lo, _), (j0, j1) in zip(taps, box, ranges, strict=True):
        local.append((torch.from_numpy(i0[j0:j1] - lo), torch.from_numpy(i1[j0:j1] - lo),
                      torch.from_numpy(w1[j0:j1])))
    ox, oy = ranges[0][1] - ranges[0][0], ranges[1][1] - ranges[1][0]
    depth = ranges[2][1] - ranges[2][0]
    step = max(1, min(depth, CHUNK_VOXELS // max(1, ox * oy)))
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        zl = (local[2][0][z0:z1], local[2][1][z0:z1], local[2][2][z0:z1])
        chunk = _chunk_labels(probs, labels, second, [local[0], local[1], zl])
        jz = ranges[2][0]
        out[ranges[0][0] : ranges[0][1], ranges[1][0] : ranges[1][1], jz + z0 : jz + z1] = chunk.numpy()


def _corner_index(axis_taps: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], corner: tuple[int, ...]
                  ) -> list[torch.Tensor]:
    return [t[c] for t, c in zip(axis_taps, corner, strict=True)]


CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def _chunk_labels(probs: torch.Tensor, labels: torch.Tensor, second: torch.Tensor,
                  axis_taps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Labels (ox, oy, oz) of one chunk of output voxels; ``axis_taps`` per axis (i0, i1, w1), local."""
    corner_labels = []
    for corner in CORNERS:
        ix, iy, iz = _corner_index(axis_taps, corner)
        corner_labels.append(labels.index_select(0, ix).index_select(1, iy).index_select(2, iz))
    result = corner_labels[0].clone()
    boundary = torch.zeros(result.shape, dtype=torch.bool)
    for other in corner_labels[1:]:
        boundary |= other != result
    where = boundary.nonzero()  # (M, 3) output coordinates within the chunk
    if where.shape[0] == 0:
        return result
    mx, my, mz = where[:, 0], where[:, 1], where[:, 2]
    ey, ez = labels.shape[1], labels.shape[2]
    flat_index, weights = [], []
    for corner in CORNERS:
        ix, iy, iz = _corner_index(axis_taps, corner)
        flat_index.append((ix[mx] * ey + iy[my]) * ez + iz[mz])
        wx = axis_taps[0][2][mx] if corner[0] else 1.0 - axis_taps[0][2][mx]
        wy = axis_taps[1][2][my] if corner[1] else 1.0 - axis_taps[1][2][my]
        wz = axis_taps[2][2][mz] if corner[2] else 1.0 - axis_taps[2][2][mz]
        weights.append(wx * wy * wz)
    k = probs.shape[0]
    flat = probs.reshape(k, -1)
    candidates = torch.stack([cl[mx, my, mz] for cl in corner_labels]).long()  # (8, M)
    values = torch.zeros(candidates.shape, dtype=torch.float32)
    for n, w in zip(flat_index, weights, strict=True):
        values += flat[candidates, n.expand_as(candidates)] * w
    bound = torch.zeros(where.shape[0], dtype=torch.float32)
    second_flat = second.reshape(-1)
    for n, w in zip(flat_index, weights, strict=True):
        bound += second_flat[n] * w
    vmax = values.max(dim=0).values
    best = torch.where(values == vmax, candidates, torch.full_like(candidates, k)).min(dim=0).values
    unsure = ~(vmax > bound)
    if bool(unsure.any()):  # every class for the few voxels the bound does not settle
        sel = unsure.nonzero()[:, 0]
        full = torch.zeros((k, sel.shape[0]), dtype=torch.float32)
        for n, w in zip(flat_index, weights, strict=True):
            full += flat[:, n[sel]] * w[sel]
        best[sel] = full.argmax(dim=0)
    result[mx, my, mz] = best.to(result.dtype)
    return result
