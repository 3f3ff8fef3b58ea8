import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.cli import main
from medseg.config import from_dict
from medseg.data.fingerprint import compute_fingerprint, make_plan
from medseg.data.manifest import load_manifest
from medseg.data.planner import propose_patch, propose_pipeline


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


def test_fingerprint_median_spacing_and_ct_plan(tmp_path):
    manifest = load_manifest(write_ct_dataset(tmp_path, [(1.0, 1.0, 3.0), (2.0, 1.0, 5.0), (1.5, 1.0, 4.0)]))
    fp = compute_fingerprint(manifest.training)
    assert fp.median_spacing == [1.5, 1.0, 4.0]
    plan = make_plan(from_dict({}), manifest, fp)
    assert plan.normalization == "ct" and plan.target_spacing == [1.5, 1.0, 4.0]
    lo, hi = plan.ct_clip
    assert 100 < lo < 200 < hi < 300  # foreground (liver) intensity percentiles, not air
    assert 180 < plan.ct_mean < 220 and 10 < plan.ct_std < 30


def test_propose_patch_divisible_and_within_budget():
    assert propose_patch([35, 50, 36], levels=4) == [40, 56, 40]
    big = propose_patch([300, 300, 200], levels=5, budget=96**3)
    assert all(s % 16 == 0 for s in big) and np.prod(big) <= 96**3


def test_plan_cli_writes_a_valid_pipeline(tmp_path):
    manifest = write_ct_dataset(tmp_path / "d", [(1.0, 1.0, 3.0)] * 2)
    out = tmp_path / "p.yaml"
    assert main(["plan", str(manifest), "--output", str(out)]) == 0
    proposal = yaml.safe_load(out.read_text(encoding="utf-8"))
    cfg = from_dict(proposal)
    assert cfg.data.normalization == "ct" and cfg.data.target_spacing == [1.0, 1.0, 3.0]
    assert out.read_text(encoding="utf-8").startswith("# proposed by `medseg plan")


@pytest.mark.realdata
def test_plan_on_real_hippocampus(shared_data):
    manifest = load_manifest(shared_data / "Task04_Hippocampus" / "dataset.json")
    manifest.training = manifest.training[:20]
    proposal = propose_pipeline(manifest)
    assert proposal["data"]["normalization"] == "zscore"
    assert proposal["data"]["target_spacing"] == [1.0, 1.0, 1.0]
    assert proposal["data"]["patch_size"][0] >= 32
