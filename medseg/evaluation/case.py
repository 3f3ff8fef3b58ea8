"""Evaluating one case from its files: read, check, (resample), compute every metric.

:func:`evaluate_case` never raises for a bad case: unreadable files, 4D or non-integer
label maps and geometry mismatches make the case ``failed`` with a message naming the
file, what was found and how to fix it; label values missing from the label set make it a
``warning`` (those voxels count as background). It runs in worker processes, so its
arguments and result are plain picklable data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.data.io import ImageReadError, Volume, read_label, same_geometry
from medseg.evaluation.inputs import CaseInput
from medseg.evaluation.metrics import CaseMetrics, evaluate_arrays
from medseg.evaluation.policy import EmptyPolicy


class CaseError(ValueError):
    """A case cannot be evaluated; the message names the case, the file and the fix."""


@dataclass(frozen=True)
class Settings:
    """What every case is evaluated with."""

    structures: dict[int, str] | None
    """Label id -> name; None: every id found in the case, named ``label_<id>``."""
    nsd_tolerance: float | dict[int, float]
    empty_policy: EmptyPolicy
    resample_pred: bool = False


@dataclass
class CaseOutcome:
    """The result of one case: status ok | warning | failed, problems, metrics."""

    name: str
    status: str
    problems: list[str] = field(default_factory=list)
    metrics: CaseMetrics | None = None
    seconds: float = 0.0
    label_ids: list[int] = field(default_factory=list)
    """Label ids present in the reference or the prediction."""
    resampled: bool = False


def describe_geometry(vol: Volume) -> str:
    """Shape, spacing (mm) and affine of a volume, on one line."""
    affine = np.array2string(np.round(vol.affine, 4), separator=", ", max_line_width=10_000)
    spacing = ", ".join(f"{s:.4g}" for s in vol.spacing)
    return f"shape {vol.spatial_shape}, spacing ({spacing}) mm, affine {' '.join(affine.split())}"


def resample_nearest(moving: Volume, target: Volume) -> np.ndarray:
    """``moving``'s label map resampled (nearest neighbour) onto ``target``'s voxel grid."""
    to_moving = np.linalg.inv(moving.affine) @ target.affine  # target voxel -> moving voxel
    return ndimage.affine_transform(
        moving.array, to_moving[:3, :3], offset=to_moving[:3, 3], output_shape=target.spatial_shape,
        order=0, mode="constant", cval=0,
    )


def _read(path_role: str, case: CaseInput) -> Volume:
    path = case.pred if path_role == "prediction" else case.ref
    try:
        return read_label(path)
    except ImageReadError as err:
        raise CaseError(f"{case.name}: {path_role} {err}") from err


def load_pair(case: CaseInput, resample_pred: bool = False) -> tuple[Volume, Volume, bool]:
    """(reference, prediction, resampled) on the same grid, or :class:`CaseError`."""
    ref = _read("reference", case)
    pred = _read("prediction", case)
    if same_geometry(ref, pred):
        return ref, pred, False
    if not resample_pred:
        raise CaseError(
            f"{case.name}: prediction and reference geometry differ. Prediction {case.pred}: "
            f"{describe_geometry(pred)}. Reference {case.ref}: {describe_geometry(ref)}. "
            "Predict on the reference grid, or pass --resample-pred to resample the prediction "
            "(nearest neighbour) onto the reference"
        )
    pred = Volume(resample_nearest(pred, ref), ref.affine.copy(), ref.header, pred.source)
    return ref, pred, True


def c_order(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float]
            ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The two label maps as C-contiguous arrays on one grid, with the spacing (mm) of their axes.

    NIfTI stores voxels in Fortran order, so nibabel returns F-contiguous arrays; copying a
    512 x 512 x 200 map into C order costs seconds (a strided transpose). Every metric is
    invariant under a permutation of the axes that permutes the spacing alike, so F-ordered
    maps are used as their transposes (views, axes Z, Y, X) with the spacing reversed.
    """
    if ref.flags.f_contiguous and pred.flags.f_contiguous and not (ref.flags.c_contiguous and pred.flags.c_contiguous):
        return ref.T, pred.T, (spacing[2], spacing[1], spacing[0])
    return np.ascontiguousarray(ref), np.ascontiguousarray(pred), spacing


def _present(arr: np.ndarray) -> np.ndarray:
    """Voxel count per non-zero label value (index = value; index 0 is not counted)."""
    return np.bincount(arr[arr != 0], minlength=1)  # foreground only: small temporaries


def _unknown_labels(case: CaseInput, role: str, counts: np.ndarray, known: dict[int, str]) -> list[str]:
    ids = sorted(known)
    shown = ids if len(ids) <= 12 else [*ids[:6], "...", *ids[-3:]]
    out = []
    for value in np.flatnonzero(counts):
        if value != 0 and int(value) not in known:
            out.append(
                f"{case.name}: {role} has label {int(value)} ({int(counts[value])} voxels), which is "
                f"not in the label set (ids {', '.join(map(str, shown))}); counted as background. "
                "Fix the label map or add the label to the manifest"
            )
    return out


def evaluate_case(case: CaseInput, settings: Settings) -> CaseOutcome:
    """Read and evaluate one case; problems are recorded in the outcome, never raised."""
    start = time.perf_counter()
    try:
        ref, pred, resampled = load_pair(case, settings.resample_pred)
    except CaseError as err:
        return CaseOutcome(case.name, "failed", [str(err)], seconds=time.perf_counter() - start)
    ref_arr, pred_arr, spacing = c_order(ref.array, pred.array, ref.spacing)
    ref_counts, pred_counts = _present(ref_arr), _present(pred_arr)
    ids = sorted(({int(v) for v in np.flatnonzero(ref_counts)} | {int(v) for v in np.flatnonzero(pred_counts)}) - {0})
    problems: list[str] = []
    if settings.structures is None:
        structures = {i: f"label_{i}" for i in ids}
    else:
        structures = settings.structures
        problems += _unknown_labels(case, "reference", ref_counts, structures)
        problems += _unknown_labels(case, "prediction", pred_counts, structures)
    voxel_mm3 = float(abs(np.linalg.det(ref.affine[:3, :3])))
    try:
        metrics = evaluate_arrays(
            ref_arr, pred_arr, spacing, structures, settings.nsd_tolerance,
            settings.empty_policy, case=case.name, voxel_volume_mm3=voxel_mm3,
        )
    except (ValueError, MemoryError) as err:
        problems.append(f"{case.name}: metrics could not be computed ({type(err).__name__}: {err})")
        return CaseOutcome(case.name, "failed", problems, seconds=time.perf_counter() - start)
    unknown = any("not in the label set" in p for p in problems)
    return CaseOutcome(
        case.name, "warning" if unknown else "ok", problems, metrics,
        time.perf_counter() - start, ids, resampled,
    )
