"""The argmax of linearly resampled class probabilities, block by block, resampling few classes.

The label of an output voxel is the argmax over classes of its trilinear interpolation
from the 8 surrounding network-grid voxels (``align_corners=False``, the convention of the
forward resampling; taps from :func:`medseg.data.inverse.linear_taps`). Resampling every
class costs ``classes x output voxels`` and dominated prediction time at 100+ classes.
:func:`block_labels` resamples only the classes that are the argmax somewhere in the block
(a block of a whole-body CT holds a handful of its 117 structures), plus one map: the
second-best probability of every network voxel. That is exact: a class that is no
neighbour's argmax is at most the second-best probability at each of the 8 neighbours, so
its interpolation is at most the interpolated second-best map ``U``; where the best present
class exceeds ``U``, it is the argmax over all classes (first class on ties, as
:func:`running_argmax`). The few voxels where it does not are computed over every class.
When every class is present, the plain resampling is done.

The result equals :func:`resample_argmax` on the whole volume except where two classes tie
within float rounding (the passes round a little differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.inverse import linear_taps
from medseg.inference.blocks import Box

SLAB_BYTES = 64 * 2**20
"""Memory budget (bytes) of one slab of full-resolution probabilities."""

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


def grid_taps(grid_shape: Sequence[int], out_shape: Sequence[int]) -> list[Taps]:
    """Per axis ``(i0, i1, w1)`` from the network grid to the output grid."""
    return [linear_taps(n, o) for n, o in zip(grid_shape, out_shape, strict=True)]


def top2(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, second-largest value) over dim 0 of (K, ...): first class wins ties.

    The argmax is uint8 (int16 above 256 classes), as :func:`running_argmax`.
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


LocalTaps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def block_labels(probs: torch.Tensor, box: Box, taps: Sequence[Taps], out: np.ndarray) -> None:
    """Write into ``out`` (the whole output grid) the labels of the output voxels this block owns.

    ``probs``: (K, *evaluated) probabilities over ``box`` plus one voxel on each high side
    where the grid has it (:func:`medseg.inference.blocks.evaluated`); ``box``: the block
    on the network grid. An output voxel belongs to the block holding its lower tap.
    Works in slabs of output Z slices of about :data:`SLAB_BYTES`.
    """
    probs = probs.float().cpu()
    k = probs.shape[0]
    ranges = [output_range(t[0], lo, hi) for t, (lo, hi) in zip(taps, box, strict=True)]
    if any(j1 <= j0 for j0, j1 in ranges):
        return
    labels, second = top2(probs)
    present = torch.unique(labels).long()
    if len(present) < k:  # the classes to resample, and the bound for all the others
        candidates = torch.cat([probs.index_select(0, present), second[None]])
    else:
        candidates = probs
    del second
    # Z-major and contiguous, so that each output slab reads contiguous network-grid slices
    # (gathering one Z slice of a Z-last block touches every cache line of it)
    candidates = candidates.permute(3, 0, 1, 2).contiguous()  # (Z', n, X', Y')
    local: list[LocalTaps] = []
    for (i0, i1, w1), (lo, _), (j0, j1) in zip(taps, box, ranges, strict=True):
        local.append((torch.from_numpy(i0[j0:j1] - lo), torch.from_numpy(i1[j0:j1] - lo), torch.from_numpy(w1[j0:j1])))
    ox, oy = ranges[0][1] - ranges[0][0], ranges[1][1] - ranges[1][0]
    depth = ranges[2][1] - ranges[2][0]
    per_slice = max(1, candidates.shape[1] * ox * oy * 4 * 3)
    step = max(1, min(depth, SLAB_BYTES // per_slice))
    (x0, x1), (y0, y1), (z_first, _) = ranges
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        zt = (local[2][0][z0:z1], local[2][1][z0:z1], local[2][2][z0:z1])
        values = _interpolate(candidates, [local[0], local[1], zt])  # (n, ox, oy, dz)
        if len(present) < k:
            chunk = _settle(values, present, probs, [local[0], local[1], zt])
        else:
            chunk = running_argmax(values[None])[0]
        out[x0:x1, y0:y1, z_first + z0 : z_first + z1] = chunk.numpy()


def _lerp(x: torch.Tensor, dim: int, t: LocalTaps) -> torch.Tensor:
    i0, i1, w = t
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(x.index_select(dim, i0), x.index_select(dim, i1), w.view(shape))


def _interpolate(values: torch.Tensor, axis_taps: Sequence[LocalTaps]) -> torch.Tensor:
    """Separable linear interpolation of Z-major (Z', n, X', Y') onto the taps' output voxels
    (Z first); returns (n, X, Y, Z)."""
    out = _lerp(values, 0, axis_taps[2])  # (dz, n, X', Y')
    out = _lerp(out, 3, axis_taps[1])
    out = _lerp(out, 2, axis_taps[0])  # (dz, n, X, Y)
    return out.permute(1, 2, 3, 0)


def _settle(values: torch.Tensor, present: torch.Tensor, probs: torch.Tensor,
            axis_taps: Sequence[LocalTaps]) -> torch.Tensor:
    """Labels from the present classes' interpolations; the last row of ``values`` is the bound."""
    bound = values[-1]
    best_row = running_argmax(values[None, :-1])[0].long()
    best_value = values[:-1].gather(0, best_row[None])[0]
    labels = present[best_row]
    unsure = ~(best_value > bound)
    if bool(unsure.any()):  # every class for the few voxels the bound does not settle
        ix, iy, iz = unsure.nonzero(as_tuple=True)
        full = torch.zeros((probs.shape[0], ix.shape[0]), dtype=torch.float32)
        for cx in (0, 1):
            for cy in (0, 1):
                for cz in (0, 1):
                    tx, ty, tz = axis_taps[0], axis_taps[1], axis_taps[2]
                    wx = tx[2][ix] if cx else 1.0 - tx[2][ix]
                    wy = ty[2][iy] if cy else 1.0 - ty[2][iy]
                    wz = tz[2][iz] if cz else 1.0 - tz[2][iz]
                    full += probs[:, tx[cx][ix], ty[cy][iy], tz[cz][iz]] * (wx * wy * wz)
        labels[ix, iy, iz] = full.argmax(dim=0)
    return labels


# ------------------------------------------------------------------ whole volume (reference, CRF tuning)


def _slab_size(num_classes: int, plane: int, z_out: int) -> int:
    per_slice = max(1, num_classes * plane * 4 * 2)  # probabilities + interpolation temporaries
    return int(max(1, min(z_out, SLAB_BYTES // per_slice)))


def resample_argmax(probs: torch.Tensor, shape: tuple[int, int, int], dtype: type = np.uint8) -> np.ndarray:
    """Argmax over classes of ``probs`` (K, X', Y', Z') linearly resampled to ``shape``.

    Works in slabs of output Z slices (about :data:`SLAB_BYTES` each), so peak extra
    memory is one slab, not K full-resolution volumes. Returns an (X, Y, Z) array of class
    indices; when resampled it is in Fortran order (X fastest: NIfTI's on-disk order, so
    no full-resolution transpose is ever needed).
    """
    probs = probs.float()
    k, *src_shape = probs.shape
    if tuple(src_shape) == tuple(shape):
        return running_argmax(probs[None])[0].numpy().astype(dtype, copy=False)
    # (Z', K, Y', X'): a slab of Z is contiguous, and planes come out as (Y, X).
    zkyx = probs.permute(3, 0, 2, 1).contiguous()
    out_zyx: np.ndarray = np.empty((shape[2], shape[1], shape[0]), dtype=dtype)
    i0, i1, w1 = linear_taps(src_shape[2], shape[2])
    same_z = src_shape[2] == shape[2]
    same_plane = tuple(src_shape[:2]) == tuple(shape[:2])
    step = _slab_size(k, shape[0] * shape[1], shape[2])
    for z0 in range(0, shape[2], step):
        z1 = min(shape[2], z0 + step)
        if same_z:
            slab = zkyx[z0:z1]
        else:  # linear along Z with PyTorch's taps: (1 - w) * a + w * b
            w = torch.from_numpy(w1[z0:z1]).view(-1, 1, 1, 1)
            a = zkyx[torch.from_numpy(i0[z0:z1])]
            b = zkyx[torch.from_numpy(i1[z0:z1])]
            slab = a.mul_(1.0 - w).add_(b.mul_(w))  # (dz, K, Y', X')
        if not same_plane:
            slab = F.interpolate(slab, size=(shape[1], shape[0]), mode="bilinear", align_corners=False)
        out_zyx[z0:z1] = running_argmax(slab).numpy()
    return out_zyx.transpose(2, 1, 0)


def running_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 1 of (N, K, ...) as a running max over classes; uint8 (int16 above 255 classes).

    Same result as ``scores.argmax(1)`` (the first class wins ties) but about 10x faster on
    CPU for small K, where torch reduces over a non-contiguous dimension slowly.
    """
    k = scores.shape[1]
    best = scores[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8 if k <= 256 else torch.int16, device=scores.device)
    for c in range(1, k):
        better = scores[:, c] > best
        best = torch.maximum(best, scores[:, c])
        index.masked_fill_(better, c)
    return index
