"""LightningModule: network + loss + optimiser/schedule + sliding-window validation.

The checkpoint's ``hyper_parameters`` hold the resolved pipeline config and the
preprocessing plan, so a checkpoint alone is enough to predict
(:func:`medseg.models.checkpoint.load_network`, which needs no Lightning). Validation runs whole-volume sliding-window inference on the
validation cases (on the preprocessed grid) and logs per-structure Dice
(``val/dice_<structure>``) and their mean (``val/mean_dice``, the checkpoint monitor).
Under DDP each rank validates a disjoint share of the cases and the per-structure sums
and counts are summed across ranks before dividing, so the logged values equal a
single-process validation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch

from medseg.config import PipelineConfig, from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.blockwise import grid_labels
from medseg.models.checkpoint import in_channels
from medseg.models.compat import check_resumable
from medseg.models.registry import build_network
from medseg.training import semi
from medseg.training.layout import choose_memory_format
from medseg.training.losses import build_loss, deep_supervision_loss

log = logging.getLogger("medseg.train")


def case_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per foreground class Dice of one case and a validity mask (reference non-empty).

    One pass over the voxels whatever the class count: the reference x prediction
    confusion counts (``scatter_add_`` of ones at ``label * K + pred``: a fixed-size result,
    deterministic on CUDA), no per-class masks; a label value beyond the classes counts
    nowhere. Computed on the label's device without reading a value back to the host (one
    transfer per validation epoch); float64, or float32 on Apple's MPS, which has no
    float64. ``pred`` must be on the label's device and hold as many voxels.
    """
    if pred.device != label.device:
        raise ValueError(
            f"case_dice: prediction on {pred.device} but label on {label.device}; compute both on one "
            "device (grid_labels returns labels on its input image's device)"
        )
    if pred.numel() != label.numel():
        raise ValueError(f"case_dice: prediction of shape {tuple(pred.shape)} for a label of shape "
                         f"{tuple(label.shape)}; predict on the label's grid")
    k = num_classes
    codes = (label.reshape(-1).long() * k + pred.reshape(-1).long()).clamp_(max=k * k)  # beyond: bin k*k
    ones = torch.ones(1, dtype=torch.long, device=codes.device).expand_as(codes)
    flat = torch.zeros(k * k + 1, dtype=torch.long, device=codes.device).scatter_add_(0, codes, ones)[: k * k]
    confusion = flat.view(k, k)  # rows: reference class, columns: predicted class
    dtype = torch.float32 if label.device.type == "mps" else torch.float64
    ref, predicted, inter = confusion.sum(1)[1:], confusion.sum(0)[1:], confusion.diagonal()[1:]
    valid = (ref > 0).to(dtype)
    dice = torch.where(ref > 0, 2.0 * inter.to(dtype) / (ref + predicted).clamp(min=1).to(dtype), 0.0)
    return dice.to(dtype), valid


