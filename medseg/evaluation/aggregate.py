"""Aggregates over cases: descriptive statistics, bootstrap CIs, subgroups, worst cases.

Statistics leave out NaN values (an undefined metric under the ``nan`` empty policy) and
say how many they left out (``n_missing``); the empty-rule counts per structure say why.
The 95% confidence interval of a mean is the percentile bootstrap over cases (resampling
cases with replacement, ``n_boot`` times, fixed seed: the same data give the same CI).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from medseg.evaluation.metrics import AGGREGATED_METRICS, StructureMetrics
from medseg.evaluation.policy import EMPTY_RULES

MISSING_GROUP = "(missing)"


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of finite ``values``."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bounded memory for many cases
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [alpha, 100 - alpha])
    return float(lo), float(hi)


def describe(values: Iterable[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float | int]:
    """n, n_missing, mean, std, median, q1, q3, iqr, min, max, ci95_low, ci95_high."""
    arr = np.asarray(list(values), dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, float | int] = {"n": int(finite.size), "n_missing": int(arr.size - finite.size)}
    if finite.size == 0:
        keys = ("mean", "std", "median", "q1", "q3", "iqr", "min", "max", "ci95_low", "ci95_high")
        return out | dict.fromkeys(keys, math.nan)
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    lo, hi = bootstrap_ci(finite, n_boot, seed)
    return out | {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
        "min": float(finite.min()), "max": float(finite.max()),
        "ci95_low": lo, "ci95_high": hi,
    }


def structure_summary(
    rows: Sequence[StructureMetrics],
    structures: Mapping[int, str],
    metrics: Sequence[str] = AGGREGATED_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Per structure name: ``label`` id, ``n_cases``, ``empty_rules`` (rule -> number of cases)
    and, under each metric's name, its :func:`describe` statistics."""
    by_label: dict[int, list[StructureMetrics]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    out: dict[str, dict[str, object]] = {}
    for label, name in sorted(structures.items()):
        mine = by_label.get(label, [])
        rules = {rule: sum(r.empty_rule == rule for r in mine) for rule in EMPTY_RULES}
        out[name] = {"label": label, "n_cases": len(mine), "empty_rules": rules} | {
            m: describe([getattr(r, m) for r in mine], n_boot, seed) for m in metrics
        }
    return out


def group_summary(
    rows: Sequence[StructureMetrics],
    structures: Mapping[int, str],
    case_groups: Mapping[str, str],
    metrics: Sequence[str] = AGGREGATED_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Structure summaries per subgroup; ``case_groups``: case -> group value (site, scanner).

    Cases without a value fall in the group ``(missing)``.
    """
    groups: dict[str, list[StructureMetrics]] = {}
    for row in rows:
        groups.setdefault(case_groups.get(row.case) or MISSING_GROUP, []).append(row)
    return {
        g: {"n_cases": len({r.case for r in grows}),
            "structures": structure_summary(grows, structures, metrics, n_boot, seed)}
        for g, grows in sorted(groups.items())
    }


def worst_structures(rows: Sequence[StructureMetrics], k: int = 3) -> dict[str, list[dict[str, object]]]:
    """Per case, its ``k`` structures with the lowest Dice (NaN Dice left out)."""
    by_case: dict[str, list[StructureMetrics]] = {}
    for row in rows:
        if not math.isnan(row.dice):
            by_case.setdefault(row.case, []).append(row)
    return {
        case: [
            {"structure": r.structure, "label": r.label, "dice": r.dice, "hd95": r.hd95,
             "empty_rule": r.empty_rule}
            for r in sorted(mine, key=lambda r: r.dice)[:k]
        ]
        for case, mine in sorted(by_case.items())
    }


def worst_cases(case_values: Mapping[str, Mapping[str, float]], n: int = 5, key: str = "mean_dice") -> list[str]:
    """The ``n`` cases with the lowest ``key`` (cases where it is NaN come last)."""

    def rank(item: tuple[str, Mapping[str, float]]) -> tuple[bool, float, str]:
        value = item[1].get(key, math.nan)
        return (math.isnan(value), value, item[0])

    return [case for case, _ in sorted(case_values.items(), key=rank)[:n]]


def clean_json(obj: object) -> object:
    """NaN/inf -> None and NumPy scalars -> Python, recursively, for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
