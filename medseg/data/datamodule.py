"""LightningDataModule: seeded splits / folds, cached preprocessing, patch sampling.

Deterministic preprocessing (:func:`medseg.data.preprocess.prepare_case`) runs once per
case and is cached (in memory, or on disk as ``.npz`` keyed by a hash of the plan and the
case's files, like MONAI's PersistentDataset), so epochs after the first only sample
patches and augment them. An epoch is ``trainer.steps_per_epoch`` optimiser steps, as in
nnU-Net, independent of the number of cases.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from medseg.config import PipelineConfig, patch_mirror_axes
from medseg.data.augmentation import build_augmentation
from medseg.data.io import read_label, read_volume
from medseg.data.manifest import Case, Manifest
from medseg.data.preprocess import PreprocessingPlan, prepare_case
from medseg.data.sampling import class_locations, sample_patch
from medseg.data.spatial_augment import RandSpatialAugmentd
from medseg.logs import progress_bars
from medseg.utils import atomic_path, atomic_write_text


def make_split(names: list[str], cfg: PipelineConfig) -> dict[str, Any]:
    """Seeded train/val split, or fold ``cfg.data.fold`` of a seeded k-fold partition."""
    rng = np.random.default_rng(cfg.trainer.seed)
    order = sorted(names)
    perm = [order[i] for i in rng.permutation(len(order))]
    d = cfg.data
    if d.folds >= 2:
        folds = [sorted(perm[k :: d.folds]) for k in range(d.folds)]
        val = folds[d.fold]
        train = sorted(n for n in order if n not in set(val))
        return {"seed": cfg.trainer.seed, "folds": d.folds, "fold": d.fold, "train": train, "val": val, "all_folds": folds}
    n_val = round(len(order) * d.val_fraction) if len(order) > 1 else 0
    n_val = max(1, n_val) if d.val_fraction > 0 and len(order) > 1 else n_val
    val = sorted(perm[:n_val])
    return {"seed": cfg.trainer.seed, "folds": 0, "fold": 0, "train": sorted(perm[n_val:]), "val": val}


def load_or_make_split(path: Path, names: list[str], cfg: PipelineConfig) -> dict[str, Any]:
    """Reuse ``split.json`` when it exists and matches the dataset; else create and save it."""
    if path.exists():
        split = json.loads(path.read_text(encoding="utf-8"))
        known = set(split["train"]) | set(split["val"])
        missing = known - set(names)
        if missing:
            raise ValueError(
                f"{path}: the saved split names cases that are not in the manifest "
                f"({sorted(missing)[:5]}...); use a new --output directory or delete the split file"
            )
        if split.get("folds", 0) == cfg.data.folds and split.get("fold", 0) == cfg.data.fold:
            return split
    split = make_split(names, cfg)
    atomic_write_text(path, json.dumps(split, indent=2))
    return split


def _cache_key(case: Case, plan: PreprocessingPlan) -> str:
    h = hashlib.sha256(json.dumps(asdict(plan), sort_keys=True).encode())
    for p in [*case.images, case.label]:
        if p is not None:
            st = os.stat(p)
            h.update(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_case(case: Case, plan: PreprocessingPlan) -> dict[str, Any]:
    """Read and preprocess one case -> {name, image (C,X,Y,Z) f32, label (X,Y,Z) u8, locations}."""
    vols = [read_volume(p) for p in case.images]
    image = np.concatenate([v.array[None] if v.array.ndim == 3 else v.array for v in vols], axis=0)
    label = read_label(case.label).array if case.label is not None else None
    prepared = prepare_case(image, vols[0].affine, plan, label)
    lab = prepared.label if prepared.label is not None else np.zeros(prepared.image.shape[1:], np.uint8)
    return {"name": case.name, "image": prepared.image, "label": lab, "locations": class_locations(lab)}


def cached_case(case: Case, plan: PreprocessingPlan, cache_dir: Path | None) -> dict[str, Any]:
    if cache_dir is None:
        return load_case(case, plan)
    path = cache_dir / f"{case.name}-{_cache_key(case, plan)}.npz"
    if path.exists():
        with np.load(path) as z:
            lab = z["label"]
            return {"name": case.name, "image": z["image"], "label": lab, "locations": class_locations(lab)}
    item = load_case(case, plan)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, image=item["image"], label=item["label"])
    return item


class PatchDataset(Dataset):
    """``length`` random augmented patches drawn from preprocessed cases.

    With ``unlabelled`` cases, each item also holds ``u_image``: ``per_item`` patches of
    those images (random positions, the same augmentation), stacked on a new first axis.
    """

    def __init__(
        self, cases: list[dict[str, Any]], cfg: PipelineConfig, length: int,
        unlabelled: list[dict[str, Any]] | None = None, per_item: int = 1,
    ) -> None:
        self.cases, self.cfg, self.length = cases, cfg, length
        self.unlabelled, self.per_item = unlabelled or [], per_item
        d, m = cfg.data, cfg.model
        self.patch = tuple(d.patch_size)
        self.transform = build_augmentation(
            d.augmentation, m.spatial_dims, self.patch, d.augmentation_probabilities, patch_mirror_axes(cfg),
            d.label_resampling,
        )
        has_affine = any(isinstance(t, RandSpatialAugmentd) for t in self.transform.transforms)
        # Spatial augmentation resamples a larger crop down to the patch, so rotated corners
        # hold image content rather than zero padding (as nnU-Net does).
        self.crop = tuple(round(s * 1.25) for s in self.patch) if has_affine else self.patch
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return self.length

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
            seed = [self.cfg.trainer.seed, worker, rank, int(torch.initial_seed() % 2**31)]
            self._rng = np.random.default_rng(seed)
            self.transform.set_random_state(seed=int(self._rng.integers(2**31)))
        return self._rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._generator()
        case = self.cases[int(rng.integers(len(self.cases)))]
        d = self.cfg.data
        img, lab = sample_patch(
            case["image"], case["label"], case["locations"], self.crop, d.foreground_ratio, rng, d.slice_axis, d.slab_slices
        )
        out = self.transform({"image": torch.from_numpy(img), "label": torch.from_numpy(lab.astype(np.float32))})
        image = torch.as_tensor(out["image"]).float()
        label = torch.as_tensor(out["label"]).round().long()
        item = {"image": image.contiguous(), "label": label.contiguous()}
        if self.unlabelled:
            item["u_image"] = torch.stack([self._unlabelled_patch(rng) for _ in range(self.per_item)])
        return item

    def _unlabelled_patch(self, rng: np.random.Generator) -> torch.Tensor:
        case = self.unlabelled[int(rng.integers(len(self.unlabelled)))]
        d = self.cfg.data
        img, lab = sample_patch(case["image"], case["label"], {}, self.crop, 0.0, rng, d.slice_axis, d.slab_slices)
        out = self.transform({"image": torch.from_numpy(img), "label": torch.from_numpy(lab.astype(np.float32))})
        return torch.as_tensor(out["image"]).float().contiguous()


class VolumeDataset(Dataset):
    """Whole preprocessed cases for sliding-window validation."""

    def __init__(self, cases: list[dict[str, Any]]) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        c = self.cases[index]
        return {"image": torch.from_numpy(c["image"]), "label": torch.from_numpy(c["label"].astype(np.int64)), "name": c["name"]}


class SegmentationDataModule(pl.LightningDataModule):
    def __init__(
        self, cfg: PipelineConfig, manifest: Manifest, plan: PreprocessingPlan, split: dict[str, Any], cache_dir: Path | None,
        unlabelled: list[Case] | None = None,
    ) -> None:
        """``split["labelled"]`` (default ``split["train"]``) names the training cases whose labels
        are used; ``unlabelled`` image-only cases feed ``u_image`` (semi-supervised training)."""
        super().__init__()
        self.cfg, self.manifest, self.plan, self.split = cfg, manifest, plan, split
        self.unlabelled = unlabelled or []
        self.cache_dir = cache_dir if cfg.data.cache == "disk" else None
        self.train_cases: list[dict[str, Any]] = []
        self.val_cases: list[dict[str, Any]] = []
        self.unlabelled_cases: list[dict[str, Any]] = []

    def _load(self, cases: list[Case], what: str) -> list[dict[str, Any]]:
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            jobs = pool.map(lambda c: self._checked(c, cached_case(c, self.plan, self.cache_dir)), cases)
            return list(tqdm(jobs, total=len(cases), desc=f"preprocess {what}", disable=not (self.cfg.trainer.progress_bar and progress_bars()),
                             leave=False))

    def _checked(self, case: Case, item: dict[str, Any]) -> dict[str, Any]:
        expected = len(self.plan.channel_names)
        if item["image"].shape[0] != expected:
            raise ValueError(
                f"{case.images[0]}: case {case.name!r} has {item['image'].shape[0]} channel(s), the dataset has "
                f"{expected} ({', '.join(self.plan.channel_names)}); give images with the same channels"
            )
        return item

    def setup(self, stage: str | None = None) -> None:
        if not self.train_cases:
            named = [self.manifest.case(n) for n in self.split.get("labelled", self.split["train"])]
            self.train_cases = self._load(named, "training")
            self.val_cases = self._load([self.manifest.case(n) for n in self.split["val"]], "validation")
            self.unlabelled_cases = self._load(self.unlabelled, "unlabelled")

    def train_dataloader(self) -> DataLoader:
        t, d, s = self.cfg.trainer, self.cfg.data, self.cfg.semi_supervised
        per_item = max(1, round((s.unlabelled_batch_size or d.batch_size) / d.batch_size))
        ds = PatchDataset(self.train_cases, self.cfg, t.steps_per_epoch * d.batch_size, self.unlabelled_cases, per_item)
        nw = self.cfg.data.num_workers
        return DataLoader(
            ds, batch_size=self.cfg.data.batch_size, shuffle=False, num_workers=nw, persistent_workers=nw > 0, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        # Each rank validates a disjoint share of the cases (no padding duplicates, unlike
        # DistributedSampler); the module sums per-structure results across ranks.
        cases = self.val_cases
        if self.trainer is not None and self.trainer.world_size > 1:
            cases = cases[self.trainer.global_rank :: self.trainer.world_size]
        return DataLoader(VolumeDataset(cases), batch_size=1, shuffle=False, num_workers=0, collate_fn=_first)


def _first(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]
