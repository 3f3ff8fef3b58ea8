"""Pruning through torch-pruning's graph keeps exactly the channels it should, in every DynUNet variant.

The networks here have "dead" channels: for every level, the upper half of its channels has
zero filters, zero norm scale and shift and zero weight in every consumer. Those channels
contribute nothing, and have the least L1 norm in their group: pruning at R = 0.5 must remove
exactly them, so the pruned network computes the same output and deep-supervision heads. A
mis-coupled group (a skip concatenation read at the wrong offsets, a head or a residual branch
left at the old width) changes the output or fails to load.
"""

from __future__ import annotations

import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.deploy.prune import prune_network
from medseg.deploy.traceable import TraceEntry, traceable
from medseg.models.registry import build_network

PLAN = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1, "b": 2})
HEADS = ("output_block.", "deep_supervision_heads.")


def _concat_consumer(name: str) -> bool:
    """A DynUNet decoder convolution reading cat(up-sampled, skip): two equal halves of input channels."""
    return name.startswith("upsamples.") and (".conv_block.conv1." in name or ".conv_block.conv3." in name)


def _kill_upper_half(net: torch.nn.Module) -> None:
    """Zero every level's upper half of channels (filters, norm affine, consumers' weights)."""
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.modules.conv._ConvNd):
                w = m.weight
                out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
                n_out, n_in = w.shape[out_dim], w.shape[in_dim]
                if not name.startswith(HEADS):
                    w.narrow(out_dim, n_out // 2, n_out - n_out // 2).zero_()
                    if m.bias is not None:
                        m.bias[n_out // 2 :] = 0
                if n_in > 1:
                    parts = 2 if _concat_consumer(name) else 1
                    size = n_in // parts
                    for p in range(parts):
                        w.narrow(in_dim, p * size + size // 2, size - size // 2).zero_()
            elif isinstance(m, torch.nn.modules.instancenorm._InstanceNorm | torch.nn.modules.batchnorm._BatchNorm):
                m.weight[m.num_features // 2 :] = 0
                m.bias[m.num_features // 2 :] = 0


def _outputs(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval output, training-mode output: the output stacked with the deep-supervision heads)."""
    with torch.no_grad():
        evaluated = net.eval()(x)
        trained = net.train()(x)
    net.eval()
    return evaluated, trained


@pytest.mark.parametrize(
    ("res", "supervised", "upsample"),
    [(0, True, "deconv"), (1, True, "deconv"), (0, False, "deconv"), (1, False, "interp")],
)
def test_pruning_dead_channels_of_a_dynunet_keeps_its_outputs(res: int, supervised: bool, upsample: str) -> None:
    cfg = from_dict({
        "model": {"name": "dynunet", "channels": [8, 16, 32, 64], "strides": [2, 2, 1], "num_res_units": res,
                  "deep_supervision": supervised, "upsample": upsample},
        "data": {"patch_size": [16, 16, 16]},
    })
    torch.manual_seed(0)
    net = build_network(cfg.model, 1, 3)
    _kill_upper_half(net)
    x = torch.randn(2, 1, 16, 16, 16)
    before = _outputs(net, x)
    pruned, cfg2 = prune_network(net, cfg, PLAN, 0.5)
    assert cfg2.model.channels == [4, 8, 16, 32]
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert {m.out_channels for m in convs} == {3, 4, 8, 16, 32}  # every level halved, the heads keep 3 classes
    after = _outputs(pruned, x)
    for b, a in zip(before, after, strict=True):
        assert b.shape == a.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the original network is untouched: the work-arounds act on a copy and are undone
    torch.testing.assert_close(_outputs(net, x)[0], before[0])


def test_prune_refuses_pixelshuffle_before_tracing() -> None:
    cfg = from_dict({"model": {"name": "dynunet", "channels": [8, 16, 32], "strides": [2, 1], "upsample": "pixelshuffle"},
                     "data": {"patch_size": [16, 16, 16]}})
    with pytest.raises(ValueError, match=r"model\.upsample pixelshuffle: medseg prune supports deconv and interp"):
        prune_network(build_network(cfg.model, 1, 3), cfg, PLAN, 0.5)


def test_traceable_restores_the_network() -> None:
    cfg = from_dict({"model": {"name": "dynunet", "channels": [4, 8, 16], "strides": [2, 1], "num_res_units": 1},
                     "data": {"patch_size": [8, 8, 8]}})
    net = build_network(cfg.model, 1, 2).eval()
    names = [n for n, _ in net.named_modules()]
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        reference = net(x)
        with traceable(net):
            assert not isinstance(net.input_block.lrelu, torch.nn.Module)  # a plain function meanwhile
            traced = TraceEntry(net, 1, 3)(x)
        assert isinstance(traced, tuple) and len(traced) == 1 + len(net.heads) * net.deep_supervision
        torch.testing.assert_close(traced[0], reference)  # same computation while traceable
        assert [n for n, _ in net.named_modules()] == names and "forward" not in vars(net.input_block)
        assert isinstance(net.input_block.lrelu, torch.nn.LeakyReLU)
        torch.testing.assert_close(net(x), reference)
