"""Post-processing on hand-built label maps with hand-computed results."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.config import InferenceConfig
from medseg.inference.postprocess import (
    PostprocessSpec,
    fill_holes,
    keep_largest_component,
    postprocess,
    remove_small_components,
    resolve_spec,
)

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def test_keep_largest_component_removes_smaller_islands_of_that_label_only() -> None:
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:4, 0:4, 0:4] = 1  # 64 voxels
    lab[7:9, 7:9, 7:9] = 1  # 8 voxels
    lab[6, 0, 0] = 2
    keep_largest_component(lab, 1)
    assert int((lab == 1).sum()) == 64
    assert lab[7, 7, 7] == 0 and lab[6, 0, 0] == 2


def test_remove_small_components_uses_spacing_in_ml() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[0:5, 0:5, 0:4] = 1  # 100 voxels
    lab[10:12, 10:12, 10:12] = 1  # 8 voxels
    # 2 x 2 x 2.5 mm voxels = 10 mm^3 = 0.01 mL: islands of 1.0 mL and 0.08 mL.
    remove_small_components(lab, 1, min_ml=0.5, spacing=(2.0, 2.0, 2.5))
    assert int((lab == 1).sum()) == 100
    remove_small_components(lab, 1, min_ml=1.01, spacing=(2.0, 2.0, 2.5))
    assert int((lab == 1).sum()) == 0


def test_fill_holes_fills_background_but_not_other_structures() -> None:
    lab = np.zeros((9, 9, 9), np.uint8)
    lab[1:8, 1:8, 1:8] = 1
    lab[3, 3, 3] = 0  # a hole
    lab[5, 5, 5] = 2  # a tumour inside the liver
    fill_holes(lab, 1)
    assert lab[3, 3, 3] == 1 and lab[5, 5, 5] == 2
    assert int((lab == 1).sum()) == 7**3 - 1


def test_resolve_spec_names_to_ids_and_unknown_name_error() -> None:
    cfg = InferenceConfig(keep_largest_component=["liver"], min_component_ml={"tumour": 0.2}, fill_holes=["liver"])
    spec = resolve_spec(cfg, LABELS)
    assert spec == PostprocessSpec([1], {2: 0.2}, [1])
    with pytest.raises(ValueError, match=r"'livr' is not one of the model's structures.*Did you mean 'liver'"):
        resolve_spec(InferenceConfig(fill_holes=["livr"]), LABELS)


def test_postprocess_applies_all_steps() -> None:
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[1:6, 1:6, 1:6] = 1
    lab[3, 3, 3] = 0
    lab[9, 9, 9] = 1
    out = postprocess(lab, (1.0, 1.0, 1.0), PostprocessSpec(keep_largest=[1], fill_holes=[1]))
    assert int((out == 1).sum()) == 125 and out[9, 9, 9] == 0


def test_keep_largest_component_on_a_tie_keeps_the_first_in_raster_order() -> None:
    lab = np.zeros((9, 4, 4), np.uint8)
    lab[6:8, 0:2, 0:2] = 1  # 8 voxels, later in raster (C) order
    lab[0:2, 0:2, 0:2] = 1  # 8 voxels, first
    keep_largest_component(lab, 1)
    assert lab[0, 0, 0] == 1 and lab[6, 0, 0] == 0 and int(lab.sum()) == 8


def test_components_touching_only_at_an_edge_are_separate() -> None:
    """Face connectivity (6-neighbourhood): an edge contact does not join two components."""
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[0:3, 0:3, 0:3] = 1  # 27 voxels
    lab[3, 3, 0:3] = 1  # 3 voxels touching the cube along an edge only
    keep_largest_component(lab, 1)
    assert int(lab.sum()) == 27 and lab[3, 3, 0] == 0
