"""A block's probabilities from stored probabilities and blended features: slabs, voxels, whole."""

from __future__ import annotations

import pytest
import torch

from medseg.inference.block_source import BlockSource, FeatureMember, softmax_
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
        picked = torch.tensor([7, 0, 3])
        torch.testing.assert_close(source.slab(1, 4, picked), want[picked][..., 1:4])
        index = (torch.tensor([0, 5, 3]), torch.tensor([4, 0, 2]), torch.tensor([6, 1, 0]))
        torch.testing.assert_close(source.at(index), want[:, index[0], index[1], index[2]])
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
