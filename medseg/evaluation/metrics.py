"""Per-case, per-structure segmentation metrics, spacing-aware (mm, mL).

Definitions (R: reference mask, P: predicted mask of one structure; voxel counts
TP = |R ∩ P|, FP = |P \\ R|, FN = |R \\ P|; spacing in mm along the array axes X, Y, Z):

Overlap
    ``dice`` = 2 TP / (2 TP + FP + FN); ``iou`` (Jaccard) = TP / (TP + FP + FN).
Volumes
    ``vol_ref_ml`` = |R| x voxel volume / 1000, ``vol_pred_ml`` likewise (voxel volume =
    |det| of the affine's 3x3 part, mm^3); ``rel_vol_diff`` = (|P| - |R|) / |R| (signed; NaN
    when R is empty). ``tp``, ``fp``, ``fn``: voxel counts.
Surfaces (DeepMind ``surface-distance`` definition, see :mod:`medseg.evaluation.surface`)
    Surface elements (surfels) sit on voxel corners; each carries the marching-cubes area
    (mm^2) of its 2x2x2 neighbourhood; the distance of a surfel to the other surface is the
    Euclidean distance (mm) to its nearest surfel corner.

    * ``hd``: Hausdorff distance, the maximum distance over both directions (mm).
    * ``hd95``: per direction the area-weighted 95th percentile, then the larger of the two,
      = ``surface_distance.compute_robust_hausdorff(d, 95)``.
    * ``assd``: average symmetric surface distance, the surfel-area-weighted mean of the
      distances of both directions pooled: (Σ d_R a_R + Σ d_P a_P) / (Σ a_R + Σ a_P).
    * ``nsd``: normalised surface distance (surface Dice) at tolerance τ mm: surfel area of
      both surfaces within τ of the other over the total area,
      = ``surface_distance.compute_surface_dice_at_tolerance(d, τ)``. τ may differ per
      structure (``nsd_tolerance_mm``).
    * ``boundary_f1``: with recall = fraction of R's surface area within τ of P and precision
      = fraction of P's surface area within τ of R: 2 precision recall / (precision + recall).
    * ``boundary_iou``: Cheng et al. 2021, on the inner boundary bands of width τ mm of R
      and P (see :mod:`medseg.evaluation.boundary`).
Per case (C classes: background + the structures; confusion matrix M, rows = reference,
columns = prediction; label ids absent from the label set count as background)
    ``pixel_accuracy`` = trace(M) / ΣM; ``mean_iou`` = mean IoU over the classes present in
    the reference or the prediction, background included (FCN, Long et al. 2015);
    ``fw_iou`` = Σ_c (reference frequency of c) x IoU_c; ``mean_dice``, ``boundary_f1``,
    ``boundary_iou``: means over the case's structures of the per-structure values (NaN left
    out); ``worst_structure``: the structure with the lowest Dice.

Empty structures (:mod:`medseg.evaluation.policy`): when R or P (or both) is empty the
overlap metrics (dice, iou, nsd, boundary_f1, boundary_iou) and the distance metrics (hd,
hd95, assd) take the values of the chosen policy, and the row records the rule applied in
``empty_rule`` (present, both_empty, missed, false_positive). Presets: ``nan`` (default;
nnU-Net and MONAI: NaN where undefined), ``reloaded`` (MetricsReloaded: both empty is a
perfect 1 / 0 mm), ``worst`` (a missing or spurious structure gets 0 and the image diagonal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.evaluation._surfel_areas import surfel_area_table
from medseg.evaluation.boundary import boundary_iou
from medseg.evaluation.policy import EmptyPolicy, EmptyRule, get_empty_policy
from medseg.evaluation.surface import Box, crop_surface, label_boxes, surface_distances

COLUMNS: tuple[str, ...] = (
    "case", "label", "structure", "dice", "iou", "hd95", "assd", "nsd", "vol_ref_ml",
    "vol_pred_ml", "hd", "nsd_tolerance_mm", "boundary_f1", "boundary_iou", "rel_vol_diff",
    "tp", "fp", "fn", "empty_rule",
)
"""Columns of ``metrics.csv``, in order."""
OVERLAP_METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "boundary_f1", "boundary_iou")
DISTANCE_METRICS: tuple[str, ...] = ("hd", "hd95", "assd")
AGGREGATED_METRICS: tuple[str, ...] = (
    *OVERLAP_METRICS, *DISTANCE_METRICS, "vol_ref_ml", "vol_pred_ml", "rel_vol_diff",
)
"""Per-structure metrics summarised in ``summary.json``."""
CASE_METRICS: tuple[str, ...] = (
    "pixel_accuracy", "mean_iou", "fw_iou", "mean_dice", "boundary_f1", "boundary_iou",
)
HIGHER_IS_BETTER: dict[str, bool] = {m: True for m in (*OVERLAP_METRICS, *CASE_METRICS)} | {
    m: False for m in DISTANCE_METRICS
}


@dataclass
class StructureMetrics:
    """One row of ``metrics.csv`` (distances in mm, volumes in mL, counts in voxels)."""

    case: str
    label: int
    structure: str
    dice: float
    iou: float
    hd95: float
    assd: float
    nsd: float
    vol_ref_ml: float
    vol_pred_ml: float
    hd: float
    nsd_tolerance_mm: float
    boundary_f1: float
    boundary_iou: float
    rel_vol_diff: float
    tp: int
    fp: int
    fn: int
    empty_rule: EmptyRule

    def as_row(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class CaseMetrics:
    """All metrics of one case: the per-structure rows and the per-case values."""

    case: str
    structures: list[StructureMetrics]
    confusion: np.ndarray
    """(C, C) voxel counts, rows = reference, columns = prediction; class 0 is background."""
    classes: list[str]
    """Names of the confusion matrix's classes: background then the structures."""
    values: dict[str, float] = field(default_factory=dict)
    """pixel_accuracy, mean_iou, fw_iou, mean_dice, boundary_f1, boundary_iou."""
    worst_structure: str = ""
    diagonal_mm: float = math.nan
    """The image diagonal (mm), the ``worst`` policy's distance for a missing structure."""


