"""trainer.memory_format: channels-last training on a CPU, same results as the default layout."""

import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.training.layout import resolve_memory_format
from medseg.training.module import SegmentationModule, load_network, module_hparams


def test_auto_is_channels_last_on_cpu_only():
    assert resolve_memory_format("auto", "cpu", 3) is torch.channels_last_3d
    assert resolve_memory_format("auto", "cpu", 2) is torch.channels_last
    assert resolve_memory_format("auto", "cuda", 3) is None
    assert resolve_memory_format("channels_last", "cuda", 3) is torch.channels_last_3d
    assert resolve_memory_format("contiguous", "cpu", 3) is None
    with pytest.raises(ValueError, match="expected auto, channels_last or contiguous"):
        resolve_memory_format("nhwc", "cpu", 3)


def _module(memory_format: str, spatial_dims: int) -> SegmentationModule:
    patch = [16, 16, 16][:spatial_dims]
    cfg = from_dict({"model": {"name": "dynunet", "channels": [4, 8, 16], "spatial_dims": spatial_dims,
                               "deep_supervision": True},
                     "data": {"patch_size": patch}, "trainer": {"memory_format": memory_format}})
    plan = PreprocessingPlan([1.0] * 3, "zscore", labels={"background": 0, "a": 1, "b": 2})
    torch.manual_seed(0)
    return SegmentationModule(**module_hparams(cfg, plan))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_training_step_matches_the_default_layout(spatial_dims, tmp_path):
    fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    default, cl = _module("contiguous", spatial_dims), _module("auto", spatial_dims)
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
