"""Pooled confusion matrix and its cohort scores, checked against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.evaluation.pooled import confusion_scores, pool_confusion, pooled_summary


def test_pooled_scores_by_hand() -> None:
    # case A: 10 voxels. background 6 (5 right, 1 -> organ); organ 4 (3 right, 1 -> bg)
    a = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    # case B: 20 voxels. background 10 right; organ 4 right; lesion 6 (2 right, 4 -> organ)
    b = np.array([[10, 0, 0], [0, 4, 0], [0, 4, 2]])
    pooled = pool_confusion([a, b], 3)
    np.testing.assert_array_equal(pooled, [[15, 1, 0], [1, 7, 0], [0, 4, 2]])
    s = confusion_scores(pooled)
    # accuracy: (15 + 7 + 2) / 30
    assert s["pixel_accuracy"] == pytest.approx(24 / 30)
    # IoU: bg 15 / (16 + 16 - 15) = 15/17; organ 7 / (8 + 12 - 7) = 7/13; lesion 2 / (6 + 2 - 2) = 2/6
    iou = [15 / 17, 7 / 13, 2 / 6]
    assert s["iou"] == pytest.approx(iou)
    assert s["mean_iou"] == pytest.approx(sum(iou) / 3)
    # frequency weights from the reference rows: 16/30, 8/30, 6/30
    assert s["fw_iou"] == pytest.approx(16 / 30 * iou[0] + 8 / 30 * iou[1] + 6 / 30 * iou[2])
    # pooled mean IoU (0.585) is not the mean of the per-case mean IoUs (0.657 and 0.611)
    per_case_miou = np.mean([confusion_scores(a)["mean_iou"], confusion_scores(b)["mean_iou"]])
    assert not math.isclose(per_case_miou, s["mean_iou"])


def test_absent_class_is_left_out_of_mean_iou() -> None:
    s = confusion_scores(np.array([[8, 0, 0], [0, 0, 0], [0, 0, 0]]))
    assert s["iou"] == [1.0, None, None] and s["mean_iou"] == 1.0 and s["fw_iou"] == 1.0
    assert math.isnan(confusion_scores(np.zeros((2, 2)))["pixel_accuracy"])


def test_mismatched_classes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        pool_confusion([np.eye(2, dtype=int)], 3)


def test_summary_entry() -> None:
    entry = pooled_summary([np.array([[3, 1], [0, 2]])], ["background", "organ"])
    assert entry["confusion"] == [[3, 1], [0, 2]] and entry["n_cases"] == 1
    assert entry["pixel_accuracy"] == pytest.approx(5 / 6) and entry["iou"] == pytest.approx([3 / 4, 2 / 3])


def test_evaluate_writes_the_pooled_matrix(evaluated: tuple[Path, dict]) -> None:
    out, summary = evaluated
    confusion = json.loads((out / "confusion_matrices.json").read_text(encoding="utf-8"))
    expected = sum(np.array(m) for m in confusion["cases"].values())
    np.testing.assert_array_equal(confusion["pooled"], expected)
    assert summary["pooled"]["confusion"] == expected.tolist()
    assert summary["pooled"]["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="confusion-heatmap"' in html and "Pooled over all cases" in html
    assert "boundary F1 mean ± sd" in html and "boundary IoU mean ± sd" in html
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"| pixel accuracy | {summary['pooled']['pixel_accuracy']:.4f} |" in md
    organ = summary["structures"]["organ"]["boundary_f1"]
    assert f"{organ['mean']:.3f} ± {organ['std']:.3f}" in md
