"""The grid module: spacing, orientation, the same-grid tolerance and the label dtype."""

import nibabel as nib
import numpy as np
import pytest

from medseg.data.grid import (
    AFFINE_ATOL_MM,
    affine_difference,
    canonical_shape,
    canonical_spacing,
    canonical_transform,
    inverse_ornt,
    label_dtype,
    ras_order,
    reorient,
    same_grid,
    to_canonical,
    voxel_spacing,
)
from medseg.data.io import Volume, read_label, write_label

# array axis 0 -> world A (spacing 0.7), axis 1 -> S (3.0), axis 2 -> L (1.1): a sagittal stack,
# whose axis permutation is a 3-cycle (the case where a permutation and its inverse differ)
SAGITTAL = np.array([[0, 0, -1.1, 12], [0.7, 0, 0, -4], [0, 3.0, 0, 9], [0, 0, 0, 1]])


def world(affine: np.ndarray, idx) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(idx, float) + affine[:3, 3]


def test_voxel_spacing_is_the_column_length_of_a_rotated_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.5, 2.0, 4.0])
    assert voxel_spacing(aff) == pytest.approx((0.5, 2.0, 4.0), abs=1e-12)


def test_canonical_spacing_and_shape_follow_the_world_axes_of_a_sagittal_stack():
    assert voxel_spacing(SAGITTAL) == pytest.approx((0.7, 3.0, 1.1))
    assert canonical_spacing(SAGITTAL) == pytest.approx([1.1, 0.7, 3.0])  # R (axis 2), A (axis 0), S (axis 1)
    assert canonical_shape((10, 20, 30), SAGITTAL) == [30, 10, 20]
    ornt = canonical_transform(SAGITTAL)
    assert to_canonical([1, 2, 3], ornt) == [3.0, 1.0, 2.0]
    perm, letters = ras_order(SAGITTAL)
    assert perm.tolist() == [2, 0, 1]
    assert letters == ["PA", "IS", "RL"]  # axis 2 grows towards L: its low end is R


def test_reorient_keeps_world_coordinates_of_every_voxel():
    arr = np.arange(4 * 5 * 3, dtype=np.float32).reshape(1, 4, 5, 3)
    perm = np.array([[0, 0, -1, 7], [-1.2, 0, 0, 3], [0, 2.0, 0, -5], [0, 0, 0, 1]])  # PIR-like
    ornt = canonical_transform(perm)
    out, new_aff = reorient(arr, perm, ornt)
    assert nib.aff2axcodes(new_aff) == ("R", "A", "S")
    assert out.flags.c_contiguous
    # the voxel holding value v sits at the same world position before and after
    for v in (0, 17, 59):
        i_old = np.argwhere(arr[0] == v)[0]
        i_new = np.argwhere(out[0] == v)[0]
        np.testing.assert_allclose(world(perm, i_old), world(new_aff, i_new), atol=1e-9)
    back, back_aff = reorient(out, new_aff, inverse_ornt(ornt))
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(back_aff, perm)
    view, view_aff = reorient(arr[0], perm, ornt, contiguous=False)
    assert np.shares_memory(view, arr)  # a strided view, no copy
    np.testing.assert_array_equal(view, out[0])
    np.testing.assert_allclose(view_aff, new_aff)


def test_canonical_spacing_matches_the_reoriented_affine():
    out, new_aff = reorient(np.zeros((10, 20, 30)), SAGITTAL, canonical_transform(SAGITTAL))
    assert list(out.shape) == canonical_shape((10, 20, 30), SAGITTAL)
    assert list(voxel_spacing(new_aff)) == pytest.approx(canonical_spacing(SAGITTAL))


def test_same_grid_uses_one_tolerance_and_compares_the_spatial_shape():
    b = SAGITTAL.copy()
    b[0, 3] += 0.9 * AFFINE_ATOL_MM
    assert same_grid((4, 5, 6), SAGITTAL, (1, 4, 5, 6), b)  # channels do not count
    assert affine_difference(SAGITTAL, b) == pytest.approx(0.9 * AFFINE_ATOL_MM)
    b[0, 3] += 0.2 * AFFINE_ATOL_MM
    assert not same_grid((4, 5, 6), SAGITTAL, (4, 5, 6), b)
    assert not same_grid((4, 5, 6), SAGITTAL, (4, 5, 7), SAGITTAL)


def test_written_mask_of_a_far_origin_input_passes_verification(tmp_path):
    """NIfTI stores the sform as float32: an NRRD/DICOM origin of -611.123456 mm comes back
    1.8e-5 mm off. The old 1e-5 tolerance removed such a correct mask as 'header mismatch'."""
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    aff[:3, 3] = [-345.678901, -212.3456789, -611.123456]
    ref = Volume(np.zeros((4, 4, 4), np.float32), aff)  # no NIfTI header: as read from NRRD/DICOM
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 2, 3] = 2
    write_label(tmp_path / "m.nii.gz", labels, ref)
    back = read_label(tmp_path / "m.nii.gz")
    assert 1e-5 < affine_difference(back.affine, aff) < AFFINE_ATOL_MM
    assert back.array[1, 2, 3] == 2 and back.array.sum() == 2


def test_label_dtype_is_uint8_up_to_255_then_uint16():
    assert label_dtype(0) is np.uint8 and label_dtype(255) is np.uint8
    assert label_dtype(256) is np.uint16 and label_dtype(65535) is np.uint16
    with pytest.raises(ValueError, match="65536"):
        label_dtype(65536)


def test_prepared_label_above_255_is_not_wrapped():
    from medseg.data.preprocess import PreprocessingPlan, prepare_case

    label = np.zeros((8, 8, 8), np.uint16)
    label[2:6, 2:6, 2:6] = 300
    plan = PreprocessingPlan(target_spacing=[1.0, 1.0, 1.0], normalization="none", crop_foreground=False,
                             labels={"background": 0, "big": 300})
    prepared = prepare_case(np.ones((8, 8, 8), np.float32), np.eye(4), plan, label)
    assert prepared.label is not None and prepared.label.dtype == np.uint16
    assert int(prepared.label.max()) == 300  # uint8 would have wrapped it to 44
