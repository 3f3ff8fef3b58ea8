"""The encoder of each network family: what runs before its first up-sampling or narrowing."""

from __future__ import annotations

import pytest

from medseg.config import ModelConfig
from medseg.models.encoder import encoder_tensor_names
from medseg.models.registry import build_network


def _split(model: ModelConfig) -> tuple[set[str], set[str]]:
    names = set(build_network(model, 1, 3).state_dict())
    encoder = encoder_tensor_names(model, 1, 3)
    assert encoder <= names
    return encoder, names - encoder


@pytest.mark.parametrize("upsample", ["deconv", "interp", "pixelshuffle"])
def test_dynunet_encoder_is_the_input_block_down_path_and_bottleneck(upsample: str) -> None:
    # strides [2, 2, 1]: the last level keeps the size, its "up-sampling" only narrows
    model = ModelConfig(name="dynunet", channels=[4, 8, 16, 32], strides=[2, 2, 1], deep_supervision=True,
                        upsample=upsample)
    encoder, rest = _split(model)
    assert encoder == {n for n in encoder | rest if n.startswith(("input_block.", "downsamples.", "bottleneck."))}
    assert any(n.startswith("upsamples.2.") for n in rest) and any(n.startswith("output_block.") for n in rest)


@pytest.mark.parametrize("name", ["unet", "residual_unet"])
def test_monai_unet_encoder_is_every_level_s_down_block_and_the_bottom(name: str) -> None:
    # MONAI nests each level as Sequential(down, SkipConnection(next level), up)
    encoder, rest = _split(ModelConfig(name=name, channels=[4, 8, 16], num_res_units=2 if name == "residual_unet" else 0))
    assert any(n.startswith("model.0.") for n in encoder)  # the first level's down block
    assert any(n.startswith("model.1.submodule.1.submodule.") for n in encoder)  # the bottom
    assert any(n.startswith("model.2.") for n in rest)  # the first level's up block: the last layer
    assert not any(n.startswith(("model.2.", "model.1.submodule.2.")) for n in encoder)


def test_attention_gates_and_segresnet_up_path_are_decoder() -> None:
    encoder, rest = _split(ModelConfig(name="attention_unet", channels=[4, 8, 16]))
    assert not any(".attention." in n or ".upconv." in n or ".merge." in n for n in encoder)
    assert any(".attention." in n for n in rest) and encoder
    encoder, rest = _split(ModelConfig(name="segresnet", channels=[4, 8, 16]))
    assert encoder == {n for n in encoder | rest if n.startswith(("convInit.", "down_layers."))}


def test_a_2d_network_has_an_encoder_too() -> None:
    encoder, rest = _split(ModelConfig(name="unet", channels=[4, 8, 16], spatial_dims=2))
    assert encoder and rest and any(n.startswith("model.0.") for n in encoder)
