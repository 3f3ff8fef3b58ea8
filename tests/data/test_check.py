"""Tests for medseg.data.check and the ``medseg check`` command.

A tiny valid dataset (8x8x6 voxels, two channels) is written with nibabel; a broken copy
plants one problem per case, and each must be reported with the right case and kind.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.commands import check as check_cmd
from medseg.data.check import Problem, check_dataset, format_problems
from medseg.data.manifest import load_manifest

SHAPE = (8, 8, 6)
AFFINE = np.array(
    [[1.5, 0, 0, -5.0], [0, 1.5, 0, 3.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]], dtype=np.float64
)
LABELS = {"labels": {"1": "left", "2": "right"}, "channel_names": ["T1", "T2"]}


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def _label(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    lab[5:7, 5:7, 3:5] = 2
    return lab


def _write_case(root: Path, name: str, seed: int) -> dict[str, str]:
    _save(root / "images" / f"{name}_t1.nii.gz", _image(seed))
    _save(root / "images" / f"{name}_t2.nii.gz", _image(seed + 100))
    _save(root / "labels" / f"{name}.nii.gz", _label())
    return {
        "case": name, "image": f"images/{name}_t1.nii.gz", "image2": f"images/{name}_t2.nii.gz",
        "label": f"labels/{name}.nii.gz", "site": "A", "split": "train",
    }


def _write_csv(root: Path, rows: list[dict[str, str]], labels: dict | None = None) -> Path:
    path = root / "cases.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["case", "image", "image2", "label", "site", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "cases.labels.json").write_text(json.dumps(labels or LABELS))
    return path


@pytest.fixture
def valid_dataset(tmp_path: Path) -> Path:
    rows = [_write_case(tmp_path, f"c{i}", i) for i in range(3)]
    rows[2]["split"] = "test"
    return _write_csv(tmp_path, rows)


def _errors(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.case, p.kind) for p in problems if p.severity == "error"}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medseg")
    check_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_valid_dataset_has_no_problems(valid_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_dataset(valid_dataset) == []
    assert _cli(["check", str(valid_dataset)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 cases (2 training, 1 test), 2 labels (1 left, 2 right)" in out
    assert "['T1', 'T2']" in out


@pytest.fixture
def broken_dataset(tmp_path: Path) -> Path:
    """One planted problem per case (the case name says which)."""
    names = [
        "ok", "missing", "truncated", "shape", "affine", "unknown", "empty", "nan", "chgeom",
        "floatlab", "onechannel", "nolabel", "dup_a", "dup_b",
    ]
    rows = {n: _write_case(tmp_path, n, i) for i, n in enumerate(names)}
    (tmp_path / rows["missing"]["image2"]).unlink()
    trunc = tmp_path / rows["truncated"]["image"]  # noise compresses poorly: the cut hits voxels
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[: len(raw) // 2])
    trunc_label = tmp_path / rows["truncated"]["label"]  # tiny file: even the header is cut
    trunc_label.write_bytes(trunc_label.read_bytes()[:40])
    _save(tmp_path / rows["shape"]["label"], _label((8, 8, 5)))
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    _save(tmp_path / rows["affine"]["label"], _label(), shifted)
    lab = _label()
    lab[0, 0, 0] = 7
    _save(tmp_path / rows["unknown"]["label"], lab)
    _save(tmp_path / rows["empty"]["label"], np.zeros(SHAPE, np.uint8))
    img = _image(7)
    img[3, 3, 3] = np.nan
    _save(tmp_path / rows["nan"]["image"], img)
    other = AFFINE.copy()
    other[2, 2] = 3.0
    _save(tmp_path / rows["chgeom"]["image2"], _image(8), other)
    flab = _label().astype(np.float32)
    flab[4, 4, 4] = 0.5
    _save(tmp_path / rows["floatlab"]["label"], flab)
    rows["onechannel"]["image2"] = ""
    rows["nolabel"]["label"] = ""
    rows["dup_a"]["case"] = rows["dup_b"]["case"] = "dup"
    return _write_csv(tmp_path, list(rows.values()))


EXPECTED = {
    ("missing", "missing_file"),
    ("truncated", "unreadable"),
    ("shape", "shape_mismatch"),
    ("affine", "affine_mismatch"),
    ("unknown", "unknown_label"),
    ("empty", "empty_label"),
    ("nan", "nan_values"),
    ("chgeom", "channel_geometry"),
    ("floatlab", "non_integer_label"),
    ("onechannel", "wrong_channel_count"),
    ("nolabel", "missing_label"),
    ("dup", "duplicate_case"),
}


def test_every_planted_problem_is_reported(broken_dataset: Path) -> None:
    problems = check_dataset(broken_dataset)
    assert _errors(problems) == EXPECTED  # each one, with its case, and nothing spurious
    by_kind = {p.kind: p for p in problems}
    assert "[7]" in by_kind["unknown_label"].message
    assert "0 background, 1 left, 2 right" in by_kind["unknown_label"].message
    assert "0.5 mm" in by_kind["affine_mismatch"].message
    assert "(8, 8, 5)" in by_kind["shape_mismatch"].message
    assert "missing_t2.nii.gz" in by_kind["missing_file"].message
    unreadable = [p.message for p in problems if p.kind == "unreadable"]
    assert len(unreadable) == 2  # both truncated files of the case, not just the first
    assert "truncated_t1.nii.gz" in unreadable[0] and "labels/truncated.nii.gz" in unreadable[1]
    assert all("truncated or corrupt gzip" in m for m in unreadable)
    assert "1 NaN/inf voxels" in by_kind["nan_values"].message
    assert "0.5" in by_kind["non_integer_label"].message
    assert "1 channel(s)" in by_kind["wrong_channel_count"].message
    assert all(p.message and "\n" not in p.message for p in problems)


def test_workers_and_progress_give_the_same_problems(
    broken_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = check_dataset(broken_dataset)
    parallel = check_dataset(broken_dataset, progress=True, workers=2)
    assert parallel == serial
    assert "case" in capsys.readouterr().err  # the tqdm bar went to stderr


def test_check_dataset_rejects_zero_workers(valid_dataset: Path) -> None:
    with pytest.raises(ValueError, match="workers=0"):
        check_dataset(valid_dataset, workers=0)


def test_absent_structure_is_a_warning_and_exit_0(
    valid_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = {"labels": {"1": "left", "2": "right", "3": "tumour"}, "channel_names": ["T1", "T2"]}
    (valid_dataset.parent / "cases.labels.json").write_text(json.dumps(labels))
    problems = check_dataset(valid_dataset)
    assert [(p.case, p.kind, p.severity) for p in problems] == [("", "absent_structure", "warning")]
    assert "'tumour' (label 3)" in problems[0].message
    assert _cli(["check", str(valid_dataset)]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 1 warning in 0 of 3 cases" in out and "OK: 3 cases" in out


def test_constant_image_nan_label_and_4d_label(tmp_path: Path) -> None:
    rows = [_write_case(tmp_path, n, i) for i, n in enumerate(("flat", "nanlab", "lab4d"))]
    _save(tmp_path / rows[0]["image2"], np.zeros(SHAPE, np.float32))
    nanlab = _label().astype(np.float32)
    nanlab[0, 0, 0] = np.nan
    _save(tmp_path / rows[1]["label"], nanlab)
    _save(tmp_path / rows[2]["label"], np.stack([_label(), _label()], axis=-1))
    problems = check_dataset(_write_csv(tmp_path, rows))
    assert {(p.case, p.kind, p.severity) for p in problems} == {
        ("flat", "constant_image", "warning"),
        ("nanlab", "nan_values", "error"),
        ("lab4d", "label_dimensions", "error"),
    }
    assert "value 0 everywhere" in problems[0].message


def _decathlon(root: Path, training: list[dict[str, str]], modality: dict[str, str]) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps({
        "name": "t", "modality": modality, "labels": {"0": "background", "1": "left", "2": "right"},
        "training": training, "test": [],
    }))
    return path


def test_decathlon_4d_image_provides_its_channels(tmp_path: Path) -> None:
    _save(tmp_path / "imagesTr" / "a.nii.gz", _image(1, (*SHAPE, 2)))
    _save(tmp_path / "imagesTr" / "b.nii.gz", _image(2, (*SHAPE, 3)))
    for n in "ab":
        _save(tmp_path / "labelsTr" / f"{n}.nii.gz", _label())
    entries = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in "ab"]
    problems = check_dataset(_decathlon(tmp_path, entries, {"0": "FLAIR", "1": "T1w"}))
    assert _errors(problems) == {("b", "wrong_channel_count")}
    assert "3 channel(s)" in problems[0].message and "['FLAIR', 'T1w']" in problems[0].message


def test_no_training_cases_and_duplicate_files(tmp_path: Path) -> None:
    assert _errors(check_dataset(_decathlon(tmp_path, [], {"0": "CT"}))) == {("", "no_cases")}
    _save(tmp_path / "imagesTr" / "a.nii.gz", _image(1))
    _save(tmp_path / "labelsTr" / "a.nii.gz", _label())
    entry = {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}
    errors = _errors(check_dataset(_decathlon(tmp_path, [entry, entry], {"0": "CT"})))
    assert errors == {("a", "duplicate_case"), ("a", "duplicate_file")}


def test_nnunet_missing_channel_file(tmp_path: Path) -> None:
    for n in ("p1", "p2"):
        _save(tmp_path / "imagesTr" / f"{n}_0000.nii.gz", _image(1))
        _save(tmp_path / "labelsTr" / f"{n}.nii.gz", _label())
    _save(tmp_path / "imagesTr" / "p1_0001.nii.gz", _image(2))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "left": 1, "right": 2},
        "file_ending": ".nii.gz",
    }))
    problems = check_dataset(tmp_path)
    assert _errors(problems) == {("p2", "missing_file")}
    assert "p2_0001.nii.gz" in problems[0].message and "'T2'" in problems[0].message


def test_format_problems_groups_and_counts() -> None:
    problems = [
        Problem("b", "empty_label", "b.nii.gz: empty"),
        Problem("", "no_cases", "m.json: none"),
        Problem("b", "nan_values", "b.nii.gz: nan"),
        Problem("", "absent_structure", "m.json: tumour", "warning"),
    ]
    lines = format_problems(problems, n_cases=12).splitlines()
    assert lines[0] == "manifest:" and lines[3] == "case b:"
    assert "no_cases" in lines[1] and "warning" in lines[2]
    assert lines[-1] == "3 errors, 1 warning in 1 of 12 cases"
    assert format_problems([]).splitlines()[-1] == "0 errors, 0 warnings in 0 cases"


def _data_root() -> Path:
    env = os.environ.get("MEDSEG_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.realdata
def test_hippocampus_first_cases_are_clean() -> None:
    path = _data_root() / "Task04_Hippocampus" / "dataset.json"
    if not path.exists():
        pytest.skip(f"{path} not found (set MEDSEG_DATA to the shared data folder)")
    manifest = load_manifest(path)
    subset = dataclasses.replace(manifest, training=manifest.training[:10], test=[])
    problems = check_dataset(subset)
    assert problems == [], format_problems(problems, n_cases=10)
