"""The whole job through the CLI on a tiny phantom dataset: synth -> check -> train -> predict -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main

pytestmark = pytest.mark.slow


def test_cli_end_to_end(tmp_path: Path, capsys):
    data, run, preds, ev = tmp_path / "data", tmp_path / "run", tmp_path / "preds", tmp_path / "eval"
    assert main(["synth", "--output", str(data), "--cases", "6", "--seed", "1"]) == 0
    manifest = data / "dataset.json"
    assert main(["check", str(manifest)]) == 0
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n"
        "model:\n  channels: [4, 8]\n"
        "trainer:\n  max_epochs: 2\n  steps_per_epoch: 3\n  val_every_n_epochs: 1\n  progress_bar: false\n"
    )
    assert main(["train", str(pipeline), "--data", str(manifest), "--output", str(run)]) == 0
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert main(["predict", "--model", str(run), "--input", str(data / "imagesTs"), "--output", str(preds)]) == 0
    test_images = sorted((data / "imagesTs").glob("*.nii.gz"))
    assert test_images
    for img in test_images:
        pred = preds / img.name
        a, b = nib.load(img), nib.load(pred)
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.affine, b.affine)
        assert np.asarray(b.dataobj).dtype == np.uint8
    log = list(csv.DictReader((preds / "predict_log.csv").open()))
    assert {r["status"] for r in log} == {"ok"} and len(log) == len(test_images)
    # every test case predicted and paired with its reference: no problem to report, exit 0
    assert main(["evaluate", "--pred", str(preds), "--ref", str(manifest), "--output", str(ev)]) == 0
    rows = list(csv.DictReader((ev / "metrics.csv").open()))
    assert {"case", "label", "structure", "dice", "iou", "hd95", "assd", "nsd", "vol_ref_ml", "vol_pred_ml"} <= set(rows[0])
    assert {r["structure"] for r in rows} == {"organ", "lesion", "vessel"}
    assert len(rows) == 3 * len(test_images)
    summary = json.loads((ev / "summary.json").read_text(encoding="utf-8"))
    assert summary["cases"]["evaluated"] == len(test_images) and not summary["problems"]
    assert set(summary["structures"]) == {"organ", "lesion", "vessel"}
    # a missing prediction is a problem the exit status reports
    (preds / test_images[0].name).unlink()
    assert main(["evaluate", "--pred", str(preds), "--ref", str(manifest), "--output", str(tmp_path / "ev2")]) == 1
    assert (ev / "report.html").exists() and (ev / "report.md").exists()
