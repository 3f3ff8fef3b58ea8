"""Preview panels: radiological orientation from the affine, same picture for any storage order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from medseg.inference.preview import compose, panels, write_preview
from medseg.palette import label_rgb, label_rgb_float

LABELS = {"background": 0, "organ": 1, "other": 2}


def _ras_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (X=R, Y=A, Z=S) volume with 'organ' in the patient's right-anterior-superior corner."""
    labels = np.zeros((20, 16, 12), np.uint8)
    labels[14:18, 11:14, 8:11] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    return labels, image, affine


def test_panels_are_radiological_and_follow_the_affine() -> None:
    labels, image, affine = _ras_case()
    axial, coronal, sagittal = panels(labels, image, affine)
    assert axial.letters == ("R", "L", "A", "P") and sagittal.letters == ("A", "P", "S", "I")
    # Radiological view: the patient's right (high x) on the viewer's left; anterior / superior up.
    for panel in (axial, coronal, sagittal):
        rows, cols = np.nonzero(panel.labels)
        h, w = panel.labels.shape
        assert rows.size and rows.max() < h / 2 and cols.max() < w / 2, panel.title
    assert axial.labels.shape == (16, 20) and axial.extent_mm == (20.0, 24.0)
    # The slices pass through the foreground's centre: voxel (15.5, 12, 9) -> x=16 (round half even), y=12, z=9.
    assert [p.title for p in (axial, coronal, sagittal)] == ["axial 9", "coronal 12", "sagittal 16"]


def test_same_picture_whatever_the_storage_order() -> None:
    labels, image, affine = _ras_case()
    reference = panels(labels, image, affine)
    # Stored LPS-style (x and y flipped) and with the axes permuted (array order S, R, A).
    flip = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    flip[:3, 3] = affine[:3, :3] @ [19, 15, 0] * [1, 1, 0]
    perm = [2, 0, 1]
    permuted = np.zeros((4, 4))
    permuted[:3, :3] = affine[:3, :3][:, perm]
    permuted[3, 3] = 1
    for lab, img, aff in ((labels[::-1, ::-1], image[::-1, ::-1], flip),
                          (labels.transpose(perm), image.transpose(perm), permuted)):
        for got, want in zip(panels(np.ascontiguousarray(lab), np.ascontiguousarray(img), aff), reference,
                             strict=True):
            np.testing.assert_array_equal(got.labels, want.labels)
            np.testing.assert_array_equal(got.image, want.image)
            assert got.letters == want.letters and got.extent_mm == want.extent_mm


def test_png_shows_the_palette_colour_on_the_patients_right(tmp_path: Path) -> None:
    labels, _, affine = _ras_case()
    path = write_preview(tmp_path / "previews" / "c.png", labels, None, affine, LABELS)
    rgb = imread(str(path))[..., :3]
    expected = 0.45 * np.array(label_rgb_float(1))  # the overlay over a black background
    hits = np.all(np.abs(rgb - expected) < 0.03, axis=-1)
    rows, cols = np.nonzero(hits)
    assert rows.size > 20
    # The axial panel is the left third; its organ sits in that panel's left half.
    axial_hits = cols[cols < rgb.shape[1] / 3]
    assert axial_hits.size and axial_hits.max() < rgb.shape[1] / 6
    assert not list(tmp_path.glob("previews/.*"))  # no temporary file left


def test_panels_keep_their_physical_aspect_ratio() -> None:
    labels, image, _ = _ras_case()
    affine = np.diag([0.5, 1.0, 4.0, 1.0])  # 10 x 16 x 48 mm
    canvas, boxes = compose(panels(labels, image, affine))
    (_, w_ax, h_ax), (_, w_co, h_co), (_, w_sa, h_sa) = boxes
    assert w_ax / h_ax == pytest.approx(10 / 16, rel=0.02)
    assert w_co / h_co == pytest.approx(10 / 48, rel=0.02) and w_sa / h_sa == pytest.approx(16 / 48, rel=0.02)
    assert canvas.shape[0] == max(h_ax, h_co, h_sa) and canvas.min() >= 0.0 and canvas.max() <= 1.0


def test_uint8_canvas_is_the_float_canvas_rounded() -> None:
    labels, image, affine = _ras_case()
    panel_list = panels(labels, image, affine)
    as_float, boxes = compose(panel_list)
    as_uint8, boxes8 = compose(panel_list, as_uint8=True)
    assert as_uint8.dtype == np.uint8 and boxes8 == boxes
    np.testing.assert_array_equal(as_uint8, np.rint(as_float * 255).astype(np.uint8))


def test_legend_has_a_swatch_per_structure_shown_and_a_title(tmp_path: Path) -> None:
    labels, image, affine = _ras_case()
    many = {"background": 0, **{f"structure number {i}": i for i in range(1, 31)}}
    labels = labels.astype(np.uint8) * 0
    labels[:, :, :] = (np.arange(labels.size) % 30 + 1).reshape(labels.shape)
    labels[:2] = 0  # the slices still show every id
    path = write_preview(tmp_path / "case_0042.png", labels, image, affine, many)
    rgb = np.rint(imread(str(path))[..., :3] * 255).astype(int)
    legend = rgb[-5 * 15 - 20:]  # 30 names in rows of 6 below the panels
    for i in range(1, 31):
        swatch = np.all(legend == label_rgb(i), axis=-1)
        assert swatch.sum() >= 100, i  # an 11x11 square of the exact palette colour (not blended)
    # White text: the title and legend names are drawn.
    assert np.all(rgb[:20] >= 200, axis=-1).sum() > 20 and np.all(legend >= 200, axis=-1).sum() > 200


def test_empty_prediction_says_so_instead_of_a_legend(tmp_path: Path) -> None:
    labels, image, affine = _ras_case()
    path = write_preview(tmp_path / "c.png", labels * 0, image, affine, LABELS)
    rgb = np.rint(imread(str(path))[..., :3] * 255).astype(int)
    for i in (1, 2):
        assert not np.all(rgb == label_rgb(i), axis=-1).any()
    assert np.all(rgb[-25:] >= 200, axis=-1).sum() > 50  # "no structure predicted"
