"""The option walk: every model option of every network changes the network or is rejected."""

import dataclasses
import itertools

import pytest
import torch.nn as nn

from medseg.catalogue import NETWORK_NAMES
from medseg.config import ConfigError, ModelConfig, from_dict
from medseg.models.options import RESTRICTIONS, check_model_options
from medseg.models.registry import build_network

VALUES: dict[str, list] = {
    "spatial_dims": [3, 2],
    "channels": [[4, 8, 16], [4, 8, 32], [4, 8, 16, 32]],
    "strides": [None, [1, 2]],
    "num_res_units": [0, 1, 2, 3],
    "norm": ["instance", "batch"],
    "dropout": [0.0, 0.2],
    "upsample": ["deconv", "interp", "pixelshuffle"],
    "interp_mode": ["linear", "nearest"],
    "deep_supervision": [False, True],
}
"""Values walked per option (every pair is compared); ``name`` is the network itself."""

SAME_NETWORK = {("residual_unet", "num_res_units"): {("0", "2")}}
"""Documented equivalences: residual_unet has residual units by definition, 0 means MONAI's 2."""

BASES = {"default": {}, "interp": {"upsample": "interp"}}
"""interp_mode only matters with upsample: interp, so the walk starts from both."""


def _signature(net: nn.Module) -> tuple[str, tuple]:
    """What distinguishes two built networks: their structure (with every layer's settings) and weight shapes."""
    return repr(net), tuple((k, tuple(v.shape)) for k, v in net.state_dict().items())


def _built(cfg: ModelConfig):
    try:
        return _signature(build_network(cfg, 1, 2))
    except ConfigError as e:
        return e


def test_every_model_option_is_walked():
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}
    assert fields == set(VALUES), "add the new model option to VALUES (and to medseg.models.options if restricted)"
    assert set(RESTRICTIONS) == set(NETWORK_NAMES)


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("option", list(VALUES))
@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_option_changes_the_network_or_is_rejected(name, option, base):
    start = ModelConfig(name=name, channels=[4, 8, 16], **BASES[base])
    built = {}
    for value in VALUES[option]:
        cfg = dataclasses.replace(start, **{option: value})
        result = _built(cfg)
        if isinstance(result, ConfigError):
            msg = str(result)
            assert f"model.{option}" in msg and repr(name) in msg, msg  # names the option and the network
            assert any(w in msg for w in ("use ", "remove ", "set ")), msg  # and says what to do
            with pytest.raises(ConfigError):  # the torch-free check says the same
                check_model_options(cfg)
        else:
            built[repr(value)] = (value, result)
    assert built, f"{name}: every value of model.{option} is rejected"
    for (a, sa), (b, sb) in itertools.combinations(built.values(), 2):
        if (repr(a), repr(b)) in SAME_NETWORK.get((name, option), set()):
            assert sa == sb
            continue
        assert sa != sb, f"{name}: model.{option} {a!r} and {b!r} build the same network (silently ignored)"


def test_restrictions_are_the_ones_the_walk_finds():
    """The options rejected for some value are exactly those RESTRICTIONS lists (the README's table)."""
    for name in NETWORK_NAMES:
        rejected = {
            option
            for option, values in VALUES.items()
            for value in values
            if isinstance(_built(ModelConfig(**{"name": name, "channels": [4, 8, 16], "upsample": "interp",
                                                 option: value})), ConfigError)
        }
        assert rejected == set(RESTRICTIONS[name]), name


def test_attention_unet_honours_norm():
    inst = build_network(ModelConfig(name="attention_unet", channels=[4, 8, 16]), 1, 2)
    batch = build_network(ModelConfig(name="attention_unet", channels=[4, 8, 16], norm="batch"), 1, 2)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in inst.modules())
    norms = [m for m in inst.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    # every norm MONAI put there (batch: blocks, up-convolutions, gates; instance: merges) was made the configured one
    assert len(norms) == sum(isinstance(m, nn.BatchNorm3d) for m in batch.modules()) >= 10
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in batch.modules())


@pytest.mark.parametrize(("name", "units"), [("attention_unet", 1), ("segresnet", 2), ("dynunet", 2)])
def test_num_res_units_rejected_where_not_honoured(name, units):
    with pytest.raises(ConfigError, match=rf"model\.num_res_units: {units} is not supported by '{name}'"):
        build_network(ModelConfig(name=name, channels=[4, 8, 16], num_res_units=units), 1, 2)


def test_interp_mode_needs_interp():
    with pytest.raises(ConfigError, match=r"model\.interp_mode: 'nearest' only applies to model\.upsample: interp"):
        check_model_options(ModelConfig(interp_mode="nearest"))
    check_model_options(ModelConfig(interp_mode="nearest", upsample="nontrainable"))


def test_pipeline_validation_rejects_before_any_compute():
    """Config validation (before the fingerprint) already refuses what the network would ignore."""
    import subprocess
    import sys

    with pytest.raises(ConfigError, match=r"model\.num_res_units: 2 is not supported by 'segresnet'"):
        from_dict({"model": {"name": "segresnet", "num_res_units": 2}})
    # and the check is torch-free: validating a config does not import torch
    code = ("import sys; from medseg.config import from_dict; from_dict({'model': {'name': 'dynunet'}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
