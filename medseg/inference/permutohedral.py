"""Gaussian filtering in a high-dimensional feature space with the permutohedral lattice.

The bilateral kernel of a fully connected CRF sums, for every voxel, the values of *all*
other voxels weighted by ``exp(-|f_i - f_j|^2 / 2)`` over features ``f`` (position in mm
over sigma, intensities over sigma). Adams, Baek & Davis, "Fast High-Dimensional Filtering
Using the Permutohedral Lattice" (Eurographics 2010), the filter behind Krähenbühl &
Koltun's dense CRF (2011) and DeepMedic's 3D CRF, does it in O(N d^2): splat each point
onto the d + 1 vertices of its enclosing simplex, blur the lattice along its d + 1 axes
with a [1 2 1]/4 kernel, slice back with the same barycentric weights.

This is a vectorised torch version (no compiled extension: SimpleCRF does not build
against NumPy 2 and MONAI's ``PHLFilter`` needs MONAI's C++ extension, absent from the
wheels). The lattice is built once (:class:`Lattice`) and reused for every mean-field
iteration. Lattice vertices are identified by one int64 code each (mixed radix of their integer
coordinates), sorted with ``torch.unique`` and found with ``searchsorted`` instead of a
hash table. Memory: about ``N (d + 1)`` int64 keys of ``d``
coordinates while building, so callers bound ``N`` (the CRF works per structure, in its
bounding box, on a grid of at most ``max_voxels`` voxels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Lattice:
    """A permutohedral lattice for ``features`` (N, d) float, already divided by their sigmas.

    :meth:`filter` then approximates ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (up to a
    constant factor; callers normalise by filtering ones).
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2:
            raise ValueError(f"features of shape {tuple(features.shape)}: expected (N, d)")
        feats = features.to(torch.float64)
        n, d = feats.shape
        self.n, self.d = n, d
        # Adams et al.: scale so that the lattice blur has unit variance per feature
        i = torch.arange(d, dtype=torch.float64)
        scale = (d + 1) * (2.0 / 3.0) ** 0.5 / torch.sqrt((i + 1) * (i + 2))
        cf = feats * scale
        # elevate onto the hyperplane sum(x) = 0 in R^(d+1)
        elevated = torch.empty(n, d + 1, dtype=torch.float64)
        running = torch.zeros(n, dtype=torch.float64)
        for k in range(d, 0, -1):
            elevated[:, k] = running - k * cf[:, k - 1]
            running = running + cf[:, k - 1]
        elevated[:, 0] = running
        del feats, cf, running
        # nearest remainder-0 lattice point and the simplex ranks
        rem0 = torch.round(elevated / (d + 1)) * (d + 1)
        total = torch.round(rem0.sum(1) / (d + 1)).to(torch.int64)
        diff = elevated - rem0
        order = torch.argsort(-diff, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(d + 1).expand(n, d + 1).contiguous())
        rank = rank + total[:, None]
        low = rank < 0
        high = rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
        # barycentric weights of the d + 1 simplex vertices
        delta = (elevated - rem0) / (d + 1)
        bary = torch.zeros(n, d + 2, dtype=torch.float64)
        bary.scatter_add_(1, d - rank, delta)
        bary.scatter_add_(1, d + 1 - rank, -delta)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1].to(torch.float32)  # (N, d+1)
        del elevated, diff, order, delta, bary, low, high
        # vertex k of the simplex: rem0 + k, minus (d + 1) where rank > d - k; d coords kept
        # (they sum to 0). One vertex at a time: (N, d) keys, never (N, d+1, d).
        rem0_i = rem0[:, :d].to(torch.int64)
        rank = rank[:, :d]
        del rem0

        def vertex(points: torch.Tensor | slice, k: torch.Tensor | int) -> torch.Tensor:
            kk = k if isinstance(k, int) else k[:, None]
            return rem0_i[points] + kk - (d + 1) * (rank[points] > d - kk).to(torch.int64)

        encode = _encoder(rem0_i.min(0).values - (d + 1), rem0_i.max(0).values + d, d)
        codes = torch.stack([encode(vertex(slice(None), k)) for k in range(d + 1)], 1)  # (N, d+1)
        table, inverse = torch.unique(codes.reshape(-1), return_inverse=True)  # sorted 1D: fast
        del codes
        self.index = inverse.reshape(n, d + 1)  # (N, d+1) vertex ids
        self.m = table.shape[0]
        first = torch.empty(self.m, dtype=torch.int64)
        first.scatter_(0, inverse, torch.arange(inverse.numel()))  # one occurrence per vertex
        del inverse
        coords = vertex(first // (d + 1), first % (d + 1))  # (M, d) integer coordinates
        del first
        # neighbours along each of the d + 1 lattice axes (index m: not in the lattice)
        self.neighbours: list[tuple[torch.Tensor, torch.Tensor]] = []
        for axis in range(d + 1):
            step = torch.ones(d, dtype=torch.int64)
            if axis < d:
                step[axis] = -d
            self.neighbours.append((_lookup(table, encode(coords + step)),
                                    _lookup(table, encode(coords - step))))
        del coords

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Blur ``values`` (N, V) float32 over the lattice; returns (N, V)."""
        v = values.shape[1]
        flat_w = self.weights.reshape(-1, 1)
        flat_i = self.index.reshape(-1)
        grid = torch.zeros(self.m + 1, v, dtype=torch.float32)  # row m: the zero "outside" vertex
        grid.index_add_(0, flat_i, (values[:, None, :] * self.weights[..., None]).reshape(-1, v))
        for plus, minus in self.neighbours:
            grid[: self.m] = 0.5 * grid[: self.m] + 0.25 * (grid[plus] + grid[minus])
        out = (grid[flat_i] * flat_w).reshape(self.n, self.d + 1, v).sum(1)
        return out


def _encoder(low: torch.Tensor, high: torch.Tensor, d: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """One int64 per lattice point with coordinates in [low, high] (padded by the caller for
    the vertices; padded here by d + 1 for the blur neighbours): exact mixed radix when that
    fits in 62 bits, else a 64-bit multiplicative hash (a collision, with probability about
    M^2 / 2^64 for M vertices, would merge two far-apart vertices)."""
    lo = low - (d + 1)
    span = high - lo + (d + 2)
    total = 1
    for s in span.tolist():
        total *= int(s)
    if total < 2**62:
        radix = torch.ones(d, dtype=torch.int64)
        for k in range(1, d):
            radix[k] = radix[k - 1] * span[k - 1]
        return lambda k: ((k - lo) * radix).sum(-1)
    gen = torch.Generator().manual_seed(0)
    mult = torch.randint(1, 2**62, (d,), generator=gen, dtype=torch.int64) | 1
    return lambda k: (k * mult).sum(-1)


def _lookup(table: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index in the sorted 1D ``table`` of each query code; ``len(table)`` where absent."""
    pos = torch.searchsorted(table, queries).clamp_(max=table.numel() - 1)
    return torch.where(table[pos] == queries, pos, torch.full_like(pos, table.numel()))
