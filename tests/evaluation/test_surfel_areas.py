"""Surfel area table: equal to DeepMind's, and a single voxel's area by hand."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest

from medseg.evaluation._surfel_areas import surfel_area_table

pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5), (0.37, 1.9, 3.3)])
def test_table_equals_surface_distance(sd: ModuleType, spacing: tuple[float, float, float]) -> None:
    expected = sd.lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_array_equal(surfel_area_table(spacing), expected)


def test_single_corner_codes_have_the_octahedron_facet_area() -> None:
    # One voxel's marching-cubes surface is an octahedron of area sqrt(3) (unit voxel):
    # 8 corners, each seeing one inside voxel (codes 1, 2, 4, ..., 128), sqrt(3)/8 each.
    table = surfel_area_table((1.0, 1.0, 1.0))
    for bit in range(8):
        assert table[1 << bit] == pytest.approx(math.sqrt(3) / 8)
    assert table[0] == 0 and table[255] == 0
    # With spacing (2, 1, 1) the facet normal (1/8)(sy*sz, sx*sz, sx*sy) = (1, 2, 2)/8.
    assert surfel_area_table((2.0, 1.0, 1.0))[1] == pytest.approx(3 / 8)
