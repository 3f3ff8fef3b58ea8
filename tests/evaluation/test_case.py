"""One case from files: unreadable, 4D, non-integer and mismatched inputs fail clearly;
unknown labels warn; resampling puts a prediction back on the reference grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.io import write_volume
from medseg.evaluation.case import Settings, evaluate_case, resample_nearest
from medseg.evaluation.inputs import CaseInput
from medseg.evaluation.policy import EMPTY_POLICIES

SETTINGS = Settings({1: "organ", 2: "lesion"}, 1.0, EMPTY_POLICIES["nan"])
AFFINE = np.diag([1.0, 1.5, 2.0, 1.0])


def _labels() -> np.ndarray:
    arr = np.zeros((10, 9, 8), np.uint8)
    arr[2:7, 2:6, 2:6] = 1
    arr[4:6, 3:5, 3:5] = 2
    return arr


def _case(tmp_path: Path, pred: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> CaseInput:
    write_volume(tmp_path / "ref.nii.gz", _labels(), AFFINE)
    if pred is not None:
        write_volume(tmp_path / "pred.nii.gz", pred, affine)
    return CaseInput("case1", tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")


def test_exact_prediction(tmp_path: Path) -> None:
    outcome = evaluate_case(_case(tmp_path, _labels()), SETTINGS)
    assert outcome.status == "ok" and not outcome.problems
    assert outcome.metrics is not None
    assert [r.dice for r in outcome.metrics.structures] == [1.0, 1.0]
    assert outcome.label_ids == [1, 2]


def test_unreadable_file(tmp_path: Path) -> None:
    case = _case(tmp_path)
    case.pred.write_bytes(b"this is not a NIfTI file")
    outcome = evaluate_case(case, SETTINGS)
    assert outcome.status == "failed" and outcome.metrics is None
    assert outcome.problems[0].startswith("case1: prediction ")
    assert str(case.pred) in outcome.problems[0] and "unreadable" in outcome.problems[0]


def test_non_integer_float_labels(tmp_path: Path) -> None:
    pred = _labels().astype(np.float32)
    pred[3, 3, 3] = 0.5
    outcome = evaluate_case(_case(tmp_path, pred), SETTINGS)
    assert outcome.status == "failed"
    assert "non-integer values (e.g. 0.5)" in outcome.problems[0]
    # integer-valued floats are fine
    assert evaluate_case(_case(tmp_path, _labels().astype(np.float32)), SETTINGS).status == "ok"


def test_4d_label_map(tmp_path: Path) -> None:
    case = _case(tmp_path)
    nib.save(nib.Nifti1Image(np.stack([_labels()] * 2, axis=-1), AFFINE), str(case.pred))
    outcome = evaluate_case(case, SETTINGS)
    assert outcome.status == "failed"
    assert "case1: prediction" in outcome.problems[0] and "expected a 3D volume" in outcome.problems[0]


def test_geometry_mismatch_names_both_headers(tmp_path: Path) -> None:
    case = _case(tmp_path, _labels(), affine=np.diag([2.0, 1.5, 2.0, 1.0]))
    outcome = evaluate_case(case, SETTINGS)
    assert outcome.status == "failed"
    message = outcome.problems[0]
    assert message.startswith("case1: prediction and reference geometry differ")
    assert str(case.pred) in message and str(case.ref) in message
    assert "spacing (2, 1.5, 2) mm" in message and "spacing (1, 1.5, 2) mm" in message
    assert "--resample-pred" in message


def test_resample_pred_flipped_grid(tmp_path: Path) -> None:
    # The prediction stored flipped along X with the matching affine: same world content.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, 9
    case = _case(tmp_path, _labels()[::-1].copy(), affine=AFFINE @ flip)
    assert evaluate_case(case, SETTINGS).status == "failed"
    outcome = evaluate_case(case, Settings(SETTINGS.structures, 1.0, SETTINGS.empty_policy, resample_pred=True))
    assert outcome.status == "ok" and outcome.resampled
    assert outcome.metrics is not None
    assert [r.dice for r in outcome.metrics.structures] == [1.0, 1.0]


def test_resample_nearest_downsampled() -> None:
    from medseg.data.io import Volume

    fine = Volume(np.zeros((8, 8, 8), np.uint8), np.eye(4))
    coarse = np.zeros((4, 4, 4), np.uint8)
    coarse[1, 1, 1] = 3
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = 0.25  # no nearest-neighbour ties: fine voxel i is at (i - 0.25) / 2
    out = resample_nearest(Volume(coarse, coarse_affine), fine)
    assert out.shape == (8, 8, 8) and out.dtype == np.uint8
    assert np.argwhere(out == 3).tolist() == [[a, b, c] for a in (2, 3) for b in (2, 3) for c in (2, 3)]


def test_unknown_label_warns(tmp_path: Path) -> None:
    pred = _labels()
    pred[0, 0, 0] = 7
    outcome = evaluate_case(_case(tmp_path, pred), SETTINGS)
    assert outcome.status == "warning" and outcome.metrics is not None
    assert "prediction has label 7 (1 voxels), which is not in the label set" in outcome.problems[0]
    assert [r.dice for r in outcome.metrics.structures] == [1.0, 1.0]


def test_names_from_the_data_without_a_label_set(tmp_path: Path) -> None:
    outcome = evaluate_case(_case(tmp_path, _labels()), Settings(None, 1.0, EMPTY_POLICIES["nan"]))
    assert outcome.metrics is not None
    assert [r.structure for r in outcome.metrics.structures] == ["label_1", "label_2"]


@pytest.mark.parametrize("role", ["reference", "prediction"])
def test_missing_file(tmp_path: Path, role: str) -> None:
    case = _case(tmp_path, _labels())
    (case.ref if role == "reference" else case.pred).unlink()
    outcome = evaluate_case(case, SETTINGS)
    assert outcome.status == "failed" and f"case1: {role}" in outcome.problems[0]
    assert "file not found" in outcome.problems[0]


def test_fortran_ordered_files_give_the_c_order_metrics(tmp_path: Path) -> None:
    """NIfTI files read as F-ordered arrays are evaluated as transposed views with the spacing
    reversed; every metric must equal the C-order computation on the (X, Y, Z) arrays."""
    from medseg.data.io import read_label
    from medseg.evaluation.case import c_order
    from medseg.evaluation.metrics import evaluate_arrays

    rng = np.random.default_rng(1)
    pred = _labels()
    pred[np.roll(pred == 1, 1, axis=0) & (pred == 0)] = 1  # organ shifted along X (1 mm)
    pred[rng.random(pred.shape) < 0.02] = 2
    case = _case(tmp_path, pred)
    assert read_label(case.ref).array.flags.f_contiguous  # what makes the transposed path run
    outcome = evaluate_case(case, SETTINGS)
    assert outcome.metrics is not None
    expected = evaluate_arrays(_labels(), pred, (1.0, 1.5, 2.0), SETTINGS.structures, 1.0, "nan", case="case1")
    for got, want in zip(outcome.metrics.structures, expected.structures, strict=True):
        for key, value in want.as_row().items():
            if isinstance(value, float):
                assert getattr(got, key) == pytest.approx(value, rel=1e-12, nan_ok=True), key
            else:
                assert getattr(got, key) == value, key
    np.testing.assert_array_equal(outcome.metrics.confusion, expected.confusion)
    ref_f = np.asfortranarray(_labels())
    r, p, spacing = c_order(ref_f, np.asfortranarray(pred), (1.0, 1.5, 2.0))
    assert r.flags.c_contiguous and r.shape == (8, 9, 10) and spacing == (2.0, 1.5, 1.0)
    assert np.array_equal(p, pred.T)
    r, p, spacing = c_order(ref_f, pred, (1.0, 1.5, 2.0))  # mixed orders: copied to C order
    assert p.flags.c_contiguous and np.array_equal(p, pred)
    assert r.flags.c_contiguous and r.shape == (10, 9, 8) and spacing == (1.0, 1.5, 2.0)
