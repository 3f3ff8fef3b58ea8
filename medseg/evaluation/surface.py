"""Surface elements (surfels) of 3D masks and the distances between two surfaces, in mm.

This is the surface definition of DeepMind's ``surface-distance`` package (Nikolov et al.
2021, https://github.com/google-deepmind/surface-distance), reproduced exactly but faster:

* The surface of a mask lives on the voxel *corners*: corner ``g`` (per axis) lies between
  voxels ``g - 1`` and ``g``. Its 2x2x2 neighbourhood code (see
  :mod:`medseg.evaluation._surfel_areas`) is neither 0 (all outside) nor 255 (all inside)
  for a surface corner; outside the image counts as outside. Each surface corner carries
  the marching-cubes surface area of its code, in mm^2 for the given spacing.
* The distance from a surfel of A to surface B is the Euclidean distance in mm from its
  corner to the nearest surface corner of B.

What differs from the reference is only how the numbers are obtained (same values to
~1e-12 mm): each mask is cropped to its own bounding box (plus a one-voxel margin) before
its codes are computed; corners shared by both surfaces get distance 0 without a search;
and the remaining nearest-corner distances come from a k-d tree over the other surface's
corners (scipy ``cKDTree``, exact search) instead of a Euclidean distance transform of the
whole bounding box of A and B. The distance transform costs the volume of that box (large
when a false positive lies far away); the tree costs only the number of surface corners.
Each surface is computed once and serves every distance metric of its structure.

Why not MONAI's metrics: its Hausdorff and surface distances use voxel-edge points without
surfel areas (only its surface Dice has a subvoxel option), so HD95 and ASSD differ from
this definition, and every metric recomputes the edges and distance transforms (tens of
times slower; see benchmarks/RESULTS.md, "Evaluation").

Arrays are (X, Y, Z) voxel order; spacings are mm along those axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.evaluation._surfel_areas import surfel_area_table

Box = tuple[slice, slice, slice]


def label_boxes(labels: np.ndarray, max_label: int) -> dict[int, Box]:
    """Bounding box (slices, in voxels) of every label id 1..``max_label`` present, in one pass."""
    if labels.dtype.kind not in "ui":
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    found = ndimage.find_objects(labels, max_label=max_label)
    return {i + 1: box for i, box in enumerate(found) if box is not None}  # type: ignore[misc]


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a boolean mask, or None when it is empty."""
    found = ndimage.find_objects(mask.astype(np.uint8), max_label=1)
    return found[0] if found and found[0] is not None else None  # type: ignore[return-value]


@dataclass(eq=False)
class Surface:
    """The surfels of one mask: corner indices, positions (mm) and areas (mm^2).

    ``corners``: (N,) int64 linear indices into the corner grid of shape (X+1, Y+1, Z+1),
    ascending. ``points``: (N, 3) float64 corner positions, index * spacing (mm).
    ``areas``: (N,) float64 surfel areas (mm^2).
    """

    corners: np.ndarray
    points: np.ndarray
    areas: np.ndarray
    _tree: cKDTree | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.corners.shape[0])

    @property
    def area(self) -> float:
        """Total surface area in mm^2."""
        return float(self.areas.sum())

    def tree(self) -> cKDTree:
        """A k-d tree over the surface corners (built once, on first use)."""
        if self._tree is None:
            self._tree = cKDTree(self.points, leafsize=16, balanced_tree=False, compact_nodes=False)
        return self._tree


def _empty_surface() -> Surface:
    return Surface(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0))


def crop_surface(
    crop: np.ndarray,
    offset: tuple[int, int, int],
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    table: np.ndarray | None = None,
) -> Surface:
    """Surfels of a boolean ``crop`` taken at voxel ``offset`` from an image of ``shape``.

    The crop must contain the whole mask (everything outside it is outside the mask).
    ``table``: :func:`surfel_area_table` for ``spacing`` (computed when not given).
    """
    if not crop.any():
        return _empty_surface()
    if table is None:
        table = surfel_area_table(spacing)
    m = np.asarray(crop.shape)
    padded = np.zeros(m + 2, np.uint8)
    padded[1:-1, 1:-1, 1:-1] = crop
    # Code bit 7 - (4a + 2b + c) is the voxel at offset (a, b, c) of the corner's 2x2x2 cell,
    # packed one axis at a time (3 shifted ORs instead of 8): Z pairs, then Y, then X.
    pairs = (padded[:, :, :-1] << 1) | padded[:, :, 1:]
    quads = (pairs[:, :-1, :] << 2) | pairs[:, 1:, :]
    codes = (quads[:-1] << 4) | quads[1:]
    n0, n1, n2 = codes.shape
    flat = codes.ravel()
    local = np.flatnonzero((flat - np.uint8(1)) < 254)  # neither 0 (outside) nor 255 (inside)
    ijk = np.stack(np.unravel_index(local, (n0, n1, n2)), axis=1)
    ijk += np.asarray(offset, dtype=ijk.dtype)
    grid = tuple(int(s) + 1 for s in shape)
    corners = np.ravel_multi_index(tuple(ijk.T), grid).astype(np.int64)
    points = ijk * np.asarray(spacing, dtype=np.float64)
    return Surface(corners, points, table[flat[local]])


def label_surface(
    labels: np.ndarray,
    label: int,
    box: Box | None,
    spacing: tuple[float, float, float],
    table: np.ndarray | None = None,
) -> Surface:
    """Surfels of ``labels == label`` using its bounding ``box`` (None: the label is absent)."""
    if box is None:
        return _empty_surface()
    crop = labels[box] == label
    offset = (box[0].start, box[1].start, box[2].start)
    return crop_surface(crop, offset, labels.shape, spacing, table)  # type: ignore[arg-type]


