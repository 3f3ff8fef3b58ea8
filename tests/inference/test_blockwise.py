"""Block-wise probabilities equal the whole-volume sliding window (MONAI's), block by block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medseg.config import PipelineConfig
from medseg.inference import block_source
from medseg.inference.blocks import evaluated
from medseg.inference.blockwise import (
    block_probabilities,
    bytes_per_voxel,
    feature_split,
    flips_for,
    plan_for,
)
from medseg.inference.window import predict_probabilities
from tests.inference.inference_helpers import tiny_config


class ConvNet(torch.nn.Module):
    """Two 3x3(x3) convolutions with zero padding: the output near a window's edge depends on
    where the window lies, so blocks that ran other windows, weights or flips would differ."""

    def __init__(self, classes: int, dims: int = 3, in_channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.net = torch.nn.Sequential(conv(in_channels, 6, 3, padding=1), torch.nn.Tanh(),
                                       conv(6, classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 4.0


class HeadNet(torch.nn.Module):
    """Two 3x3x3 convolutions to F = 3 features, then a pointwise head to the classes (as
    DynUNet): blended as features where that is smaller than the probabilities."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.Tanh(),
                                        torch.nn.Conv3d(6, 3, 3, padding=1), torch.nn.Tanh())
        self.head = torch.nn.Conv3d(3, classes, 1)
        with torch.no_grad():
            self.head.weight.mul_(6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _cfg(roi: list[int], tta: bool, overlap: float = 0.5, mirror: list[int] | None = None) -> PipelineConfig:
    cfg = tiny_config(overlap=overlap, tta=tta)
    cfg.inference.sw_batch_size = 3
    cfg.data.patch_size = roi
    cfg.data.mirror_axes = mirror
    return cfg


def _whole(members: list[tuple[torch.nn.Module, PipelineConfig]], image: torch.Tensor) -> torch.Tensor:
    total = None
    for net, cfg in members:
        p = predict_probabilities(net, image, cfg, tta=cfg.inference.tta)
        total = p if total is None else total + p
    assert total is not None
    return total / len(members)


@pytest.mark.parametrize(
    ("shape", "members_spec"),
    [
        ((30, 24, 20), [([16, 16, 16], False, None, "conv")]),
        ((30, 11, 22), [([16, 16, 16], True, [0, 1], "conv")]),  # axis 1 smaller than the window: padded, mirrored
        ((25, 22, 17), [([16, 16, 16], True, [2], "conv"), ([12, 20, 12], False, None, "conv")]),  # TTA on one member
        ((30, 24, 20), [([16, 16, 16], False, None, "head")]),  # blended as features
        ((30, 11, 22), [([16, 16, 16], True, [0, 1], "head")]),  # features of 4 mirrored passes
        ((25, 22, 17), [([16, 16, 16], True, [2], "head"), ([12, 20, 12], False, None, "conv")]),  # mixed
    ],
)
def test_blocks_reassemble_the_whole_volume_probabilities(
    shape: tuple[int, int, int], members_spec: list[tuple[list[int], bool, list[int] | None, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exact where passes are kept in float32 (compacted passes: the next test)."""
    monkeypatch.setattr(block_source, "PASS_DTYPE", torch.float32)
    classes = 12
    members: list[tuple[torch.nn.Module, PipelineConfig]] = [
        ((ConvNet(classes, seed=i) if kind == "conv" else HeadNet(classes, seed=i)).eval(), _cfg(roi, tta, mirror=mirror))
        for i, (roi, tta, mirror, kind) in enumerate(members_spec)
    ]
    for net, cfg in members:  # the head nets really go the feature way
        assert (feature_split(net, cfg, classes, 1) is not None) == isinstance(net, HeadNet)
    image = torch.randn(1, *shape)
    with torch.no_grad():
        whole = _whole(members, image)
        plan = plan_for(members, shape, classes, bytes_per_voxel(members, classes) * 5000)
        assert len(plan.blocks) >= 2  # really cut into blocks
        for box in plan.blocks:
            ev = evaluated(box, shape)
            got = block_probabilities(members, image, ev, classes)
            want = whole[(slice(None), *(slice(lo, hi) for lo, hi in ev))]
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_compacted_passes_change_probabilities_by_float16_rounding_and_labels_only_at_ties() -> None:
    """The default: a multi-pass feature member keeps its finished passes in float16. Blocks
    follow the whole volume within that rounding; an argmax differs only where the whole
    volume's two best classes are that close."""
    classes = 40
    net, cfg = HeadNet(classes, seed=2).eval(), _cfg([16, 16, 16], True, mirror=[0, 1, 2])
    members: list[tuple[torch.nn.Module, PipelineConfig]] = [(net, cfg)]
    assert feature_split(net, cfg, classes, 1) is not None
    image = torch.randn(1, 30, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = _whole(members, image)
        plan = plan_for(members, image.shape[1:], classes, bytes_per_voxel(members, classes) * 5000)
        assert len(plan.blocks) >= 2
        top2 = whole.topk(2, dim=0).values
        for box in plan.blocks:
            ev = evaluated(box, tuple(image.shape[1:]))
            got = block_probabilities(members, image, ev, classes)
            want = whole[(slice(None), *(slice(lo, hi) for lo, hi in ev))]
            error = float((got - want).abs().max())
            assert 1e-7 < error < 2e-3  # rounded (not exact, not another computation)
            flips = got.argmax(0) != want.argmax(0)
            gap = (top2[0] - top2[1])[tuple(slice(lo, hi) for lo, hi in ev)]
            assert bool((gap[flips] <= 2 * error).all())


def test_2d_blocks_cut_the_slice_axis_and_keep_slab_neighbours() -> None:
    cfg = dataclasses.replace(_cfg([8, 8], True))
    cfg.model = dataclasses.replace(cfg.model, spatial_dims=2)
    cfg.data.slice_axis, cfg.data.slab_slices = 1, 3
    members = [(ConvNet(5, dims=2, in_channels=3).eval(), cfg)]
    shape = (12, 11, 10)
    image = torch.randn(1, *shape)
    with torch.no_grad():
        whole = _whole(members, image)
        plan = plan_for(members, shape, 5, bytes_per_voxel(members, 5) * 12 * 10 * 3)
        assert len(plan.blocks) >= 4
        assert all(box[0] == (0, 12) and box[2] == (0, 10) for box in plan.blocks)
        for box in plan.blocks:
            ev = evaluated(box, shape)
            got = block_probabilities(members, image, ev, 5)
            torch.testing.assert_close(got, whole[:, :, ev[1][0] : ev[1][1]], rtol=0, atol=2e-6)


def test_window_batches_shrink_for_many_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.inference.blockwise as bw

    sizes: list[int] = []
    real = bw._pass_outputs

    def spy(*args: object) -> torch.Tensor:
        sizes.append(int(args[6]))  # type: ignore[call-overload]
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bw, "_pass_outputs", spy)
    monkeypatch.setattr(bw, "ACTIVATION_MAPS", 0)  # outputs only here (activations: the test below)
    monkeypatch.setattr(bw, "WINDOW_BYTES", 16**3 * 4 * 2 * 40)  # room for 40 class-windows
    for classes, expected in ((4, 3), (20, 2), (50, 1)):
        members = [(ConvNet(classes).eval(), _cfg([16, 16, 16], False))]
        with torch.no_grad():
            block_probabilities(members, torch.randn(1, 16, 16, 16), ((0, 16),) * 3, classes)
        assert sizes[-1] == expected
    # a pointwise head: the windows output its 3 features, whatever the class count
    members = [(HeadNet(50).eval(), _cfg([16, 16, 16], False))]
    with torch.no_grad():
        block_probabilities(members, torch.randn(1, 16, 16, 16), ((0, 16),) * 3, 50)
    assert sizes[-1] == 3


def test_window_batches_count_the_networks_full_resolution_activations() -> None:
    """A batch's outputs plus ACTIVATION_MAPS maps of the full-resolution width per window fit
    WINDOW_BYTES and one window more would not (below the configured batch); MONAI's UNet with
    a first stride of 2 has no full-resolution level: an eighth of its first width."""
    from medseg.config import ModelConfig
    from medseg.inference.blockwise import (
        ACTIVATION_MAPS,
        WINDOW_BYTES,
        full_resolution_width,
        window_batch,
    )

    roi = (64, 64, 64)
    cfg = _cfg(list(roi), False)
    cfg.inference.sw_batch_size = 64
    assert full_resolution_width(ModelConfig(name="dynunet", channels=[8, 16], strides=[2])) == 8
    assert full_resolution_width(ModelConfig(name="unet", channels=[16, 32], strides=[2])) == 2
    assert full_resolution_width(ModelConfig(name="unet", channels=[16, 32], strides=[1])) == 16
    batches = []
    for width in (4, 8, 16, 32):
        cfg.model = ModelConfig(name="dynunet", channels=[width, 2 * width], strides=[2])
        per_window = 64**3 * 4 * (2 * 8 + ACTIVATION_MAPS * width)
        b = window_batch(cfg, roi, 8)
        assert b * per_window <= WINDOW_BYTES < (b + 1) * per_window or b == 1
        batches.append(b)
    assert batches == sorted(batches, reverse=True) and batches[0] > batches[-1] == 1
    cfg.inference.sw_batch_size = 2  # the configured batch stays the cap
    cfg.model = ModelConfig(name="dynunet", channels=[4, 8], strides=[2])
    assert window_batch(cfg, roi, 8) == 2


def test_feature_blending_is_chosen_where_it_holds_less() -> None:
    """Features where they take fewer bytes a voxel than the probabilities (their sum and,
    with TTA, the pass being blended); else probabilities. The plan's bytes follow."""
    plain, tta = _cfg([16, 16, 16], False), _cfg([16, 16, 16], True, mirror=[0, 1, 2])
    few, many = HeadNet(2).eval(), HeadNet(40).eval()
    assert feature_split(few, plain, 2, 1) is None  # 3 features > 2 classes
    assert feature_split(many, plain, 40, 1) is not None
    # TTA: 8 float16 passes of 3 features and one float32 pass (60 bytes) vs 2 x 4 x K
    assert feature_split(HeadNet(7).eval(), tta, 7, 1) is None  # 56 bytes
    assert feature_split(HeadNet(8).eval(), tta, 8, 1) is not None  # 64 bytes
    assert feature_split(many.train(), plain, 40, 1) is None  # never split in training mode
    many.eval()
    assert bytes_per_voxel([(many, plain)], 40) == 4 * 3 + 4
    assert bytes_per_voxel([(ConvNet(40).eval(), plain)], 40) == 4 * 40 + 4
    assert bytes_per_voxel([(ConvNet(40).eval(), tta), (many, tta)], 40) == 4 * 40 * 2 + 2 * 3 * 8 + 4 * 3 + 4


def test_float32_passes_choose_and_count_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_source, "PASS_DTYPE", torch.float32)
    tta, many = _cfg([16, 16, 16], True, mirror=[0, 1, 2]), HeadNet(40).eval()
    assert feature_split(HeadNet(12).eval(), tta, 12, 1) is None  # 3 x 8 passes = 24 = 2 x 12
    assert feature_split(HeadNet(13).eval(), tta, 13, 1) is not None
    assert bytes_per_voxel([(many, tta)], 40) == 4 * 3 * 8 + 4


def test_flips_follow_the_mirror_axes() -> None:
    assert flips_for(_cfg([16, 16, 16], True, mirror=[0, 2]), True) == [(), (0,), (2,), (0, 2)]
    assert flips_for(_cfg([16, 16, 16], True), False) == [()]


@pytest.mark.parametrize("net", [ConvNet(3), HeadNet(30)])
def test_block_probabilities_sum_to_one(net: torch.nn.Module) -> None:
    classes = 3 if isinstance(net, ConvNet) else 30
    members = [(net.eval(), _cfg([16, 16, 16], True))]
    with torch.no_grad():
        out = block_probabilities(members, torch.randn(1, 16, 16, 16), ((2, 9), (0, 16), (5, 6)), classes)
    assert out.shape == (classes, 7, 16, 1) and not out.requires_grad  # no autograd graph of every window
    torch.testing.assert_close(out.sum(0), torch.ones(7, 16, 1))


@pytest.mark.parametrize("kind", ["conv", "head"])
def test_bf16_runs_the_networks_in_bf16_and_blocks_follow_the_whole_volume(kind: str) -> None:
    """``inference.precision: bf16``: the convolutions compute in bf16 (a hook sees their
    outputs), the probabilities come back float32 and differ from fp32's by bf16 rounding only;
    blocks give the whole volume's probabilities exactly where both run the same network per
    window (probabilities path), within bf16 rounding where the block path applies the head in
    fp32 to bf16 trunk features (feature path)."""
    classes = 12
    net = (ConvNet(classes) if kind == "conv" else HeadNet(classes)).eval()
    cfg = _cfg([16, 16, 16], True, mirror=[0, 2])
    cfg.inference.precision = "bf16"
    fp32_cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, precision="fp32"))
    first = net.net[0] if isinstance(net, ConvNet) else net.body[0]
    seen: list[torch.dtype] = []
    first.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    image = torch.randn(1, 30, 24, 20)
    members: list[tuple[torch.nn.Module, PipelineConfig]] = [(net, cfg)]
    assert (feature_split(net, cfg, classes, 1) is not None) == (kind == "head")
    seen.clear()  # the split's one-off fp32 check
    with torch.no_grad():
        whole = _whole(members, image)
        assert seen and set(seen) == {torch.bfloat16} and whole.dtype == torch.float32
        seen.clear()
        reference = _whole([(net, fp32_cfg)], image)
        assert set(seen) == {torch.float32}
        assert 1e-4 < float((whole - reference).abs().max()) < 0.05  # rounded, not another computation
        plan = plan_for(members, image.shape[1:], classes, bytes_per_voxel(members, classes) * 5000)
        assert len(plan.blocks) >= 2
        for box in plan.blocks:
            ev = evaluated(box, tuple(image.shape[1:]))
            got = block_probabilities(members, image, ev, classes)
            assert got.dtype == torch.float32
            want = whole[(slice(None), *(slice(lo, hi) for lo, hi in ev))]
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6 if kind == "conv" else 0.05)
