"""Sliding-window probabilities: shapes, normalisation, TTA and the 2D/2.5D slice path."""

from __future__ import annotations

import pytest
import torch

from medseg.inference.window import predict_probabilities
from tests.inference.inference_helpers import ThresholdNet, tiny_config


class SlabProbe(torch.nn.Module):
    """2D 'network' whose class-1 logit is the centre channel of a slab: checks slab assembly."""

    def __init__(self, slab: int) -> None:
        super().__init__()
        self.centre = slab // 2
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, self.centre : self.centre + 1] * 50.0
        return torch.cat([torch.zeros_like(c), c], dim=1) + 0.0 * self.anchor


def test_probabilities_are_normalised_and_on_the_input_grid() -> None:
    image = torch.rand(1, 20, 17, 9)
    probs = predict_probabilities(ThresholdNet(0.5).eval(), image, tiny_config())
    assert probs.shape == (2, 20, 17, 9)
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 17, 9))
    assert torch.equal(probs.argmax(0), (image[0] > 0.5).long())


def test_tta_with_a_pointwise_network_equals_no_tta() -> None:
    image = torch.rand(1, 18, 16, 16)
    net = ThresholdNet(0.5).eval()
    torch.testing.assert_close(
        predict_probabilities(net, image, tiny_config(), tta=True), predict_probabilities(net, image, tiny_config())
    )


def test_2_5d_slabs_take_neighbouring_slices_as_channels() -> None:
    cfg = tiny_config()
    cfg.model.spatial_dims, cfg.data.patch_size, cfg.data.slab_slices, cfg.data.slice_axis = 2, [16, 16], 3, 1
    image = torch.zeros(1, 12, 10, 14)
    image[0, :, 4] = 1.0  # only slice 4 along Y is bright
    probs = predict_probabilities(SlabProbe(3).eval(), image, cfg, slice_batch=4)
    assert probs.shape == (2, 12, 10, 14)
    fg = probs.argmax(0)
    assert bool(fg[:, 4].all()) and int(fg.sum()) == 12 * 14  # the centre channel is the slice itself


class RampNet(torch.nn.Module):
    """Position-dependent logits (a ramp along Y): mirroring along Y changes its output."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2.0, 2.0, x.shape[3]).view(1, 1, 1, -1, 1)
        d = x[:, :1] * ramp + 0.0 * self.anchor
        return torch.cat([-d, d], dim=1)


def test_tta_flips_only_the_axes_mirrored_in_training() -> None:
    image = torch.rand(1, 16, 16, 16) - 0.5
    net = RampNet().eval()
    cfg = tiny_config()
    cfg.data.mirror_axes = [0]
    plain = predict_probabilities(net, image, cfg)
    flipped = torch.flip(predict_probabilities(net, torch.flip(image, [1]), cfg), [1])
    torch.testing.assert_close(predict_probabilities(net, image, cfg, tta=True), (plain + flipped) / 2)
    cfg.data.mirror_axes = None  # all axes: the Y flips change the result
    assert not torch.allclose(predict_probabilities(net, image, cfg, tta=True), (plain + flipped) / 2, atol=1e-3)
    cfg.data.mirror_axes = []  # no mirroring in training: TTA is the plain prediction
    torch.testing.assert_close(predict_probabilities(net, image, cfg, tta=True), plain)


def _whole_patch(xi, roi, sw_batch_size, run, **kwargs):  # type: ignore[no-untyped-def]
    """Stand-in for MONAI's sliding window (which cannot run on the meta device): one forward."""
    assert tuple(xi.shape[2:]) == tuple(roi)
    return run(xi)


