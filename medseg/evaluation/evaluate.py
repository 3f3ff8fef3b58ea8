"""``evaluate``: predictions + references -> metrics.csv, cases.csv, summary.json, reports.

The library entry point behind ``medseg evaluate``. Cases run in worker processes with a
progress bar; one bad case never stops
the batch: its problem is recorded and shown in the report. Every output is written under
a temporary name and renamed.

Outputs in ``output_dir``:

* ``metrics.csv``: one row per case and structure (columns :data:`metrics.COLUMNS`;
  distances in mm, volumes in mL; empty cells are NaN);
* ``cases.csv``: one row per case (status, per-case metrics, problems), unmatched and
  failed cases included;
* ``confusion_matrices.json``: per case and pooled over the cases, rows = reference,
  columns = prediction;
* ``summary.json``: settings, per-structure aggregates, subgroups, worst cases, problems;
* ``report.html`` (self-contained) and ``report.md``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medseg import __version__
from medseg.cluster import dask_executor, parse_scheduler
from medseg.evaluation.aggregate import (
    clean_json,
    describe,
    group_summary,
    structure_summary,
    worst_cases,
    worst_structures,
)
from medseg.evaluation.case import CaseOutcome, Settings, evaluate_case
from medseg.evaluation.figures import FigureJobs, import_matplotlib
from medseg.evaluation.inputs import (
    CaseInput,
    EvaluationInputError,
    EvaluationInputs,
    resolve_inputs,
    resolve_tolerances,
)
from medseg.evaluation.metrics import CASE_METRICS, COLUMNS, StructureMetrics, add_absent_structures
from medseg.evaluation.policy import EmptyPolicy, get_empty_policy
from medseg.evaluation.pooled import pooled_summary
from medseg.evaluation.report import render_html, render_markdown
from medseg.utils import atomic_write_text


def default_workers(n_cases: int) -> int:
    """Worker processes when none are asked for: one per core this process may use, at most
    one per case (1 when only one core is available). 1 as well when this process already
    runs other threads or has imported torch (a library caller after training): forking it
    could deadlock a child on a lock held by another thread; pass ``workers`` to override."""
    if threading.active_count() > 1 or "torch" in sys.modules:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_cases))


def _pool(workers: int, n_cases: int) -> ProcessPoolExecutor | None:
    """The process pool for the cases and the report's figures; None for serial work."""
    if workers <= 1 or n_cases <= 1:
        return None
    # fork where available: spawn would re-import the caller's __main__, which breaks
    # scripts without an ``if __name__ == "__main__"`` guard; the parent holds no
    # threads or GPU state here (evaluation imports neither torch nor CUDA).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=min(workers, n_cases), mp_context=multiprocessing.get_context(method))


def _run_cases(cases: Sequence[CaseInput], settings: Settings, pool: Executor | None,
               progress: bool, drawing_workers: int = 0) -> list[CaseOutcome]:
    """Every case on ``pool`` (here without one); ``drawing_workers``: how many of the pool's
    workers will draw figures afterwards (they import matplotlib when idle)."""
    bar = tqdm(total=len(cases), desc="evaluate", unit="case", disable=not progress, file=sys.stderr)
    outcomes: dict[str, CaseOutcome] = {}
    try:
        if pool is None:
            for case in cases:
                outcomes[case.name] = _safe(case, settings)
                bar.update()
        else:
            futures = {pool.submit(evaluate_case, c, settings): c for c in cases}
            for _ in range(min(drawing_workers, len(cases))):
                pool.submit(import_matplotlib)  # queued after the cases: idle workers get ready to draw
            import_matplotlib()  # and this process, while the workers compute
            for future in as_completed(futures):
                case = futures[future]
                try:
                    outcomes[case.name] = future.result()
                except Exception as err:  # a crashed worker (Dask: KilledWorker) fails its case, not the batch
                    outcomes[case.name] = _crashed(case, err)
                bar.update()
    finally:
        bar.close()
    return [outcomes[c.name] for c in cases]


def _crashed(case: CaseInput, err: BaseException) -> CaseOutcome:
    return CaseOutcome(case.name, "failed", [f"{case.name}: evaluation crashed ({type(err).__name__}: {err})"])


def _safe(case: CaseInput, settings: Settings) -> CaseOutcome:
    try:
        return evaluate_case(case, settings)
    except Exception as err:  # never stop the batch at one case
        return _crashed(case, err)


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return value


def _csv_text(header: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in header})
    return buf.getvalue()


