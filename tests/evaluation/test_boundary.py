"""Boundary bands and boundary IoU: hand-counted voxels on cubes."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.evaluation import boundary
from medseg.evaluation.boundary import band_offsets, boundary_iou, inner_band


def test_band_offsets() -> None:
    assert len(band_offsets((1.0, 1.0, 1.0), 1.0)) == 6  # face neighbours
    assert len(band_offsets((1.0, 1.0, 1.0), 1.5)) == 18  # + edge neighbours
    # 0.5 mm in-plane: i^2 + j^2 <= 4 gives 12 in-plane offsets; z (3 mm) only the faces
    assert len(band_offsets((0.5, 0.5, 3.0), 1.0)) == 14
    # below the spacing the band is still the face-neighbour layer
    assert len(band_offsets((2.0, 2.0, 2.0), 0.5)) == 6


def test_inner_band_of_a_cube_is_its_shell() -> None:
    cube = np.ones((5, 5, 5), bool)
    assert inner_band(cube, (1.0, 1.0, 1.0), 1.0).sum() == 125 - 27
    assert inner_band(cube, (1.0, 1.0, 1.0), 2.0).sum() == 125 - 1


def test_distance_transform_path_matches_shifts(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    crop = rng.random((14, 12, 9)) < 0.7
    spacing = (0.3, 0.4, 1.1)
    shifts = inner_band(crop, spacing, 1.0)
    assert len(band_offsets(spacing, 1.0)) > 8
    monkeypatch.setattr(boundary, "_MAX_SHIFTS", 8)
    np.testing.assert_array_equal(inner_band(crop, spacing, 1.0), shifts)


def _box(lo: int, hi: int) -> tuple[slice, slice, slice]:
    return (slice(lo, hi), slice(0, 6), slice(0, 6))


def test_boundary_iou_by_hand() -> None:
    # 6^3 cubes shifted by one voxel along x: shells of 152 voxels sharing 5 x 20 = 100.
    cube = np.ones((6, 6, 6), bool)
    value = boundary_iou(cube, _box(0, 6), cube, _box(1, 7), (1.0, 1.0, 1.0), 1.0)
    assert value == pytest.approx(100 / 204)
    assert boundary_iou(cube, _box(0, 6), cube, _box(0, 6), (1.0, 1.0, 1.0), 1.0) == 1.0
    assert boundary_iou(cube, _box(0, 6), cube, _box(20, 26), (1.0, 1.0, 1.0), 1.0) == 0.0