@pytest.mark.parametrize("dims", [3, 2])
def test_probabilities_stay_on_the_input_device(monkeypatch, dims) -> None:
    """The 'meta' device stands in for a GPU: a hidden .cpu() (or any read-back) would fail there."""
    from medseg.inference import window

    monkeypatch.setattr(window, "sliding_window_inference", _whole_patch)
    cfg = tiny_config()
    if dims == 2:
        cfg.model.spatial_dims, cfg.data.patch_size = 2, [16, 16]
    net = ThresholdNet(0.5).to("meta").eval()
    image = torch.rand(1, 16, 16, 16, device="meta")
    probs = predict_probabilities(net, image, cfg, tta=True)
    assert probs.device.type == "meta" and probs.shape == (2, 16, 16, 16)
    # a CPU image comes back on the CPU (the predictor writes it as numpy), also for the 2D path
    cpu = predict_probabilities(ThresholdNet(0.5).eval(), torch.rand(1, 16, 16, 16), cfg)
    assert cpu.device.type == "cpu"


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(),
                                        torch.nn.Conv3d(4, 2, 3, padding=1))  # C > 1 and 3x3x3: the layouts differ

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_memory_format_channels_last_converts_weights_and_windows() -> None:
    from medseg.inference import window

    net = _Conv().eval()
    window.manage_layout(net)  # as a Predictor does with its networks
    cfg = tiny_config()
    seen: list[bool] = []
    net.conv[0].register_forward_hook(
        lambda m, inputs, out: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last_3d)))
    image = torch.rand(2, 20, 17, 9)
    cfg.inference.memory_format = "contiguous"
    reference = predict_probabilities(net, image, cfg)
    assert seen and not any(seen)
    seen.clear()
    cfg.inference.memory_format = "channels_last"
    got = predict_probabilities(net, image, cfg)
    assert seen and all(seen)
    assert net.conv[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)
    cfg.inference.memory_format = "contiguous"  # and back
    predict_probabilities(net, image, cfg)
    assert net.conv[0].weight.is_contiguous()
    cfg.inference.memory_format = "fast"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"inference\.memory_format 'fast': expected auto, channels_last or contiguous"):
        window.network_layout(net, cfg, (1, 2, 8, 8, 8))


@pytest.mark.parametrize("channels_last_faster", [True, False])
def test_memory_format_auto_keeps_the_faster_layout_once(channels_last_faster: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.inference import window

    timed: list[bool] = []

    def fake_seconds(net: torch.nn.Module, x: torch.Tensor, autocast: object, layout: object) -> float:
        last = layout == torch.channels_last_3d
        assert net.conv[0].weight.is_contiguous(memory_format=torch.channels_last_3d) == last  # weights follow
        timed.append(last)
        return 1.0 if last != channels_last_faster else 0.5

    monkeypatch.setattr(window, "_forward_seconds", fake_seconds)
    net, cfg = _Conv().eval(), tiny_config()
    assert cfg.inference.memory_format == "auto"  # the default
    assert window.network_layout(net, cfg, (2, 2, 8, 8, 8)) is None and not timed  # not a predictor's: untouched
    window.manage_layout(net)
    choice = window.network_layout(net, cfg, (2, 2, 8, 8, 8))
    assert choice == (torch.channels_last_3d if channels_last_faster else None)
    assert sorted(timed) == [False] * 3 + [True] * 3  # a warm-up and two timed passes of each layout
    assert net.conv[0].weight.is_contiguous(memory_format=torch.channels_last_3d) == channels_last_faster
    window.network_layout(net, cfg, (2, 2, 8, 8, 8))
    assert len(timed) == 6  # decided once per network


def test_a_network_in_training_keeps_its_layout() -> None:
    """Validation runs the trained network through the same windows: inference must not
    re-lay it out (trainer.memory_format chose its layout for the backward pass)."""

    net = _Conv().eval().to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    cfg = tiny_config()
    for setting in ("auto", "contiguous", "channels_last"):
        cfg.inference.memory_format = setting  # type: ignore[assignment]
        predict_probabilities(net, torch.rand(2, 12, 10, 9), cfg)
        assert net.conv[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not net.conv[0].weight.is_contiguous()