def _case_rows(inputs_cases: Sequence[CaseInput], outcomes: Sequence[CaseOutcome], unmatched: Sequence[str],
               missing: Sequence[str], columns: Sequence[str]) -> tuple[list[str], list[dict[str, object]]]:
    header = ["case", "status", *CASE_METRICS, "worst_structure", "seconds", "resampled", *columns, "problems"]
    meta = {c.name: c.metadata for c in inputs_cases}
    rows: list[dict[str, object]] = []
    for o in outcomes:
        row: dict[str, object] = {"case": o.name, "status": o.status, "seconds": round(o.seconds, 3),
                                  "resampled": o.resampled, "problems": " | ".join(o.problems)}
        if o.metrics is not None:
            row |= o.metrics.values | {"worst_structure": o.metrics.worst_structure}
        rows.append(row | meta.get(o.name, {}))
    rows += [{"case": n, "status": "no_reference", "problems": "prediction has no reference"} for n in unmatched]
    rows += [{"case": n, "status": "no_prediction", "problems": "reference has no prediction"} for n in missing]
    return header, rows


def evaluate(
    pred_dir: Path | str,
    ref: Path | str,
    output_dir: Path | str,
    labels: Path | str | None = None,
    nsd_tolerance: float | Mapping[str, float] = 1.0,
    workers: int | None = None,
    empty_policy: str | EmptyPolicy = "nan",
    resample_pred: bool = False,
    group_by: str | None = None,
    progress: bool = True,
    n_worst: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Evaluate the predictions in ``pred_dir`` against ``ref`` and write every output.

    ``ref``: a folder of ``<case>`` label maps or a manifest; ``labels``: a manifest giving
    structure names (and case metadata) when ``ref`` is a folder. ``nsd_tolerance``: mm, or
    structure name -> mm with an optional ``default``. ``group_by``: a manifest metadata
    column (site, scanner) for subgroup tables. ``workers``: processes for the cases and
    the report's figures (None: :func:`default_workers`); ``scheduler``: a Dask address or
    ``local:N`` to evaluate one case per Dask task instead (:mod:`medseg.cluster`). Returns the summary (as in summary.json);
    ``summary["problems"]`` lists every problem. Raises :class:`EvaluationInputError` when
    nothing can be evaluated.
    """
    inputs = resolve_inputs(pred_dir, ref, labels)
    try:
        policy = get_empty_policy(empty_policy)
    except ValueError as err:
        raise EvaluationInputError(str(err)) from err
    if group_by and group_by not in inputs.metadata_columns:
        raise EvaluationInputError(
            f"--group-by {group_by!r}: no case has that metadata column; available columns: "
            f"{inputs.metadata_columns or 'none'} (grouping needs a CSV manifest with e.g. a 'site' column)"
        )
    tolerance = resolve_tolerances(nsd_tolerance, inputs.structures)
    settings = Settings(inputs.structures, tolerance, policy, resample_pred)
    if scheduler:
        try:
            parse_scheduler(scheduler)
        except ValueError as err:
            raise EvaluationInputError(str(err)) from err
    workers = default_workers(len(inputs.cases)) if workers is None else workers
    with contextlib.ExitStack() as stack:
        pool: Executor | None
        if scheduler:  # one Dask task per case; local workers forked from this process (its imports)
            pool = stack.enter_context(dask_executor(scheduler, fork=True))
        else:
            pool = _pool(workers, len(inputs.cases))
            if pool is not None:
                stack.callback(pool.shutdown, cancel_futures=True)
        return _evaluate_with(pool, inputs, settings, policy, tolerance, pred_dir, ref, labels, output_dir,
                              workers, resample_pred, group_by, progress, n_worst, n_boot, seed, scheduler)


def _evaluate_with(pool: Executor | None, inputs: EvaluationInputs, settings: Settings,
                   policy: EmptyPolicy, tolerance: float | dict[int, float], pred_dir: Path | str,
                   ref: Path | str, labels: Path | str | None, output_dir: Path | str, workers: int,
                   resample_pred: bool, group_by: str | None, progress: bool, n_worst: int, n_boot: int,
                   seed: int, scheduler: str | None = None) -> dict[str, Any]:
    # figures: on the process pool; with Dask in this process, as before (matplotlib would be one
    # more import per worker, and a remote worker may not have it)
    figure_pool = None if scheduler else pool
    outcomes = _run_cases(inputs.cases, settings, pool, progress, workers if figure_pool is not None else 0)
    structures = inputs.structures or {
        i: f"label_{i}" for i in sorted({i for o in outcomes for i in o.label_ids})
    }
    for o in outcomes:  # every case reports every structure, absent ones as both_empty
        if o.metrics is not None:
            o.metrics = add_absent_structures(o.metrics, structures, tolerance, policy)
    rows = [r for o in outcomes if o.metrics for r in o.metrics.structures]
    summary: dict[str, Any] = clean_json({  # type: ignore[assignment]
        "medseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"pred": str(pred_dir), "ref": str(ref), "labels": str(labels) if labels else None},
        "settings": {
            "nsd_tolerance_mm": _tolerance_names(tolerance, structures), "empty_policy": policy.as_dict(),
            "resample_pred": resample_pred, "group_by": group_by, "bootstrap": n_boot, "seed": seed,
            "workers": workers,
        },
        **_summary(inputs, outcomes, rows, structures, n_worst, n_boot, seed, group_by),
    })
    figures = FigureJobs(figure_pool, rows, structures, summary["pooled"], summary["worst_cases"],
                         {c.name: c for c in inputs.cases}, resample_pred)
    _write_outputs(Path(output_dir), summary, rows, inputs, outcomes, structures, figures)
    return summary


def _tolerance_names(tolerance: float | dict[int, float], structures: Mapping[int, str]) -> object:
    if not isinstance(tolerance, dict):
        return tolerance
    return {structures.get(k, f"label_{k}") if k else "default": v for k, v in tolerance.items()}


def _summary(inputs: EvaluationInputs, outcomes: Sequence[CaseOutcome], rows: Sequence[StructureMetrics],
             structures: Mapping[int, str], n_worst: int, n_boot: int, seed: int,
             group_by: str | None) -> dict[str, Any]:
    """summary.json's cases, aggregates, worst cases, subgroups and problems."""
    case_values = {o.name: o.metrics.values for o in outcomes if o.metrics is not None}
    worst_by_case = worst_structures(rows)
    worst = [
        {"case": c, "mean_dice": case_values[c]["mean_dice"], "pixel_accuracy": case_values[c]["pixel_accuracy"],
         "worst_structures": worst_by_case.get(c, [])}
        for c in worst_cases(case_values, n_worst)
    ]
    problems = list(inputs.problems) + [p for o in outcomes for p in o.problems]
    summary: dict[str, Any] = {
        "cases": {
            "evaluated": len(case_values),
            "failed": [o.name for o in outcomes if o.status == "failed"],
            "warnings": [o.name for o in outcomes if o.status == "warning"],
            "unmatched_pred": inputs.unmatched_pred, "missing_pred": inputs.missing_pred,
            "unpredicted_splits": inputs.unpredicted_splits,
            "resampled": [o.name for o in outcomes if o.resampled],
        },
        "structures": structure_summary(rows, structures, n_boot=n_boot, seed=seed),
        "pooled": pooled_summary([o.metrics.confusion for o in outcomes if o.metrics is not None],
                                 ["background", *(structures[i] for i in sorted(structures))]),
        "case_metrics": {m: describe([v[m] for v in case_values.values()], n_boot, seed) for m in CASE_METRICS},
        "worst_cases": worst,
        "worst_structures_per_case": worst_by_case,
        "problems": problems,
        "status": "problems" if problems else "ok",
    }
    if group_by:
        groups = {c.name: c.metadata.get(group_by, "") for c in inputs.cases}
        summary["groups"] = {group_by: group_summary(rows, structures, groups, n_boot=n_boot, seed=seed)}
    return summary


def _write_outputs(out: Path, summary: dict[str, Any], rows: Sequence[StructureMetrics], inputs: EvaluationInputs,
                   outcomes: Sequence[CaseOutcome], structures: Mapping[int, str], figures: FigureJobs) -> None:
    """Every output; the CSV, JSON and Markdown ones while ``figures`` are being drawn."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.csv", _csv_text(COLUMNS, [r.as_row() for r in rows]))
    header, case_rows = _case_rows(inputs.cases, outcomes, inputs.unmatched_pred, inputs.missing_pred,
                                   inputs.metadata_columns)
    atomic_write_text(out / "cases.csv", _csv_text(header, case_rows))
    confusion = {
        "rows": "reference", "columns": "prediction",
        "classes": ["background", *(structures[i] for i in sorted(structures))],
        "cases": {o.name: np.asarray(o.metrics.confusion).tolist() for o in outcomes if o.metrics},
        "pooled": summary["pooled"]["confusion"],
    }
    atomic_write_text(out / "confusion_matrices.json", json.dumps(confusion) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_markdown(summary))
    plots, overlays = figures.result()
    atomic_write_text(out / "report.html", render_html(summary, plots, overlays))
