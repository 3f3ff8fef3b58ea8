"""Per-structure and per-case metrics on tiny label maps, counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.evaluation.metrics import (
    COLUMNS,
    add_absent_structures,
    confusion_matrix,
    evaluate_arrays,
    tolerance_for,
)

STRUCTURES = {1: "a", 2: "b", 3: "c", 4: "d"}
SPACING = (1.0, 2.0, 3.0)  # 6 mm^3 voxels


def _maps() -> tuple[np.ndarray, np.ndarray]:
    """Label 1: 4 reference voxels, 2 of them predicted, plus 1 false-positive voxel.
    Label 2: reference only (missed). Label 3: prediction only. Label 4: absent."""
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:2, 0:2, 0] = 1
    pred[0:2, 0, 0] = 1
    pred[3, 3, 3] = 1
    ref[3, 0, 0] = 2
    pred[0, 3, 0] = 3
    return ref, pred


def _rows(result):  # type: ignore[no-untyped-def]
    return {r.structure: r for r in result.structures}


def test_overlap_volumes_and_counts_by_hand() -> None:
    ref, pred = _maps()
    result = evaluate_arrays(ref, pred, SPACING, STRUCTURES, case="x")
    a = _rows(result)["a"]
    assert (a.tp, a.fp, a.fn) == (2, 1, 2)
    assert a.dice == pytest.approx(4 / 7) and a.iou == pytest.approx(2 / 5)
    assert a.vol_ref_ml == pytest.approx(4 * 6 / 1000) and a.vol_pred_ml == pytest.approx(3 * 6 / 1000)
    assert a.rel_vol_diff == pytest.approx(-0.25)
    assert a.empty_rule == "present" and a.case == "x" and a.label == 1
    assert a.hd > 0 and a.hd95 <= a.hd and 0 < a.nsd < 1
    assert list(a.as_row()) == list(COLUMNS)


def test_empty_rules_under_each_policy() -> None:
    ref, pred = _maps()
    diagonal = math.sqrt(4**2 + 8**2 + 12**2)
    nan = _rows(evaluate_arrays(ref, pred, SPACING, STRUCTURES))
    assert [nan[s].empty_rule for s in "bcd"] == ["missed", "false_positive", "both_empty"]
    assert nan["b"].dice == 0 and math.isnan(nan["b"].hd95) and nan["b"].nsd == 0
    assert nan["c"].iou == 0 and math.isnan(nan["c"].assd) and math.isnan(nan["c"].rel_vol_diff)
    assert math.isnan(nan["d"].dice) and math.isnan(nan["d"].hd)
    assert nan["b"].rel_vol_diff == -1.0
    reloaded = _rows(evaluate_arrays(ref, pred, SPACING, STRUCTURES, empty_policy="reloaded"))
    assert (reloaded["d"].dice, reloaded["d"].nsd, reloaded["d"].hd95) == (1.0, 1.0, 0.0)
    assert math.isnan(reloaded["b"].hd)
    worst = _rows(evaluate_arrays(ref, pred, SPACING, STRUCTURES, empty_policy="worst"))
    assert worst["b"].hd95 == pytest.approx(diagonal) and worst["c"].assd == pytest.approx(diagonal)
    assert worst["b"].dice == 0.0 and worst["d"].boundary_iou == 1.0


def test_confusion_matrix_and_case_metrics_by_hand() -> None:
    ref, pred = _maps()
    result = evaluate_arrays(ref, pred, SPACING, STRUCTURES)
    expected = np.zeros((5, 5), int)
    expected[1, 1], expected[1, 0], expected[2, 0], expected[0, 1], expected[0, 3] = 2, 2, 1, 1, 1
    expected[0, 0] = 64 - 5 - 2
    np.testing.assert_array_equal(result.confusion, expected)
    assert result.classes == ["background", "a", "b", "c", "d"]
    v = result.values
    assert v["pixel_accuracy"] == pytest.approx(59 / 64)
    iou_bg = 57 / 62
    assert v["mean_iou"] == pytest.approx((iou_bg + 0.4 + 0 + 0) / 4)
    assert v["fw_iou"] == pytest.approx(59 / 64 * iou_bg + 4 / 64 * 0.4)
    assert v["mean_dice"] == pytest.approx((4 / 7 + 0 + 0) / 3)
    assert result.worst_structure in {"b", "c"}


def test_unknown_label_counts_as_background() -> None:
    ref, pred = _maps()
    pred2 = pred.copy()
    pred2[2, 2, 2] = 9
    a, b = evaluate_arrays(ref, pred, SPACING, STRUCTURES), evaluate_arrays(ref, pred2, SPACING, STRUCTURES)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert [r.as_row() for r in a.structures] == [r.as_row() for r in b.structures]


def test_confusion_matrix_direct() -> None:
    ref = np.array([0, 1, 1, 2, 7], np.uint8).reshape(5, 1, 1)
    pred = np.array([1, 1, 2, 2, 0], np.uint8).reshape(5, 1, 1)
    cm = confusion_matrix(ref, pred, [0, 1, 2])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_per_structure_tolerance() -> None:
    ref, pred = _maps()
    rows = _rows(evaluate_arrays(ref, pred, SPACING, STRUCTURES, nsd_tolerance={0: 1.0, 1: 20.0}))
    assert rows["a"].nsd_tolerance_mm == 20.0 and rows["b"].nsd_tolerance_mm == 1.0
    assert rows["a"].nsd == 1.0  # every surfel is within 20 mm of the other surface
    assert tolerance_for(2.5, 7) == 2.5
    with pytest.raises(ValueError, match="no NSD tolerance for label 3"):
        tolerance_for({1: 1.0}, 3)


def test_input_checks() -> None:
    ref, pred = _maps()
    with pytest.raises(ValueError, match="same 3D shape"):
        evaluate_arrays(ref, pred[:3], SPACING, STRUCTURES)
    with pytest.raises(ValueError, match="background"):
        evaluate_arrays(ref, pred, SPACING, {0: "bg", 1: "a"})


def test_add_absent_structures() -> None:
    ref, pred = _maps()
    partial = evaluate_arrays(ref, pred, SPACING, {1: "a", 3: "c"})
    full = add_absent_structures(partial, {1: "a", 3: "c", 5: "e"}, 1.0, "reloaded")
    rows = _rows(full)
    assert rows["e"].empty_rule == "both_empty" and rows["e"].dice == 1.0
    assert full.classes == ["background", "a", "c", "e"]
    assert full.confusion.shape == (4, 4) and full.confusion[3].sum() == 0
    np.testing.assert_array_equal(full.confusion[:3, :3], partial.confusion)
    assert full.values["pixel_accuracy"] == partial.values["pixel_accuracy"]
