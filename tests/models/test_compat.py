"""Old attention_unet checkpoints (MONAI's hard-coded batch norm) still predict; resuming them says why not."""

import logging

import pytest
import torch
import torch.nn as nn

from medseg.config import ConfigError, from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.checkpoint import load_network
from medseg.models.compat import check_resumable, network_for_state
from medseg.models.registry import build_network, monai_attention_unet
from medseg.training.module import SegmentationModule, module_hparams


def _old_checkpoint(tmp_path):
    """What medseg wrote for attention_unet before honouring model.norm (config says instance)."""
    cfg = from_dict({"model": {"name": "attention_unet", "channels": [4, 8, 16]}, "data": {"patch_size": [16] * 3}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1})
    torch.manual_seed(0)
    old = monai_attention_unet(cfg.model, 1, 2)
    old.train()(torch.randn(2, 1, 16, 16, 16))  # non-trivial running statistics
    path = tmp_path / "old.ckpt"
    state = {f"net.{k}": v for k, v in old.state_dict().items()}
    torch.save({"hyper_parameters": module_hparams(cfg, plan), "state_dict": state}, path)
    return path, old.eval(), cfg, plan


def test_old_attention_unet_checkpoint_predicts_as_trained(tmp_path, caplog):
    path, old, cfg, _ = _old_checkpoint(tmp_path)
    assert any(k.endswith("running_mean") for k in old.state_dict())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in build_network(cfg.model, 1, 2).modules())
    with caplog.at_level(logging.WARNING, logger="medseg.models"):
        net, _, _ = load_network(path)
    assert "hard-coded norms" in caplog.text
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), old(x))


def test_current_checkpoint_is_not_taken_for_an_old_one():
    cfg = from_dict({"model": {"name": "attention_unet", "channels": [4, 8, 16]}})
    state = build_network(cfg.model, 1, 2).state_dict()
    net, note = network_for_state(cfg.model, 1, 2, state)
    assert note == "" and not any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    check_resumable(cfg.model, 1, 2, state, "--resume")  # no error


def test_resuming_an_old_checkpoint_says_why_not(tmp_path):
    path, _, cfg, plan = _old_checkpoint(tmp_path)
    module = SegmentationModule(**module_hparams(cfg, plan))
    with pytest.raises(ConfigError, match=r"--resume: the checkpoint is an attention_unet trained with MONAI's "
                                          r"hard-coded norms .* init_from"):
        module.on_load_checkpoint(torch.load(path, weights_only=False))
