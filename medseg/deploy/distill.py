"""Knowledge distillation: a (usually smaller) student learns from trained teachers' soft masks.

Loss per training patch: ``(1 - weight) * L_labels(student) + weight * T^2 * KL(p_T || q_T)``
(Hinton et al. 2015), with ``p_T`` the teachers' softmax at temperature ``T`` averaged over
the teachers and ``q_T`` the student's, per voxel (KL summed over classes, averaged over voxels;
the full-resolution head where the student has deep supervision). The teachers' term needs no
label, so it also covers unlabelled images: the manifest's cases without a label (Decathlon
``test`` images, nnU-Net ``imagesTs``, ...) and ``--unlabelled`` manifests or folders, as for
``medseg train --unlabelled`` (:mod:`medseg.data.unlabelled`); each step then adds one
unlabelled patch per labelled one to the student's and the teachers' pass (the label term
stays on the labelled patches). The teachers see the same
preprocessed patch as the student, so they must share its labels, input channels, spatial dims
and preprocessing (target spacing, normalisation): checked before training. The teachers are
frozen and kept out of the checkpoint: the output is an ordinary run directory of the student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medseg.config import PipelineConfig
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.checkpoint import best_checkpoint, in_channels, load_network
from medseg.training import semi
from medseg.training.module import SegmentationModule


def check_settings(temperature: float, weight: float) -> None:
    if not temperature > 0:
        raise ValueError(f"--temperature {temperature}: expected a positive temperature, e.g. 2.0")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight {weight}: expected the weight of the teachers' term in [0, 1], e.g. 0.5")


def load_teachers(paths: list[str | Path]) -> list[tuple[torch.nn.Module, PipelineConfig, PreprocessingPlan]]:
    if not paths:
        raise ValueError("medseg distill needs at least one --teacher RUN_DIR")
    return [load_network(best_checkpoint(p), "cpu") for p in paths]


def check_teacher_labels(teachers: list[tuple[Any, Any, PreprocessingPlan]], paths: list[Any], labels: dict[str, int]) -> None:
    """Every teacher predicts exactly the student's ``labels`` (name -> value)."""
    for (_, _, plan), path in zip(teachers, paths, strict=True):
        if plan.labels != labels:
            raise ValueError(
                f"--teacher {path}: labels {plan.labels}, the student's data has {labels}; distil only from "
                "teachers trained on the same label set"
            )


def kd_loss(student: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` per voxel (summed over classes), averaged over voxels."""
    log_q = F.log_softmax(student / temperature, dim=1)
    kl = (teacher_probs * (teacher_probs.clamp_min(1e-8).log() - log_q)).sum(1)
    return kl.mean() * temperature**2


class DistillModule(SegmentationModule):
    """:class:`SegmentationModule` whose training loss adds the teachers' soft predictions."""

    def set_teachers(self, teachers: list[tuple[torch.nn.Module, PipelineConfig, PreprocessingPlan]],
                     paths: list[Any], temperature: float, weight: float) -> None:
        check_settings(temperature, weight)
        check_teacher_labels(teachers, paths, self.plan.labels)
        mine = (self.plan.target_spacing, self.plan.normalization, in_channels(self.cfg, self.plan), self.cfg.model.spatial_dims)
        for (_, cfg, plan), path in zip(teachers, paths, strict=True):
            theirs = (plan.target_spacing, plan.normalization, in_channels(cfg, plan), cfg.model.spatial_dims)
            if theirs != mine:
                raise ValueError(
                    f"--teacher {path}: (target spacing, normalisation, input channels, spatial dims) {theirs}, the "
                    f"student's {mine}; set the student's data.target_spacing/normalization to the teacher's"
                )
        # a plain list: frozen, not trained, not saved in the student's checkpoint
        self._teachers = [t.eval().requires_grad_(False) for t, _, _ in teachers]
        self.temperature, self.kd_weight = temperature, weight

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._teachers = [t.to(self.device) for t in self._teachers]

    def teacher_probs(self, x: torch.Tensor, image_ndim: int) -> torch.Tensor:
        with torch.no_grad():
            probs = [F.softmax(semi.full_resolution(t(x), image_ndim).float() / self.temperature, dim=1) for t in self._teachers]
        return torch.stack(probs).mean(0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        b = image.shape[0]
        # one pass over the labelled and the unlabelled patches; labels only for the first b
        both = torch.cat([image, batch["u_image"].flatten(0, 1)]) if "u_image" in batch else image
        x = self.in_layout(both)
        out = self.net(x)
        supervised = self._supervised(out[:b], batch["label"], image.ndim)
        kd = kd_loss(semi.full_resolution(out, image.ndim).float(), self.teacher_probs(x, image.ndim), self.temperature)
        loss = (1 - self.kd_weight) * supervised + self.kd_weight * kd
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        self.log("train/supervised", supervised, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/distillation", kd, on_step=False, on_epoch=True, batch_size=b)
        return loss


def distill(cfg: PipelineConfig, teacher_paths: list[str | Path], run_dir: Path | str,
            temperature: float = 2.0, weight: float = 0.5, unlabelled: list[str] | None = None) -> Any:
    """Train ``cfg``'s network into ``run_dir`` from the labels and the teachers; returns train()'s result.

    ``unlabelled``: extra unlabelled manifests or image folders (besides the manifest's cases
    without a label); None: labelled cases only, not even the manifest's unlabelled ones.
    """
    from medseg.data.manifest import load_manifest
    from medseg.data.unlabelled import load_images
    from medseg.training.run import train

    check_settings(temperature, weight)
    if cfg.semi_supervised.method != "none":
        raise ValueError(f"semi_supervised.method {cfg.semi_supervised.method}: medseg distill trains with teachers "
                         "of its own; set semi_supervised.method: none")
    if not cfg.data.manifest:
        raise ValueError("medseg distill: no dataset given; pass --data MANIFEST")
    teachers = load_teachers(teacher_paths)
    manifest = load_manifest(cfg.data.manifest)
    check_teacher_labels(teachers, teacher_paths, manifest.labels)  # before anything is written
    sources = None if unlabelled is None else [str(Path(u).resolve()) for u in unlabelled]
    for source in sources or []:
        load_images(source)  # a missing or empty source fails here, before anything is written

    def factory(config: dict[str, Any], plan: dict[str, Any]) -> SegmentationModule:
        module = DistillModule(config=config, plan=plan)
        module.set_teachers(teachers, teacher_paths, temperature, weight)
        return module

    return train(cfg, run_dir, module_factory=factory, unlabelled_sources=sources)