def mask_surface(mask: np.ndarray, spacing: tuple[float, float, float]) -> Surface:
    """Surfels of a full-size boolean mask (X, Y, Z)."""
    if mask.ndim != 3:
        raise ValueError(f"mask has shape {mask.shape}; expected a 3D (X, Y, Z) array")
    box = mask_box(mask)
    if box is None:
        return _empty_surface()
    offset = (box[0].start, box[1].start, box[2].start)
    return crop_surface(mask[box].astype(bool), offset, mask.shape, spacing)  # type: ignore[arg-type]


def _directed(src: Surface, dst: Surface) -> np.ndarray:
    """Distance (mm) from each surfel of ``src`` to the surface ``dst`` (inf when it is empty)."""
    if len(src) == 0:
        return np.zeros(0)
    if len(dst) == 0:
        return np.full(len(src), np.inf)
    pos = np.minimum(np.searchsorted(dst.corners, src.corners), len(dst) - 1)
    rest = dst.corners[pos] != src.corners  # corners on both surfaces are at distance 0
    dist = np.zeros(len(src))
    if rest.any():
        dist[rest] = dst.tree().query(src.points[rest], k=1)[0]
    return dist


def _percentile(dist: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Area-weighted percentile, as ``compute_robust_hausdorff`` (sorted by distance, then area)."""
    if len(dist) == 0:
        return np.inf
    order = np.lexsort((areas, dist))
    cum = np.cumsum(areas[order]) / np.sum(areas)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(dist[order[min(idx, len(dist) - 1)]])


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances between a reference and a predicted surface, both directions.

    ``ref_to_pred[i]``: distance (mm) from reference surfel i (area ``ref_areas[i]``,
    mm^2) to the predicted surface; ``pred_to_ref`` likewise. A direction towards an empty
    surface holds ``inf``, as in ``surface_distance.compute_surface_distances``.
    """

    ref_to_pred: np.ndarray
    ref_areas: np.ndarray
    pred_to_ref: np.ndarray
    pred_areas: np.ndarray

    def hausdorff(self) -> float:
        """Hausdorff distance (mm): the largest distance in either direction."""
        both = np.concatenate([self.ref_to_pred, self.pred_to_ref])
        return float(both.max()) if both.size else np.nan

    def percentile_hausdorff(self, percent: float = 95.0) -> float:
        """Robust Hausdorff (mm): max over directions of the area-weighted ``percent`` percentile.

        Equals ``surface_distance.compute_robust_hausdorff(·, percent)``.
        """
        if not (self.ref_to_pred.size or self.pred_to_ref.size):
            return np.nan
        return max(
            _percentile(self.ref_to_pred, self.ref_areas, percent),
            _percentile(self.pred_to_ref, self.pred_areas, percent),
        )

    def assd(self) -> float:
        """Average symmetric surface distance (mm): area-weighted mean of both directions pooled."""
        total = self.ref_areas.sum() + self.pred_areas.sum()
        if total == 0:
            return np.nan
        weighted = (self.ref_to_pred * self.ref_areas).sum() + (self.pred_to_ref * self.pred_areas).sum()
        return float(weighted / total)

    def overlap_at(self, tolerance_mm: float) -> tuple[float, float]:
        """(recall, precision): area fractions of the reference / predicted surface within
        ``tolerance_mm`` of the other (``compute_surface_overlap_at_tolerance``)."""
        ref_total, pred_total = self.ref_areas.sum(), self.pred_areas.sum()
        ref_in = self.ref_areas[self.ref_to_pred <= tolerance_mm].sum()
        pred_in = self.pred_areas[self.pred_to_ref <= tolerance_mm].sum()
        recall = float(ref_in / ref_total) if ref_total > 0 else np.nan
        precision = float(pred_in / pred_total) if pred_total > 0 else np.nan
        return recall, precision

    def nsd(self, tolerance_mm: float) -> float:
        """Normalised surface distance (surface Dice) at ``tolerance_mm``
        (``compute_surface_dice_at_tolerance``)."""
        total = self.ref_areas.sum() + self.pred_areas.sum()
        if total == 0:
            return np.nan
        inside = (
            self.ref_areas[self.ref_to_pred <= tolerance_mm].sum()
            + self.pred_areas[self.pred_to_ref <= tolerance_mm].sum()
        )
        return float(inside / total)

    def boundary_f1(self, tolerance_mm: float) -> float:
        """Boundary F1 at ``tolerance_mm``: harmonic mean of surface precision and recall."""
        recall, precision = self.overlap_at(tolerance_mm)
        if np.isnan(recall) or np.isnan(precision):
            return np.nan
        return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def surface_distances(ref: Surface, pred: Surface) -> SurfaceDistances:
    """Distances between two surfaces computed on the same grid and spacing."""
    return SurfaceDistances(_directed(ref, pred), ref.areas, _directed(pred, ref), pred.areas)


def compute_surface_distances(
    mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, float, float]
) -> SurfaceDistances:
    """Surface distances between two full-size boolean masks (X, Y, Z), spacing in mm."""
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(
            f"reference mask shape {mask_ref.shape} differs from prediction mask shape {mask_pred.shape}"
        )
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ValueError(f"spacing {tuple(spacing)}: expected three positive voxel sizes in mm")
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    return surface_distances(mask_surface(mask_ref, spacing), mask_surface(mask_pred, spacing))
