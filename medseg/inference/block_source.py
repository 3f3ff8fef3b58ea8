"""Class probabilities of one block, produced slab by slab from what the windows left behind.

A block's ensemble members contribute in one of two forms
(:func:`medseg.inference.blockwise.block_source` chooses):

- *probabilities*: a member blended as logits (MONAI's way) is already reduced to its
  softmax probabilities ``(K, *block)``, averaged over its mirrored passes; all such
  members are summed into one tensor;
- *features*: a member with a pointwise head (:mod:`medseg.models.head`) keeps the blended
  ``F``-channel features of each mirrored pass, ``(F, *block)`` each; its probabilities
  are ``mean_p softmax(W f_p + b)``, computed for a slab of the block when asked. With
  several passes, each finished pass is kept in :data:`PASS_DTYPE` (float16, scaled by a
  power of two into its range: 11 significant bits) while the next runs
  (:func:`compact_pass`); the head and softmax compute in float32.

:meth:`BlockSource.slab` gives the ensemble's mean probabilities over Z slices
``[lo, hi)`` of the block and :meth:`BlockSource.full` the whole block (what a CRF
refines). The order of operations is the whole-volume path's (softmax per pass, mean over passes, mean over members), so
results agree with it up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from medseg.models.head import PointwiseHead

SLAB_BYTES = 32 * 2**20
"""Budget (bytes) of the class probabilities of one slab (:meth:`BlockSource.slabs`) and of
one chunk of classes interpolated to the output grid (``medseg.inference.resample``). 64 MiB
chunks put the 118-class CT's peak in the resampling of its first block (benchmarks/RESULTS.md,
"Many classes"); slabs this size are still large enough for vectorised work."""


PASS_DTYPE = torch.float16
"""How a multi-pass member's finished passes are kept (:func:`compact_pass`). float16 holds
8 features x 8 mirrored passes in 128 bytes a voxel instead of 256, so a block of the same
budget holds 1.6x the voxels and TTA at many classes evaluates fewer halo windows; labels
flip only where the two best classes tie within that rounding (measured: benchmarks/RESULTS.md,
"Many classes"). ``torch.float32`` keeps them exact."""

_HALF_RANGE = 2.0**15
"""Largest stored magnitude after scaling: float16's largest finite value is 65504."""


def compact_pass(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A finished pass's float32 ``features`` as (stored, scale) with ``stored.float() * scale``
    equal to ``features`` up to :data:`PASS_DTYPE`'s rounding (``features`` may be consumed).
    The scale is a power of two (exact) that brings the largest magnitude within range;
    non-finite features are kept as they are."""
    if features.dtype == PASS_DTYPE or features.numel() == 0:
        return features, 1.0
    low, high = features.aminmax()  # no features-sized temporary, unlike abs().max()
    peak = max(-float(low), float(high))
    if not math.isfinite(peak):
        return features, 1.0
    scale = 2.0 ** math.ceil(math.log2(peak / _HALF_RANGE)) if peak > _HALF_RANGE else 1.0
    return (features.div_(scale) if scale != 1.0 else features).to(PASS_DTYPE), scale


EXP_FLOOR = -80.0
"""Logits more than this below a voxel's best are raised to it before ``exp``: their
probability becomes ~1.8e-35 instead of less (or 0), which no mean and no argmax can see,
while ``exp`` of arguments under -87 (results below float32's smallest normal number) runs
15-40x slower on x86 CPUs (benchmarks/RESULTS.md, "Many classes"): a confident network's
far-off classes would otherwise dominate the softmax at many classes."""


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0, in place (no second ``classes x block`` buffer); the maximum by
    ``amax`` (``max`` also computes indices: 6x its cost over 118 classes)."""
    logits.sub_(logits.amax(dim=0, keepdim=True)).clamp_min_(EXP_FLOOR).exp_()
    return logits.div_(logits.sum(dim=0, keepdim=True))


@dataclass
class FeatureMember:
    """One member's blended features of each mirrored pass (unmirrored, divided by the
    sum of the window weights) and its head; pass ``p`` is ``passes[p].float() * scales[p]``
    (``scales`` empty: all 1, as computed)."""

    head: PointwiseHead
    passes: list[torch.Tensor]
    scales: list[float] = field(default_factory=list)

    def probabilities(self, select: Sequence[slice | torch.Tensor]) -> torch.Tensor:
        """``mean_p softmax(head(f_p[:, *select]))``: (K, ...)."""
        total: torch.Tensor | None = None
        for p, f in enumerate(self.passes):
            part = f[(slice(None), *select)].float()
            scale = self.scales[p] if self.scales else 1.0
            probs = softmax_(self.head.apply(part.mul_(scale) if scale != 1.0 else part))
            total = probs if total is None else total.add_(probs)
        if total is None:  # pragma: no cover - a member always has a pass
            raise RuntimeError("a feature member without passes")
        return total.div_(len(self.passes)) if len(self.passes) > 1 else total


@dataclass
class BlockSource:
    """The mean class probabilities of an ensemble over one block (see the module doc).

    ``probabilities``: the sum of the members given as probabilities (None: none);
    ``features``: the members given as features; ``members``: how many there are in all.
    """

    shape: tuple[int, ...]
    num_classes: int
    probabilities: torch.Tensor | None = None
    features: list[FeatureMember] = field(default_factory=list)
    members: int = 1

    @classmethod
    def of(cls, probabilities: torch.Tensor) -> BlockSource:
        """A source over a block's materialised probabilities (K, *block)."""
        return cls(tuple(probabilities.shape[1:]), int(probabilities.shape[0]), probabilities)

    @property
    def device(self) -> torch.device:
        if self.probabilities is not None:
            return self.probabilities.device
        return self.features[0].passes[0].device

    def _mean(self, select: Sequence[slice | torch.Tensor]) -> torch.Tensor:
        index = (slice(None), *select)
        total: torch.Tensor | None = None
        if self.probabilities is not None:
            part = self.probabilities[index]
            # a view into the stored probabilities must not be modified by what follows
            total = part.clone() if self.features or self.members > 1 else part
        for member in self.features:
            probs = member.probabilities(select)
            total = probs if total is None else total.add_(probs)
        if total is None:
            raise ValueError("a BlockSource without members")
        return total.div_(self.members) if self.members > 1 else total

    def slab(self, lo: int, hi: int) -> torch.Tensor:
        """Mean probabilities (K, X, Y, hi - lo) over Z slices [lo, hi) of the block, on the
        source's device. Do not modify the result in place."""
        return self._mean((slice(None), slice(None), slice(lo, hi)))

    def full(self) -> torch.Tensor:
        """The whole block's probabilities (K, *shape): ``classes x block`` floats."""
        return self.slab(0, self.shape[-1])

    def slabs(self, budget_bytes: int | None = None) -> Iterator[tuple[int, int]]:
        """Z ranges [lo, hi) whose probabilities (and their softmax temporaries) fit the budget
        (default :data:`SLAB_BYTES`)."""
        plane = self.num_classes * self.shape[0] * self.shape[1] * 4 * 2
        step = max(1, (SLAB_BYTES if budget_bytes is None else budget_bytes) // max(1, plane))
        for lo in range(0, self.shape[-1], step):
            yield lo, min(self.shape[-1], lo + step)
