"""Where unlabelled images come from, and the label budget of a learning curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data.io import write_volume
from medseg.data.manifest import ManifestError, load_manifest
from medseg.data.unlabelled import (
    every_image,
    image_folder_manifest,
    label_budget,
    labelled_and_unlabelled,
    load_images,
    unlabelled_pool,
)


def _img(path: Path, channels: int = 1) -> Path:
    shape = (6, 6, 6) if channels == 1 else (channels, 6, 6, 6)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(path, np.zeros(shape, np.float32), np.eye(4))
    return path


def test_image_folder_is_a_label_less_manifest(tmp_path):
    for n in ("b", "a"):
        _img(tmp_path / "imgs" / f"{n}.nii.gz", channels=2)
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    m = load_images(tmp_path / "imgs")
    assert [c.name for c in m.training] == ["a", "b"] and all(c.label is None for c in m.training)
    assert m.channel_names == ["channel_0", "channel_1"] and m.labels == {"background": 0}
    with pytest.raises(ManifestError, match="no NIfTI images"):
        image_folder_manifest(tmp_path)


def test_decathlon_test_paths_and_csv_rows_without_label_are_unlabelled(tmp_path):
    for n in ("t1", "t2", "u1", "h1"):
        _img(tmp_path / f"{n}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "a"},
        "training": [{"image": "t1.nii.gz", "label": "t1.nii.gz"}, {"image": "t2.nii.gz", "label": "t2.nii.gz"}],
        "test": ["u1.nii.gz", {"image": "h1.nii.gz", "label": "h1.nii.gz"}]}))
    labelled, unlabelled = labelled_and_unlabelled(load_manifest(tmp_path / "dataset.json"))
    # a labelled test case is an evaluation hold-out: in neither list
    assert [c.name for c in labelled] == ["t1", "t2"] and [c.name for c in unlabelled] == ["u1"]
    (tmp_path / "m.csv").write_text("image,label\nt1.nii.gz,t1.nii.gz\nu1.nii.gz,\n")
    labelled, unlabelled = labelled_and_unlabelled(load_manifest(tmp_path / "m.csv"))
    assert [c.name for c in labelled] == ["t1"] and [c.name for c in unlabelled] == ["u1"]


def test_every_image_deduplicates_files_and_renames_clashes(tmp_path):
    _img(tmp_path / "x" / "a.nii.gz")
    _img(tmp_path / "y" / "a.nii.gz")
    mx, my = image_folder_manifest(tmp_path / "x"), image_folder_manifest(tmp_path / "y")
    cases = every_image([mx, my, mx])
    assert [c.name for c in cases] == ["a", "a-2"] and all(c.label is None for c in cases)


def test_unlabelled_pool_never_holds_a_labelled_training_image(tmp_path):
    for n in ("t1", "t2", "u1"):
        _img(tmp_path / "d" / f"{n}.nii.gz")
    (tmp_path / "d" / "m.csv").write_text("image,label\nt1.nii.gz,t1.nii.gz\nt2.nii.gz,t2.nii.gz\nu1.nii.gz,\n")
    manifest = load_manifest(tmp_path / "d" / "m.csv")
    labelled, _ = labelled_and_unlabelled(manifest)
    _img(tmp_path / "extra" / "e1.nii.gz")
    # the folder d itself as an extra source: t1/t2 are labelled training images -> dropped
    pool = unlabelled_pool(manifest, [str(tmp_path / "extra"), str(tmp_path / "d" / "m.csv")], labelled)
    assert sorted(c.name for c in pool) == ["e1", "u1"]


def test_label_budget_is_seeded_nested_and_bounded():
    names = [f"c{i:02d}" for i in range(30)]
    l10, u10 = label_budget(names, 10, seed=1)
    l20, _ = label_budget(names, 20, seed=1)
    assert len(l10) == 10 and set(l10) <= set(l20) and sorted(l10 + u10) == names
    assert label_budget(names, 10, seed=1) == (l10, u10) and label_budget(names, 10, seed=2)[0] != l10
    assert label_budget(names, None, seed=1) == (names, [])
    with pytest.raises(ValueError, match="labelled_cases: 31 is more than the 30 cases"):
        label_budget(names, 31, seed=1)
