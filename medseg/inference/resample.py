"""The argmax of linearly resampled class probabilities, block by block, resampling few classes.

The label of an output voxel is the argmax over classes of its trilinear interpolation
from the 8 surrounding network-grid voxels (``align_corners=False``, the convention of the
forward resampling; taps from :func:`medseg.data.inverse.linear_taps`). Resampling every
class costs ``classes x output voxels`` and dominated prediction time at 100+ classes.
:func:`block_labels` resamples, for each output slab, only the classes that are the argmax
somewhere in the network slices it reads (a few slices of a whole-body CT hold a handful of
its 117 structures), plus one map: the second-best probability of every network voxel
there. That is exact: a class that is no
neighbour's argmax is at most the second-best probability at each of the 8 neighbours, so
its interpolation is at most the interpolated second-best map ``U``; where the best present
class exceeds ``U``, it is the argmax over all classes (first class on ties, as
:func:`running_argmax`). The few voxels where it does not are computed over every class.
When most classes are present, the plain resampling is done.

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
"""When at least this fraction of the classes is some network voxel's argmax in the slices an
output slab reads (an untrained network, or a region full of small structures), every class
is resampled: the second-best bound would settle too little to pay for itself."""

GATHER_FRACTION = 0.02
"""Where the second-best bound leaves at most this fraction of an output slab unsettled,
those voxels get every class at their 8 network neighbours; beyond it every class of the
slab is resampled, in chunks."""

RETRY_SLABS = 8
"""After an output slab that the bound could not settle, this many slabs have every class
resampled straight away before the bound is tried again (the network slices of neighbouring
slabs look alike: the interpolation of the candidates would mostly be wasted)."""


def block_labels(source: BlockSource, box: Box, taps: Sequence[Taps], out: np.ndarray) -> None:
    """Write into ``out`` (the whole output grid) the labels of the output voxels this block owns.

    ``source``: the probabilities over ``box`` plus one voxel on each high side where the
    grid has it (:func:`medseg.inference.blocks.evaluated`); ``box``: the block on the
    network grid. An output voxel belongs to the block holding its lower tap. One sweep
    along Z: the probabilities of each network slice are asked for once, kept with their
    argmax and second-best while output slabs read them (:class:`_Slices`); each output
    slab resamples the classes that are the argmax somewhere in the network slices it reads,
    plus their second-best map as the bound (see the module doc), or every class.
    Memory beyond the source: the probabilities of the network slices one output slab reads
    and slabs of about :data:`SLAB_BYTES` of interpolated values.
    A block spanning the whole plane is resampled in-plane by ``F.interpolate`` (bilinear,
    the same taps), otherwise by separable gathers.
    """
    k = source.num_classes
    ranges = [output_range(t[0], lo, hi) for t, (lo, hi) in zip(taps, box, strict=True)]
    if any(j1 <= j0 for j0, j1 in ranges):
        return
    local: list[LocalTaps] = []
    for (i0, i1, w1), (lo, _), (j0, j1) in zip(taps, box, ranges, strict=True):
        local.append((torch.from_numpy(i0[j0:j1] - lo), torch.from_numpy(i1[j0:j1] - lo), torch.from_numpy(w1[j0:j1])))
    ox, oy = ranges[0][1] - ranges[0][0], ranges[1][1] - ranges[1][0]
    whole_plane = all(
        lo == 0 and j0 == 0 and j1 == len(t[0]) and n == hi
        for (lo, hi), (j0, j1), t, n in zip(box[:2], ranges[:2], taps[:2], source.shape[:2], strict=True)
    )
    plane = (ox, oy) if whole_plane else None
    slices = _Slices(source)
    depth = ranges[2][1] - ranges[2][0]
    step = max(1, min(depth, SLAB_BYTES // max(1, k * ox * oy * 4 * 3)))
    (x0, x1), (y0, y1), (z_first, _) = ranges
    every_class = 0  # output slabs left that skip the bound (RETRY_SLABS)
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        r0, r1 = int(local[2][0][z0]), int(local[2][1][z1 - 1]) + 1  # network Z slices it reads
        zt = (local[2][0][z0:z1] - r0, local[2][1][z0:z1] - r0, local[2][2][z0:z1])
        axis_taps = [local[0], local[1], zt]
        probs, index, second = slices.get(r0, r1)
        chunk: torch.Tensor | None = None
        if every_class == 0:
            present = (torch.bincount(index.flatten().long(), minlength=k) > 0).nonzero()[:, 0]
            if len(present) < DENSE_FRACTION * k:
                rows = torch.cat([probs.index_select(1, present), second[:, None]], dim=1)
                chunk = _settle(_interpolate(rows, axis_taps, plane), present, probs, axis_taps)
                if chunk is None:
                    every_class = RETRY_SLABS + 1
        if chunk is None:  # classes in chunks: never every class interpolated at full resolution
            chunk = _chunked_argmax(probs, axis_taps, plane)
            every_class = max(0, every_class - 1)
        out[x0:x1, y0:y1, z_first + z0 : z_first + z1] = chunk.permute(1, 2, 0).numpy()


class _Slices:
    """Z-major (Z', K, X', Y') probabilities of the block's network Z slices, with their argmax
    and second-best (Z', X', Y'), computed once each as the output slabs move along Z."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.lo, self.hi = 0, 0  # empty: the first get computes
        self.probs = self.index = self.second = torch.empty(0)

    def _compute(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values = self.source.slab(lo, hi).float().cpu()  # (K, X', Y', z)
        index, second = top2(values)
        # Z-major and contiguous, so that each output slab reads contiguous network-grid slices
        return values.permute(3, 0, 1, 2).contiguous(), index.permute(2, 0, 1), second.permute(2, 0, 1)

    def get(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if lo < self.lo or lo >= self.hi:
            self.probs = self.index = self.second = torch.empty(0)  # freed before the next are computed
            (self.probs, self.index, self.second), self.lo, self.hi = self._compute(lo, hi), lo, hi
        elif hi > self.hi:
            new = self._compute(self.hi, hi)
            kept = (self.probs, self.index, self.second)
            self.probs, self.index, self.second = (torch.cat([a[lo - self.lo :], b]) for a, b in zip(kept, new, strict=True))
            self.lo, self.hi = lo, hi
        a, b = lo - self.lo, hi - self.lo
        return self.probs[a:b], self.index[a:b], self.second[a:b]


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


def _settle(values: torch.Tensor, present: torch.Tensor, probs: torch.Tensor,
            axis_taps: Sequence[LocalTaps]) -> torch.Tensor | None:
    """Labels (dz, X, Y) from the present classes' interpolations (dz, n + 1, X, Y), whose
    last row is the bound. Voxels it does not settle get the argmax over every class of
    ``probs`` (Z', K, X', Y': the slices the taps read) at their 8 neighbours; None where
    they are more than :data:`GATHER_FRACTION` of the slab."""
    bound = values[:, -1]
    best_row = running_argmax(values[:, :-1]).long()
    best_value = values[:, :-1].gather(1, best_row[:, None])[:, 0]
    labels = present[best_row]
    unsure = ~(best_value > bound)
    count = int(unsure.sum())
    if count == 0:
        return labels
    if count > GATHER_FRACTION * unsure.numel():
        return None
    iz, ix, iy = unsure.nonzero(as_tuple=True)
    tx, ty, tz = axis_taps
    full = torch.zeros((ix.shape[0], probs.shape[1]), dtype=torch.float32)
    for cx in (0, 1):
        for cy in (0, 1):
            for cz in (0, 1):
                wx = tx[2][ix] if cx else 1.0 - tx[2][ix]
                wy = ty[2][iy] if cy else 1.0 - ty[2][iy]
                wz = tz[2][iz] if cz else 1.0 - tz[2][iz]
                full += probs[tz[cz][iz], :, tx[cx][ix], ty[cy][iy]] * (wx * wy * wz)[:, None]
    labels[iz, ix, iy] = full.argmax(dim=1)
    return labels


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
