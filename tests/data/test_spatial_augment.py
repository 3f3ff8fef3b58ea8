import math

import numpy as np
import pytest
import torch

from medseg.data.spatial_augment import RandSpatialAugmentd, rotation_matrix

KEYS = ("image", "label")
MODES = ("bilinear", "nearest")


def _data(crop: tuple[int, ...]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, *crop, generator=g)
    lab = torch.randint(0, 3, (1, *crop), generator=g).float()
    return {"image": img, "label": lab}


def _centre(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    crop = x.shape[1:]
    return x[(slice(None), *(slice((c - p) // 2, (c - p) // 2 + p) for c, p in zip(crop, patch, strict=True)))]


@pytest.mark.parametrize(("crop", "patch"), [((20, 25, 18), (16, 16, 16)), ((13, 9), (8, 8))])
def test_nothing_fires_is_a_centre_crop(crop, patch):
    t = RandSpatialAugmentd(KEYS, patch, MODES, affine_prob=0.0, elastic_prob=0.0)
    d = _data(crop)
    out = t(d)
    torch.testing.assert_close(out["image"], _centre(d["image"], patch))
    torch.testing.assert_close(out["label"], _centre(d["label"], patch))


@pytest.mark.parametrize("label_mode", ["nearest", "label_linear"])
@pytest.mark.parametrize(("crop", "patch"), [((20, 25, 18), (16, 16, 16)), ((13, 9), (8, 8))])
def test_identity_resampling_matches_the_centre_crop(crop, patch, label_mode):
    """Rotation 0 and scale 1 through grid_sample lands exactly on the crop's voxels
    (no half-voxel shift for odd crop-minus-patch)."""
    t = RandSpatialAugmentd(KEYS, patch, ("bilinear", label_mode), affine_prob=1.0, rotate_deg=0.0, scale_range=(1.0, 1.0))
    d = _data(crop)
    out = t(d)
    torch.testing.assert_close(out["image"], _centre(d["image"], patch), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["label"], _centre(d["label"], patch))


def test_quarter_turn_rotates_the_patch():
    patch = (9, 9)
    t = RandSpatialAugmentd(KEYS, patch, MODES, affine_prob=1.0, rotate_deg=90.0)
    t.randomize()
    t._matrix = rotation_matrix([math.pi / 2])  # pin the random angle to exactly 90 degrees
    d = _data(patch)
    grid = t._grid(patch)
    out = torch.nn.functional.grid_sample(d["image"][None], grid, mode="bilinear", align_corners=False)[0]
    expected = torch.rot90(d["image"], k=1, dims=(1, 2))
    # Either orientation of a quarter turn; what matters is an exact permutation of voxels.
    assert torch.allclose(out, expected, atol=1e-5) or torch.allclose(out, torch.rot90(d["image"], k=-1, dims=(1, 2)), atol=1e-5)


def test_rotation_matrix_is_orthonormal():
    m = rotation_matrix([0.3, -0.7, 1.1])
    torch.testing.assert_close(m @ m.T, torch.eye(3), atol=1e-6, rtol=0)
    assert abs(float(torch.det(m)) - 1.0) < 1e-6


@pytest.mark.parametrize("dims", [2, 3])
def test_elastic_and_affine_keep_labels_and_move_voxels(dims):
    patch = (24,) * dims
    crop = (30,) * dims
    t = RandSpatialAugmentd(KEYS, patch, MODES, affine_prob=1.0, rotate_deg=20, scale_range=(0.8, 1.2), elastic_prob=1.0)
    t.set_random_state(3)
    d = _data(crop)
    out = t(d)
    assert tuple(out["image"].shape) == (1, *patch)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert not torch.allclose(out["image"], _centre(d["image"], patch))


def _disc(n: int, radius: float, value: float = 2.0) -> torch.Tensor:
    axis = torch.arange(float(n)) - (n - 1) / 2.0
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return ((y**2 + x**2) <= radius**2).float() * value


def test_linear_label_resampling_follows_the_shape_below_a_voxel():
    """Zooming a disc in by 1/0.8: per-label linear interpolation reproduces the larger
    disc's voxels far better than nearest neighbour, which magnifies the input's staircase."""
    label = _disc(40, 6.0)[None]
    want = _disc(32, 6.0 / 0.8)
    wrong = {}
    for mode in ("nearest", "label_linear"):
        t = RandSpatialAugmentd(KEYS, (32, 32), ("bilinear", mode), affine_prob=1.0, scale_range=(0.8, 0.8))
        wrong[mode] = int((t({"image": label.clone(), "label": label})["label"][0] != want).sum())
    assert wrong["label_linear"] * 2 < wrong["nearest"], wrong


def test_linear_label_resampling_keeps_label_values_and_reads_zero_outside():
    label = torch.zeros(1, 20, 20)
    label[0, 4:12, 4:16] = 5.0
    label[0, 12:18, 6:14] = 2.0
    label[0, 0, 0] = 7.0  # a lone voxel of a third label
    # Zoomed out by 2: a margin around the patch samples outside the input.
    t = RandSpatialAugmentd(KEYS, (20, 20), ("bilinear", "label_linear"), affine_prob=1.0, rotate_deg=30, scale_range=(2.0, 2.0))
    t.set_random_state(0)
    out = t({"image": label.clone(), "label": label})["label"]
    assert set(torch.unique(out).tolist()) <= {0.0, 2.0, 5.0, 7.0}
    assert {2.0, 5.0} <= set(torch.unique(out).tolist())
    assert float(out[0, 0, 0]) == 0.0 and float(out[0, -1, -1]) == 0.0


def test_elastic_field_is_smooth_and_bounded():
    patch = (32, 32, 32)
    t = RandSpatialAugmentd(KEYS, patch, MODES, elastic_prob=1.0, elastic_spacing=8, elastic_magnitude=2.0)
    t.set_random_state(1)
    t.randomize()
    identity = RandSpatialAugmentd(KEYS, patch, MODES)
    identity.randomize()
    crop = (40, 40, 40)
    disp = (t._grid(crop) - identity._grid(crop))[0] * torch.tensor([c / 2.0 for c in reversed(crop)])  # voxels
    assert float(disp.abs().max()) <= 2.0 + 1e-5
    assert float(disp.abs().max()) > 0.5
    # Neighbouring voxels move by at most magnitude * 2 / spacing (linear interpolation).
    step = (disp[1:] - disp[:-1]).abs().max()
    assert float(step) <= 2 * 2.0 / 8 + 1e-5


def test_seeded_transform_is_reproducible():
    patch = (16, 16, 16)
    a = RandSpatialAugmentd(KEYS, patch, MODES, affine_prob=0.5, rotate_deg=30, elastic_prob=0.5)
    b = RandSpatialAugmentd(KEYS, patch, MODES, affine_prob=0.5, rotate_deg=30, elastic_prob=0.5)
    a.set_random_state(7)
    b.set_random_state(7)
    d = _data((20, 20, 20))
    for _ in range(4):
        np.testing.assert_array_equal(a(d)["image"].numpy(), b(d)["image"].numpy())


def test_too_small_input_and_mode_count_are_errors():
    with pytest.raises(ValueError, match="one interpolation mode per key"):
        RandSpatialAugmentd(KEYS, (8, 8), ("bilinear",))
    with pytest.raises(ValueError, match="unknown interpolation 'linear'; expected one of bilinear, nearest, label_linear"):
        RandSpatialAugmentd(KEYS, (8, 8), ("bilinear", "linear"))
    t = RandSpatialAugmentd(KEYS, (16, 16), MODES)
    with pytest.raises(ValueError, match=r"smaller than the patch \(16, 16\)"):
        t(_data((12, 20)))
