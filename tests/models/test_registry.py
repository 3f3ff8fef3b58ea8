import pytest
import torch

from medseg.catalogue import NETWORK_NAMES
from medseg.config import ConfigError, ModelConfig
from medseg.models.registry import NETWORKS, build_network


def test_names_agree_with_lightweight_list():
    assert tuple(NETWORKS) == NETWORK_NAMES


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_every_network_maps_patch_to_class_logits(name, dims):
    cfg = ModelConfig(name=name, spatial_dims=dims, channels=[4, 8, 16])
    net = build_network(cfg, in_channels=2, out_channels=3).eval()
    x = torch.randn(1, 2, *([16] * dims))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 3, *([16] * dims))


def test_residual_unet_has_residual_units():
    res = build_network(ModelConfig(name="residual_unet", channels=[4, 8]), 1, 2)
    plain = build_network(ModelConfig(name="unet", channels=[4, 8]), 1, 2)
    assert any("residual" in n for n, _ in res.named_modules())
    assert not any("residual" in n for n, _ in plain.named_modules())


def test_attention_unet_gates_its_skip_connections_by_the_decoder_signal():
    """Each skip connection x reaches the decoder as x * psi(g, x): voxel-wise coefficients in
    (0, 1) that vary over the image and depend on the decoder's gating signal g."""
    from monai.networks.nets.attentionunet import AttentionBlock

    torch.manual_seed(0)
    net = build_network(ModelConfig(name="attention_unet", channels=[4, 8, 16]), 1, 2).eval()
    gates = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    assert len(gates) == 2  # one per skip connection
    seen: list[tuple[AttentionBlock, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def hook(module: AttentionBlock, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        g = args[0] if args else kwargs["g"]
        x = args[1] if len(args) > 1 else kwargs["x"]
        seen.append((module, g, x, out))

    handles = [g.register_forward_hook(hook, with_kwargs=True) for g in gates]
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16, 16))
    for h in handles:
        h.remove()
    assert {id(m) for m, *_ in seen} == {id(m) for m in gates}
    for gate, g, x, out in seen:
        nonzero = x != 0
        coeff = torch.where(nonzero, out / torch.where(nonzero, x, 1.0), float("nan"))
        per_voxel = torch.nanmean(coeff, dim=1, keepdim=True)
        valid = nonzero.any(dim=1, keepdim=True).expand_as(coeff) & nonzero
        assert bool(((coeff[valid] > 0) & (coeff[valid] < 1)).all())
        # one coefficient per voxel, shared by every channel of x
        torch.testing.assert_close(coeff[valid], per_voxel.expand_as(coeff)[valid], rtol=1e-4, atol=1e-6)
        assert float(per_voxel[per_voxel == per_voxel].std()) > 1e-3  # varies over the image
        with torch.no_grad():
            assert not torch.allclose(gate(torch.randn_like(g), x), out)  # another gating signal, another gate


def test_deep_supervision_only_where_supported():
    net = build_network(ModelConfig(name="dynunet", channels=[4, 8, 16, 32], deep_supervision=True), 1, 3).train()
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out.ndim == 6 and out.shape[1] >= 2  # heads stacked on dim 1
    with pytest.raises(ConfigError, match="no deep supervision"):
        build_network(ModelConfig(name="unet", deep_supervision=True), 1, 2)


def test_norm_and_dropout_are_applied():
    net = build_network(ModelConfig(name="unet", channels=[4, 8], norm="batch", dropout=0.3), 1, 2)
    mods = list(net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in mods)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == pytest.approx(0.3) for m in mods)


@pytest.mark.parametrize("name", ["unet", "residual_unet", "attention_unet", "dynunet"])
def test_strides_give_a_full_resolution_level(name):
    """strides [1, 2]: 12 voxels (a multiple of 2, not of 4) work, and the first conv is at full resolution."""
    cfg = ModelConfig(name=name, channels=[4, 8, 16], strides=[1, 2])
    net = build_network(cfg, 1, 3).eval()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.stride == (1, 1, 1)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)
    default_first = next(m for m in build_network(ModelConfig(name=name, channels=[4, 8, 16]), 1, 3).modules()
                         if isinstance(m, torch.nn.Conv3d))
    # MONAI's UNet down-samples in its first block; AttentionUnet and DynUNet start at full resolution
    assert default_first.stride == ((2, 2, 2) if name in ("unet", "residual_unet") else (1, 1, 1))


def test_strides_rejected_where_unsupported():
    with pytest.raises(ConfigError, match=r"model\.strides: \[1, 2\] is not supported by 'segresnet'"):
        build_network(ModelConfig(name="segresnet", channels=[4, 8, 16], strides=[1, 2]), 1, 2)
    build_network(ModelConfig(name="segresnet", channels=[4, 8, 16], strides=[2, 2]), 1, 2)  # the default is fine
