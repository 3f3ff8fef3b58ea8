"""A block's probabilities from stored probabilities and blended features: slabs, voxels, whole."""

from __future__ import annotations

import pytest
import torch

from medseg.inference import block_source
from medseg.inference.block_source import BlockSource, FeatureMember, compact_pass, softmax_
from medseg.models.head import PointwiseHead


def _feature_member(classes: int, shape: tuple[int, ...], passes: int, seed: int) -> FeatureMember:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(4, classes, 1)
    return FeatureMember(PointwiseHead(conv), [torch.randn(4, *shape) * 3 for _ in range(passes)])


def _expected(member: FeatureMember) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([torch.softmax(member.head.conv(f[None])[0], 0) for f in member.passes]).mean(0)


def test_an_ensemble_of_probabilities_and_features_is_their_mean() -> None:
    shape, classes = (6, 5, 7), 9
    stored = [torch.softmax(torch.randn(classes, *shape), 0) for _ in range(2)]
    a, b = _feature_member(classes, shape, 1, 0), _feature_member(classes, shape, 4, 1)
    source = BlockSource(shape, classes, stored[0] + stored[1], [a, b], members=4)
    want = (stored[0] + stored[1] + _expected(a) + _expected(b)) / 4
    with torch.no_grad():
        torch.testing.assert_close(source.full(), want)
        torch.testing.assert_close(source.slab(2, 5), want[..., 2:5])
    # asking does not change what is stored
    torch.testing.assert_close(source.full(), want)


def test_a_source_of_probabilities_alone_returns_them() -> None:
    probs = torch.softmax(torch.randn(4, 3, 3, 8), 0)
    source = BlockSource.of(probs)
    assert source.shape == (3, 3, 8) and source.num_classes == 4 and source.device == probs.device
    torch.testing.assert_close(source.full(), probs)


@pytest.mark.parametrize(("budget", "expected"), [(4 * 3 * 3 * 4 * 2 * 3, [(0, 3), (3, 6), (6, 8)]), (1, [(i, i + 1) for i in range(8)])])
def test_slabs_cover_the_block_within_the_budget(budget: int, expected: list[tuple[int, int]]) -> None:
    source = BlockSource.of(torch.zeros(4, 3, 3, 8))
    assert list(source.slabs(budget)) == expected


def test_softmax_in_place() -> None:
    x = torch.randn(5, 4, 3) * 50  # large logits: no overflow
    want = torch.softmax(x, 0)
    out = softmax_(x)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, want)


def test_a_source_without_members_is_an_error() -> None:
    with pytest.raises(ValueError, match="without members"):
        BlockSource((2, 2, 2), 3).full()


@pytest.mark.parametrize("magnitude", [3.0, 1e6])
def test_compacted_passes_are_float16_scaled_into_range_and_give_the_same_probabilities(magnitude: float) -> None:
    """A finished pass is kept in float16 (half the bytes); features beyond float16's range
    are scaled by a power of two, not clipped to inf; probabilities change by rounding only."""
    shape, classes = (6, 5, 7), 9
    exact = _feature_member(classes, shape, 3, 0)
    exact.passes = [f * magnitude for f in exact.passes]
    with torch.no_grad():
        exact.head.conv.weight.div_(magnitude)  # logits of the same size at either magnitude
    stored = [compact_pass(f.clone()) for f in exact.passes]
    assert all(t.dtype == torch.float16 and torch.isfinite(t).all() for t, _ in stored)
    scales = [scale for _, scale in stored]
    assert scales == [1.0] * 3 if magnitude < 1e4 else all(s > 1 and s == 2.0 ** round(torch.log2(torch.tensor(s)).item()) for s in scales)
    for (t, scale), f in zip(stored, exact.passes, strict=True):
        assert float(((t.float() * scale - f).abs() / f.abs().clamp_min(1e-3)).max()) <= 2**-11  # 11 significant bits
    compact = FeatureMember(exact.head, [t for t, _ in stored], scales)
    with torch.no_grad():
        want, got = _expected(exact), BlockSource(shape, classes, None, [compact]).full()
    assert got.dtype == torch.float32
    assert 0 < float((got - want).abs().max()) < 2e-3


def test_compacting_keeps_exact_dtypes_and_non_finite_features(monkeypatch: pytest.MonkeyPatch) -> None:
    f = torch.randn(4, 3, 3, 3)
    f[0, 0, 0, 0] = float("nan")
    kept, scale = compact_pass(f)
    assert kept is f and scale == 1.0  # NaN is not rounded into something that looks valid
    monkeypatch.setattr(block_source, "PASS_DTYPE", torch.float32)
    g = torch.randn(4, 3, 3, 3)
    assert compact_pass(g) == (g, 1.0)


def test_softmax_of_far_apart_logits_equals_torch_s() -> None:
    """Logits far below the best (exp would underflow: the slow path) still give torch's
    probabilities to float precision, and the same argmax."""
    x = torch.randn(40, 6, 5) * 200
    want = torch.softmax(x, 0)
    got = softmax_(x.clone())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-30)  # rounding; far-off classes ~0 either way
    assert torch.equal(got.argmax(0), want.argmax(0))
