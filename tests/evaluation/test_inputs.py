"""Finding and matching cases; NSD tolerance specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data.io import write_volume
from medseg.evaluation.inputs import EvaluationInputError, resolve_inputs, resolve_tolerances


def _write(folder: Path, *names: str) -> None:
    for name in names:
        write_volume(folder / name, np.zeros((3, 3, 3), np.uint8), np.eye(4))


def test_matching_lists_unmatched_cases(tmp_path: Path) -> None:
    _write(tmp_path / "ref", "a.nii.gz", "b.nii.gz", "c.nii.gz")
    _write(tmp_path / "pred", "a.nii.gz", "b.nii.gz", "d.nii.gz", "a.nii")
    (tmp_path / "pred" / "predict_log.csv").write_text("case,status\n")
    (tmp_path / "pred" / ".a.nii.gz.part.nii.gz").write_bytes(b"partial")
    found = resolve_inputs(tmp_path / "pred", tmp_path / "ref")
    assert [c.name for c in found.cases] == ["a", "b"]
    assert found.unmatched_pred == ["d"] and found.missing_pred == ["c"]
    assert found.structures is None
    text = "\n".join(found.problems)
    assert "d: prediction d.nii.gz has no reference" in text
    assert "c: reference has no prediction" in text
    assert "duplicate case 'a'" in text


def test_unusable_inputs(tmp_path: Path) -> None:
    with pytest.raises(EvaluationInputError, match="prediction folder not found"):
        resolve_inputs(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationInputError, match="no prediction files"):
        resolve_inputs(tmp_path / "empty", tmp_path)
    _write(tmp_path / "pred", "x1.nii.gz")
    _write(tmp_path / "ref", "y1.nii.gz")
    with pytest.raises(EvaluationInputError, match=r"no case names match.*x1.*y1"):
        resolve_inputs(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(EvaluationInputError, match="reference not found"):
        resolve_inputs(tmp_path / "pred", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvaluationInputError, match="not valid JSON"):
        resolve_inputs(tmp_path / "pred", tmp_path / "bad.json")


def test_manifest_reference(tmp_path: Path) -> None:
    _write(tmp_path / "data", "imagesTr/p1.nii.gz", "labelsTr/p1.nii.gz", "imagesTs/p2.nii.gz")
    manifest = {
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "training": [{"image": "imagesTr/p1.nii.gz", "label": "labelsTr/p1.nii.gz"}],
        "test": ["imagesTs/p2.nii.gz"],
    }
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(manifest))
    _write(tmp_path / "pred", "p1.nii.gz", "p2.nii.gz")
    found = resolve_inputs(tmp_path / "pred", tmp_path / "data")
    assert found.structures == {1: "liver", 2: "spleen"}
    assert [c.name for c in found.cases] == ["p1"]
    assert found.cases[0].image == (tmp_path / "data/imagesTr/p1.nii.gz").resolve()
    assert found.unmatched_pred == ["p2"]
    assert any("the manifest has no label for it" in p for p in found.problems)
    # --labels names the structures of a reference folder
    _write(tmp_path / "ref", "p1.nii.gz")
    named = resolve_inputs(tmp_path / "pred", tmp_path / "ref", labels=tmp_path / "data" / "dataset.json")
    assert named.structures == {1: "liver", 2: "spleen"}


def test_tolerances() -> None:
    structures = {1: "liver", 2: "spleen"}
    assert resolve_tolerances(2.0, structures) == 2.0
    spec = {"default": 1.5, "liver": 3.0, "2": 2.0, "label_7": 4.0}
    assert resolve_tolerances(spec, structures) == {0: 1.5, 1: 3.0, 2: 2.0, 7: 4.0}
    assert resolve_tolerances({"spleen": 2.0}, structures) == {0: 1.0, 2: 2.0}
    with pytest.raises(EvaluationInputError, match="Did you mean 'liver'"):
        resolve_tolerances({"livr": 2.0}, structures)
    with pytest.raises(EvaluationInputError, match="positive"):
        resolve_tolerances(0.0, structures)
    with pytest.raises(EvaluationInputError, match="positive"):
        resolve_tolerances({"liver": -1.0}, structures)


def test_a_split_without_predictions_is_not_missing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write(data, "imagesTr/t1.nii.gz", "labelsTr/t1.nii.gz", "imagesTr/t2.nii.gz", "labelsTr/t2.nii.gz",
           "imagesTs/s1.nii.gz", "labelsTs/s1.nii.gz", "imagesTs/s2.nii.gz", "labelsTs/s2.nii.gz")
    manifest = {
        "labels": {"0": "background", "1": "organ"},
        "training": [{"image": f"imagesTr/{n}.nii.gz", "label": f"labelsTr/{n}.nii.gz"} for n in ("t1", "t2")],
        "test": [{"image": f"imagesTs/{n}.nii.gz", "label": f"labelsTs/{n}.nii.gz"} for n in ("s1", "s2")],
    }
    (data / "dataset.json").write_text(json.dumps(manifest))
    _write(tmp_path / "pred", "s1.nii.gz", "s2.nii.gz")
    found = resolve_inputs(tmp_path / "pred", data / "dataset.json")
    assert found.missing_pred == [] and not found.problems
    assert found.unpredicted_splits == {"training": 2}
    # within a split that was predicted, a missing case is a problem
    (tmp_path / "pred" / "s2.nii.gz").unlink()
    _write(tmp_path / "pred", "t1.nii.gz")
    found = resolve_inputs(tmp_path / "pred", data / "dataset.json")
    assert found.missing_pred == ["s2", "t2"] and found.unpredicted_splits == {}


def test_tolerance_names_need_a_manifest() -> None:
    assert resolve_tolerances({"3": 2.0}, None) == {0: 1.0, 3: 2.0}
    with pytest.raises(EvaluationInputError, match="known only from a manifest"):
        resolve_tolerances({"liver": 2.0}, None)


def test_csv_reference_without_label_names(tmp_path: Path) -> None:
    _write(tmp_path / "data", "img.nii.gz", "lab.nii.gz")
    (tmp_path / "data" / "cases.csv").write_text("case,image,label,site\nc1,img.nii.gz,lab.nii.gz,A\n")
    _write(tmp_path / "pred", "c1.nii.gz")
    found = resolve_inputs(tmp_path / "pred", tmp_path / "data" / "cases.csv")
    assert found.structures is None and found.metadata_columns == ["site"]  # names come from the data
    with pytest.raises(EvaluationInputError, match="names no foreground structure"):
        resolve_inputs(tmp_path / "pred", tmp_path / "data" / "cases.csv", labels=tmp_path / "data" / "cases.csv")
