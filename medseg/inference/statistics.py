"""Per-case, per-structure statistics of a predicted label map (``medseg predict --statistics``).

One row per case and foreground structure of the model's labels (an absent structure gets a
row with 0 voxels and empty intensity/centroid fields), with the columns of :data:`COLUMNS`:

* ``voxels``, ``volume_ml`` (voxels x voxel volume in mm^3 / 1000);
* ``mean, std, min, p05, median, p95, max``: intensities of the input's first channel in its
  own units (HU for CT: DICOM rescale slope/intercept and NIfTI scl_slope/scl_inter applied by
  :func:`medseg.data.io.read_volume`); std is the population standard deviation, percentiles
  use numpy's default linear interpolation;
* ``components``: connected components with face connectivity (6-neighbourhood, as in
  :mod:`medseg.inference.postprocess`);
* ``centroid_{x,y,z}_mm``: centre of mass of the structure's voxel centres in the input's
  world coordinates, RAS+ millimetres (below).

World convention: **RAS+**, as in NIfTI, nibabel and 3D Slicer: the centroid is
``affine @ (i, j, k, 1)`` with the input's NIfTI-style affine, so +x points to the patient's
Right, +y Anterior, +z Superior, and the numbers are those a NIfTI viewer shows. For a DICOM
input (LPS patient coordinates) x_RAS = -x_LPS, y_RAS = -y_LPS, z_RAS = z_LPS.

Everything is computed on the input grid from the label map that is written (no resampling),
in one pass over the volume: the foreground voxels are grouped by label with one stable
(radix) sort of the label ids, then each structure's intensities are a contiguous segment
(O(voxels) quantiles with ``np.quantile``); components and centroids are computed inside each
structure's bounding box (``scipy.ndimage.find_objects``), never on a full-volume mask per
structure.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.utils import atomic_write_text

COLUMNS = (
    "case", "label", "structure", "voxels", "volume_ml", "mean", "std", "min", "p05", "median", "p95", "max",
    "components", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
)
FILE_NAME = "statistics.csv"
PARTS_DIR = "statistics"
"""Per-case files ``OUTPUT/statistics/<case>.csv``, merged into ``OUTPUT/statistics.csv``."""

_FLOAT_DIGITS = 8


def case_statistics(
    case: str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray, label_map: Mapping[str, int]
) -> list[dict[str, object]]:
    """Rows (dicts keyed by :data:`COLUMNS`) for one case, in label-id order.

    ``labels``: (X, Y, Z) integer label map on the input grid; ``image``: (X, Y, Z) intensities
    on the same grid, or None (intensity columns left empty); ``affine``: voxel -> RAS+ mm.
    """
    if image is not None and image.shape != labels.shape:
        raise ValueError(f"{case}: image {image.shape} and label map {labels.shape} are not on the same grid")
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    structures = sorted((int(v), k) for k, v in label_map.items() if int(v) != 0)
    flat = labels.reshape(-1)
    n_ids = max([int(flat.max(initial=0)) + 1] + [lid + 1 for lid, _ in structures])
    counts = np.bincount(flat, minlength=n_ids)
    segments = _intensity_segments(flat, image, counts)
    boxes = ndimage.find_objects(labels)
    rows = []
    for label_id, name in structures:
        n = int(counts[label_id])
        row: dict[str, object] = {c: "" for c in COLUMNS}
        row.update(case=case, label=label_id, structure=name, voxels=n,
                   volume_ml=_fmt(n * voxel_ml), components=0)
        if n:
            if segments is not None:
                vals = segments[label_id]
                q = np.quantile(vals, [0.05, 0.5, 0.95])
                row.update(mean=_fmt(vals.mean(dtype=np.float64)), std=_fmt(vals.std(dtype=np.float64)),
                           min=_fmt(vals.min()), p05=_fmt(q[0]), median=_fmt(q[1]), p95=_fmt(q[2]),
                           max=_fmt(vals.max()))
            box = boxes[label_id - 1]
            mask = labels[box] == label_id
            row["components"] = int(ndimage.label(mask)[1])
            idx = np.array([m.mean() + s.start for m, s in zip(np.nonzero(mask), box, strict=True)])
            world = affine[:3, :3] @ idx + affine[:3, 3]
            row.update(centroid_x_mm=_fmt(world[0]), centroid_y_mm=_fmt(world[1]), centroid_z_mm=_fmt(world[2]))
        rows.append(row)
    return rows


def _intensity_segments(
    flat: np.ndarray, image: np.ndarray | None, counts: np.ndarray
) -> dict[int, np.ndarray] | None:
    """Label id -> that label's intensities (a view into one array grouped by label)."""
    if image is None:
        return None
    fg = flat != 0
    ids = flat[fg]
    values = image.reshape(-1)[fg]
    order = np.argsort(ids, kind="stable")  # radix sort for small integer dtypes: O(n)
    grouped = values[order]
    ends = np.cumsum(counts[1:])
    starts = ends - counts[1:]
    return {i + 1: grouped[s:e] for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if e > s}


def _fmt(value: float) -> str:
    return f"{float(value):.{_FLOAT_DIGITS}g}"


def rows_to_csv(rows: Iterable[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def part_path(output: Path | str, case: str) -> Path:
    return Path(output) / PARTS_DIR / f"{case}.csv"


def write_case(output: Path | str, rows: Sequence[Mapping[str, object]], case: str) -> Path:
    """Write one case's rows atomically to ``OUTPUT/statistics/<case>.csv``."""
    path = part_path(output, case)
    atomic_write_text(path, rows_to_csv(rows))
    return path


def merge(output: Path | str, cases: Sequence[str]) -> Path | None:
    """Concatenate the per-case files of ``cases`` (in that order) into ``OUTPUT/statistics.csv``.

    Atomic; each case appears once however often the batch was resumed (a case's file is
    replaced, never appended to). Cases without a file (failed) are left out. Returns the path,
    or None when no case has statistics.
    """
    chunks = []
    for case in cases:
        path = part_path(output, case)
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            chunks.append("".join(lines[1:]))
    if not chunks:
        return None
    target = Path(output) / FILE_NAME
    atomic_write_text(target, ",".join(COLUMNS) + "\n" + "".join(chunks))
    return target


def read_rows(path: Path | str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
