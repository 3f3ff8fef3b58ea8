"""Argmax of resampled probabilities block by block: equal to resampling every class of the whole volume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.inference import block_source, resample
from medseg.inference.block_source import BlockSource, FeatureMember
from medseg.inference.blocks import evaluated, plan_blocks, window_grid
from medseg.inference.resample import block_labels, grid_taps, resample_argmax, running_argmax, top2
from medseg.models.head import PointwiseHead


def _peaky(classes: int, shape: tuple[int, ...], seed: int, smooth: int = 3) -> torch.Tensor:
    """Smooth random class fields, softmax-ed: many structures meeting at many boundaries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((1, classes, *shape), generator=g) * 6.0
    logits = F.avg_pool3d(logits, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    return torch.softmax(logits[0] * 3.0, dim=0)


def _blockwise(probs: torch.Tensor, out_shape: tuple[int, int, int], budget_voxels: int, dtype: type,
               roi: tuple[int, int, int] = (8, 8, 8), z_only: bool = False) -> np.ndarray:
    shape = tuple(probs.shape[1:])
    if z_only:  # blocks spanning the whole plane: resampled in-plane by F.interpolate
        cuts = [0, shape[2] // 3, 2 * shape[2] // 3, shape[2]]
        blocks = [((0, shape[0]), (0, shape[1]), (a, b)) for a, b in itertools.pairwise(cuts)]
    else:
        blocks = list(plan_blocks(shape, [window_grid(shape, roi, 0.5)], 1, budget_voxels).blocks)
    taps = grid_taps(shape, out_shape)
    out = np.full(out_shape, 231 if dtype is np.uint8 else 999, dtype=dtype, order="F")  # not a label here: unwritten voxels would show
    for box in blocks:
        ev = evaluated(box, shape)
        block_labels(BlockSource.of(probs[(slice(None), *(slice(lo, hi) for lo, hi in ev))]), box, taps, out)
    assert len(blocks) > 1
    return out


def _near_ties(probs: torch.Tensor, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Output voxels where the two best interpolated classes are within float rounding."""
    full = F.interpolate(probs[None], size=out_shape, mode="trilinear", align_corners=False)[0]
    best2 = full.topk(2, dim=0).values
    return (best2[0] - best2[1] < 1e-5).numpy()


@pytest.mark.parametrize("z_only", [False, True])
@pytest.mark.parametrize("unsettled", ["gather", "dense", "every class"])
@pytest.mark.parametrize(
    ("classes", "shape", "out_shape"),
    [(40, (21, 17, 13), (42, 34, 13)),   # in-plane upsampling by 2 (a CT at half resolution)
     (7, (20, 18, 16), (31, 11, 23)),    # up, down and odd ratios
     (300, (9, 8, 7), (18, 13, 9)),      # more than 256 classes: int16 labels
     (5, (16, 12, 10), (16, 12, 10))],   # the same grid: no resampling
)
def test_block_labels_equal_whole_volume_resampling(
    classes: int, shape: tuple[int, int, int], out_shape: tuple[int, int, int], unsettled: str, z_only: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the present classes and the second-best bound, whose open voxels get every class at
    # their neighbours ("gather") or the slab's classes resampled in chunks ("dense"); or
    # every class resampled from the start; small slabs: the candidates roll along Z
    monkeypatch.setattr(resample, "GATHER_FRACTION", 1.0 if unsettled == "gather" else 0.0)
    monkeypatch.setattr(resample, "DENSE_FRACTION", 0.0 if unsettled == "every class" else 1.01)
    planes: list[tuple[int, ...]] = []
    interpolate = F.interpolate

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        planes.append(tuple(x.shape[2:]))
        return interpolate(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(resample.F, "interpolate", spy)
    monkeypatch.setattr(resample, "SLAB_BYTES", 4 * 2**10)
    monkeypatch.setattr(block_source, "SLAB_BYTES", 16 * 2**10)
    probs = _peaky(classes, shape, seed=classes)
    dtype = np.uint8 if classes <= 256 else np.uint16
    expected = resample_argmax(probs, out_shape, dtype)
    planes.clear()  # (the reference resampling uses it too)
    got = _blockwise(probs, out_shape, 600 if classes < 256 else 150, dtype, (8, 8, 8) if classes < 256 else (4, 4, 4),
                     z_only)
    if z_only and shape[:2] != out_shape[:2]:
        assert set(planes) == {shape[:2]}  # the whole-plane path ran
    differ = got != expected
    ties = _near_ties(probs, out_shape)
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} voxels differ away from a tie"
    assert differ.sum() <= max(2, 0.001 * differ.size)


def test_labels_from_features_equal_resampling_their_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source holding blended features (two mirrored passes, a pointwise head) gives the
    labels of resampling the probabilities it stands for."""
    monkeypatch.setattr(block_source, "SLAB_BYTES", 32 * 2**10)
    g = torch.Generator().manual_seed(3)
    shape, out_shape, classes = (14, 12, 9), (28, 24, 9), 30
    head = torch.nn.Conv3d(4, classes, 1)
    with torch.no_grad():
        head.weight.mul_(8.0)
    passes = [F.avg_pool3d(torch.randn((1, 4, *shape), generator=g), 3, 1, 1)[0] for _ in range(2)]
    source = BlockSource(shape, classes, None, [FeatureMember(PointwiseHead(head), passes)], 1)
    probs = source.full()
    want = sum(torch.softmax(head(p[None])[0], 0) for p in passes) / 2
    torch.testing.assert_close(probs, want, rtol=0, atol=1e-6)
    out = np.full(out_shape, 231, np.uint8, order="F")
    block_labels(source, tuple((0, n) for n in shape), grid_taps(shape, out_shape), out)
    expected = resample_argmax(probs, out_shape)
    differ = out != expected
    assert not (differ & ~_near_ties(probs, out_shape)).any()


def test_a_class_that_is_no_neighbours_argmax_can_win() -> None:
    """Neighbours (A .5, B .4, C .1) and (C .5, B .4, A .1): halfway, B (0.4) beats A and C (0.3).
    B is not a candidate; the bound (second-best .4) is not below the best candidate, so the
    voxel is computed over every class."""
    probs = torch.zeros(3, 2, 1, 1)
    probs[:, 0, 0, 0] = torch.tensor([0.5, 0.4, 0.1])
    probs[:, 1, 0, 0] = torch.tensor([0.1, 0.4, 0.5])
    out = np.full((4, 1, 1), 9, dtype=np.uint8)
    block_labels(BlockSource.of(probs), ((0, 2), (0, 1), (0, 1)), grid_taps((2, 1, 1), (4, 1, 1)), out)
    # output voxel 1 (source 0.25) -> A .4 B .4 C .2: tie, first class; voxel 2 (0.75) -> C .4 B .4: B first
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 1, 2])


def test_top2() -> None:
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.5, 0.1], [0.3, 0.0, 0.6]]).T  # (K=3, 3 voxels)
    index, second = top2(probs.T.contiguous().T.contiguous())
    torch.testing.assert_close(second, torch.tensor([0.3, 0.5, 0.3]))
    assert index.tolist() == [1, 0, 2]  # ties: the first class


