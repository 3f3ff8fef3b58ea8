"""Mean teacher (Tarvainen & Valpola 2017; Yu et al. 2019 for 3D segmentation).

The pieces :class:`medseg.training.module.SegmentationModule` combines when
``semi_supervised.method: mean_teacher``: a teacher that is the exponential moving average of
the trained network, a consistency loss between their softmax outputs on two differently
perturbed copies of a patch, and a weight for it ramped up from 0. Every tensor stays on the
device of its input: the teacher lives beside the student (it is a sub-module).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F


def make_teacher(student: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``student``: same weights now, updated only by :func:`update_teacher`."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_teacher(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student (parameters); buffers copied."""
    for tp, sp in zip(teacher.parameters(), student.parameters(), strict=True):
        tp.lerp_(sp.detach(), 1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)


def rampup_weight(epoch: float, rampup_epochs: int, weight: float) -> float:
    """``weight * exp(-5 (1 - t)^2)`` with t = epoch / rampup_epochs clipped to [0, 1]
    (Laine & Aila 2017, used by the mean teacher): ~0.7 % of ``weight`` at the start."""
    if rampup_epochs <= 0:
        return weight
    t = min(1.0, max(0.0, epoch / rampup_epochs))
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)


def perturb(x: torch.Tensor, std: float) -> torch.Tensor:
    """``x`` plus Gaussian noise of ``std``, clipped at +-2 std (Yu et al.'s input noise)."""
    if std <= 0:
        return x
    return x + (torch.randn_like(x) * std).clamp(-2 * std, 2 * std)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the class probabilities (B, C, *spatial), averaged over
    voxels and classes; no gradient flows into the teacher."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))


def full_resolution(out: torch.Tensor, image_ndim: int) -> torch.Tensor:
    """The full-resolution head of a deep-supervision output (B, heads, C, ...) or ``out``."""
    return out[:, 0] if out.ndim == image_ndim + 1 else out
