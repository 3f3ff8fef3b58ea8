"""Dataset fingerprint (canonical spacings/shapes, foreground intensities, centroids) and the plan
made from it (only what the pipeline leaves open is fingerprinted)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.config import from_dict
from medseg.data.fingerprint import Fingerprint, class_centroids, compute_fingerprint, make_plan
from medseg.data.io import write_volume
from medseg.data.manifest import Case, load_manifest
from tests.data.test_planner import write_ct_dataset


def test_fingerprint_median_spacing_and_ct_plan(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(1.0, 1.0, 3.0), (2.0, 1.0, 5.0), (1.5, 1.0, 4.0)]))
    fp = compute_fingerprint(manifest.training)
    assert fp.median_spacing == [1.5, 1.0, 4.0]
    assert fp.shapes == [[20, 16, 12]] * 3 and fp.median_shape == [20, 16, 12]
    plan = make_plan(from_dict({}), manifest, fp)
    assert plan.normalization == "ct" and plan.target_spacing == [1.5, 1.0, 4.0]
    lo, hi = plan.ct_clip
    assert 100 < lo < 200 < hi < 300  # foreground (liver) intensity percentiles, not air
    assert 180 < plan.ct_mean < 220 and 10 < plan.ct_std < 30


def test_spacings_and_shapes_are_in_ras_order_for_a_sagittal_stack(tmp_path):
    # array axes (A, S, L) with spacings (0.7, 3.0, 1.1): RAS order is (1.1, 0.7, 3.0)
    aff = np.array([[0, 0, -1.1, 12], [0.7, 0, 0, -4], [0, 3.0, 0, 9], [0, 0, 0, 1]])
    write_volume(tmp_path / "img.nii.gz", np.zeros((10, 20, 30), np.float32), aff)
    fp = compute_fingerprint([Case("c", [tmp_path / "img.nii.gz"], None)])
    assert fp.spacings == [pytest.approx([1.1, 0.7, 3.0])] and fp.shapes == [[30, 10, 20]]


def test_class_centroids_are_world_coordinates():
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:4, 0, 0] = 1  # voxel centre of mass (2.5, 0, 0)
    label[9, 9, 5] = 3
    aff = np.diag([-2.0, 1.0, 3.0, 1.0])
    aff[:3, 3] = [100.0, -50.0, 7.0]
    assert class_centroids(label, aff) == {1: [95.0, -50.0, 7.0], 3: [82.0, -41.0, 22.0]}


def test_unlabelled_images_give_whole_image_intensities(tmp_path):
    img = np.full((6, 6, 6), 7.0, np.float32)
    img[0] = -3.0
    write_volume(tmp_path / "u.nii.gz", img, np.eye(4))
    fp = compute_fingerprint([Case("u", [tmp_path / "u.nii.gz"], None)])
    assert set(fp.foreground_intensities) == {7.0, -3.0} and len(fp.foreground_intensities) == 216
    assert fp.centroids == []


def test_make_plan_reads_nothing_when_the_pipeline_fixes_spacing_and_normalisation(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(1.0, 1.0, 3.0)]))
    for case in manifest.training:  # any read would now fail
        case.images = [tmp_path / "missing.nii.gz"]
    cfg = from_dict({"data": {"target_spacing": [2.0, 2.0, 2.0], "normalization": "zscore"}})
    plan = make_plan(cfg, manifest)
    assert plan.target_spacing == [2.0, 2.0, 2.0] and plan.normalization == "zscore"
    assert plan.labels == {"background": 0, "liver": 1} and plan.ct_clip is None


def test_make_plan_keeps_an_explicit_ct_clip_and_normalises_over_the_clipped_values(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(1.0, 1.0, 3.0)]))
    fp = Fingerprint(spacings=[[1.0, 1.0, 3.0]], shapes=[[20, 16, 12]], foreground_intensities=[-500.0, 0.0, 100.0, 900.0])
    plan = make_plan(from_dict({"data": {"ct_clip": [0, 100]}}), manifest, fp)
    assert plan.normalization == "ct" and plan.ct_clip == [0.0, 100.0]
    assert plan.ct_mean == pytest.approx(50.0) and plan.ct_std == pytest.approx(50.0)  # over [0, 0, 100, 100]