def confusion_matrix(ref: np.ndarray, pred: np.ndarray, ids: list[int]) -> np.ndarray:
    """(C, C) confusion matrix over the classes ``ids`` (ids[0] = 0 is background).

    Rows are reference classes, columns predicted classes; values not in ``ids`` count as
    background. Only voxels labelled in either map are binned; the rest is background.
    """
    r, p = ref.reshape(-1), pred.reshape(-1)
    idx = np.flatnonzero(r | p)  # labelled in either map (unsigned: r | p != 0 iff either is)
    r_idx, p_idx = r[idx], p[idx]
    top = int(max(r_idx.max(initial=0), p_idx.max(initial=0), max(ids)))
    lut = np.zeros(top + 1, np.int64)
    lut[np.asarray(ids)] = np.arange(len(ids))
    c = len(ids)
    flat = np.bincount(lut[r_idx] * c + lut[p_idx], minlength=c * c).astype(np.int64)
    flat[0] += r.size - idx.size
    return flat.reshape(c, c)


def _class_ious(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan), union


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _rule(n_ref: int, n_pred: int) -> EmptyRule:
    if n_ref and n_pred:
        return "present"
    if n_ref:
        return "missed"
    return "false_positive" if n_pred else "both_empty"


def tolerance_for(nsd_tolerance: float | Mapping[int, float], label: int) -> float:
    """The NSD tolerance (mm) of ``label``: a number, or a mapping label id -> mm (key 0:
    the default for labels not listed)."""
    if isinstance(nsd_tolerance, Mapping):
        value = nsd_tolerance.get(label, nsd_tolerance.get(0))
        if value is None:
            raise ValueError(f"no NSD tolerance for label {label} and no default (key 0) given")
        return float(value)
    return float(nsd_tolerance)


