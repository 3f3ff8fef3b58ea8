"""The inverse geometry: linear taps as PyTorch's, labels pasted back onto the input's own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.data.inverse import input_shape, labels_to_input, linear_taps
from medseg.data.preprocess import PreprocessingPlan, prepare_case


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 13), (13, 7), (5, 5), (1, 4), (10, 3)])
def test_linear_taps_match_pytorch_interpolate(n_in: int, n_out: int) -> None:
    x = torch.rand(n_in, dtype=torch.float64)
    i0, i1, w1 = linear_taps(n_in, n_out)
    ours = (1 - w1) * x.numpy()[i0] + w1 * x.numpy()[i1]
    ref = F.interpolate(x[None, None], size=n_out, mode="linear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("codes", ["LPS", "PIR", "ASL"])
def test_labels_to_input_inverts_prepare_case(codes: str) -> None:
    """Labels computed on the canonical grid land on the input voxels they came from."""
    ornt = nib.orientations.axcodes2ornt(codes)
    shape = (9, 7, 5)
    affine = nib.orientations.inv_ornt_aff(
        nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt), shape
    )
    affine = affine @ np.diag([1.3, 0.7, 2.0, 1.0])
    assert "".join(nib.orientations.aff2axcodes(affine)) == codes
    image = np.zeros(shape, np.float32)
    image[1:7, 2:6, 1:4] = np.arange(6 * 4 * 3, dtype=np.float32).reshape(6, 4, 3) + 1
    plan = PreprocessingPlan(target_spacing=[1.0, 1.0, 1.0], normalization="none")
    prepared = prepare_case(image, affine, plan)
    # Labels on the cropped canonical grid: the canonical image itself, cropped (no resampling).
    canonical = nib.orientations.apply_orientation(image, prepared.ornt)[prepared.bbox]
    back = labels_to_input(canonical.astype(np.uint8), prepared, affine)
    np.testing.assert_array_equal(back, image.astype(np.uint8))
    assert input_shape(prepared) == shape


@pytest.mark.parametrize("crop", [False, True])
def test_labels_to_input_copies_only_when_cropped(crop: bool) -> None:
    """Without a crop the result is a flipped view of the labels (no second full-size map);
    with one, the crop is pasted into a zero map of the input's shape."""
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS: flips on the way back
    image = np.zeros((8, 6, 5), np.float32)
    image[2:6, 1:5, 1:4] = 7.0
    plan = PreprocessingPlan(target_spacing=[1.0, 1.0, 2.0], normalization="none", crop_foreground=crop)
    prepared = prepare_case(image, affine, plan)
    labels = (prepared.image[0] > 0).astype(np.uint8)
    back = labels_to_input(labels, prepared, affine)
    np.testing.assert_array_equal(back, (image > 0).astype(np.uint8))
    assert np.shares_memory(back, labels) is not crop
