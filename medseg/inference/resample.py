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
from medseg.inference.block_source import SLAB_BYTES, BlockSource
from medseg.inference.blocks import Box

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


DENSE_FRACTION = 0.5
"""When at least this fraction of the classes is some network voxel's argmax in a block (an
untrained network, or a block full of small structures), every class is resampled: the
second-best bound would settle too little to pay for itself."""

GATHER_FRACTION = 0.02
"""Where the second-best bound leaves at most this fraction of an output slab unsettled,
those voxels get every class at their 8 network neighbours; beyond it the slab's classes
are all resampled, in chunks."""


def block_labels(source: BlockSource, box: Box, taps: Sequence[Taps], out: np.ndarray) -> None:
    """Write into ``out`` (the whole output grid) the labels of the output voxels this block owns.

    ``source``: the probabilities over ``box`` plus one voxel on each high side where the
    grid has it (:func:`medseg.inference.blocks.evaluated`); ``box``: the block on the
    network grid. An output voxel belongs to the block holding its lower tap. Memory beyond
    the source: the block's second-best map (4 bytes a voxel) and slabs of about
    :data:`SLAB_BYTES`; the probabilities are asked for slab by slab (first for the
    argmax and second-best of every network voxel, then for the classes to resample).
    A block spanning the whole plane is resampled in-plane by ``F.interpolate`` (bilinear,
    the same taps), otherwise by separable gathers.
    """
    k = source.num_classes
    ranges = [output_range(t[0], lo, hi) for t, (lo, hi) in zip(taps, box, strict=True)]
    if any(j1 <= j0 for j0, j1 in ranges):
        return
    second = torch.empty(source.shape, dtype=torch.float32)
    seen = torch.zeros(k, dtype=torch.bool)
    dense = False
    for lo, hi in source.slabs():
        index, value = top2(source.slab(lo, hi))
        second[..., lo:hi] = value.cpu()
        seen |= torch.bincount(index.flatten().long(), minlength=k).cpu() > 0
        if int(seen.sum()) >= DENSE_FRACTION * k:  # dense whatever the rest holds: the sweep
            dense = True  # only served to tell (no bound is used), so it stops here
            break
    present = seen.nonzero()[:, 0]
    bound: torch.Tensor | None = None if dense else second  # dense: every class is resampled, no bound
    del second
    local: list[LocalTaps] = []
    for (i0, i1, w1), (lo, _), (j0, j1) in zip(taps, box, ranges, strict=True):
        local.append((torch.from_numpy(i0[j0:j1] - lo), torch.from_numpy(i1[j0:j1] - lo), torch.from_numpy(w1[j0:j1])))
    ox, oy = ranges[0][1] - ranges[0][0], ranges[1][1] - ranges[1][0]
    whole_plane = all(
        lo == 0 and j0 == 0 and j1 == len(t[0]) and n == hi
        for (lo, hi), (j0, j1), t, n in zip(box[:2], ranges[:2], taps[:2], source.shape[:2], strict=True)
    )
    plane = (ox, oy) if whole_plane else None
    candidates = _Candidates(source, None if dense else present, bound)
    depth = ranges[2][1] - ranges[2][0]
    per_slice = max(1, candidates.rows * ox * oy * 4 * 3)
    step = max(1, min(depth, SLAB_BYTES // per_slice))
    (x0, x1), (y0, y1), (z_first, _) = ranges
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        r0, r1 = int(local[2][0][z0]), int(local[2][1][z1 - 1]) + 1  # network Z slices it reads
        zt = (local[2][0][z0:z1] - r0, local[2][1][z0:z1] - r0, local[2][2][z0:z1])
        axis_taps = [local[0], local[1], zt]
        if dense:  # classes in chunks: never every class interpolated at full resolution
            chunk = _chunked_argmax(candidates.get(r0, r1), axis_taps, plane)
        else:
            values = _interpolate(candidates.get(r0, r1), axis_taps, plane)  # (dz, n, ox, oy)
            chunk = _settle(values, present, source, axis_taps, r0, plane)
        out[x0:x1, y0:y1, z_first + z0 : z_first + z1] = chunk.permute(1, 2, 0).numpy()


class _Candidates:
    """Z-major (Z', n, X', Y') probabilities of the classes to resample (all, or the present
    ones plus the second-best bound as the last row) over network Z slices, computed once
    each as the output slabs move along Z."""

    def __init__(self, source: BlockSource, present: torch.Tensor | None, second: torch.Tensor | None) -> None:
        self.source, self.present, self.second = source, present, second
        self.rows = source.num_classes if present is None else len(present) + 1
        self.lo, self.hi = 0, 0
        self.cache = torch.empty((0, self.rows, *source.shape[:2]))

    def _compute(self, lo: int, hi: int) -> torch.Tensor:
        values = self.source.slab(lo, hi, self.present).float().cpu()
        if self.second is not None:
            values = torch.cat([values, self.second[None, ..., lo:hi]])
        # Z-major and contiguous, so that each output slab reads contiguous network-grid slices
        return values.permute(3, 0, 1, 2).contiguous()

    def get(self, lo: int, hi: int) -> torch.Tensor:
        if lo < self.lo or lo >= self.hi:
            self.cache, self.lo, self.hi = self._compute(lo, hi), lo, hi
        elif hi > self.hi:
            kept = self.cache[lo - self.lo :]
            self.cache, self.lo, self.hi = torch.cat([kept, self._compute(self.hi, hi)]), lo, hi
        return self.cache[lo - self.lo : hi - self.lo]


def _lerp(x: torch.Tensor, dim: int, t: LocalTaps) -> torch.Tensor:
    i0, i1, w = t
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(x.index_select(dim, i0), x.index_select(dim, i1), w.view(shape))


def _interpolate(values: torch.Tensor, axis_taps: Sequence[LocalTaps], plane: tuple[int, int] | None = None
                 ) -> torch.Tensor:
    """Separable linear interpolation of Z-major (Z', n, X', Y') onto the taps' output voxels,
    Z first; returns (dz, n, X, Y). ``plane``: the output plane's size when the values span
    the whole network plane, so that ``F.interpolate`` (the same taps, ~6x faster) does the
    in-plane part."""
    out = _lerp(values, 0, axis_taps[2])  # (dz, n, X', Y')
    if plane is not None:
        if tuple(out.shape[2:]) == plane:
            return out
        return F.interpolate(out, size=plane, mode="bilinear", align_corners=False)
    out = _lerp(out, 3, axis_taps[1])
    return _lerp(out, 2, axis_taps[0])  # (dz, n, X, Y)


def _settle(values: torch.Tensor, present: torch.Tensor, source: BlockSource,
            axis_taps: Sequence[LocalTaps], r0: int, plane: tuple[int, int] | None) -> torch.Tensor:
    """Labels (dz, X, Y) from the present classes' interpolations (dz, n + 1, X, Y), whose
    last row is the bound. Voxels it does not settle get the argmax over every class."""
    bound = values[:, -1]
    best_row = running_argmax(values[:, :-1]).long()
    best_value = values[:, :-1].gather(1, best_row[:, None])[:, 0]
    labels = present[best_row]
    unsure = ~(best_value > bound)
    count = int(unsure.sum())
    if count == 0:
        return labels
    if count <= GATHER_FRACTION * unsure.numel():
        iz, ix, iy = unsure.nonzero(as_tuple=True)
        tx, ty, tz = axis_taps
        full = torch.zeros((source.num_classes, ix.shape[0]), dtype=torch.float32)
        for cx in (0, 1):
            for cy in (0, 1):
                for cz in (0, 1):
                    wx = tx[2][ix] if cx else 1.0 - tx[2][ix]
                    wy = ty[2][iy] if cy else 1.0 - ty[2][iy]
                    wz = tz[2][iz] if cz else 1.0 - tz[2][iz]
                    corner = (tx[cx][ix], ty[cy][iy], tz[cz][iz] + r0)
                    full += source.at(corner).float().cpu() * (wx * wy * wz)
        labels[iz, ix, iy] = full.argmax(dim=0)
    else:
        every = _dense_labels(source, axis_taps, r0, plane)
        labels[unsure] = every[unsure]
    return labels


def _dense_labels(source: BlockSource, axis_taps: Sequence[LocalTaps], r0: int, plane: tuple[int, int] | None
                  ) -> torch.Tensor:
    """Argmax (dz, X, Y) over every class of the interpolated probabilities, classes in chunks
    of about :data:`SLAB_BYTES` (first class wins ties, as :func:`running_argmax`)."""
    r1 = r0 + int(axis_taps[2][1].max()) + 1
    probs = source.slab(r0, r1).float().cpu().permute(3, 0, 1, 2).contiguous()  # (Z', K, X', Y')
    return _chunked_argmax(probs, axis_taps, plane)


def _chunked_argmax(probs: torch.Tensor, axis_taps: Sequence[LocalTaps], plane: tuple[int, int] | None
                    ) -> torch.Tensor:
    """Argmax (dz, X, Y) over the classes of Z-major ``probs`` (Z', K, X', Y') interpolated,
    classes in chunks of about :data:`SLAB_BYTES` (first class wins ties)."""
    out_voxels = len(axis_taps[0][0]) * len(axis_taps[1][0]) * len(axis_taps[2][0])
    step = max(1, SLAB_BYTES // max(1, out_voxels * 4 * 3))
    best: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    for c0 in range(0, probs.shape[1], step):
        values = _interpolate(probs[:, c0 : c0 + step], axis_taps, plane)
        chunk_index = running_argmax(values).long()  # first maximum within the chunk
        chunk_best = values.gather(1, chunk_index[:, None])[:, 0]
        if best is None or labels is None:
            best, labels = chunk_best, chunk_index
        else:
            better = chunk_best > best
            best = torch.where(better, chunk_best, best)
            labels = torch.where(better, chunk_index + c0, labels)
    if labels is None:  # pragma: no cover - there is always a class
        raise RuntimeError("no classes")
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
