import pytest
import torch

from medseg.config import ConfigError, LossConfig
from medseg.training.losses import LOSSES, build_loss, deep_supervision_loss


def _batch(k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, k, (2, 1, 8, 8, 8), generator=g)
    logits = torch.randn(2, k, 8, 8, 8, generator=g)
    return logits, label


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_small_for_a_confident_right_answer_and_large_for_a_wrong_one(name):
    logits, label = _batch()
    loss = build_loss(LossConfig(name=name), 3)
    right = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 20.0
    wrong = torch.roll(right, 1, dims=1)
    assert float(loss(right, label)) < 0.01
    assert float(loss(wrong, label)) > 0.9
    assert 0.01 < float(loss(logits, label)) < float(loss(wrong, label))


def test_unknown_loss_and_wrong_class_weights_are_errors():
    with pytest.raises(ConfigError, match=r"unknown loss 'dice_c'.*Did you mean 'dice_ce'"):
        build_loss(LossConfig(name="dice_c"), 3)
    with pytest.raises(ConfigError, match=r"class_weights: \[1.0, 2.0\] has 2 values; expected 3"):
        build_loss(LossConfig(class_weights=[1.0, 2.0]), 3)


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal"])
def test_class_weights_weight_the_cross_entropy_or_focal_term(name):
    logits, label = _batch()
    plain = build_loss(LossConfig(name=name), 3)(logits, label)
    heavy = build_loss(LossConfig(name=name, class_weights=[1.0, 1.0, 10.0]), 3)(logits, label)
    assert float(heavy) > float(plain)


def test_focal_term_is_softmax_focal_cross_entropy():
    """With Dice taken out, dice_focal's focal term is -(1 - p_y)^2 log p_y on the softmax,
    averaged like MONAI's FocalLoss (over classes and voxels); gamma 0 would be CE."""
    logits, label = _batch()
    loss = build_loss(LossConfig(name="dice_focal"), 3)
    focal = float(loss(logits, label)) - float(loss.dice(logits, label))
    logp = torch.log_softmax(logits, dim=1).gather(1, label)
    expected = float((-((1 - logp.exp()) ** 2) * logp).sum() / (label.numel() * 3))
    assert focal == pytest.approx(expected, rel=1e-4)


def test_batch_dice_pools_the_batch_and_per_sample_dice_averages_samples():
    """Sample 0 has class 1 everywhere and predicts it; sample 1 has one voxel of class 1 and
    misses it. Per-sample Dice charges the miss in full (half the loss); batch Dice barely."""
    label = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    label[0] = 1
    label[1, 0, 0, 0, 0] = 1
    logits = torch.zeros(2, 2, 4, 4, 4)
    logits[0, 1] = 20.0
    logits[1, 0] = 20.0
    batch = build_loss(LossConfig(name="dice", batch_dice=True), 2)(logits, label)
    per_sample = build_loss(LossConfig(name="dice", batch_dice=False), 2)(logits, label)
    assert float(batch) < 0.01
    assert float(per_sample) == pytest.approx(0.5, abs=0.01)


def test_deep_supervision_weights_halve_per_head_and_sum_to_one():
    logits, label = _batch()
    loss = build_loss(LossConfig(name="dice_ce"), 3)
    right = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 20.0
    heads = torch.stack([right, logits, logits], dim=1)  # (B, heads, C, *spatial)
    expected = (0.0 * 4 + float(loss(logits, label)) * (2 + 1)) / 7  # weights 4:2:1 over 7
    assert float(deep_supervision_loss(loss, heads, label)) == pytest.approx(expected + float(loss(right, label)) * 4 / 7, rel=1e-4)
