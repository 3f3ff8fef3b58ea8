"""Splitting a network's pointwise head: found on the networks that have one, verified numerically."""

from __future__ import annotations

import pytest
import torch

from medseg.config import ModelConfig
from medseg.models.head import PointwiseHead, split_head
from medseg.models.registry import build_network


@pytest.mark.parametrize(
    ("name", "splittable"),
    [("dynunet", True), ("attention_unet", True), ("segresnet", True), ("unet", False), ("residual_unet", False)],
)
def test_networks_with_a_pointwise_head_split_exactly(name: str, splittable: bool) -> None:
    net = build_network(ModelConfig(name=name, channels=[8, 16, 32]), 2, 7).eval()
    split = split_head(net, 7, (16, 16, 16), 2)
    assert (split is not None) == splittable
    if split is None:
        return
    assert split.head.in_channels == 8 and split.head.out_channels == 7
    x = torch.randn(3, 2, 24, 32, 16)
    with torch.no_grad():
        want = net(x)
        features = split.trunk(x)
        got = torch.stack([split.head.apply(f) for f in features])
    assert features.shape[1] == 8
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert net.training is False and any(p is q for p in net.parameters() for q in split.trunk.parameters())


class ScaledAfterHead(torch.nn.Module):
    """Ends in a pointwise convolution, but its forward scales the logits afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv3d(4, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) * 3.0


class HeadNotLast(torch.nn.Module):
    """Its last registered module is a pointwise convolution the forward applies first."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv3d(5, 5, 3, padding=1)
        self.head = torch.nn.Conv3d(1, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(x))


@pytest.mark.parametrize("net", [ScaledAfterHead(), HeadNotLast()])
def test_a_forward_that_does_more_than_its_head_is_not_split(net: torch.nn.Module) -> None:
    assert split_head(net.eval(), 5, (8, 8, 8), 1) is None


def test_no_split_in_training_mode_or_for_another_class_count() -> None:
    net = build_network(ModelConfig(name="dynunet", channels=[8, 16, 32]), 1, 4)
    assert split_head(net.train(), 4, (16, 16, 16), 1) is None
    assert split_head(net.eval(), 5, (16, 16, 16), 1) is None


def test_the_network_itself_is_left_untouched() -> None:
    net = build_network(ModelConfig(name="dynunet", channels=[8, 16, 32]), 1, 4).eval()
    before = [name for name, _ in net.named_modules()]
    split = split_head(net, 4, (16, 16, 16), 1)
    assert split is not None
    assert [name for name, _ in net.named_modules()] == before
    assert isinstance(net.output_block.conv.conv, torch.nn.Conv3d)
    assert isinstance(split.trunk.output_block.conv.conv, torch.nn.Identity)  # type: ignore[union-attr]


def test_the_head_reads_weights_updated_in_place() -> None:
    """Training validates with a split taken earlier: the head must use today's weights."""
    conv = torch.nn.Conv3d(3, 2, 1)
    head = PointwiseHead(conv)
    f = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        conv.weight.add_(1.0)
        conv.bias.zero_()  # type: ignore[union-attr]
        torch.testing.assert_close(head.apply(f), conv(f[None])[0])
    no_bias = torch.nn.Conv3d(3, 2, 1, bias=False)
    with torch.no_grad():
        torch.testing.assert_close(PointwiseHead(no_bias).apply(f), no_bias(f[None])[0])
