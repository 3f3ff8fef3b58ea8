"""trainer.memory_format: the faster layout on a CPU, the same results as the default layout."""

import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.checkpoint import load_network
from medseg.training.layout import choose_memory_format
from medseg.training.module import SegmentationModule, module_hparams


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.BatchNorm3d(4), torch.nn.Conv3d(4, 2, 1))


def _fake_timer(cl_ms: float, default_ms: float):
    calls = []

    def timer(net, example, fmt):
        calls.append(fmt)
        return (cl_ms if fmt is not None else default_ms) / 1000

    return timer, calls


@pytest.mark.parametrize(("cl_ms", "default_ms", "expected"), [(300, 400, torch.channels_last_3d), (110, 95, None)])
def test_auto_on_cpu_keeps_the_faster_layout(cl_ms, default_ms, expected):
    timer, calls = _fake_timer(cl_ms, default_ms)
    fmt, why = choose_memory_format("auto", "cpu", _net(), torch.randn(2, 2, 8, 8, 8), repeats=3, timer=timer)
    assert fmt is expected
    assert f"{cl_ms} ms channels-last, {default_ms} ms contiguous" in why
    assert calls.count(None) == calls.count(torch.channels_last_3d) == 4  # one warm-up round + 3


def test_auto_times_copies_and_leaves_the_network_untouched():
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fmt, _ = choose_memory_format("auto", "cpu", net, torch.randn(2, 2, 8, 8, 8), repeats=1)
    assert fmt in (None, torch.channels_last_3d)  # whichever was faster on this machine
    for k, v in net.state_dict().items():  # BatchNorm running statistics included
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
    assert net[0].weight.is_contiguous()


def test_requested_layouts_and_gpu_default_are_not_timed():
    timer, calls = _fake_timer(1, 2)
    example = torch.randn(2, 2, 8, 8)
    assert choose_memory_format("channels_last", "cpu", _net(), example, timer=timer)[0] is torch.channels_last
    assert choose_memory_format("contiguous", "cpu", _net(), example, timer=timer)[0] is None
    assert choose_memory_format("auto", "cuda", _net(), example, timer=timer)[0] is None
    assert calls == []
    with pytest.raises(ValueError, match="expected auto, channels_last or contiguous"):
        choose_memory_format("nhwc", "cpu", _net(), example)


def _module(memory_format: str, spatial_dims: int) -> SegmentationModule:
    patch = [16, 16, 16][:spatial_dims]
    cfg = from_dict({"model": {"name": "dynunet", "channels": [4, 8, 16], "spatial_dims": spatial_dims,
                               "deep_supervision": True},
                     "data": {"patch_size": patch, "batch_size": 2}, "trainer": {"memory_format": memory_format}})
    plan = PreprocessingPlan([1.0] * 3, "zscore", labels={"background": 0, "a": 1, "b": 2})
    torch.manual_seed(0)
    return SegmentationModule(**module_hparams(cfg, plan))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_training_step_matches_the_default_layout(spatial_dims, tmp_path):
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    default, cl = _module("contiguous", spatial_dims), _module("channels_last", spatial_dims)
    for m in (default, cl):
        m.setup("fit")
    conv = next(p for p in cl.net.parameters() if p.ndim == spatial_dims + 2 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=fmt) and not conv.is_contiguous()
    torch.manual_seed(1)
    batch = {"image": torch.randn(2, 1, *[16] * spatial_dims),
             "label": torch.randint(0, 3, (2, 1, *[16] * spatial_dims))}
    losses = []
    for m in (default, cl):
        loss = m.training_step(batch, 0)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, p0), p1 in zip(default.net.named_parameters(), cl.net.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-3, atol=1e-5, msg=name)
    # a checkpoint written from channels-last weights rebuilds the same network
    path = tmp_path / "cl.ckpt"
    torch.save({"hyper_parameters": cl.hparams, "state_dict": cl.state_dict()}, path)
    net, _, _ = load_network(path)
    cl.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(batch["image"]), cl.net(batch["image"]), rtol=1e-4, atol=1e-5)
