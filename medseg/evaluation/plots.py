"""Figures for the evaluation report, as base64 PNG strings (embedded in the HTML).

Matplotlib's object API with the Agg canvas (no pyplot state, no display), so figures can
be drawn in any process. Slices are shown in the RAS orientation closest to the image's,
axial, in radiological convention (the patient's right on the viewer's left, anterior up),
with physical aspect ratio (mm).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medseg.data.grid import canonical_spacing, canonical_transform, reorient
from medseg.evaluation.metrics import StructureMetrics

REF_COLOUR = "#00d000"
PRED_COLOUR = "#ff2a2a"
METRIC_LABELS = {
    "dice": "Dice", "iou": "IoU", "hd": "HD (mm)", "hd95": "HD95 (mm)", "assd": "ASSD (mm)",
    "nsd": "NSD", "boundary_f1": "Boundary F1", "boundary_iou": "Boundary IoU",
    "rel_vol_diff": "Relative volume difference",
}


def to_base64_png(fig: Figure, dpi: int = 90) -> str:
    """Render ``fig`` to a PNG and return it base64-encoded (ASCII)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def metric_plot(rows: Sequence[StructureMetrics], metric: str, structures: Sequence[str]) -> str | None:
    """Box plot with the individual cases as points, one row per structure; None if no data."""
    by_structure: dict[str, list[float]] = {}
    for r in rows:
        by_structure.setdefault(r.structure, []).append(getattr(r, metric))
    data = []
    names = []
    for name in structures:
        finite = [v for v in by_structure.get(name, []) if math.isfinite(v)]
        if finite:
            data.append(finite)
            names.append(name)
    if not data:
        return None
    fig = Figure(figsize=(7.0, 0.9 + 0.32 * len(names)))
    ax = fig.add_subplot()
    positions = np.arange(len(names))[::-1]
    ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.6, showfliers=False,
               medianprops={"color": "#1f4e9c"})
    rng = np.random.default_rng(0)
    for pos, values in zip(positions, data, strict=True):
        jitter = rng.uniform(-0.18, 0.18, len(values))
        ax.scatter(values, pos + jitter, s=9, alpha=0.6, color="#d9480f", linewidths=0, zorder=3)
    ax.set_yticks(positions, names, fontsize=8)
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} per structure (one point per case)", fontsize=10)
    return to_base64_png(fig)


def _canonical(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return reorient(arr, affine, canonical_transform(affine), contiguous=False)[0]


def _pick_slices(errors: np.ndarray, weight: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` slices with the most errors (else the most structure), spread apart."""
    score = errors if errors.any() else weight
    order = [int(i) for i in np.argsort(-score, kind="stable") if score[i] > 0]
    gap = max(1, len(score) // 12)
    chosen: list[int] = []
    for i in order:
        if all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    return sorted(chosen)


def overlay_figure(
    ref: np.ndarray,
    pred: np.ndarray,
    affine: np.ndarray,
    label: int,
    title: str,
    image: np.ndarray | None = None,
    n_slices: int = 3,
    margin_mm: float = 20.0,
) -> str | None:
    """Axial slices where ``label`` is most wrong: reference (green) and prediction (red)
    contours over the scan (or over the reference mask when no scan is given)."""
    spacing = canonical_spacing(affine)  # (was spacing[ornt[:, 0]]: the inverse permutation, wrong for sagittal stacks)
    r = _canonical(ref == label, affine)
    p = _canonical(pred == label, affine)
    img = _canonical(image, affine) if image is not None else None
    errors = (r != p).sum(axis=(0, 1))
    slices = _pick_slices(errors, r.sum(axis=(0, 1)) + p.sum(axis=(0, 1)), n_slices)
    if not slices:
        return None
    union = (r | p)[:, :, slices].any(axis=2)
    xs, ys = np.nonzero(union)
    mx, my = (math.ceil(margin_mm / s) for s in spacing[:2])
    x0, x1 = max(xs.min() - mx, 0), min(xs.max() + mx + 1, r.shape[0])
    y0, y1 = max(ys.min() - my, 0), min(ys.max() + my + 1, r.shape[1])
    xmm, ymm = np.arange(x0, x1) * spacing[0], np.arange(y0, y1) * spacing[1]
    extent = (xmm[0] - spacing[0] / 2, xmm[-1] + spacing[0] / 2, ymm[0] - spacing[1] / 2, ymm[-1] + spacing[1] / 2)
    fig = Figure(figsize=(3.3 * len(slices), 3.6))
    if img is not None:
        window = img[x0:x1, y0:y1, slices]
        lo, hi = np.percentile(window, [1, 99]) if window.size else (0.0, 1.0)
    for k, z in enumerate(slices):
        ax = fig.add_subplot(1, len(slices), k + 1)
        if img is not None:
            ax.imshow(img[x0:x1, y0:y1, z].T, cmap="gray", origin="lower", extent=extent,
                      vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        else:
            ax.imshow(r[x0:x1, y0:y1, z].T, cmap="gray", origin="lower", extent=extent, vmin=0, vmax=3)
        for mask, colour in ((r, REF_COLOUR), (p, PRED_COLOUR)):
            sl = mask[x0:x1, y0:y1, z].T.astype(np.float32)
            if sl.any() and not sl.all():
                ax.contour(xmm, ymm, sl, levels=[0.5], colors=colour, linewidths=1.2)
        fn, fp = int((r[:, :, z] & ~p[:, :, z]).sum()), int((p[:, :, z] & ~r[:, :, z]).sum())
        ax.set_title(f"slice {z}: FN {fn}, FP {fp} voxels", fontsize=8)
        ax.invert_xaxis()  # radiological convention: patient's right on the viewer's left
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=REF_COLOUR, label="reference"), Line2D([], [], color=PRED_COLOUR, label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return to_base64_png(fig)


def structure_plots(rows: Sequence[StructureMetrics], structures: Mapping[int, str],
                    metrics: Sequence[str] = ("dice", "hd95", "nsd", "assd")) -> dict[str, str]:
    """metric -> base64 PNG of :func:`metric_plot`, for the metrics that have data; structures
    absent from every reference and prediction are left out."""
    seen = {r.label for r in rows if r.empty_rule != "both_empty"}
    names = [structures[i] for i in sorted(structures) if i in seen]
    out = {}
    for metric in metrics:
        png = metric_plot(rows, metric, names)
        if png is not None:
            out[metric] = png
    return out


def confusion_heatmap(cm: np.ndarray, classes: Sequence[str]) -> str | None:
    """Heat map of a (C, C) confusion matrix normalised per reference row (the share of each
    reference class's voxels predicted as each class, %), voxel counts in the cells when the
    matrix is small; None when the matrix is empty."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.size == 0 or cm.sum() == 0:
        return None
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100
    n = len(classes)
    side = min(12.0, 2.0 + 0.45 * n)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, label="% of the reference class's voxels")
    ax.set_xticks(range(n), list(classes), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), list(classes), fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("reference class")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{share[i, j]:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] < 50 else "black")
    ax.set_title("Confusion matrix pooled over all cases (row-normalised)", fontsize=10)
    return to_base64_png(fig)
