"""The report's figures as independent jobs, drawn in the evaluation's worker processes.

Each figure (a box plot per metric, the pooled confusion heat map, the overlays of one of
the worst cases) is a picklable call of a top-level function that returns base64 PNGs, so
``evaluate`` submits the overlays (the heavy ones) to the process pool that evaluated the
cases and draws the others itself meanwhile; without a pool all run in this process. Matplotlib
is imported only here, inside the jobs, never when ``medseg`` or ``medseg evaluate`` starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from medseg.data.io import ImageReadError, read_volume, same_geometry
from medseg.evaluation.case import CaseError, load_pair
from medseg.evaluation.inputs import CaseInput
from medseg.evaluation.metrics import StructureMetrics
from medseg.evaluation.report import fmt

BOX_PLOT_METRICS = ("dice", "hd95", "nsd", "assd")


def box_plot(rows: Sequence[StructureMetrics], metric: str, names: Sequence[str]) -> str | None:
    """:func:`plots.metric_plot` (imported here: matplotlib loads in the worker)."""
    from medseg.evaluation.plots import metric_plot

    return metric_plot(rows, metric, names)


def heatmap(cm: list[list[int]], classes: Sequence[str]) -> str | None:
    """:func:`plots.confusion_heatmap` of the pooled matrix."""
    from medseg.evaluation.plots import confusion_heatmap

    return confusion_heatmap(np.asarray(cm), classes)


def case_overlays(case: CaseInput, entry: Mapping[str, Any], resample_pred: bool,
                  per_case: int = 2) -> list[tuple[str, str]] | None:
    """(caption, PNG) overlays of the worst structures of one case (re-reads its files);
    None when its files cannot be read."""
    from medseg.evaluation.plots import overlay_figure

    try:
        ref, pred, _ = load_pair(case, resample_pred)
    except CaseError:
        return None
    image = None
    if case.image is not None:
        try:
            vol = read_volume(case.image)
            if same_geometry(vol, ref):
                image = vol.array if vol.array.ndim == 3 else vol.array[0]
        except ImageReadError:
            image = None
    figures = []
    for s in entry["worst_structures"][:per_case]:
        if s["empty_rule"] == "both_empty" or s["dice"] == 1.0:
            continue
        caption = (f"{case.name}: {s['structure']}, Dice {fmt(s['dice'])}, HD95 "
                   f"{fmt(s['hd95'], 1)} mm; reference green, prediction red")
        png = overlay_figure(ref.array, pred.array, ref.affine, int(s["label"]), caption, image)
        if png is not None:
            figures.append((caption, png))
    return figures


def import_matplotlib() -> None:
    """Load the plotting modules (queued on each worker after its cases, so that a worker
    that finished early is ready to draw)."""
    import medseg.evaluation.plots  # noqa: F401


def _submit(pool: Executor | None, fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` on the pool, or here (a finished future) without one or when it broke."""
    if pool is not None:
        try:
            return pool.submit(fn, *args)
        except RuntimeError:  # BrokenProcessPool (a worker died) or shut down: draw it here
            pass
    done: Future[Any] = Future()
    try:
        done.set_result(fn(*args))
    except Exception as err:  # a figure never stops the report
        done.set_exception(err)
    return done


class FigureJobs:
    """The report's figures, submitted at construction, collected by :meth:`result`."""

    def __init__(self, pool: Executor | None, rows: Sequence[StructureMetrics], structures: Mapping[int, str],
                 pooled: Mapping[str, Any], worst: Sequence[Mapping[str, Any]], cases: Mapping[str, CaseInput],
                 resample_pred: bool) -> None:
        seen = {r.label for r in rows if r.empty_rule != "both_empty"}
        names = [structures[i] for i in sorted(structures) if i in seen]
        # overlays (re-reading files, full-volume work) go to the workers first; the light box
        # plots and heat map are drawn here meanwhile (matplotlib was imported here while the
        # workers evaluated the cases)
        self._overlays = {w["case"]: _submit(pool, case_overlays, cases[w["case"]], w, resample_pred)
                          for w in worst if w["case"] in cases}
        self._plots = {m: _submit(None, box_plot, list(rows), m, names) for m in BOX_PLOT_METRICS}
        self._plots["confusion"] = _submit(None, heatmap, pooled["confusion"], pooled["classes"])

    def result(self) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
        """(metric or "confusion" -> PNG, case -> [(caption, PNG)]); a failed figure is left out."""
        plots = {k: png for k, f in self._plots.items() if (png := _value(f)) is not None}
        overlays = {k: v for k, f in self._overlays.items() if (v := _value(f)) is not None}
        return plots, overlays


def _value(future: Future[Any]) -> Any:
    try:
        return future.result()
    except Exception:  # a crashed worker or a drawing error loses that figure, not the report
        return None
