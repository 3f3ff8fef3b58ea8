"""Per-structure statistics: values against a hand computation; batch merge, resume and HU units."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.inference.batch import predict_batch
from medseg.inference.batch_extras import BatchExtras
from medseg.inference.inputs import find_cases
from medseg.inference.statistics import COLUMNS, case_statistics
from tests.inference.inference_helpers import save_nifti, threshold_predictor, write_dicom_series

LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_statistics_match_a_hand_computation() -> None:
    labels = np.zeros((6, 5, 4), np.uint8)
    image = np.zeros((6, 5, 4), np.float32)
    # liver: three voxels in a row along x with values 10, 20, 60 (one component).
    for x, v in zip((1, 2, 3), (10.0, 20.0, 60.0), strict=True):
        labels[x, 2, 1], image[x, 2, 1] = 1, v
    # kidney: two single voxels, not face-neighbours (diagonal): two components, values -5, 5.
    labels[0, 0, 0], image[0, 0, 0] = 2, -5.0
    labels[1, 1, 0], image[1, 1, 0] = 2, 5.0
    # spleen: absent.
    affine = np.array([[-2.0, 0, 0, 100.0], [0, 1.0, 0, -50.0], [0, 0, 3.0, 10.0], [0, 0, 0, 1]])
    rows = {r["structure"]: r for r in case_statistics("c", labels, image, affine, LABELS)}
    assert list(rows) == ["liver", "kidney", "spleen"]
    assert set(rows["liver"]) == set(COLUMNS)

    liver = rows["liver"]
    assert liver["voxels"] == 3 and float(liver["volume_ml"]) == pytest.approx(3 * 6.0 / 1000)  # 2*1*3 mm^3
    assert float(liver["mean"]) == pytest.approx(30.0)
    assert float(liver["std"]) == pytest.approx(np.sqrt(((10 - 30) ** 2 + (20 - 30) ** 2 + (60 - 30) ** 2) / 3))
    assert (float(liver["min"]), float(liver["median"]), float(liver["max"])) == (10.0, 20.0, 60.0)
    # Linear interpolation on (10, 20, 60): position 0.05*2 = 0.1 -> 11; 0.95*2 = 1.9 -> 20 + 0.9*40 = 56.
    assert float(liver["p05"]) == pytest.approx(11.0) and float(liver["p95"]) == pytest.approx(56.0)
    assert liver["components"] == 1
    # Centroid voxel (2, 2, 1) -> x = -2*2 + 100 = 96, y = 2 - 50 = -48, z = 3 + 10 = 13 (RAS mm).
    assert [float(liver[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx([96.0, -48.0, 13.0])

    kidney = rows["kidney"]
    assert kidney["voxels"] == 2 and kidney["components"] == 2
    assert (float(kidney["mean"]), float(kidney["std"])) == (0.0, 5.0)
    # Centroid voxel (0.5, 0.5, 0) -> (99, -49.5, 10).
    assert [float(kidney[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx([99.0, -49.5, 10.0])

    spleen = rows["spleen"]
    assert spleen["voxels"] == 0 and float(spleen["volume_ml"]) == 0.0 and spleen["components"] == 0
    assert spleen["mean"] == spleen["median"] == spleen["centroid_x_mm"] == ""


def _ball_case(folder: Path, name: str, radius: float) -> Path:
    shape = (20, 18, 16)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    dist = np.linalg.norm(idx - np.array([10, 9, 8]), axis=-1)
    image = np.where(dist <= radius, 200.0 - dist, 0.0).astype(np.float32)  # > 100 inside the ball
    return save_nifti(folder / f"{name}.nii.gz", image, np.diag([1.5, 1.5, 2.0, 1.0]))


def test_batch_statistics_csv_is_merged_once_per_case_and_resume_safe(tmp_path: Path) -> None:
    _ball_case(tmp_path / "in", "a", 4.0)
    _ball_case(tmp_path / "in", "b", 6.0)
    predictor = threshold_predictor([1.5, 1.5, 2.0], 100.0, crop=False)
    cases = find_cases(tmp_path / "in", ["image"])
    out = tmp_path / "out"
    # First run without statistics; the resumed run computes them from the written masks.
    predict_batch(predictor, cases, out, progress=False)
    extras = BatchExtras(dict(predictor.labels), statistics=True)
    results = predict_batch(predictor, cases, out, progress=False, extras=extras)
    assert [r.status for r in results] == ["skipped", "skipped"], results
    first = (out / "statistics.csv").read_text()
    assert first.splitlines()[0] == ",".join(COLUMNS)
    rows = _read(out / "statistics.csv")
    assert [(r["case"], r["structure"]) for r in rows] == [("a", "object"), ("b", "object")]
    for row in rows:
        mask = np.asanyarray(nib.load(str(out / f"{row['case']}.nii.gz")).dataobj) == 1
        image = nib.load(str(tmp_path / "in" / f"{row['case']}.nii.gz")).get_fdata()
        assert int(row["voxels"]) == mask.sum() > 0
        assert float(row["median"]) == pytest.approx(np.median(image[mask]), rel=1e-5)
        assert float(row["p95"]) == pytest.approx(np.percentile(image[mask], 95), rel=1e-5)
        assert float(row["volume_ml"]) == pytest.approx(mask.sum() * 1.5 * 1.5 * 2.0 / 1000)
    # Resumed again, and re-predicted without resume: the same rows, never duplicated.
    predict_batch(predictor, cases, out, progress=False, extras=extras)
    assert (out / "statistics.csv").read_text() == first
    predict_batch(predictor, cases, out, resume=False, progress=False, extras=extras)
    assert (out / "statistics.csv").read_text() == first


def test_dicom_statistics_are_in_hounsfield_units(tmp_path: Path) -> None:
    stored = np.zeros((12, 10, 6), np.int16)
    stored[3:7, 3:6, 2:4] = 1100  # stored value; HU = 1100 - 1024 = 76
    stored[4, 4, 2] = 1124  # HU 100
    write_dicom_series(tmp_path / "ct", stored, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    for f in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleIntercept = -1024
        ds.save_as(f)
    predictor = threshold_predictor([1.0, 1.0, 2.0], 50.0, crop=False)
    extras = BatchExtras(dict(predictor.labels), statistics=True)
    [result] = predict_batch(predictor, find_cases(tmp_path / "ct", ["CT"]), tmp_path / "out", progress=False,
                             extras=extras)
    assert result.status == "ok", result.error
    [row] = _read(tmp_path / "out" / "statistics.csv")
    assert int(row["voxels"]) == 4 * 3 * 2
    assert (float(row["min"]), float(row["max"])) == (76.0, 100.0)
    assert float(row["mean"]) == pytest.approx((23 * 76 + 100) / 24)


@pytest.mark.slow  # spawns two worker processes (~1 min on 2 busy cores)
def test_worker_processes_write_the_same_statistics(tmp_path: Path, checkpoint: Path) -> None:
    from medseg.cli import main

    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", rng.normal(size=(20, 18, 16)).astype(np.float32),
                   np.diag([1.5, 1.5, 1.5, 1.0]))
    base = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in"), "--quiet", "--statistics",
            "--preview"]
    assert main([*base, "--output", str(tmp_path / "serial")]) == 0
    assert main([*base, "--output", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    for name in ("statistics.csv", "qa.csv"):
        assert (tmp_path / "parallel" / name).read_text() == (tmp_path / "serial" / name).read_text(), name
    assert sorted(p.name for p in (tmp_path / "parallel" / "previews").iterdir()) == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("kind", ["hu_float", "real_float", "uint8"])
def test_integer_histogram_and_sorted_paths_match_numpy(kind: str) -> None:
    """Whole-number intensities (CT in HU) take the histogram path, others the sort: both as numpy."""
    from scipy import ndimage

    from medseg.inference import statistics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (30, 20, 25)).astype(np.uint8)
    image = {"hu_float": rng.integers(-1024, 3000, labels.shape).astype(np.float32),
             "real_float": rng.normal(0, 100, labels.shape).astype(np.float32),
             "uint8": rng.integers(0, 255, labels.shape).astype(np.uint8)}[kind]
    assert (statistics._intensity_histograms(labels, image, 4) is not None) == (kind != "real_float")
    for row in case_statistics("c", labels, image, np.eye(4), {"a": 1, "b": 2, "c": 3}):
        values = image[labels == row["label"]].astype(np.float64)
        want = [values.mean(), values.std(), values.min(), *np.quantile(values, [0.05, 0.5, 0.95]), values.max()]
        got = [float(str(row[k])) for k in ("mean", "std", "min", "p05", "median", "p95", "max")]
        np.testing.assert_allclose(got, want, rtol=1e-7)
        centre = ndimage.center_of_mass(labels == row["label"])
        np.testing.assert_allclose([float(str(row[f"centroid_{a}_mm"])) for a in "xyz"], centre, rtol=1e-7)
        assert row["components"] == ndimage.label(labels == row["label"])[1]


def _thin_slabs(monkeypatch: pytest.MonkeyPatch, voxels: int) -> None:
    """Slabs of ``voxels`` for the projections and the component count alike."""
    from medseg.inference import statistics

    monkeypatch.setattr(statistics, "_SLAB_VOXELS", voxels)
    monkeypatch.setattr(statistics, "_COMPONENT_SLAB_VOXELS", voxels)


def test_components_counted_slab_by_slab_match_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Components that cross slab boundaries (slabs of 1-3 planes here) are joined, never double-counted."""
    from scipy import ndimage

    from medseg.inference import statistics

    rng = np.random.default_rng(3)
    for shape, fill, slab in (((40, 12, 10), 0.45, 120), ((60, 8, 8), 0.6, 64), ((9, 9, 9), 0.0, 81)):
        mask = rng.random(shape) < fill
        _thin_slabs(monkeypatch, slab)
        assert statistics.count_components(mask) == ndimage.label(mask)[1]
    snake = np.zeros((12, 3, 3), bool)  # one component that leaves and re-enters every slab boundary
    snake[:, 0, 0] = snake[:, 2, 2] = True
    snake[0, :, 0] = snake[0, 2, :] = True
    _thin_slabs(monkeypatch, 9)
    assert statistics.count_components(snake) == 1


