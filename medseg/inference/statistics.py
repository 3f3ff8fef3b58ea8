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

Everything is computed on the input grid from the label map that is written (no resampling).
Intensities: when every voxel's value is a whole number in a range of at most
:data:`MAX_HISTOGRAM_BINS` values (CT in HU, integer MR), slab by slab into one histogram per
structure (a ``bincount`` of label x value): exact mean, std (integer sums), min, max and
linearly interpolated percentiles, with memory independent of the volume's size. Otherwise the
foreground voxels are grouped by label with one stable (radix) sort of the label ids and each
structure's intensities are a contiguous segment (``np.quantile``). Voxel counts, bounding boxes
and centroids of all labels come from one slab pass (each label's voxel count on every plane of
each axis: no coordinate arrays, no per-label pass), components from one multi-label
connected-component pass per slab (``cc3d``), joined across slabs: time and memory do not grow
with the number of structures (:class:`LabelSummary`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medseg.utils import atomic_write_text

COLUMNS = (
    "case", "label", "structure", "voxels", "volume_ml", "mean", "std", "min", "p05", "median", "p95", "max",
    "components", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
)
FILE_NAME = "statistics.csv"
PARTS_DIR = "statistics"
"""Per-case files ``OUTPUT/statistics/<case>.csv``, merged into ``OUTPUT/statistics.csv``."""

_FLOAT_DIGITS = 8


@dataclass(frozen=True)
class LabelSummary:
    """Every label's voxels, box, centroid and components, from one slab-by-slab pass.

    Arrays are indexed by label id (0 = background, counted but not summarised); axes are the
    caller's. ``boxes`` has ``scipy.ndimage.find_objects``' layout (entry ``i`` for label
    ``i + 1``, None where absent), so QA's edge check uses it as it is.
    """

    counts: np.ndarray
    """(n_ids,) voxels per label id."""
    centroids: np.ndarray
    """(n_ids, ndim) mean voxel index (float64); NaN where the label is absent."""
    components: np.ndarray
    """(n_ids,) face-connected components per label id (0 for background)."""
    boxes: list[tuple[slice, ...] | None]


def label_summary(labels: np.ndarray, n_ids: int | None = None) -> LabelSummary:
    """:class:`LabelSummary` of an integer label map in any memory order (a Fortran-ordered
    map is used transposed, not copied)."""
    work, _, transposed = _working_order(labels, None)
    n = _n_ids(work, n_ids)
    crop, _, origin = _foreground_crop(work, None)
    return _summarize(crop, n, transposed, origin, work.size)


def case_statistics(
    case: str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray, label_map: Mapping[str, int],
) -> list[dict[str, object]]:
    """Rows (dicts keyed by :data:`COLUMNS`) for one case, in label-id order.

    ``labels``: (X, Y, Z) integer label map on the input grid; ``image``: (X, Y, Z) intensities
    on the same grid, or None (intensity columns left empty); ``affine``: voxel -> RAS+ mm.
    """
    return analyse_case(case, labels, image, affine, label_map)[0]


def analyse_case(
    case: str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray, label_map: Mapping[str, int],
) -> tuple[list[dict[str, object]], LabelSummary]:
    """:func:`case_statistics`' rows and the :class:`LabelSummary` they came from (its boxes
    serve QA's edge check), from one memory-order conversion of the inputs."""
    if image is not None and image.shape != labels.shape:
        raise ValueError(f"{case}: image {image.shape} and label map {labels.shape} are not on the same grid")
    # work on C-ordered arrays (slabs along axis 0 are contiguous): a Fortran-ordered image
    # (NIfTI's order, as medseg predict has it) is used transposed, not copied
    labels, image, transposed = _working_order(labels, image)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    structures = sorted((int(v), k) for k, v in label_map.items() if int(v) != 0)
    n_ids = _n_ids(labels, max([0] + [lid + 1 for lid, _ in structures]))
    size = labels.size
    # everything below looks at the foreground's bounding box only (background outside it is
    # neither a structure's voxel nor its intensity)
    labels, image, origin = _foreground_crop(labels, image)
    with ThreadPoolExecutor(1, thread_name_prefix="medseg-histogram") as pool:
        # the histogram (numpy: releases the GIL) beside the summary (cc3d: holds it)
        binned = pool.submit(_intensity_histograms, labels, image, n_ids) if image is not None else None
        summary = _summarize(labels, n_ids, transposed, origin, size)
        histograms = binned.result() if binned is not None else None
    counts = summary.counts
    segments = _intensity_segments(labels.reshape(-1), image, counts) if histograms is None else None
    rows = []
    for label_id, name in structures:
        n = int(counts[label_id])
        row: dict[str, object] = {c: "" for c in COLUMNS}
        row.update(case=case, label=label_id, structure=name, voxels=n,
                   volume_ml=_fmt(n * voxel_ml), components=0)
        if n:
            if histograms is not None:
                row.update(_histogram_row(*histograms, label_id))
            elif segments is not None:
                vals = segments[label_id]
                q = np.quantile(vals, QUANTILES)
                row.update(mean=_fmt(vals.mean(dtype=np.float64)), std=_fmt(vals.std(dtype=np.float64)),
                           min=_fmt(vals.min()), p05=_fmt(q[0]), median=_fmt(q[1]), p95=_fmt(q[2]),
                           max=_fmt(vals.max()))
            row["components"] = int(summary.components[label_id])
            world = affine[:3, :3] @ summary.centroids[label_id] + affine[:3, 3]
            row.update(centroid_x_mm=_fmt(world[0]), centroid_y_mm=_fmt(world[1]), centroid_z_mm=_fmt(world[2]))
        rows.append(row)
    return rows, summary


def _working_order(labels: np.ndarray, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """C-contiguous arrays with the same voxels, both as given or both transposed (axes
    reversed; the flag says so). Transposed when the larger array (the image, else the label
    map) is Fortran-ordered, as NIfTI's are: it is then used as a view, and only an array in
    another layout (e.g. a label map flipped back to LPS) is copied."""
    lead = image if image is not None else labels
    transposed = not lead.flags.c_contiguous and lead.T.flags.c_contiguous
    out = [np.ascontiguousarray(a.T if transposed else a) for a in (labels, image) if a is not None]
    return out[0], (out[1] if image is not None else None), transposed


def _foreground_crop(
    labels: np.ndarray, image: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """Views of ``labels`` and ``image`` on the bounding box of the non-zero labels (empty
    when there are none) and the box's origin. Three ``any`` reductions: milliseconds."""
    starts, stops = [], []
    for axis in range(labels.ndim):
        hit = np.flatnonzero(labels.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if hit.size == 0:
            starts, stops = [0] * labels.ndim, [0] * labels.ndim
            break
        starts.append(int(hit[0]))
        stops.append(int(hit[-1]) + 1)
    box = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    return labels[box], (image[box] if image is not None else None), tuple(starts)


def _n_ids(labels: np.ndarray, at_least: int | None) -> int:
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"label map has negative ids (min {int(labels.min())}); expected ids >= 0")
    return max(int(labels.max(initial=0)) + 1, at_least or 0)


def _summarize(labels: np.ndarray, n_ids: int, transposed: bool, origin: tuple[int, ...], size: int) -> LabelSummary:
    """One pass over ``labels`` (axes reversed from the caller's when ``transposed``): the
    foreground box of a label map of ``size`` voxels whose index ``origin`` it starts at.

    Per slab along axis 0: each label's voxel count on every plane of every axis
    (:func:`_project_by_bincount`: two ``bincount`` calls for all labels at once, whatever their
    number; :func:`_project_each_label` for a few labels) for the boxes, centroids and counts;
    and the multi-label connected components (:func:`_components`)."""
    projections = [np.zeros((n_ids, n), np.int64) for n in labels.shape]
    per_label = n_ids <= _PER_LABEL_IDS
    for s in _slabs(labels.shape, _COMPONENT_SLAB_VOXELS if per_label else None):
        (_project_each_label if per_label else _project_by_bincount)(labels[s], s, projections)
    counts = projections[0].sum(axis=1)
    if per_label:  # the background is not projected: its count is the rest
        counts[0] = labels.size - counts[1:].sum()
    counts[0] += size - labels.size  # background outside the box
    present = counts > 0
    present[0] = False  # background: counted, not summarised (its voxels outside the box were never seen)
    centroids = np.full((n_ids, labels.ndim), np.nan)
    boxes: list[tuple[slice, ...] | None] = [None] * max(0, n_ids - 1)
    for axis, proj in enumerate(projections):
        weights = np.arange(origin[axis], origin[axis] + proj.shape[1], dtype=np.float64)
        centroids[present, axis] = proj[present].astype(np.float64) @ weights / counts[present]
    for label_id in np.flatnonzero(present[1:]) + 1:
        box = []
        for proj, start in zip(projections, origin, strict=True):
            nz = np.flatnonzero(proj[label_id]) + start
            box.append(slice(int(nz[0]), int(nz[-1]) + 1))
        boxes[label_id - 1] = tuple(box[::-1] if transposed else box)
    if transposed:
        centroids = centroids[:, ::-1]
    return LabelSummary(counts=counts, centroids=centroids, components=_components(labels, n_ids), boxes=boxes)


def _project_by_bincount(lab: np.ndarray, s: slice, projections: list[np.ndarray]) -> None:
    """Add slab ``lab`` (rows ``s`` of axis 0) to every label's voxel count per plane of each
    axis: two ``bincount`` calls whatever the number of labels."""
    n_ids = projections[0].shape[0]
    key = lab.astype(np.intp)
    # the last axis: bincount of label * n + index; the others at once from the counts per
    # label and row (label * rows + row: one bincount summed both ways)
    rows = int(np.prod(lab.shape[:-1]))
    rest = key * rows
    rest += np.arange(rows, dtype=np.intp).reshape(*lab.shape[:-1], 1)
    per_row = np.bincount(rest.ravel(), minlength=n_ids * rows).reshape(n_ids, *lab.shape[:-1])
    del rest
    _add_row_counts(projections, slice(None), s, per_row)
    n = lab.shape[-1]
    key *= n
    key += np.arange(n, dtype=np.intp)
    projections[-1] += np.bincount(key.ravel(), minlength=n_ids * n).reshape(n_ids, n)


def _project_each_label(lab: np.ndarray, s: slice, projections: list[np.ndarray]) -> None:
    """As :func:`_project_by_bincount` for few labels, the background excepted: per label one
    comparison and two sums of its uint8 mask (no int64 key per voxel: about half the time
    with two labels)."""
    for label_id in range(1, projections[0].shape[0]):
        mask = (lab == label_id).view(np.uint8)
        _add_row_counts(projections, label_id, s, mask.sum(axis=-1, dtype=np.int64))
        projections[-1][label_id] += mask.sum(axis=tuple(range(lab.ndim - 1)), dtype=np.int64)


def _add_row_counts(projections: list[np.ndarray], ids: int | slice, s: slice, per_row: np.ndarray) -> None:
    """Add voxel counts per row of a slab (rows ``s`` of axis 0; ``per_row``'s last axes are
    the slab's all but its last) to the projections of label(s) ``ids`` on every axis but the last."""
    rows = len(projections) - 1  # the slab's axes but its last
    lead = per_row.ndim - rows  # 1 with a label axis first, else 0
    for axis in range(rows):
        part = per_row.sum(axis=tuple(lead + a for a in range(rows) if a != axis))
        if axis == 0:
            projections[0][ids, s] += part
        else:
            projections[axis][ids] += part


def _components(labels: np.ndarray, n_ids: int) -> np.ndarray:
    """Face-connected components of every label id of a label map, slab by slab along axis 0.

    Each slab is labelled once for all labels (``cc3d``: one pass whatever the number of
    labels, uint32 ids of the slab only); components that continue into the next slab are
    joined by the same-label face pairs on their common boundary, and counted per label as a
    graph's connected components (``scipy.sparse.csgraph``). The same counts as
    ``ndimage.label(labels == i)`` for each ``i`` without a full-volume array (a random
    network's CT prediction had 700 000 components in 512x512x300 voxels).
    """
    import cc3d
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if labels.ndim not in (2, 3):
        raise ValueError(f"label map has {labels.ndim} dimensions; expected 2 or 3")
    connectivity: Literal[4, 6] = 6 if labels.ndim == 3 else 4
    total, node_labels, edges = 0, [], []
    prev_ids: np.ndarray | None = None
    prev_lab: np.ndarray | None = None
    for s in _slabs(labels.shape, _COMPONENT_SLAB_VOXELS):
        lab = labels[s]
        ids, n = cc3d.connected_components(lab, connectivity=connectivity, return_N=True, out_dtype=np.uint32)
        comp_label = np.zeros(n + 1, lab.dtype)
        comp_label[ids] = lab  # components are label-homogeneous
        node_labels.append(comp_label[1:])
        if prev_ids is not None and prev_lab is not None and n:
            both = (lab[0] == prev_lab) & (lab[0] != 0)
            if both.any():  # distinct (previous slab's id, this slab's id) pairs, 0-based global
                m = total + n
                code = np.unique(prev_ids[both] * m + (ids[0][both].astype(np.int64) - 1 + total))
                edges.append(np.stack([code // m, code % m]))
        prev_ids = ids[-1].astype(np.int64) + (total - 1)
        prev_lab = lab[-1]
        total += n
    all_labels = np.concatenate(node_labels) if node_labels else np.zeros(0, np.int64)
    if edges:
        pairs = np.concatenate(edges, axis=1)
        graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(total, total))
        n_roots, root = connected_components(graph, directed=False)
        root_label = np.zeros(n_roots, all_labels.dtype)
        root_label[root] = all_labels
        all_labels = root_label
    return np.bincount(all_labels.astype(np.intp), minlength=n_ids)[:n_ids]


QUANTILES = (0.05, 0.5, 0.95)
MAX_HISTOGRAM_BINS = 1 << 16
"""Integer intensity ranges up to this many values (e.g. int16 CT) use the histogram path."""
_MAX_HISTOGRAM_CELLS = 1 << 24
_SLAB_VOXELS = 1 << 20
"""Voxels per slab: its int64 keys are 8 MiB each (with 4 Mi voxels case_done on the CT peaked 46 MiB higher)."""
_PER_LABEL_IDS = 5
"""Label ids (background included) up to which the projections compare each label
(:func:`_project_each_label`; its time grows with the ids, the bincount's does not)."""
_COMPONENT_SLAB_VOXELS = 1 << 22
"""Voxels per slab of the component count: 16 MiB of uint32 ids; fewer slab faces to join
than with 1 Mi voxels (a random network's CT mask: 0.88 s instead of 1.21 s; 8 Mi: 0.94 s)."""


def centroid_index(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index (float64, one per axis) of the True voxels of a non-empty 3D mask.

    From the mask's projection on each axis (voxel counts per plane): the same value as
    ``scipy.ndimage.center_of_mass`` without its full-volume float arrays.
    """
    total = np.count_nonzero(mask)
    out = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        per_plane = np.count_nonzero(mask, axis=others)
        out.append(float(np.dot(per_plane.astype(np.float64), np.arange(mask.shape[axis], dtype=np.float64))) / total)
    return np.array(out)


def count_components(mask: np.ndarray) -> int:
    """Face-connected components of a 2D or 3D boolean ``mask`` (as ``ndimage.label(mask)[1]``),
    slab by slab along axis 0 (:func:`_components`)."""
    work, _, _ = _working_order(np.asarray(mask, dtype=bool), None)
    return int(_components(work.view(np.uint8), 2)[1])


def _slabs(shape: tuple[int, ...], voxels: int | None = None) -> list[slice]:
    """Slices along axis 0 of about ``voxels`` (default :data:`_SLAB_VOXELS`) voxels each."""
    step = max(1, (voxels or _SLAB_VOXELS) // max(1, int(np.prod(shape[1:]))))
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]


def _intensity_histograms(
    labels: np.ndarray, image: np.ndarray, n_ids: int
) -> tuple[np.ndarray, int] | None:
    """(n_ids, bins) voxel counts of each label per intensity value, and the lowest value.

    None unless every value of ``image`` is a whole number and the range fits
    :data:`MAX_HISTOGRAM_BINS` (then the caller sorts instead). Slab by slab: no
    full-volume temporary.
    """
    if image.size == 0 or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        return None
    slabs = _slabs(image.shape)
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi - lo + 1 > MAX_HISTOGRAM_BINS:
        return None
    bins = int(hi - lo) + 1
    if n_ids * bins > _MAX_HISTOGRAM_CELLS:
        return None
    if np.issubdtype(image.dtype, np.floating):
        for s in slabs:
            part = image[s]
            if not np.array_equal(part, np.floor(part)):
                return None
    base = int(lo)
    hist = np.zeros(n_ids * bins, dtype=np.int64)
    for s in slabs:  # every voxel, background included: cheaper than selecting the foreground
        key = labels[s].astype(np.intp)
        key *= bins
        key += image[s].astype(np.intp)
        key -= base
        hist += np.bincount(key.ravel(), minlength=n_ids * bins)
    return hist.reshape(n_ids, bins), base


def _histogram_row(hist: np.ndarray, base: int, label_id: int) -> dict[str, str]:
    """mean, std (population), min, percentiles (numpy's linear interpolation) and max of one label."""
    counts = hist[label_id]
    nz = np.flatnonzero(counts)
    counts = counts[nz[0]:nz[-1] + 1]
    low = base + int(nz[0])
    offsets = np.arange(counts.size, dtype=np.int64)  # value - low: < 2**16, so the sums fit in int64
    n = int(counts.sum())
    s1, s2 = int(np.dot(counts, offsets)), int(np.dot(counts, offsets * offsets))
    cum = np.cumsum(counts)

    def order_stat(k: int) -> int:  # the k-th smallest value (0-based)
        return low + int(np.searchsorted(cum, k, side="right"))

    quantiles = []
    for q in QUANTILES:
        h = (n - 1) * q
        k = int(np.floor(h))
        quantiles.append(_lerp(order_stat(k), order_stat(min(k + 1, n - 1)), h - k))
    return {"mean": _fmt(low + s1 / n), "std": _fmt(math.sqrt(n * s2 - s1 * s1) / n),  # exact integer sums
            "min": _fmt(low), "p05": _fmt(quantiles[0]), "median": _fmt(quantiles[1]),
            "p95": _fmt(quantiles[2]), "max": _fmt(low + counts.size - 1)}


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's quantile interpolation (``a + (b - a) * t``, from ``b`` for t >= 0.5)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


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
