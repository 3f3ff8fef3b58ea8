"""Cohort-level overlap metrics from the confusion matrix pooled over all cases.

The pooled confusion matrix M is the element-wise sum of the per-case matrices (rows =
reference class, columns = predicted class, voxel counts; class 0 is background), so every
voxel of the cohort counts once and large cases weigh more than small ones (unlike the
per-case means in ``case_metrics``). From M, as in FCN (Long et al., CVPR 2015, sec. 5):

* ``pixel_accuracy`` = Σ_c M_cc / Σ M;
* ``mean_iou`` = mean over the classes c present in the cohort's references or predictions
  (union > 0), background included, of IoU_c = M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc);
* ``fw_iou`` (frequency-weighted IoU) = Σ_c (Σ_j M_cj / Σ M) × IoU_c.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def pool_confusion(matrices: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Element-wise sum of (C, C) voxel-count matrices; zeros when there are none.

    Every matrix must have ``n_classes`` rows and columns (the same class order).
    """
    pooled = np.zeros((n_classes, n_classes), np.int64)
    for m in matrices:
        m = np.asarray(m)
        if m.shape != pooled.shape:
            raise ValueError(f"confusion matrix of shape {m.shape}, expected {pooled.shape} "
                             "(every case must cover background + the same structures)")
        pooled += m.astype(np.int64)
    return pooled


def confusion_scores(cm: np.ndarray) -> dict[str, Any]:
    """pixel_accuracy, mean_iou, fw_iou and the per-class ``iou`` list (None when a class is
    absent from references and predictions) of a (C, C) confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return {"pixel_accuracy": math.nan, "mean_iou": math.nan, "fw_iou": math.nan, "iou": []}
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    freq = cm.sum(axis=1) / total
    return {
        "pixel_accuracy": float(tp.sum() / total),
        "mean_iou": float(np.mean(iou[union > 0])),
        "fw_iou": float(np.sum(freq * np.nan_to_num(iou))),
        "iou": [None if math.isnan(v) else float(v) for v in iou],
    }


def pooled_summary(matrices: Sequence[np.ndarray], classes: Sequence[str]) -> dict[str, Any]:
    """``summary.json``'s ``pooled`` entry: classes, the pooled matrix, its scores, n_cases."""
    cm = pool_confusion(matrices, len(classes))
    return {"n_cases": len(matrices), "classes": list(classes), "rows": "reference", "columns": "prediction",
            "confusion": cm.tolist(), **confusion_scores(cm)}
