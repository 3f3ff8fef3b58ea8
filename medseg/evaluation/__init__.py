"""Evaluation of segmentations: surface-distance-exact metrics, aggregates and reports.

Library API (imported lazily, so ``medseg.evaluation.policy`` stays light):

* :func:`evaluate` (``medseg.evaluation.evaluate``): folders/manifests in, every output
  written (metrics.csv, cases.csv, summary.json, report.html, report.md);
* :func:`evaluate_arrays` (``medseg.evaluation.metrics``): every metric of one case from two
  label-map arrays;
* :func:`compute_surface_distances` (``medseg.evaluation.surface``): surfel distances of two
  binary masks (HD, HD95, ASSD, NSD, boundary F1 from the result).

Metric definitions and the empty-structure policy: ``CONVENTIONS.md`` in this folder.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate": "medseg.evaluation.evaluate",
    "evaluate_arrays": "medseg.evaluation.metrics",
    "compute_surface_distances": "medseg.evaluation.surface",
    "EmptyPolicy": "medseg.evaluation.policy",
    "EMPTY_POLICIES": "medseg.evaluation.policy",
    "EvaluationInputError": "medseg.evaluation.inputs",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medseg.evaluation' has no attribute {name!r}")
