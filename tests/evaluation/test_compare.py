"""Paired comparison of two prediction folders (``medseg evaluate --baseline``)."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.commands.evaluate import add_parser
from medseg.data.io import write_volume
from medseg.evaluation.compare import compare_metrics, paired_summary, t_ci


def test_paired_summary_hand_computed() -> None:
    s = paired_summary([0.9, 0.8, 0.7, math.nan], [0.8, 0.8, 0.8, 0.5], higher_is_better=True)
    assert s["n"] == 3 and s["n_missing"] == 1
    assert s["mean_diff"] == pytest.approx(0.0)
    assert (s["n_better"], s["n_worse"], s["n_equal"]) == (1, 1, 1)
    # diffs 0.1, 0, -0.1: sd 0.1, t(0.975, 2) = 4.302653 -> half width 0.1 * 4.302653 / sqrt(3)
    lo, hi = t_ci(np.array([0.1, 0.0, -0.1]))
    assert hi == pytest.approx(0.1 * 4.302653 / math.sqrt(3), rel=1e-5) and lo == pytest.approx(-hi)
    # distances: lower is better
    d = paired_summary([1.0, 2.0], [3.0, 2.0], higher_is_better=False)
    assert (d["n_better"], d["n_worse"], d["mean_diff"]) == (1, 0, -1.0)


def _write_cases(folder: Path, masks: list[np.ndarray]) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for i, mask in enumerate(masks):
        write_volume(folder / f"case_{i}.nii.gz", mask.astype(np.uint8), affine)


def _cube(shift: int = 0, size: int = 8) -> np.ndarray:
    arr = np.zeros((24, 24, 16), dtype=np.uint8)
    arr[4 + shift:4 + shift + size, 4:4 + size, 4:4 + size] = 1
    return arr


def test_evaluate_baseline_known_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prediction = reference (Dice 1); baseline shifted by 2 voxels along X (Dice 6/8 = 0.75)
    in three cases and exact in one: mean Dice difference (0.25 * 3 + 0) / 4 = 0.1875."""
    ref, pred, base = tmp_path / "ref", tmp_path / "pred", tmp_path / "base"
    _write_cases(ref, [_cube()] * 4)
    _write_cases(pred, [_cube()] * 4)
    _write_cases(base, [_cube(2), _cube(2), _cube(2), _cube()])
    out = tmp_path / "out"
    parser = argparse.ArgumentParser(prog="medseg")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--pred", str(pred), "--ref", str(ref), "--output", str(out),
                              "--baseline", str(base)])
    assert args.func(args) == 0
    assert "label_1: Dice +0.1875" in capsys.readouterr().out
    with (out / "comparison.csv").open() as fh:
        rows = {r["metric"]: r for r in csv.DictReader(fh)}
    dice = rows["dice"]
    assert float(dice["mean_diff"]) == pytest.approx(0.1875)
    assert float(dice["mean_pred"]) == pytest.approx(1.0) and float(dice["mean_baseline"]) == pytest.approx(0.8125)
    assert (dice["n"], dice["n_better"], dice["n_worse"], dice["n_equal"]) == ("4", "3", "0", "1")
    assert 0.0 <= float(dice["ci95_low"]) <= 0.1875 <= float(dice["ci95_high"]) <= 0.25
    # HD95 of the shifted cube is 2 voxels along X = 2 mm; prediction 0 -> difference -1.5 mm, better
    hd = rows["hd95"]
    assert float(hd["mean_diff"]) == pytest.approx(-1.5) and hd["n_better"] == "3"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparison"]["rows"][0]["mean_diff"] == pytest.approx(0.1875)
    assert (out / "baseline" / "metrics.csv").is_file()
    assert "Comparison with the baseline" in (out / "report.md").read_text(encoding="utf-8")


def test_unpaired_cases_are_listed(tmp_path: Path) -> None:
    header = "case,label,structure,dice,hd95\n"
    (tmp_path / "a.csv").write_text(header + "x,1,organ,0.9,1\ny,1,organ,0.8,2\n")
    (tmp_path / "b.csv").write_text(header + "x,1,organ,0.7,3\nz,1,organ,0.1,9\n")
    rows, unpaired = compare_metrics(tmp_path / "a.csv", tmp_path / "b.csv")
    assert unpaired == ["y", "z"]
    assert rows[0]["n"] == 1 and rows[0]["mean_diff"] == pytest.approx(0.2)
