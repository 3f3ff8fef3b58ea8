"""Surface distances: hand-computed values on tiny arrays, and agreement with DeepMind's
``surface-distance`` (Nikolov et al. 2021) on random anisotropic cases."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from medseg.evaluation.surface import (
    compute_surface_distances,
    label_boxes,
    label_surface,
    mask_surface,
)

from .evaluation_helpers import perturb, random_labels

pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


def _voxel(shape: tuple[int, int, int], *where: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for w in where:
        mask[w] = True
    return mask


def test_single_voxel_surface() -> None:
    surf = mask_surface(_voxel((5, 5, 5), (2, 2, 2)), (1.0, 1.0, 1.0))
    assert len(surf) == 8
    assert surf.area == pytest.approx(math.sqrt(3))
    # corners (2..3)^3 of the corner grid (6, 6, 6), in mm
    assert sorted(map(tuple, surf.points.tolist()))[0] == (2.0, 2.0, 2.0)


def test_two_voxels_apart_by_hand() -> None:
    # Voxels at x=2 and x=5, spacing 2 mm along x: each has 8 surface corners, all of area
    # 3/8 mm^2; the 4 facing corners are 2 voxels = 4 mm apart, the 4 far ones 6 mm.
    ref = _voxel((8, 4, 4), (2, 1, 1))
    pred = _voxel((8, 4, 4), (5, 1, 1))
    d = compute_surface_distances(ref, pred, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(np.sort(d.ref_to_pred), [4, 4, 4, 4, 6, 6, 6, 6])
    np.testing.assert_allclose(d.ref_areas, 3 / 8)
    assert d.hausdorff() == pytest.approx(6.0)
    assert d.percentile_hausdorff(95) == pytest.approx(6.0)
    assert d.percentile_hausdorff(40) == pytest.approx(4.0)
    assert d.assd() == pytest.approx(5.0)
    assert d.nsd(4.0) == pytest.approx(0.5)
    assert d.nsd(1.0) == 0.0
    assert d.boundary_f1(4.0) == pytest.approx(0.5)
    assert d.overlap_at(6.0) == (pytest.approx(1.0), pytest.approx(1.0))


def test_cube_shifted_one_slice() -> None:
    # A 4x4x4 cube shifted by one slice along z (2.5 mm): the side corners coincide, the
    # top and bottom faces are one slice apart: HD = 2.5 mm, NSD(2.5) = 1.
    ref = np.zeros((8, 8, 8), bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.roll(ref, 1, axis=2)
    d = compute_surface_distances(ref, pred, (1.0, 1.0, 2.5))
    assert d.hausdorff() == pytest.approx(2.5)
    assert d.percentile_hausdorff(95) == pytest.approx(2.5)
    assert d.nsd(2.5) == pytest.approx(1.0)
    assert 0 < d.nsd(1.0) < 1
    assert 0 < d.assd() < 2.5


def test_identical_masks_are_at_distance_zero() -> None:
    ref = random_labels((20, 18, 12), 1, seed=1) == 1
    d = compute_surface_distances(ref, ref.copy(), (0.7, 0.9, 3.0))
    assert d.hausdorff() == 0 and d.assd() == 0 and d.nsd(0.1) == 1 and d.boundary_f1(0.1) == 1


def test_empty_masks() -> None:
    ref = _voxel((4, 4, 4), (1, 1, 1))
    empty = np.zeros_like(ref)
    one = compute_surface_distances(ref, empty, (1.0, 1.0, 1.0))
    assert math.isinf(one.hausdorff()) and math.isinf(one.percentile_hausdorff(95))
    assert one.nsd(1.0) == 0.0
    both = compute_surface_distances(empty, empty, (1.0, 1.0, 1.0))
    assert math.isnan(both.hausdorff()) and math.isnan(both.assd()) and math.isnan(both.nsd(1.0))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="differs"):
        compute_surface_distances(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        compute_surface_distances(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1, 0, 1))


def test_label_map_path_equals_mask_path() -> None:
    labels = random_labels((24, 20, 14), 3, seed=4)
    boxes = label_boxes(labels, 3)
    for label in (1, 2, 3):
        a = label_surface(labels, label, boxes.get(label), (0.8, 0.8, 2.5))
        b = mask_surface(labels == label, (0.8, 0.8, 2.5))
        np.testing.assert_array_equal(a.corners, b.corners)
        np.testing.assert_array_equal(a.areas, b.areas)


def _reference(sd: ModuleType, ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...]) -> dict:
    d = sd.compute_surface_distances(ref, pred, spacing)
    a_r, a_p = d["surfel_areas_gt"], d["surfel_areas_pred"]
    pooled = (np.dot(d["distances_gt_to_pred"], a_r) + np.dot(d["distances_pred_to_gt"], a_p)) / (a_r.sum() + a_p.sum())
    return {
        "raw": d,
        "hd": sd.compute_robust_hausdorff(d, 100),
        "hd95": sd.compute_robust_hausdorff(d, 95),
        "assd": pooled,
        "nsd1": sd.compute_surface_dice_at_tolerance(d, 1.0),
        "nsd3": sd.compute_surface_dice_at_tolerance(d, 3.0),
        "overlap2": sd.compute_surface_overlap_at_tolerance(d, 2.0),
        "dice": sd.compute_dice_coefficient(ref, pred),
    }


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_surface_distance_on_random_anisotropic_cases(sd: ModuleType, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in rng.integers(14, 34, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.3, 3.5, 3))
    labels = random_labels(shape, 2, seed=seed)  # type: ignore[arg-type]
    predicted = perturb(labels, seed)
    for label in (1, 2):
        ref, pred = labels == label, predicted == label
        expected = _reference(sd, ref, pred, spacing)
        ours = compute_surface_distances(ref, pred, spacing)  # type: ignore[arg-type]
        raw = expected["raw"]
        np.testing.assert_allclose(np.sort(ours.ref_to_pred), raw["distances_gt_to_pred"], atol=1e-9)
        np.testing.assert_allclose(np.sort(ours.pred_to_ref), raw["distances_pred_to_gt"], atol=1e-9)
        assert ours.hausdorff() == pytest.approx(expected["hd"], abs=1e-9)
        assert ours.percentile_hausdorff(95) == pytest.approx(expected["hd95"], abs=1e-9)
        assert ours.assd() == pytest.approx(expected["assd"], abs=1e-9)
        assert ours.nsd(1.0) == pytest.approx(expected["nsd1"], abs=1e-12)
        assert ours.nsd(3.0) == pytest.approx(expected["nsd3"], abs=1e-12)
        recall, precision = ours.overlap_at(2.0)
        assert (recall, precision) == pytest.approx(expected["overlap2"], abs=1e-12)
