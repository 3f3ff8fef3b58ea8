"""Report figures as jobs: drawn on a pool or here, a failing one left out, never fatal."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medseg.evaluation import figures
from medseg.evaluation.evaluate import default_workers
from medseg.evaluation.inputs import CaseInput
from medseg.evaluation.metrics import evaluate_arrays


def _rows() -> list:
    ref = np.zeros((12, 12, 6), np.uint8)
    ref[2:8, 2:8, 1:5] = 1
    pred = np.roll(ref, 1, axis=0)
    return evaluate_arrays(ref, pred, (1.0, 1.0, 2.0), {1: "organ"}, case="c").structures


POOLED = {"confusion": [[700, 24], [24, 120]], "classes": ["background", "organ"]}


def test_jobs_on_a_pool_and_here_agree(tmp_path: Path) -> None:
    rows = _rows()
    missing = CaseInput("c", tmp_path / "nope.nii.gz", tmp_path / "nope_ref.nii.gz")
    worst = [{"case": "c", "worst_structures": []}]
    with ThreadPoolExecutor(2) as pool:
        on_pool = figures.FigureJobs(pool, rows, {1: "organ"}, POOLED, worst, {"c": missing}, False).result()
    here = figures.FigureJobs(None, rows, {1: "organ"}, POOLED, worst, {"c": missing}, False).result()
    assert set(on_pool[0]) == set(here[0]) == {"dice", "hd95", "nsd", "assd", "confusion"}
    assert on_pool[1] == here[1] == {}  # unreadable case: no overlay section (None is left out)


def test_broken_pool_and_failing_figure(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pool = ThreadPoolExecutor(1)
    pool.shutdown()  # submit raises RuntimeError, as a BrokenProcessPool does
    assert figures._submit(pool, sum, [1, 2]).result() == 3  # drawn here instead

    def boom(*_: object) -> str:
        raise ValueError("cannot draw")

    monkeypatch.setattr(figures, "heatmap", boom)
    plots, _ = figures.FigureJobs(None, _rows(), {1: "organ"}, POOLED, [], {}, False).result()
    assert "confusion" not in plots and "dice" in plots


def test_default_workers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os
    import sys
    import threading

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(threading, "active_count", lambda: 1)  # (a test session runs other threads)
    assert [default_workers(n) for n in (1, 3, 100)] == [1, 3, 4]
    monkeypatch.setattr(threading, "active_count", lambda: 2)  # forking a threaded process could deadlock
    assert default_workers(100) == 1
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "torch", object())  # a caller that trained in this process
    assert default_workers(100) == 1
