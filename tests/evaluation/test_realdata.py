"""Real CT (TotalSegmentator label map, ../shared/data/ct_abdomen_sample) against a
perturbed copy: every output is written, and the distances agree with surface-distance."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.io import read_label, write_label
from medseg.evaluation.evaluate import evaluate

pytestmark = [pytest.mark.realdata, pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")]
LIVER, SPLEEN, KIDNEY_RIGHT = 5, 1, 2


def ct_sample() -> Path:
    """``$MEDSEG_DATA/ct_abdomen_sample`` or ``../shared/data/...``; skip when absent."""
    env = os.environ.get("MEDSEG_DATA")
    data = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    sample = data / "ct_abdomen_sample"
    if not (sample / "seg_totalsegmentator.nii.gz").is_file():
        pytest.skip(f"real data not found at {sample} (set MEDSEG_DATA)")
    return sample


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sample = ct_sample()
    root = tmp_path_factory.mktemp("ct")
    ref = read_label(sample / "seg_totalsegmentator.nii.gz")
    arr = ref.array
    pred = arr.copy()
    pred[ndimage.binary_dilation(arr == LIVER) & (arr == 0)] = LIVER  # liver grown by a voxel
    pred[(arr == SPLEEN) & ~ndimage.binary_erosion(arr == SPLEEN)] = 0  # spleen shrunk
    pred[arr == KIDNEY_RIGHT] = 0  # right kidney missed
    write_label(root / "pred" / "ct.nii.gz", pred, ref)
    names = json.loads((sample / "labels.json").read_text(encoding="utf-8"))["total"]
    manifest = {"name": "ct_abdomen_sample", "modality": {"0": "CT"}, "labels": {"0": "background", **names},
                "training": [{"image": str(sample / "ct.nii.gz"), "label": str(sample / "seg_totalsegmentator.nii.gz")}]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return {"root": root, "pred": root / "pred", "manifest": root / "dataset.json", "sample": sample}


def test_ct_sample_against_perturbed_copy(ct_case: dict[str, Path], sd: ModuleType) -> None:
    out = ct_case["root"] / "out"
    summary = evaluate(ct_case["pred"], ct_case["manifest"], out, progress=False, n_boot=200)
    assert summary["status"] == "ok" and summary["cases"]["evaluated"] == 1
    for name in ("metrics.csv", "cases.csv", "summary.json", "report.html", "report.md"):
        assert (out / name).is_file()
    with (out / "metrics.csv").open() as fh:
        rows = {r["structure"]: r for r in csv.DictReader(fh)}
    assert rows["kidney_right"]["empty_rule"] == "missed" and float(rows["kidney_right"]["dice"]) == 0
    assert float(rows["liver"]["vol_pred_ml"]) > float(rows["liver"]["vol_ref_ml"])
    assert float(rows["spleen"]["vol_pred_ml"]) < float(rows["spleen"]["vol_ref_ml"])
    assert float(rows["stomach"]["dice"]) == 1.0 and float(rows["stomach"]["hd"]) == 0.0
    assert rows["brain"]["empty_rule"] == "both_empty"  # named in labels.json, absent from this CT
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| liver |" in markdown and "| brain |" not in markdown  # absent everywhere: named in a note
    assert "are left out of the table: " in markdown and "brain" in markdown
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('class="overlay"') >= 2  # the worst structures over the scan
    ref = read_label(ct_case["sample"] / "seg_totalsegmentator.nii.gz")
    pred = read_label(ct_case["pred"] / "ct.nii.gz")
    for name, label in (("liver", LIVER), ("spleen", SPLEEN)):
        d = sd.compute_surface_distances(ref.array == label, pred.array == label, ref.spacing)
        a_r, a_p = d["surfel_areas_gt"], d["surfel_areas_pred"]
        assd = (np.dot(d["distances_gt_to_pred"], a_r) + np.dot(d["distances_pred_to_gt"], a_p)) / (a_r.sum() + a_p.sum())
        row = rows[name]
        assert float(row["hd"]) == pytest.approx(sd.compute_robust_hausdorff(d, 100), abs=1e-3)
        assert float(row["hd95"]) == pytest.approx(sd.compute_robust_hausdorff(d, 95), abs=1e-3)
        assert float(row["assd"]) == pytest.approx(assd, abs=1e-3)
        assert float(row["nsd"]) == pytest.approx(sd.compute_surface_dice_at_tolerance(d, 1.0), abs=1e-4)
        assert float(row["dice"]) == pytest.approx(sd.compute_dice_coefficient(ref.array == label, pred.array == label))
