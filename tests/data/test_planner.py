import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import from_dict
from medseg.data.fingerprint import Fingerprint, compute_fingerprint
from medseg.data.manifest import load_manifest
from medseg.data.planner import propose_mirror_axes, propose_patch, propose_pipeline


def write_ct_dataset(root, spacings):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    rng = np.random.default_rng(0)
    for i, sp in enumerate(spacings):
        img = rng.normal(40, 10, size=(20, 16, 12)).astype(np.float32)
        img[:2] = -1000
        lab = np.zeros((20, 16, 12), np.uint8)
        lab[5:15, 4:12, 3:9] = 1
        img[lab == 1] = rng.normal(200, 20, size=int(lab.sum()))
        aff = np.diag([-sp[0], sp[1], sp[2], 1.0])  # LAS
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps({"name": "ct", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"}, "training": training})
    )
    return root / "dataset.json"


def test_propose_patch_divisible_and_within_budget():
    assert propose_patch([35, 50, 36], levels=4) == [40, 56, 40]
    big = propose_patch([300, 300, 200], levels=5, budget=96**3)
    assert all(s % 16 == 0 for s in big) and np.prod(big) <= 96**3


@pytest.mark.realdata
def test_plan_on_real_hippocampus(shared_data):
    manifest = load_manifest(shared_data / "Task04_Hippocampus" / "dataset.json")
    manifest.training = manifest.training[:20]
    proposal = propose_pipeline(manifest)
    assert proposal["data"]["normalization"] == "zscore"
    assert proposal["data"]["target_spacing"] == [1.0, 1.0, 1.0]
    assert proposal["data"]["patch_size"][0] >= 32


def _fingerprint_with(offsets, spacing=(1.0, 1.0, 1.0)):
    """Cases with structure 1 at a random point and structure 2 at ``-offset`` from it."""
    rng = np.random.default_rng(0)
    fp = Fingerprint(spacings=[list(spacing)] * len(offsets), shapes=[[40, 40, 40]] * len(offsets))
    for off in offsets:
        a = rng.normal(0, 5, 3)
        fp.centroids.append({1: list(a), 2: list(a - np.asarray(off, dtype=float))})
    return fp


def test_mirror_axes_leave_out_axes_with_a_consistent_order():
    rng = np.random.default_rng(1)
    # structure 1 lies 18 mm anterior (+Y) and 7 mm superior of structure 2 in every case;
    # left-right offsets of +-2 mm with random sign: only X may be mirrored (hippocampus-like)
    hippo = [(rng.choice([-2.0, 2.0]), 18 + rng.normal(), 7 + rng.normal()) for _ in range(20)]
    assert propose_mirror_axes(_fingerprint_with(hippo)) == [0]
    # a consistent but minor left-right offset (10 % of the separation) is no reason to stop mirroring X
    lateral = [(2.0, 18 + rng.normal(), 0.0) for _ in range(20)]
    assert propose_mirror_axes(_fingerprint_with(lateral)) == [0, 2]
    # no consistent order (the sign flips from case to case): every axis
    random = [tuple(rng.choice([-1.0, 1.0], 3) * 10) for _ in range(20)]
    assert propose_mirror_axes(_fingerprint_with(random)) == [0, 1, 2]
    # ordered, but by less than two voxels of a 3 mm axis: mirrored
    assert propose_mirror_axes(_fingerprint_with([(0, 0, 5.0)] * 10, spacing=(1.0, 1.0, 3.0))) == [0, 1, 2]
    # too few cases to call an order
    assert propose_mirror_axes(_fingerprint_with([(0, 20.0, 0)] * 2)) == [0, 1, 2]


def test_fingerprint_centroids_are_world_coordinates(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(2.0, 1.0, 3.0)]))
    fp = compute_fingerprint(manifest.training)
    # label box [5:15, 4:12, 3:9] -> centre voxel (9.5, 7.5, 5.5); affine diag(-2, 1, 3)
    np.testing.assert_allclose(fp.centroids[0][1], [-19.0, 7.5, 16.5])


def test_plan_proposes_left_right_mirroring_for_hippocampus():
    dataset = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "Task04_Hippocampus" / "dataset.json"
    if not dataset.exists():
        pytest.skip("real hippocampus data not present")
    proposal = propose_pipeline(load_manifest(dataset))
    # the head (Anterior) lies ~18 mm anterior and ~7 mm superior of the tail in every case
    assert proposal["data"]["mirror_axes"] == [0]


def test_proposal_carries_the_benchmark_recipe(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(1.0, 1.0, 3.0)] * 3))
    proposal = propose_pipeline(manifest)
    cfg = from_dict(proposal)
    # the benchmark's thin DynUNet with deep supervision, precision chosen per machine
    assert cfg.model.name == "dynunet" and cfg.model.deep_supervision
    assert cfg.model.channels == [8, 16, 32, 64, 128] and cfg.model.strides == [2, 2, 2, 1]
    assert cfg.trainer.precision == "auto" and cfg.data.augmentation == "limited_data"
    assert cfg.data.batch_size == 2
    assert all(s % 8 == 0 for s in cfg.data.patch_size)
    assert "mirror_axes" not in proposal["data"]  # one structure: every axis may be mirrored
