"""Mean teacher pieces with hand-computed values, and one semi-supervised training step."""

from __future__ import annotations

import math

import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.training import semi
from medseg.training.module import SegmentationModule, module_hparams


def test_update_teacher_is_an_exponential_moving_average():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    semi.update_teacher(teacher, student, decay=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.1))
    semi.update_teacher(teacher, student, decay=0.9)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 0.19))


def test_make_teacher_copies_and_freezes():
    student = torch.nn.Conv3d(1, 2, 3)
    teacher = semi.make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(teacher.weight, student.weight)
    assert teacher.weight.data_ptr() != student.weight.data_ptr()


def test_rampup_weight():
    assert semi.rampup_weight(0, 10, 2.0) == 2.0 * math.exp(-5.0)
    assert semi.rampup_weight(5, 10, 2.0) == 2.0 * math.exp(-5.0 * 0.25)
    assert semi.rampup_weight(10, 10, 2.0) == semi.rampup_weight(30, 10, 2.0) == 2.0
    assert semi.rampup_weight(0, 0, 2.0) == 2.0


def test_perturb_is_clipped_noise_and_consistency_is_zero_only_for_equal_outputs():
    x = torch.zeros(10_000)
    noisy = semi.perturb(x, 0.1)
    assert noisy.abs().max() <= 0.2 + 1e-7 and 0.08 < float(noisy.std()) < 0.1
    assert semi.perturb(x, 0.0) is x
    logits = torch.randn(2, 3, 4, 4, 4)
    assert float(semi.consistency_loss(logits, logits)) == 0.0
    other = logits.clone()
    other[:, 0] += 5.0
    assert float(semi.consistency_loss(logits, other)) > 0.01


def _module(method: str) -> SegmentationModule:
    cfg = from_dict({"model": {"channels": [4, 8]}, "data": {"patch_size": [16, 16, 16], "batch_size": 2},
                     "semi_supervised": {"method": method, "rampup_epochs": 0, "teacher_decay": 0.5}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1})
    return SegmentationModule(**module_hparams(cfg, plan))


def test_mean_teacher_step_uses_unlabelled_patches_and_moves_the_teacher():
    torch.manual_seed(0)
    m = _module("mean_teacher")
    assert m.teacher is not None and any(k.startswith("teacher.") for k in m.state_dict())  # saved: --resume keeps it
    batch = {"image": torch.randn(2, 1, 16, 16, 16), "label": torch.randint(0, 2, (2, 1, 16, 16, 16)),
             "u_image": torch.randn(2, 3, 1, 16, 16, 16)}
    seen: list[int] = []
    hook = m.net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    loss = m.training_step(batch, 0)
    hook.remove()
    assert seen == [2 + 6]  # one student pass over 2 labelled + 2x3 unlabelled patches
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    before = [p.clone() for p in m.teacher.parameters()]
    opt.step()
    m.on_train_batch_end(None, batch, 0)
    for t, b, s in zip(m.teacher.parameters(), before, m.net.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * b + 0.5 * s)  # teacher_decay 0.5
    assert any(not torch.equal(t, s) for t, s in zip(m.teacher.parameters(), m.net.parameters(), strict=True))


def test_supervised_module_has_no_teacher_and_optimises_every_parameter():
    m = _module("none")
    assert m.teacher is None and not any(k.startswith("teacher.") for k in m.state_dict())
    opt = m.configure_optimizers()["optimizer"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.net.parameters()))
