"""init_from: loaded / adapted input convolution / re-initialised head, on every family."""

from __future__ import annotations

import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.training.init_from import init_weights_from, layer_roles, summary_line
from medseg.training.module import SegmentationModule, module_hparams
from medseg.training.pretrain import PretrainModule


def module(classes: int = 3, channels: int = 1, cls=SegmentationModule, **model):
    model = {"channels": [4, 8, 8], **model}
    cfg = from_dict({"model": model, "data": {"patch_size": [16, 16, 16]}, "trainer": {"seed": classes}})
    labels = {"background": 0, **{f"s{i}": i for i in range(1, classes)}}
    names = [f"ch{i}" for i in range(channels)]
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", channel_names=names, labels=labels)
    torch.manual_seed(classes * 10 + channels)
    return cls(**module_hparams(cfg, plan))


def save(m, path):
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    return path


@pytest.mark.parametrize("family", [{"name": "unet"}, {"name": "dynunet", "deep_supervision": True},
                                    {"name": "residual_unet", "num_res_units": 1}, {"name": "attention_unet"}])
def test_other_class_count_reinitialises_exactly_the_head(tmp_path, family):
    src, dst = module(3, **family), module(5, **family)
    fresh = {k: v.clone() for k, v in dst.net.state_dict().items()}
    report = init_weights_from(dst, save(src, tmp_path / "s.ckpt"))
    _, heads = layer_roles(dst.cfg.model, 1, 5)
    assert set(report["reinitialised"]) == heads and heads
    assert not report["skipped"] and not report["missing"] and not report["adapted"]
    for name in heads:  # untouched fresh initialisation, not a copy of the 3-class head
        torch.testing.assert_close(dst.net.state_dict()[name], fresh[name])
    for name in report["loaded"]:
        torch.testing.assert_close(dst.net.state_dict()[name], src.net.state_dict()[name])
    assert len(report["loaded"]) == len(fresh) - len(heads)
    if family.get("deep_supervision"):
        assert len({n.split(".")[0] for n in heads}) >= 2  # the deep-supervision heads too


def test_more_input_channels_adapt_the_first_convolution(tmp_path):
    """An image repeated on both channels gives the single-channel source's output exactly."""
    src, dst = module(3, 1), module(3, 2)
    report = init_weights_from(dst, save(src, tmp_path / "s.ckpt"))
    assert report["adapted"] and not report["reinitialised"] and not report["skipped"]
    src.eval()
    dst.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst.net(torch.cat([x, x], 1)), src.net(x), rtol=1e-4, atol=1e-5)


def test_pretraining_source_head_is_reinitialised_even_when_shapes_match(tmp_path):
    # 2 input channels -> the reconstruction head has 2 outputs, as many as a 2-class model
    src, dst = module(1, 2, cls=PretrainModule), module(2, 2)
    assert dict(src.hparams)["task"] == "pretrain"
    fresh = {k: v.clone() for k, v in dst.net.state_dict().items()}
    report = init_weights_from(dst, save(src, tmp_path / "p.ckpt"))
    assert report["reinitialised"] and not report["skipped"]
    for name in report["reinitialised"]:
        torch.testing.assert_close(dst.net.state_dict()[name], fresh[name])
    assert "re-initialised (output head)" in summary_line(report)


def test_run_directory_source_and_mean_teacher_follow(tmp_path):
    src = module(3)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save(src, tmp_path / "run" / "checkpoints" / "best.ckpt")
    cfg = src.cfg.to_dict()
    cfg["semi_supervised"]["method"] = "mean_teacher"
    dst = SegmentationModule(config=cfg, plan=dict(src.hparams)["plan"])
    report = init_weights_from(dst, tmp_path / "run")
    assert report["source"].endswith("best.ckpt") and len(report["loaded"]) == len(dst.net.state_dict())
    for (name, t), s in zip(dst.teacher.state_dict().items(), src.net.state_dict().values(), strict=True):
        torch.testing.assert_close(t, s, msg=name)


def test_missing_source_and_preprocessing_differences_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        init_weights_from(module(3), tmp_path / "nope")
    src = module(3)
    hp = dict(src.hparams)
    hp["plan"] = {**hp["plan"], "target_spacing": [2.0, 2.0, 2.0]}
    torch.save({"hyper_parameters": hp, "state_dict": src.state_dict()}, tmp_path / "s.ckpt")
    report = init_weights_from(module(3), tmp_path / "s.ckpt")
    assert report["plan_differences"] == ["target_spacing: source [2.0, 2.0, 2.0] vs this run [1.0, 1.0, 1.0]"]