class NetworkModule(pl.LightningModule):
    """What every medseg training module shares: the network ``self.net`` built from the
    pipeline, its memory layout, and the optimiser with its schedule (steps or wall time).
    Subclasses set ``self.net`` (and may add modules) and define the steps."""

    net: torch.nn.Module
    out_channels: int
    """The network's output channels (classes, or image channels for pretraining)."""

    def __init__(self, config: dict[str, Any], plan: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: PipelineConfig = from_dict(config)
        self.plan = PreprocessingPlan(**plan)
        self._fit_started: float | None = None
        self._memory_format: torch.memory_format | None = None
        self.memory_format_choice = "not chosen (no fit)"
        """What ``trainer.memory_format`` resolved to and why (saved in train_summary.json)."""

    def networks(self) -> list[torch.nn.Module]:
        """Every network whose weights are held in the chosen memory layout."""
        return [self.net]

    def setup(self, stage: str) -> None:
        # Before Lightning moves the module to its device and builds the optimiser, so the
        # optimiser's state is created in the same layout as the weights.
        if stage != "fit":
            return
        trainer = self._trainer
        device = trainer.strategy.root_device.type if trainer is not None else "cpu"
        d = self.cfg.data
        example = torch.randn(d.batch_size, in_channels(self.cfg, self.plan), *d.patch_size)
        fmt, why = choose_memory_format(self.cfg.trainer.memory_format, device, self.net, example)
        if trainer is not None and trainer.world_size > 1:
            # every rank must hold its weights in the same layout (DDP's gradient buckets)
            fmt, why = trainer.strategy.broadcast((fmt, why), src=0)
        if trainer is None or trainer.is_global_zero:
            log.info(f"trainer.memory_format {self.cfg.trainer.memory_format} -> {why}")
        self._memory_format, self.memory_format_choice = fmt, why
        if fmt is not None:
            for net in self.networks():
                net.to(memory_format=self._memory_format)  # type: ignore[call-overload]  # (missing from the stubs)

    def in_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout chosen for the weights."""
        return x.contiguous(memory_format=self._memory_format) if self._memory_format is not None else x

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # --resume: refuse a checkpoint whose network is laid out as an older medseg built it
        state = {k[len("net.") :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
        check_resumable(self.cfg.model, in_channels(self.cfg, self.plan), self.out_channels, state, "--resume")

    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()

    loaded_from_init: frozenset[str] = frozenset()
    """Names (in ``net``) of the tensors ``init_from`` loaded or adapted: ``optim.loaded_lr_scale``
    applies to them (set by :func:`medseg.training.init_from.init_weights_from`; restored from
    ``init_from_report.json`` on resume, so that the optimiser's groups match its saved state)."""

    def _encoder_warmup_names(self) -> frozenset[str]:
        """Names (in ``net``) fixed during the decoder-only warm-up: the encoder's tensors that
        ``init_from`` loaded (none without a warm-up or ``init_from``)."""
        if not self.cfg.optim.decoder_warmup_epochs or not self.loaded_from_init:
            return frozenset()
        from medseg.models.encoder import encoder_tensor_names

        encoder = encoder_tensor_names(self.cfg.model, in_channels(self.cfg, self.plan), self.out_channels)
        return encoder & self.loaded_from_init

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters by learning rate: one group, or the tensors loaded by
        ``init_from`` (at ``lr * loaded_lr_scale``) apart from the rest (at ``lr``) when the scale
        is not 1, the loaded encoder further apart during a decoder-only warm-up (its group is
        marked ``warmup_frozen``). A mean teacher's parameters are frozen and left out."""
        o = self.cfg.optim
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        frozen = self._encoder_warmup_names()
        scaled = o.loaded_lr_scale != 1.0 and bool(self.loaded_from_init)
        if not scaled and not frozen:
            return [{"params": [p for _, p in named]}]
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for n, p in named:
            key = n[len("net."):] if n.startswith("net.") else None
            loaded = scaled and key in self.loaded_from_init
            groups.setdefault((loaded, key in frozen), []).append(p)
        # the order of the two groups before warm-ups existed (loaded, rest): resumable runs
        order = [(True, True), (True, False), (False, True), (False, False)]
        return [{"params": groups[k], "lr": o.lr * (o.loaded_lr_scale if k[0] else 1.0), "warmup_frozen": k[1]}
                for k in order if k in groups]

    def configure_optimizers(self) -> Any:
        o, t = self.cfg.optim, self.cfg.trainer
        params = self._param_groups()
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        total = max(1, t.max_epochs * t.steps_per_epoch)
        warmup = o.warmup_epochs * t.steps_per_epoch
        budget_s = t.max_time_minutes * 60.0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if budget_s > 0 and self._fit_started is not None:
                # With a wall-time budget the schedule follows whichever ends first, the
                # steps or the time, so the learning rate is annealed when the budget ends.
                progress = max(progress, min(1.0, (time.monotonic() - self._fit_started) / budget_s))
            if o.scheduler == "poly":
                return (1.0 - progress) ** 0.9
            if o.scheduler == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return 1.0

        frozen_steps = o.decoder_warmup_epochs * t.steps_per_epoch

        def encoder_factor(step: int) -> float:
            """0 during the decoder-only warm-up, then rising linearly to the schedule."""
            if step < frozen_steps:
                return 0.0
            return min(1.0, (step - frozen_steps + 1) / frozen_steps) * factor(step)

        if any(g.get("warmup_frozen") for g in params) and (self._trainer is None or self._trainer.is_global_zero):
            n = sum(len(g["params"]) for g in params if g.get("warmup_frozen"))
            log.info(f"optim.decoder_warmup_epochs {o.decoder_warmup_epochs}: {n} loaded encoder tensors fixed "
                     f"for the first {frozen_steps} steps, then rising to the schedule over {frozen_steps}")
        lambdas = [encoder_factor if g.get("warmup_frozen") else factor for g in params]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)  # type: ignore[arg-type]  # (a list is accepted)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SegmentationModule(NetworkModule):
    """Supervised (and, with ``semi_supervised.method: mean_teacher``, semi-supervised)
    segmentation training with sliding-window validation."""

    def __init__(self, config: dict[str, Any], plan: dict[str, Any]) -> None:
        super().__init__(config, plan)
        self.num_classes = self.out_channels = self.plan.num_classes
        self.net = build_network(self.cfg.model, in_channels(self.cfg, self.plan), self.num_classes)
        self.loss = build_loss(self.cfg.loss, self.num_classes)
        self.structure_names = [n for n, v in sorted(self.plan.labels.items(), key=lambda kv: kv[1]) if v != 0]
        self._val_sum = torch.zeros(self.num_classes - 1, dtype=torch.float64)
        self._val_count = torch.zeros(self.num_classes - 1, dtype=torch.float64)
        self.teacher: torch.nn.Module | None = None
        if self.cfg.semi_supervised.method == "mean_teacher":
            self.teacher = semi.make_teacher(self.net)

    def networks(self) -> list[torch.nn.Module]:
        return [self.net] if self.teacher is None else [self.net, self.teacher]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _supervised(self, out: torch.Tensor, label: torch.Tensor, image_ndim: int) -> torch.Tensor:
        if self.cfg.model.deep_supervision and out.ndim == image_ndim + 1:
            return deep_supervision_loss(self.loss, out, label)
        return self.loss(out, label)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        b = image.shape[0]
        if self.teacher is None:
            loss = self._supervised(self.net(self.in_layout(image)), batch["label"], image.ndim)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
            return loss
        # Mean teacher: one student pass over the labelled and unlabelled patches, each with its
        # own noise; the teacher sees the same patches with other noise. Consistency on all of
        # them (labelled ones too, as Yu et al.), supervision on the labelled ones.
        s = self.cfg.semi_supervised
        x = image
        if "u_image" in batch:
            x = torch.cat([image, batch["u_image"].flatten(0, 1)])
        out = self.net(self.in_layout(semi.perturb(x, s.noise_std)))
        with torch.no_grad():
            teacher_out = self.teacher(self.in_layout(semi.perturb(x, s.noise_std)))
        supervised = self._supervised(out[:b], batch["label"], image.ndim)
        consistency = semi.consistency_loss(semi.full_resolution(out, x.ndim), semi.full_resolution(teacher_out, x.ndim))
        epoch = self.current_epoch + batch_idx / max(1, self.cfg.trainer.steps_per_epoch)
        weight = semi.rampup_weight(epoch, s.rampup_epochs, s.consistency_weight)
        loss = supervised + weight * consistency
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        self.log("train/supervised", supervised, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/consistency", consistency, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/consistency_weight", weight, on_step=False, on_epoch=True, batch_size=b)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.teacher is not None:
            semi.update_teacher(self.teacher, self.net, self.cfg.semi_supervised.teacher_decay)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros_like(self._val_sum)
        self._val_count = torch.zeros_like(self._val_count)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # image, label, probabilities, Dice and its sums all stay on the label's device
        # block by block: no classes x volume array, labels on the label's device
        pred = grid_labels([(self.net, self.cfg)], batch["image"], self.num_classes)
        dice, valid = case_dice(pred, batch["label"], self.num_classes)
        self._val_sum = self._val_sum.to(dice.device, dice.dtype) + dice * valid
        self._val_count = self._val_count.to(valid.device, valid.dtype) + valid

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sum.to(self.device, torch.float32)
        counts = self._val_count.to(self.device, torch.float32)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        per_class = sums / counts.clamp(min=1)
        present = counts > 0
        mean = per_class[present].mean() if bool(present.any()) else torch.tensor(0.0, device=self.device)
        for name, value in zip(self.structure_names, per_class, strict=True):
            self.log(f"val/dice_{name}", value, rank_zero_only=True, sync_dist=False)
        self.log("val/mean_dice", mean, prog_bar=True, sync_dist=False)
        self.log("val/cases", counts.max(), sync_dist=False)


def module_hparams(cfg: PipelineConfig, plan: PreprocessingPlan) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "plan": asdict(plan)}
