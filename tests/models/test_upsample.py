"""Every network x every model.upsample x 2D/3D: the chosen operation is in the network and trains."""

import pytest
import torch
import torch.nn as nn
from monai.networks.blocks import SubpixelUpsample

from medseg.catalogue import NETWORK_NAMES
from medseg.config import ModelConfig, from_dict
from medseg.models.registry import build_network
from medseg.models.upsample import apply_upsample

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _build(name: str, dims: int, mode: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_network(ModelConfig(name=name, spatial_dims=dims, channels=[4, 8, 16], upsample=mode, **kw), 2, 3)


def _count(net: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def _up_steps(net: nn.Module) -> int:
    """Transposed convolutions that change resolution (stride > 1)."""
    return sum(isinstance(m, TRANSPOSED) and max(m.stride) > 1 for m in net.modules())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["deconv", "interp", "pixelshuffle"])
@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_every_family_mode_and_dimensionality(name, mode, dims):
    net = _build(name, dims, mode)
    steps = _up_steps(_build(name, dims, "deconv"))  # MONAI's decoder: one per level change
    assert steps >= 2
    if mode == "deconv":
        assert _up_steps(net) == steps and _count(net, nn.Upsample) == 0 and _count(net, SubpixelUpsample) == 0
    elif mode == "interp":
        assert _count(net, TRANSPOSED) == 0 and _count(net, SubpixelUpsample) == 0
        ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
        assert len(ups) == steps
        assert {m.mode for m in ups} == {"bilinear" if dims == 2 else "trilinear"}  # the default: linear
        assert {m.align_corners for m in ups} == {False}
    else:
        assert _count(net, TRANSPOSED) == 0 and _count(net, nn.Upsample) == 0
        assert _count(net, SubpixelUpsample) == steps

    # forward at full resolution, then a few optimiser steps that reduce the loss
    x = torch.randn(2, 2, *([16] * dims))
    target = (x[:, :1] > 0).long()[:, 0] + (x[:, 1] > 1).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        out = net(x)
        assert out.shape == (2, 3, *([16] * dims))
        loss = nn.functional.cross_entropy(out, target)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0]
    # the gradient reached the up-sampling blocks' weights
    blocks = [m for m in net.modules() if isinstance(m, (*TRANSPOSED, SubpixelUpsample))]
    blocks += [m.postconv for m in net.modules() if hasattr(m, "postconv")]
    if name == "segresnet" and mode == "interp":
        assert not blocks  # MONAI's SegResNet: 1x1 conv, then parameter-free interpolation
    else:
        assert blocks and all(p.grad is not None and p.grad.abs().sum() > 0 for b in blocks for p in b.parameters())


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_nearest_and_linear_share_weights_but_not_outputs(name, dims):
    near = _build(name, dims, "interp", interp_mode="nearest").eval()
    lin = _build(name, dims, "interp", interp_mode="linear").eval()
    assert {m.mode for m in near.modules() if isinstance(m, nn.Upsample)} == {"nearest"}
    assert {m.align_corners for m in near.modules() if isinstance(m, nn.Upsample)} == {None}
    a, b = near.state_dict(), lin.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 2, *([16] * dims))
    with torch.no_grad():
        assert not torch.allclose(near(x), lin(x), atol=1e-4)


def test_nontrainable_is_monai_name_for_interp():
    cfg = from_dict({"model": {"name": "unet", "upsample": "nontrainable", "channels": [4, 8]}})
    old = _build("unet", 3, "nontrainable")
    new = _build("unet", 3, "interp")
    assert cfg.model.upsample == "nontrainable" and _count(old, nn.Upsample) == _count(new, nn.Upsample) > 0
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(old.eval()(x), new.eval()(x))


@pytest.mark.parametrize("name", ["unet", "attention_unet", "dynunet"])
@pytest.mark.parametrize("mode", ["interp", "pixelshuffle"])
def test_stride_one_levels_become_plain_convolutions(name, mode):
    """strides [1, 2]: the full-resolution level has nothing to up-sample -> an ordinary convolution."""
    net = _build(name, 3, mode, strides=[1, 2])
    assert _count(net, TRANSPOSED) == 0
    assert _count(net, (nn.Upsample, SubpixelUpsample)) == 1
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 2, 12, 12, 12)).shape == (1, 3, 12, 12, 12)


@pytest.mark.parametrize("mode", ["interp", "pixelshuffle"])
def test_dynunet_deep_supervision_keeps_working(mode):
    net = _build("dynunet", 3, mode, deep_supervision=True).train()
    out = net(torch.randn(2, 2, 16, 16, 16))
    assert out.shape[:3] == (2, 2, 3) and out.shape[3:] == (16, 16, 16)  # heads stacked on dim 1
    out.sum().backward()
    assert _count(net, TRANSPOSED) == 0


def test_replacement_keeps_channels_and_bias():
    conv_t = nn.ConvTranspose3d(6, 4, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False)
    wrap = nn.Sequential(conv_t)
    apply_upsample(wrap, ModelConfig(upsample="interp", interp_mode="nearest"))
    post = wrap[0].postconv
    assert (post.in_channels, post.out_channels, post.bias) == (6, 4, None)
    assert wrap(torch.randn(1, 6, 5, 5, 5)).shape == (1, 4, 10, 10, 10)
