"""``apply_norm``: every batch/instance norm becomes the configured layer, with its dimensionality."""

from __future__ import annotations

import torch
import torch.nn as nn

from medseg.config import ModelConfig
from medseg.models.norm import apply_norm


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4, eps=1e-3),
        nn.Sequential(nn.Conv2d(4, 6, 1), nn.InstanceNorm2d(6)),  # no affine, as MONAI's merge convs
        nn.InstanceNorm3d(5, affine=True), nn.GroupNorm(2, 4), nn.LayerNorm(4),
    )


def _norms(net: nn.Module) -> list[tuple[str, str, int, bool]]:
    return [(n, type(m).__name__, m.num_features, bool(m.affine)) for n, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)]


def test_instance_replaces_batch_and_affine_free_instance_norms():
    net = apply_norm(_net(), ModelConfig(norm="instance"))
    assert _norms(net) == [("1", "InstanceNorm3d", 4, True), ("2.1", "InstanceNorm2d", 6, True),
                           ("3", "InstanceNorm3d", 5, True)]
    assert net[1].eps == 1e-3  # kept from the replaced layer
    assert isinstance(net[4], nn.GroupNorm) and isinstance(net[5], nn.LayerNorm)  # other norms untouched


def test_batch_replaces_every_instance_norm_and_keeps_existing_layers():
    net = _net()
    batch = net[1]
    apply_norm(net, ModelConfig(norm="batch"))
    assert _norms(net) == [("1", "BatchNorm3d", 4, True), ("2.1", "BatchNorm2d", 6, True), ("3", "BatchNorm3d", 5, True)]
    assert net[1] is batch  # already right: not rebuilt (its running statistics are kept)


def test_attention_unet_gets_the_configured_norm_and_still_runs():
    from monai.networks.nets import AttentionUnet

    net = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    apply_norm(net, ModelConfig(norm="instance"))
    kinds = {type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
    assert kinds == {nn.InstanceNorm2d}
    assert net(torch.zeros(1, 1, 16, 16)).shape == (1, 2, 16, 16)