def _present_metrics(
    ref: np.ndarray, pred: np.ndarray, label: int, box_ref: Box, box_pred: Box,
    spacing: tuple[float, float, float], table: np.ndarray, tol: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Surface and boundary metrics of a structure present in both maps: each mask is cropped
    to its own bounding box once, and its surface serves every distance metric."""
    crop_ref, crop_pred = ref[box_ref] == label, pred[box_pred] == label
    sr = crop_surface(crop_ref, _start(box_ref), ref.shape, spacing, table)  # type: ignore[arg-type]
    sp = crop_surface(crop_pred, _start(box_pred), pred.shape, spacing, table)  # type: ignore[arg-type]
    dist = surface_distances(sr, sp)
    overlap = {
        "nsd": dist.nsd(tol),
        "boundary_f1": dist.boundary_f1(tol),
        "boundary_iou": boundary_iou(crop_ref, box_ref, crop_pred, box_pred, spacing, tol),
    }
    distances = {"hd": dist.hausdorff(), "hd95": dist.percentile_hausdorff(95.0), "assd": dist.assd()}
    return overlap, distances


def _start(box: Box) -> tuple[int, int, int]:
    return box[0].start, box[1].start, box[2].start


def evaluate_arrays(
    ref: np.ndarray,
    pred: np.ndarray,
    spacing: tuple[float, float, float],
    structures: Mapping[int, str],
    nsd_tolerance: float | Mapping[int, float] = 1.0,
    empty_policy: str | EmptyPolicy = "nan",
    case: str = "",
    voxel_volume_mm3: float | None = None,
) -> CaseMetrics:
    """Every metric of one case from two unsigned-integer label maps (X, Y, Z) on one grid.

    ``structures``: label id -> name (background excluded). ``spacing``: mm along X, Y, Z.
    ``voxel_volume_mm3``: defaults to the product of the spacing (pass |det(affine)| for
    oblique grids). Returns a :class:`CaseMetrics`.
    """
    if ref.dtype.kind != "u" or pred.dtype.kind != "u":
        raise ValueError(f"{case}: label maps must be unsigned integer arrays, got {ref.dtype} and {pred.dtype}")
    if ref.shape != pred.shape or ref.ndim != 3:
        raise ValueError(f"{case}: reference shape {ref.shape} and prediction shape {pred.shape} "
                         "must be the same 3D shape")
    if 0 in structures:
        raise ValueError(f"{case}: label 0 is background and cannot be a structure")
    policy = get_empty_policy(empty_policy)
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    ref, pred = np.ascontiguousarray(ref), np.ascontiguousarray(pred)
    ids = [0, *sorted(structures)]
    cm = confusion_matrix(ref, pred, ids)
    max_id = max(ids)
    boxes_ref, boxes_pred = label_boxes(ref, max_id), label_boxes(pred, max_id)
    table = surfel_area_table(spacing)
    vox_ml = (voxel_volume_mm3 if voxel_volume_mm3 is not None else float(np.prod(spacing))) / 1000.0
    diagonal = float(np.linalg.norm(np.asarray(ref.shape) * np.asarray(spacing)))
    rows = []
    for k, label in enumerate(ids[1:], start=1):
        tp = int(cm[k, k])
        fn, fp = int(cm[k, :].sum()) - tp, int(cm[:, k].sum()) - tp
        n_ref, n_pred = tp + fn, tp + fp
        tol = tolerance_for(nsd_tolerance, label)
        rule = _rule(n_ref, n_pred)
        if rule == "present":
            overlap, distances = _present_metrics(
                ref, pred, label, boxes_ref[label], boxes_pred[label], spacing, table, tol
            )
            overlap |= {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}
        else:
            o_value, d_value = policy.values(rule, diagonal)
            overlap = dict.fromkeys(OVERLAP_METRICS, o_value)
            distances = dict.fromkeys(DISTANCE_METRICS, d_value)
        rows.append(StructureMetrics(
            case=case, label=label, structure=structures[label], **overlap, **distances,
            vol_ref_ml=n_ref * vox_ml, vol_pred_ml=n_pred * vox_ml, nsd_tolerance_mm=tol,
            rel_vol_diff=(n_pred - n_ref) / n_ref if n_ref else math.nan,
            tp=tp, fp=fp, fn=fn, empty_rule=rule,
        ))
    result = case_metrics(case, rows, cm, ["background", *(structures[i] for i in ids[1:])])
    result.diagonal_mm = diagonal
    return result


def case_metrics(case: str, rows: list[StructureMetrics], cm: np.ndarray, classes: list[str]) -> CaseMetrics:
    """The per-case values from the structure rows and the confusion matrix."""
    ious, union = _class_ious(cm)
    ref_freq = cm.sum(axis=1) / cm.sum()
    values = {
        "pixel_accuracy": float(np.trace(cm) / cm.sum()),
        "mean_iou": float(np.mean(ious[union > 0])) if (union > 0).any() else math.nan,
        "fw_iou": float(np.nansum(ref_freq * np.nan_to_num(ious))),
        "mean_dice": _nanmean([r.dice for r in rows]),
        "boundary_f1": _nanmean([r.boundary_f1 for r in rows]),
        "boundary_iou": _nanmean([r.boundary_iou for r in rows]),
    }
    scored = [r for r in rows if not math.isnan(r.dice)]
    worst = min(scored, key=lambda r: r.dice).structure if scored else ""
    return CaseMetrics(case, rows, cm, classes, values, worst)


def add_absent_structures(
    result: CaseMetrics,
    structures: Mapping[int, str],
    nsd_tolerance: float | Mapping[int, float],
    empty_policy: str | EmptyPolicy,
) -> CaseMetrics:
    """``result`` extended to every structure of ``structures``: those it lacks are absent
    from both maps (rule ``both_empty``); the confusion matrix gets their empty rows."""
    have = {r.label for r in result.structures}
    missing = [i for i in sorted(structures) if i not in have]
    if not missing:
        return result
    policy = get_empty_policy(empty_policy)
    o_value, d_value = policy.values("both_empty", result.diagonal_mm)
    rows = list(result.structures)
    for label in missing:
        rows.append(StructureMetrics(
            case=result.case, label=label, structure=structures[label],
            **dict.fromkeys(OVERLAP_METRICS, o_value), **dict.fromkeys(DISTANCE_METRICS, d_value),
            vol_ref_ml=0.0, vol_pred_ml=0.0, nsd_tolerance_mm=tolerance_for(nsd_tolerance, label),
            rel_vol_diff=math.nan, tp=0, fp=0, fn=0, empty_rule="both_empty",
        ))
    rows.sort(key=lambda r: r.label)
    ids = [0, *sorted({r.label for r in rows})]
    index = [ids.index(i) for i in [0, *sorted(have)]]  # old class k -> new class index[k]
    cm = np.zeros((len(ids), len(ids)), np.int64)
    cm[np.ix_(index, index)] = result.confusion
    classes = ["background", *(structures.get(i, f"label_{i}") for i in ids[1:])]
    out = case_metrics(result.case, rows, cm, classes)
    out.diagonal_mm = result.diagonal_mm
    return out
