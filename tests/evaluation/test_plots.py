"""Report figures: PNGs come out, slices are chosen where the errors are."""

from __future__ import annotations

import base64
import math

import numpy as np

from medseg.evaluation.metrics import evaluate_arrays
from medseg.evaluation.plots import (
    _canonical,
    _pick_slices,
    metric_plot,
    overlay_figure,
    structure_plots,
)


def _is_png(b64: str | None) -> bool:
    return b64 is not None and base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def _maps() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((20, 18, 10), np.uint8)
    ref[5:14, 4:12, 2:8] = 1
    pred = ref.copy()
    pred[5:14, 4:12, 6:8] = 0  # slices 6, 7 missed
    return ref, pred


def test_metric_plots() -> None:
    ref, pred = _maps()
    rows = evaluate_arrays(ref, pred, (1.0, 1.0, 2.0), {1: "organ", 2: "absent"}).structures
    assert _is_png(metric_plot(rows, "dice", ["organ", "absent"]))
    assert metric_plot(rows, "dice", ["absent"]) is None  # NaN only: nothing to draw
    plots = structure_plots(rows, {1: "organ", 2: "absent"})
    assert set(plots) == {"dice", "hd95", "nsd", "assd"} and all(_is_png(p) for p in plots.values())


def test_overlay_with_and_without_scan() -> None:
    ref, pred = _maps()
    scan = np.random.default_rng(0).normal(size=ref.shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    assert _is_png(overlay_figure(ref, pred, affine, 1, "organ", image=scan))
    assert _is_png(overlay_figure(ref, pred, affine, 1, "organ"))
    assert overlay_figure(ref, pred, affine, 5, "absent") is None


def test_pick_slices_prefers_errors_and_spreads() -> None:
    errors = np.zeros(24)
    errors[[3, 4, 15]] = [10, 9, 5]
    assert _pick_slices(errors, np.ones(24), 3) == [3, 15]  # 4 is next to 3: skipped
    weight = np.zeros(24)
    weight[10] = 1
    assert _pick_slices(np.zeros(24), weight, 3) == [10]  # no error: where the structure is
    assert _pick_slices(np.zeros(24), np.zeros(24), 3) == []


def test_canonical_orientation() -> None:
    arr = np.arange(8).reshape(2, 2, 2)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    out = _canonical(arr, lps)
    assert out[0, 0, 0] == arr[1, 1, 0]  # x and y reversed to increase towards R and A
    assert math.isclose(float(out.sum()), float(arr.sum()))


def test_confusion_heatmap() -> None:
    import base64
    import io

    from matplotlib.image import imread

    from medseg.evaluation.plots import confusion_heatmap

    assert confusion_heatmap(np.zeros((3, 3)), ["background", "a", "b"]) is None
    right = confusion_heatmap(np.diag([50, 20, 10]), ["background", "a", "b"])
    swapped = confusion_heatmap(np.array([[50, 0, 0], [0, 0, 20], [0, 10, 0]]), ["background", "a", "b"])
    assert right is not None and swapped is not None
    img_right = imread(io.BytesIO(base64.b64decode(right)), format="png")
    img_swapped = imread(io.BytesIO(base64.b64decode(swapped)), format="png")
    assert img_right.shape == img_swapped.shape and not np.array_equal(img_right, img_swapped)
