"""Preprocessing geometry: resampling is exactly invertible in world space (reorientation: test_grid)."""

import numpy as np
import pytest

from medseg.data.preprocess import (
    PreprocessingPlan,
    foreground_bbox,
    normalize,
    prepare_case,
    resample,
    resampled_affine,
    target_shape,
)


def lps_affine(spacing=(0.8, 1.0, 2.5)) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [40.0, 30.0, -20.0]
    return aff


def world(affine: np.ndarray, idx) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(idx, float) + affine[:3, 3]


def nib_codes(aff):
    import nibabel as nib

    return nib.aff2axcodes(aff)


def test_resampled_affine_keeps_field_of_view():
    aff = lps_affine()
    old, new = (10, 8, 4), (5, 4, 8)
    new_aff = resampled_affine(aff, old, new)
    # the outer corner of the field of view (voxel -0.5 / n-0.5) is identical
    np.testing.assert_allclose(world(aff, [-0.5] * 3), world(new_aff, [-0.5] * 3))
    np.testing.assert_allclose(world(aff, np.array(old) - 0.5), world(new_aff, np.array(new) - 0.5))


def test_target_shape_hand_computed():
    assert target_shape((100, 50, 20), (1.0, 1.0, 3.0), [2.0, 0.5, 1.5]) == (50, 100, 40)


def test_resample_round_trip_of_labels_is_exact_for_integer_factor():
    lab = np.zeros((1, 8, 8, 4), np.float32)
    lab[0, 2:6, 2:6, 1:3] = 1
    up = resample(lab, (16, 16, 8), order=0)
    down = resample(up, (8, 8, 4), order=0)
    np.testing.assert_array_equal(down.numpy(), lab)


def test_normalize_zscore_ignores_zero_background():
    img = np.zeros((1, 10, 10, 10), np.float32)
    img[0, 2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    out = normalize(img.copy(), PreprocessingPlan([1, 1, 1], "zscore"))
    inside = out[0, 2:8, 2:8, 2:8]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4
    assert np.all(out[0, 0] == 0)


def test_normalize_ct_clips_then_scales():
    img = np.array([[[[-2000.0, 0.0, 500.0, 4000.0]]]], np.float32)
    plan = PreprocessingPlan([1, 1, 1], "ct", ct_clip=[-1000.0, 1000.0], ct_mean=100.0, ct_std=50.0)
    out = normalize(img.copy(), plan)
    np.testing.assert_allclose(out.ravel(), [(-1000 - 100) / 50, -2, 8, (1000 - 100) / 50])


def test_foreground_bbox_hand_computed():
    img = np.zeros((2, 6, 7, 8), np.float32)
    img[1, 2, 3, 4] = 1
    img[0, 4, 5, 6] = 1
    assert foreground_bbox(img) == (slice(2, 5), slice(3, 6), slice(4, 7))
    assert foreground_bbox(np.zeros((1, 3, 3, 3))) == (slice(0, 3),) * 3


@pytest.mark.parametrize("crop", [True, False])
def test_prepare_case_world_position_of_structure(crop):
    """A labelled cube keeps its world-space centre through reorient + crop + resample."""
    aff = lps_affine((0.8, 1.0, 2.5))
    img = np.zeros((40, 30, 12), np.float32)
    img[5:35, 4:26, 2:10] = 50.0  # body
    lab = np.zeros_like(img, dtype=np.uint8)
    lab[10:20, 8:16, 4:8] = 1
    img[lab == 1] = 120.0
    plan = PreprocessingPlan([1.6, 1.5, 2.0], "zscore", labels={"background": 0, "cube": 1}, crop_foreground=crop)
    prep = prepare_case(img, aff, plan, lab)
    assert nib_codes(prep.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(prep.affine[:3, :3], axis=0), [1.6, 1.5, 2.0], rtol=0.08)
    c_in = world(aff, np.argwhere(lab == 1).mean(0))
    c_out = world(prep.affine, np.argwhere(prep.label == 1).mean(0))
    np.testing.assert_allclose(c_in, c_out, atol=1.0)  # within a voxel
    assert prep.image.dtype == np.float32 and prep.image.shape[0] == 1


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 2.5)])
def test_prepare_case_of_int16_equals_float32_and_never_changes_the_input(spacing):
    """An int16 CT (as batches read it) gives exactly the float32 result; the caller's array
    is untouched even when nothing moves (RAS, target spacing, no crop), where the in-place
    normalisation would otherwise write into it."""
    rng = np.random.default_rng(3)
    ct = rng.integers(-1000, 1500, size=(2, 20, 16, 12)).astype(np.int16)
    aff = np.diag([*spacing, 1.0])
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "ct", labels={"background": 0, "a": 1}, ct_clip=[-200.0, 300.0],
                             ct_mean=40.0, ct_std=100.0, crop_foreground=False, channel_names=["a", "b"])
    as_float = ct.astype(np.float32)
    before = as_float.copy()
    a = prepare_case(ct, aff, plan)
    b = prepare_case(as_float, aff, plan)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(as_float, before)
    assert a.image.dtype == np.float32 and not np.shares_memory(b.image, as_float)
    assert float(a.image.max()) == pytest.approx((300.0 - 40.0) / 100.0)  # normalised, clipped


@pytest.mark.parametrize("new_shape", [(13, 9, 7), (40, 30, 26), (20, 16, 11), (20, 16, 30), (13, 9, 11)])
def test_resample_image_in_slabs_equals_one_trilinear_pass(monkeypatch, new_shape):
    """Slabs along Z (int16 input, a flipped view; 2 output slices per slab) give
    F.interpolate's trilinear result up to float rounding: a wrong tap or a slab edge would
    be off by whole intensity steps."""
    import medseg.data.preprocess as pre

    rng = np.random.default_rng(5)
    ct = rng.integers(-1000, 2000, size=(2, 20, 16, 11)).astype(np.int16)
    view = ct[:, ::-1, :, ::-1]  # as reorient returns it: negative strides
    whole = resample(np.ascontiguousarray(view, dtype=np.float32), new_shape).numpy()
    assert np.array_equal(pre.resample_image(view, new_shape), whole)  # small: the one-pass path
    monkeypatch.setattr(pre, "SLAB_BYTES", 2 * 20 * 16 * 4 * 2 * 2)  # 2 output slices per slab
    slabs = pre.resample_image(view, new_shape)
    assert slabs.dtype == np.float32 and slabs.shape == (2, *new_shape)
    np.testing.assert_allclose(slabs, whole, rtol=0, atol=2e-3)  # values up to 2000: ~1 ulp