@pytest.mark.parametrize(("order", "pad", "n_labels"),
                         [("C", 0, 40), ("F", 0, 40), ("C", 3, 40), ("F", 2, 40), ("C", 0, 3), ("F", 2, 3)])
def test_label_summary_matches_scipy_per_label_with_many_labels_and_thin_slabs(
    order: str, pad: int, n_labels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts, boxes, centroids and components of 40 labels (the bincount projections) or of 3
    (each label compared) in one pass, across slab boundaries (slabs of 1-2 planes), equal
    scipy's per-label find_objects / center_of_mass / label, an absent id included; also inside
    a wider background (the work is cropped to the foreground's box: indices shift back)."""
    from scipy import ndimage

    from medseg.inference import statistics

    rng = np.random.default_rng(7)
    coarse = rng.integers(0, n_labels + 1, (8, 6, 5))
    labels = np.repeat(np.repeat(coarse, 3, 0), 2, 1)[:, :, :].astype(np.uint16)  # blobs that cross slabs
    labels[rng.random(labels.shape) < 0.1] = 0
    line = min(17, n_labels)
    labels[5, :, 2] = line  # a line through many blobs of one label
    assert (n_labels + 2 <= statistics._PER_LABEL_IDS) == (n_labels == 3)  # both projection paths
    labels = np.pad(labels, ((pad, 1), (2 * pad, 0), (pad, pad)))
    labels = np.asarray(labels, order=order)  # type: ignore[call-overload]
    plane = labels.shape[1] * labels.shape[2]
    assert statistics.label_summary(np.zeros_like(labels), 3).counts.tolist() == [labels.size, 0, 0]
    for slab in (plane, 2 * plane):  # 1 plane per slab, then 2 (of the uncropped map; fewer voxels cropped)
        _thin_slabs(monkeypatch, slab)
        ids = n_labels + 2  # one id more than the map has
        summary = statistics.label_summary(labels, ids)
        assert summary.counts.tolist() == np.bincount(labels.ravel(), minlength=ids).tolist()
        assert summary.boxes == ndimage.find_objects(labels, max_label=ids - 1)
        for label_id in range(1, ids):
            mask = labels == label_id
            assert summary.components[label_id] == ndimage.label(mask)[1], label_id
            if mask.any():
                np.testing.assert_allclose(summary.centroids[label_id], ndimage.center_of_mass(mask), rtol=1e-12)
            else:
                assert np.isnan(summary.centroids[label_id]).all()


@pytest.mark.parametrize("kind", ["hu_float", "real_float"])
def test_fortran_ordered_inputs_give_the_same_rows_without_copies(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NIfTI's memory order (what medseg predict hands over) is used transposed, not copied; a
    non-cubic grid, an anisotropic affine with an offset and the caller's bounding boxes: the
    rows are those of the C-ordered arrays. A flipped view is still copied and agrees too."""
    from scipy import ndimage

    from medseg.inference import statistics

    rng = np.random.default_rng(1)
    labels = np.zeros((30, 20, 25), np.uint8)
    labels[3:12, 4:15, 2:9] = 1
    labels[18:27, 2:6, 10:24] = 2
    labels[20:22, 15:19, 3:5] = 2  # a second component
    labels[rng.random(labels.shape) < 0.02] = 3
    image = {"hu_float": rng.integers(-1024, 3000, labels.shape).astype(np.float32),
             "real_float": rng.normal(0, 100, labels.shape).astype(np.float32)}[kind]
    affine = np.array([[0.7, 0, 0, -10], [0, -1.1, 0, 5], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    names = {"a": 1, "b": 2, "c": 3}
    want = case_statistics("c", labels, image, affine, names)
    copies: list[tuple[int, ...]] = []
    real = np.ascontiguousarray

    def counting(a: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        if not a.flags.c_contiguous:
            copies.append(a.shape)
        return real(a, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(statistics.np, "ascontiguousarray", counting)
    f_labels, f_image = np.asfortranarray(labels), np.asfortranarray(image)
    rows, summary = statistics.analyse_case("c", f_labels, f_image, affine, names)
    assert summary.boxes == ndimage.find_objects(labels)  # in the caller's axes, though computed transposed
    assert rows == want and statistics.label_summary(f_labels).boxes == summary.boxes
    assert copies == []
    # what predict_case hands over for an LPS-stored CT: a Fortran-ordered image and the label map
    # flipped back to LPS (a view with negative strides): only the label map is copied
    lps = case_statistics("c", np.asfortranarray(labels[::-1, ::-1])[::-1, ::-1], f_image, affine, names)
    assert lps == want and copies == [labels.shape[::-1]]
    flip_x = np.array([[-1, 0, 0, 29], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # i' = 29 - i
    flipped = case_statistics("c", labels[::-1], image[::-1], affine @ flip_x, names)
    assert len(copies) == 3  # a flipped view of C-ordered arrays: both copied
    for a, b in zip(flipped, want, strict=True):
        assert a["voxels"] == b["voxels"] and a["components"] == b["components"] and a["mean"] == b["mean"]
        for axis in "xyz":
            assert float(str(a[f"centroid_{axis}_mm"])) == pytest.approx(float(str(b[f"centroid_{axis}_mm"])), abs=1e-9)
