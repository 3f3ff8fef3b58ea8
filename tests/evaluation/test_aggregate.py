"""Aggregates: statistics, bootstrap CIs, empty-rule counts, subgroups, worst cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medseg.evaluation.aggregate import (
    bootstrap_ci,
    clean_json,
    describe,
    group_summary,
    structure_summary,
    worst_cases,
    worst_structures,
)
from medseg.evaluation.metrics import StructureMetrics


def _row(case: str, label: int, dice: float, rule: str = "present") -> StructureMetrics:
    nan = math.nan
    return StructureMetrics(
        case=case, label=label, structure=f"s{label}", dice=dice, iou=dice, hd95=1.0, assd=1.0, nsd=dice,
        vol_ref_ml=1.0, vol_pred_ml=1.0, hd=2.0, nsd_tolerance_mm=1.0, boundary_f1=dice, boundary_iou=dice,
        rel_vol_diff=nan, tp=1, fp=0, fn=0, empty_rule=rule,  # type: ignore[arg-type]
    )


def test_describe_by_hand() -> None:
    stats = describe([1.0, 2.0, 3.0, 4.0, math.nan])
    assert stats["n"] == 4 and stats["n_missing"] == 1
    assert stats["mean"] == 2.5 and stats["median"] == 2.5
    assert stats["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (stats["q1"], stats["q3"], stats["iqr"]) == (1.75, 3.25, 1.5)
    assert stats["ci95_low"] < 2.5 < stats["ci95_high"]
    assert (stats["min"], stats["max"]) == (1.0, 4.0)
    empty = describe([math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_bootstrap_ci() -> None:
    values = np.random.default_rng(0).normal(10, 2, 200)
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=1)
    # standard error 2 / sqrt(200) = 0.14: the 95% CI is about +-0.28 around the mean
    assert lo < values.mean() < hi and 0.4 < hi - lo < 0.7
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)  # reproducible
    assert bootstrap_ci(np.array([3.0])) == (3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    # chunked resampling (many cases) gives a sensible interval too
    big = np.arange(5000, dtype=float)
    lo, hi = bootstrap_ci(big, n_boot=500)
    assert lo < big.mean() < hi


def test_structure_summary_counts_rules() -> None:
    rows = [_row("c1", 1, 0.8), _row("c2", 1, math.nan, "both_empty"), _row("c3", 1, 0.0, "missed"),
            _row("c1", 2, 0.5)]
    out = structure_summary(rows, {1: "s1", 2: "s2", 3: "s3"}, n_boot=100)
    s1 = out["s1"]
    assert s1["n_cases"] == 3 and s1["label"] == 1
    assert s1["empty_rules"] == {"present": 1, "both_empty": 1, "missed": 1, "false_positive": 0}
    assert s1["dice"]["n"] == 2 and s1["dice"]["n_missing"] == 1  # type: ignore[index]
    assert out["s3"]["n_cases"] == 0


def test_group_summary() -> None:
    rows = [_row("c1", 1, 0.8), _row("c2", 1, 0.6), _row("c3", 1, 0.2)]
    groups = group_summary(rows, {1: "s1"}, {"c1": "A", "c2": "A", "c3": ""}, n_boot=50)
    assert set(groups) == {"A", "(missing)"}
    assert groups["A"]["n_cases"] == 2
    assert groups["A"]["structures"]["s1"]["dice"]["mean"] == pytest.approx(0.7)  # type: ignore[index]


def test_worst_cases_and_structures() -> None:
    values = {"a": {"mean_dice": 0.9}, "b": {"mean_dice": math.nan}, "c": {"mean_dice": 0.3}}
    assert worst_cases(values, 3) == ["c", "a", "b"]
    rows = [_row("a", 1, 0.9), _row("a", 2, 0.1), _row("a", 3, math.nan), _row("a", 4, 0.5)]
    worst = worst_structures(rows, k=2)["a"]
    assert [w["structure"] for w in worst] == ["s2", "s4"]


def test_clean_json() -> None:
    data = {"a": [np.float64(1.5), math.nan, np.int64(3)], "b": np.array([math.inf, 2.0]), 3: None}
    assert json.dumps(clean_json(data), allow_nan=False) == '{"a": [1.5, null, 3], "b": [null, 2.0], "3": null}'
