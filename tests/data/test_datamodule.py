"""The data module: seeded splits, cached preprocessing, labelled and unlabelled patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.config import from_dict
from medseg.data.datamodule import PatchDataset, SegmentationDataModule, make_split
from medseg.data.manifest import Case, load_manifest
from medseg.data.preprocess import PreprocessingPlan
from medseg.data.synthetic import generate_dataset


def _case(name: str, fill: float, label: bool) -> dict:
    image = np.full((1, 20, 20, 20), fill, np.float32)
    lab = np.zeros((20, 20, 20), np.uint8)
    if label:
        lab[5:15, 5:15, 5:15] = 1
    return {"name": name, "image": image, "label": lab, "locations": {1: np.argwhere(lab == 1)} if label else {}}


def test_patches_carry_unlabelled_images_from_their_own_cases():
    cfg = from_dict({"data": {"patch_size": [8, 8, 8], "augmentation": "none", "batch_size": 2}})
    ds = PatchDataset([_case("l", 1.0, True)], cfg, length=4, unlabelled=[_case("u", 7.0, False)], per_item=3)
    item = ds[0]
    assert item["image"].shape == (1, 8, 8, 8) and item["label"].shape == (1, 8, 8, 8)
    assert item["u_image"].shape == (3, 1, 8, 8, 8)
    assert torch.all(item["image"] == 1.0) and torch.all(item["u_image"] == 7.0)  # never mixed up
    assert "u_image" not in PatchDataset([_case("l", 1.0, True)], cfg, length=4)[0]


def test_split_is_seeded_and_folds_partition_the_cases():
    names = [f"c{i}" for i in range(10)]
    cfg = from_dict({"data": {"val_fraction": 0.2}})
    a, b = make_split(names, cfg), make_split(list(reversed(names)), cfg)
    assert a == b and len(a["val"]) == 2 and sorted(a["train"] + a["val"]) == names
    folds = make_split(names, from_dict({"data": {"folds": 5, "fold": 1}}))
    assert sorted(n for fold in folds["all_folds"] for n in fold) == names and folds["val"] == folds["all_folds"][1]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("ph"), cases=3, seed=2, test_fraction=0.0)


def test_setup_loads_labelled_validation_and_unlabelled_cases(phantoms):
    manifest = load_manifest(phantoms)
    names = [c.name for c in manifest.training]
    cfg = from_dict({"data": {"patch_size": [16, 16, 16], "target_spacing": [4.0, 4.0, 4.0]},
                     "trainer": {"progress_bar": False}})
    plan = PreprocessingPlan([4.0, 4.0, 4.0], "zscore", channel_names=["MRI"], labels=manifest.labels)
    split = {"train": names[:2], "val": names[2:], "labelled": names[:1]}
    unlabelled = [Case(names[1], list(manifest.case(names[1]).images), None)]
    dm = SegmentationDataModule(cfg, manifest, plan, split, cache_dir=None, unlabelled=unlabelled)
    dm.setup("fit")
    assert [c["name"] for c in dm.train_cases] == names[:1] and [c["name"] for c in dm.val_cases] == names[2:]
    assert [c["name"] for c in dm.unlabelled_cases] == [names[1]]
    assert dm.unlabelled_cases[0]["label"].max() == 0  # its label is hidden, not loaded
    assert dm.train_cases[0]["label"].max() > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["u_image"].shape == (2, 1, 1, 16, 16, 16)


def test_an_image_with_other_channels_is_named(phantoms, tmp_path):
    manifest = load_manifest(phantoms)
    cfg = from_dict({"data": {"patch_size": [16, 16, 16]}, "trainer": {"progress_bar": False}})
    plan = PreprocessingPlan([4.0, 4.0, 4.0], "zscore", channel_names=["T1", "T2"], labels=manifest.labels)
    name = manifest.training[0].name
    dm = SegmentationDataModule(cfg, manifest, plan, {"train": [name], "val": []}, cache_dir=None)
    with pytest.raises(ValueError, match=rf"case '{name}' has 1 channel\(s\), the dataset has 2 \(T1, T2\)"):
        dm.setup("fit")
