import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.window import predict_probabilities
from medseg.training.module import (
    SegmentationModule,
    case_dice,
    module_hparams,
)


def tiny(classes: int = 3, **model):
    cfg = from_dict({"model": {"channels": [4, 8], **model}, "data": {"patch_size": [16, 16, 16]}})
    labels = {"background": 0, **{f"s{i}": i for i in range(1, classes)}}
    return cfg, PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels=labels)


def test_case_dice_hand_computed():
    ref = torch.zeros(4, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(ref)
    ref[0, 0, :2] = 1  # 2 voxels
    pred[0, 0, 1:4] = 1  # 3 voxels, 1 overlap -> 2*1/5
    pred[3, 3, 3] = 2  # class 2 absent from reference -> not counted
    dice, valid = case_dice(pred, ref, 3)
    assert dice[0].item() == 0.4 and valid.tolist() == [1.0, 0.0]


def test_schedules_poly_and_cosine_with_warmup():
    cfg, plan = tiny()
    cfg.trainer.max_epochs, cfg.trainer.steps_per_epoch = 10, 10
    for sched, mid in (("poly", 0.5**0.9), ("cosine", 0.5)):
        cfg.optim.scheduler, cfg.optim.warmup_epochs = sched, 0
        module = SegmentationModule(**module_hparams(cfg, plan))
        opt = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        f = opt.lr_lambdas[0]
        assert abs(f(50) - mid) < 1e-9 and f(0) == 1.0
    cfg.optim.warmup_epochs = 2
    module = SegmentationModule(**module_hparams(cfg, plan))
    f = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert f(0) == 1 / 20 and f(19) == 1.0


def test_time_budget_drives_the_schedule():
    cfg, plan = tiny()
    cfg.trainer.max_epochs, cfg.trainer.steps_per_epoch, cfg.trainer.max_time_minutes = 1000, 10, 1.0
    module = SegmentationModule(**module_hparams(cfg, plan))
    f = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    import time

    module._fit_started = time.monotonic() - 30.0  # half the 1-minute budget used
    assert abs(f(10) - 0.5**0.9) < 0.02  # poly at ~50 % although only 0.1 % of the steps ran
    module._fit_started = time.monotonic() - 120.0
    assert f(10) == 0.0


def test_case_dice_stays_on_the_label_device_and_refuses_two_devices():
    """'meta' stands in for a GPU: no value is read back to the host, the result is on the label's device."""
    pred = torch.zeros(4, 4, 4, dtype=torch.long, device="meta")
    dice, valid = case_dice(pred, torch.zeros_like(pred), 3)
    assert dice.device.type == valid.device.type == "meta" and dice.shape == (2,)
    with pytest.raises(ValueError, match=r"prediction on cpu but label on meta"):
        case_dice(torch.zeros(4, 4, 4, dtype=torch.long), pred, 3)


def test_validation_step_keeps_every_tensor_on_the_label_device():
    """The whole validation step on 'meta' (network, image, label): it must never need the CPU."""
    cfg, plan = tiny()
    module = SegmentationModule(**module_hparams(cfg, plan)).eval()
    module.net.to("meta")
    batch = {"image": torch.rand(1, 16, 16, 16, device="meta"),
             "label": torch.zeros(16, 16, 16, dtype=torch.long, device="meta")}
    module.on_validation_epoch_start()
    module.validation_step(batch, 0)
    assert module._val_sum.device.type == module._val_count.device.type == "meta"


def test_validation_sums_match_case_dice_on_cpu():
    cfg, plan = tiny()
    module = SegmentationModule(**module_hparams(cfg, plan)).eval()
    label = torch.zeros(16, 16, 16, dtype=torch.long)
    label[:8] = 1
    batch = {"image": torch.rand(1, 16, 16, 16), "label": label}
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step(batch, 0)
        module.validation_step(batch, 1)
        pred = predict_probabilities(module.net, batch["image"], module.cfg).argmax(0)
    dice, valid = case_dice(pred, label, 3)
    torch.testing.assert_close(module._val_sum, 2 * dice * valid)
    assert module._val_count.tolist() == [2.0, 0.0]


def test_case_dice_with_many_classes_equals_per_class_masks():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 120, (20, 18, 16), generator=g)
    noise = torch.randint(0, 120, label.shape, generator=g)
    pred = torch.where(torch.rand(label.shape, generator=g) < 0.7, label, noise)
    label[0, 0, :3] = 130  # a value beyond the classes counts nowhere
    dice, valid = case_dice(pred, label, 120)
    for c in (1, 57, 119):
        inter = int(((pred == c) & (label == c)).sum())
        expected = 2 * inter / (int((pred == c).sum()) + int((label == c).sum()))
        assert abs(float(dice[c - 1]) - expected) < 1e-12
    assert valid.shape == (119,) and bool(valid.all())


def test_decoder_warmup_fixes_the_loaded_encoder_then_ramps_it_up():
    """optim.decoder_warmup_epochs after init_from: the loaded encoder tensors do not move
    during the warm-up (rate 0, no weight decay either) while the decoder and head learn;
    then the encoder's rate rises linearly to the schedule."""
    from medseg.models.encoder import encoder_tensor_names

    cfg, plan = tiny(channels=[4, 8, 16])
    cfg.model.name = "dynunet"
    cfg.trainer.max_epochs, cfg.trainer.steps_per_epoch = 10, 2
    cfg.optim.decoder_warmup_epochs, cfg.optim.weight_decay = 1, 0.1
    module = SegmentationModule(**module_hparams(cfg, plan))
    encoder = encoder_tensor_names(cfg.model, 1, 3)
    # without init_from there is nothing loaded to hold: one group
    assert len(module.configure_optimizers()["optimizer"].param_groups) == 1
    module.loaded_from_init = frozenset(n for n, _ in module.net.named_parameters() if "output_block" not in n)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    frozen = [g for g in opt.param_groups if g["warmup_frozen"]]
    assert len(frozen) == 1 and len(frozen[0]["params"]) == len([n for n, _ in module.net.named_parameters() if n in encoder])
    params = dict(module.net.named_parameters())

    def step() -> dict[str, torch.Tensor]:
        before = {n: p.detach().clone() for n, p in params.items()}
        opt.zero_grad()
        module.net(torch.randn(1, 1, 16, 16, 16)).float().square().mean().backward()
        opt.step()
        sched.step()
        return before

    for _ in range(2):  # the warm-up: 1 epoch of 2 steps
        before = step()
        assert all(torch.equal(before[n], params[n]) for n in encoder)
        assert any(not torch.equal(before[n], p) for n, p in params.items() if n.startswith("upsamples."))
    f_encoder, f_rest = sched.lr_lambdas[0], sched.lr_lambdas[1]
    assert f_encoder(2) == pytest.approx(0.5 * f_rest(2)) and f_encoder(3) == pytest.approx(f_rest(3))
    before = step()
    assert any(not torch.equal(before[n], params[n]) for n in encoder)
