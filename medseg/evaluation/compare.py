"""Two prediction folders against one reference: paired per-structure differences.

``medseg evaluate --pred A --baseline B`` answers "did A (e.g. with CRF) beat B (without)?"
case by case rather than by comparing two means whose spread hides a small, consistent
effect. For each structure and metric the difference ``A - B`` is taken per case (pairs
where either value is NaN are left out and counted), and summarised by its mean, the
percentile-bootstrap 95% CI over cases (:func:`medseg.evaluation.aggregate.bootstrap_ci`,
the CI the rest of the report uses) and the t-based 95% CI (Student's t with n - 1 degrees
of freedom), with the number of cases where A is better, worse or equal. For distance
metrics (mm) lower is better, so "better" means a negative difference.

Outputs: ``comparison.csv`` (one row per structure and metric) and a ``comparison`` section
in ``summary.json`` and ``report.md``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from medseg.evaluation.aggregate import bootstrap_ci, clean_json
from medseg.evaluation.metrics import HIGHER_IS_BETTER
from medseg.utils import atomic_write_text

COMPARED_METRICS: tuple[str, ...] = ("dice", "hd95")
COMPARISON_COLUMNS: tuple[str, ...] = (
    "structure", "label", "metric", "n", "n_missing", "mean_pred", "mean_baseline", "mean_diff",
    "ci95_low", "ci95_high", "t_ci95_low", "t_ci95_high", "n_better", "n_worse", "n_equal",
)
"""Columns of ``comparison.csv``; ``*_diff``/CI columns are prediction minus baseline."""


def read_metrics(path: Path | str) -> dict[tuple[str, int], dict[str, str]]:
    """``metrics.csv`` rows keyed by (case, label id)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return {(row["case"], int(row["label"])): row for row in csv.DictReader(fh)}


def _value(row: Mapping[str, str], metric: str) -> float:
    text = row.get(metric, "")
    return float(text) if text not in ("", None) else math.nan


def t_ci(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``diffs`` (NaN with fewer than 2 values)."""
    n = diffs.size
    if n < 2:
        return (math.nan, math.nan) if n == 0 else (float(diffs[0]), float(diffs[0]))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(diffs.std(ddof=1)) / math.sqrt(n)
    mean = float(diffs.mean())
    return mean - half, mean + half


def paired_summary(pred: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True,
                   n_boot: int = 2000, seed: int = 0) -> dict[str, float | int]:
    """Summary of the paired differences ``pred - baseline`` (NaN pairs left out)."""
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    diffs = a[ok] - b[ok]
    lo, hi = bootstrap_ci(diffs, n_boot, seed)
    tlo, thi = t_ci(diffs)
    sign = 1.0 if higher_is_better else -1.0
    return {
        "n": int(ok.sum()), "n_missing": int(ok.size - ok.sum()),
        "mean_pred": float(a[ok].mean()) if ok.any() else math.nan,
        "mean_baseline": float(b[ok].mean()) if ok.any() else math.nan,
        "mean_diff": float(diffs.mean()) if diffs.size else math.nan,
        "ci95_low": lo, "ci95_high": hi, "t_ci95_low": tlo, "t_ci95_high": thi,
        "n_better": int((sign * diffs > 0).sum()), "n_worse": int((sign * diffs < 0).sum()),
        "n_equal": int((diffs == 0).sum()),
    }


def compare_metrics(pred_csv: Path | str, baseline_csv: Path | str,
                    metrics: Sequence[str] = COMPARED_METRICS, n_boot: int = 2000,
                    seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Paired comparison of two ``metrics.csv`` files of the same reference.

    Returns the comparison rows (:data:`COMPARISON_COLUMNS`) in label order, and the
    cases present in only one of the two (left out of the comparison, listed).
    """
    pred = read_metrics(pred_csv)
    base = read_metrics(baseline_csv)
    common = sorted(set(pred) & set(base), key=lambda k: (k[1], k[0]))
    unpaired = sorted({case for case, _ in set(pred) ^ set(base)})
    rows: list[dict[str, Any]] = []
    for label in sorted({label for _, label in common}):
        keys = [k for k in common if k[1] == label]
        name = pred[keys[0]]["structure"]
        for metric in metrics:
            summary = paired_summary([_value(pred[k], metric) for k in keys],
                                     [_value(base[k], metric) for k in keys],
                                     HIGHER_IS_BETTER.get(metric, True), n_boot, seed)
            rows.append({"structure": name, "label": label, "metric": metric} | summary)
    return rows, unpaired


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [",".join(COMPARISON_COLUMNS)]
    for row in rows:
        cells = []
        for col in COMPARISON_COLUMNS:
            v = row[col]
            cells.append("" if isinstance(v, float) and math.isnan(v) else
                         (f"{v:.10g}" if isinstance(v, float) else str(v)))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _markdown(rows: Sequence[Mapping[str, Any]], baseline: str, unpaired: Sequence[str]) -> str:
    def f(v: float, d: int = 4) -> str:
        return "–" if not math.isfinite(v) else f"{v:+.{d}f}"

    out = ["", f"## Comparison with the baseline {baseline}", "",
           "Paired per case: prediction minus baseline, mean and 95% CIs (bootstrap; Student t); "
           "better/worse: cases (for HD95 lower is better).", "",
           "| structure | metric | n | mean diff | bootstrap 95% CI | t 95% CI | better / worse / equal |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['structure']} | {r['metric']} | {r['n']} | {f(r['mean_diff'])} | "
                   f"[{f(r['ci95_low'])}, {f(r['ci95_high'])}] | [{f(r['t_ci95_low'])}, {f(r['t_ci95_high'])}] | "
                   f"{r['n_better']} / {r['n_worse']} / {r['n_equal']} |")
    if unpaired:
        out += ["", f"Cases in only one of the two folders (left out): {', '.join(unpaired)}"]
    return "\n".join(out) + "\n"


def write_comparison(output_dir: Path | str, baseline_dir: Path | str,
                     baseline_output: Path | str | None = None, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """Compare ``output_dir/metrics.csv`` with the baseline's (``baseline_output/metrics.csv``,
    default ``output_dir/baseline``); write ``comparison.csv`` and add the ``comparison``
    section to ``summary.json`` and ``report.md`` in ``output_dir``. Returns the section."""
    out = Path(output_dir)
    base_out = Path(baseline_output) if baseline_output is not None else out / "baseline"
    rows, unpaired = compare_metrics(out / "metrics.csv", base_out / "metrics.csv", n_boot=n_boot, seed=seed)
    section: dict[str, Any] = clean_json({  # type: ignore[assignment]
        "baseline": str(baseline_dir), "baseline_output": str(base_out),
        "difference": "prediction - baseline", "unpaired_cases": unpaired, "rows": rows,
    })
    atomic_write_text(out / "comparison.csv", _csv_text(rows))
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["comparison"] = section
        atomic_write_text(summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    report = out / "report.md"
    if report.is_file():
        atomic_write_text(report, report.read_text(encoding="utf-8") + _markdown(rows, str(baseline_dir), unpaired))
    return section
