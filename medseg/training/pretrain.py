"""Self-supervised pretraining (``medseg pretrain``): masked-volume reconstruction on images alone
(or, with ``pretrain.method: genesis``, the Models Genesis restoration of :mod:`medseg.training.genesis`).

The pipeline's own network, with one output channel per input channel, learns to restore
the voxels of randomly masked blocks of each patch (Wald et al. 2024, "Revisiting MAE
pre-training for 3D medical image segmentation": dense CNN U-Nets, masked blocks set to
zero, mean squared error on the masked voxels only). Patches, augmentation, caching,
resume, wall-time budget, logs and checkpoints are those of ``medseg train``
(:mod:`medseg.training.fit`); ``init_from: PRETRAIN_RUN`` then starts a segmentation run
from every weight but the output head. ``checkpoints/best.ckpt`` has the lowest
reconstruction loss on the held-out images (fixed patches and masks per case).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from medseg.config import ConfigError, PipelineConfig, dump
from medseg.data.datamodule import SegmentationDataModule, load_or_make_split
from medseg.data.fingerprint import make_plan
from medseg.data.manifest import Manifest
from medseg.data.preprocess import PreprocessingPlan
from medseg.data.sampling import sample_patch
from medseg.data.unlabelled import every_image, load_images
from medseg.models.checkpoint import in_channels
from medseg.models.registry import build_network
from medseg.training.fit import FitResult, check_run_dir, fit, run_manifest
from medseg.training.genesis import genesis_corrupt
from medseg.training.module import NetworkModule, module_hparams
from medseg.training.precision import resolve_precision
from medseg.utils import atomic_write_text

VALIDATION_PATCHES_PER_CASE = 4

log = logging.getLogger("medseg.train")


def block_mask(
    shape: torch.Size | tuple[int, ...], ratio: float, block: int,
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, 1, *spatial) float mask, 1 where a voxel is hidden: exactly ``round(ratio * n)`` of
    the n blocks of ``block`` voxels per axis in each sample (at least one hidden, one kept)."""
    b, spatial = shape[0], tuple(shape[2:])
    grid = [math.ceil(s / block) for s in spatial]
    n = math.prod(grid)
    k = min(n - 1, max(1, round(ratio * n))) if n > 1 else 1
    scores = torch.rand(b, n, generator=generator, device=device)
    mask = torch.zeros(b, n, device=device)
    mask.scatter_(1, scores.argsort(1)[:, :k], 1.0)
    mask = mask.view(b, 1, *grid)
    for axis in range(len(spatial)):
        mask = mask.repeat_interleave(block, dim=2 + axis)
    return mask[(slice(None), slice(None), *(slice(0, s) for s in spatial))].contiguous()


def masked_mse(restored: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden voxels (every channel) only."""
    err = (restored.float() - image.float()) ** 2 * mask
    return err.sum() / (mask.sum() * image.shape[1]).clamp(min=1.0)


class PretrainModule(NetworkModule):
    """The pipeline's network trained to restore masked blocks of its input."""

    def __init__(self, config: dict[str, Any], plan: dict[str, Any]) -> None:
        super().__init__(config, plan)
        self.hparams["task"] = "pretrain"  # init_from re-initialises the head of such a source
        channels = self.out_channels = in_channels(self.cfg, self.plan)
        self.net = build_network(self.cfg.model, channels, channels)

    def _restore(self, corrupted: torch.Tensor) -> torch.Tensor:
        out = self.net(self.in_layout(corrupted))
        return out[:, 0] if out.ndim == corrupted.ndim + 1 else out  # deep supervision: the full-resolution head

    def _loss(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The pretext loss of one batch; ``generator`` (CPU) fixes the corruption."""
        p = self.cfg.pretrain
        if p.method == "genesis":
            restored = self._restore(genesis_corrupt(image, generator))
            return ((restored.float() - image.float()) ** 2).mean()
        where = image.device if generator is None else "cpu"  # a generator draws on the CPU
        mask = block_mask(image.shape, p.mask_ratio, p.mask_block, generator, where).to(image.device)
        return masked_mse(self._restore(image * (1.0 - mask)), image, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        loss = self._loss(image)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # The same patches and masks at every validation: a loss comparable across epochs.
        d = self.cfg.data
        rng = np.random.default_rng([self.cfg.trainer.seed, batch_idx])
        volume = batch["image"].cpu().numpy()  # (a numpy crop of the whole case, as in training)
        empty = np.zeros(volume.shape[1:], np.uint8)
        patches = [sample_patch(volume, empty, {}, tuple(d.patch_size), 0.0, rng, d.slice_axis, d.slab_slices)[0]
                   for _ in range(VALIDATION_PATCHES_PER_CASE)]
        image = torch.from_numpy(np.stack(patches)).to(self.device)
        loss = self._loss(image, torch.Generator().manual_seed(self.cfg.trainer.seed * 1000 + batch_idx))
        self.log("val/recon_loss", loss, prog_bar=True, on_epoch=True, batch_size=1, sync_dist=True)


def images_manifest(sources: list[str]) -> Manifest:
    """Every image of ``sources`` (manifests or image folders) as one label-less manifest."""
    if not sources:
        raise ConfigError("medseg pretrain: no images given; pass --data MANIFEST|FOLDER (repeatable)")
    manifests = [load_images(s) for s in sources]
    counts = {len(m.channel_names) for m in manifests}
    if len(counts) > 1:
        found = ", ".join(f"{m.path}: {len(m.channel_names)}" for m in manifests)
        raise ConfigError(f"medseg pretrain: the sources have different channel counts ({found}); pretrain on "
                          "images with the same channels")
    first = manifests[0]
    cases = every_image(manifests)
    if not cases:
        raise ConfigError(f"medseg pretrain: no images in {', '.join(sources)}")
    return Manifest(first.path, first.name, list(first.channel_names), {"background": 0}, cases, [], "images")


def pretrain(cfg: PipelineConfig, sources: list[str], run_dir: str | Path, resume: bool = False) -> FitResult:
    """Pretrain ``cfg``'s network on the images of ``sources`` into ``run_dir``."""
    started = time.time()
    run_dir = Path(run_dir)
    manifest = images_manifest(sources)  # before any compute: a bad source fails here
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(run_dir, resume)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank == 0:
        dump(cfg, run_dir / "config.yaml")
    plan_path = run_dir / "preprocessing.json"
    if (resume or rank > 0) and plan_path.exists():
        plan = PreprocessingPlan.load(plan_path)
    else:
        plan = make_plan(cfg, manifest)
        plan.save(plan_path)
    split = load_or_make_split(run_dir / "split.json", [c.name for c in manifest.training], cfg)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if rank == 0:
        info = {**run_manifest(cfg, run_dir, split, precision), "task": "pretrain", "sources": [str(s) for s in sources]}
        atomic_write_text(run_dir / "run_manifest.json", json.dumps(info, indent=2))
        log.info(f"pretraining on {len(split['train'])} images ({len(split['val'])} held out for the reconstruction loss)")
    cache = Path(os.environ.get("MEDSEG_CACHE", run_dir / "cache"))
    dm = SegmentationDataModule(cfg, manifest, plan, split, cache_dir=cache)
    module = PretrainModule(**module_hparams(cfg, plan))
    return fit(module, dm, cfg, run_dir, resume=resume, precision=precision, has_val=bool(split["val"]),
               monitor="val/recon_loss", mode="min", started=started)