@pytest.mark.parametrize(
    ("src", "dst"),
    [((3, 10, 12, 7), (21, 25, 13)), ((4, 20, 20, 20), (9, 13, 31)), ((2, 6, 5, 5), (6, 5, 9)), ((3, 8, 8, 8), (8, 8, 8))],
)
def test_resample_argmax_equals_full_trilinear(
    src: tuple[int, ...], dst: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resample, "SLAB_BYTES", 4096)  # force many slabs
    probs = torch.rand(*src)
    ref = F.interpolate(probs[None], size=dst, mode="trilinear", align_corners=False)[0].argmax(0).numpy()
    out = resample_argmax(probs, dst)
    assert out.shape == dst and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)


def test_running_argmax_equals_argmax_including_ties() -> None:
    scores = torch.randint(0, 3, (2, 5, 7, 6)).float()  # many ties: the first class must win
    np.testing.assert_array_equal(running_argmax(scores).numpy(), scores.argmax(1).numpy())
    assert running_argmax(scores).dtype == torch.uint8


@pytest.mark.parametrize("same_z", [False, True])
def test_each_network_slice_is_computed_once_and_the_bound_retried(same_z: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One sweep along Z: every network slice's probabilities are asked of the source once,
    whichever way the output slabs are labelled; after a slab the bound cannot settle,
    RETRY_SLABS slabs take every class before the bound is tried again; the labels are the
    whole resampling's."""
    monkeypatch.setattr(block_source, "SLAB_BYTES", 16 * 2**10)
    monkeypatch.setattr(resample, "SLAB_BYTES", 8 * 2**10)
    monkeypatch.setattr(resample, "DENSE_FRACTION", 1.01)  # never every class because of the present ones
    monkeypatch.setattr(resample, "GATHER_FRACTION", 0.0)  # the bound fails at the first open voxel
    monkeypatch.setattr(resample, "RETRY_SLABS", 2)
    probs = _peaky(6, (12, 10, 24), seed=5)
    shape = tuple(probs.shape[1:])
    out_shape = (24, 20, 24 if same_z else 37)
    source = BlockSource.of(probs)
    slices: list[int] = []
    real_slab = source.slab
    monkeypatch.setattr(source, "slab", lambda lo, hi: slices.append(hi - lo) or real_slab(lo, hi))
    events: list[str] = []  # per output slab: S settled by the bound, F not (then C), C every class
    real_settle, real_every = resample._settle, resample._chunked_argmax

    def settle(*args: object) -> object:
        labels = real_settle(*args)  # type: ignore[arg-type]
        events.append("S" if labels is not None else "F")
        return labels

    monkeypatch.setattr(resample, "_settle", settle)
    monkeypatch.setattr(resample, "_chunked_argmax", lambda *a: events.append("C") or real_every(*a))
    out = np.full(out_shape, 231, np.uint8, order="F")
    block_labels(source, tuple((0, n) for n in shape), grid_taps(shape, out_shape), out)
    differ = out != resample_argmax(probs, out_shape)
    assert not (differ & ~_near_ties(probs, out_shape)).any()
    assert sum(slices) == shape[2] and len(slices) > 3, slices
    pattern = "".join(events).replace("FC", "F")  # a failed slab's own resampling of every class
    assert "F" in pattern and len(pattern) > 6, pattern
    for i, event in enumerate(pattern):
        if event == "F":  # then RETRY_SLABS slabs of every class (or the block's end)
            assert pattern[i + 1 : i + 3] == "CC"[: len(pattern) - i - 1], pattern
    assert "C" not in pattern.replace("FCC", "F")  # every class only after a failure
