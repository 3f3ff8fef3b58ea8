import numpy as np

from medseg.data.sampling import class_locations, crop_patch, sample_center, sample_patch


def test_crop_patch_hand_computed_inside_and_padding():
    arr = np.arange(10, dtype=np.float32).reshape(1, 10, 1, 1)
    out = crop_patch(arr, (5, 0, 0), (4, 1, 1))
    np.testing.assert_array_equal(out.ravel(), [3, 4, 5, 6])
    # near the border the patch is shifted inside the volume
    np.testing.assert_array_equal(crop_patch(arr, (0, 0, 0), (4, 1, 1)).ravel(), [0, 1, 2, 3])
    # a volume smaller than the patch is centred and zero-padded
    small = np.ones((1, 2, 1, 1), np.float32)
    np.testing.assert_array_equal(crop_patch(small, (0, 0, 0), (4, 1, 1)).ravel(), [0, 1, 1, 0])


def test_foreground_oversampling_rate_and_class_balance():
    label = np.zeros((40, 40, 40), np.uint8)
    label[:30, :30, :30] = 1  # large
    label[35, 35, 35] = 2  # one voxel
    locs = class_locations(label)
    rng = np.random.default_rng(0)
    centers = [sample_center(label.shape, locs, 1.0, rng) for _ in range(400)]
    hits2 = sum(c == (35, 35, 35) for c in centers)
    assert 150 < hits2 < 250  # the tiny class is drawn about half the time
    rng = np.random.default_rng(1)
    centers = [sample_center(label.shape, locs, 0.0, rng) for _ in range(400)]
    assert sum(c == (35, 35, 35) for c in centers) == 0


def test_sample_patch_2d_slab_layout():
    image = np.stack([np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)] * 2)  # C=2
    label = np.zeros((5, 6, 7), np.uint8)
    label[2, 3, 4] = 1
    img, lab = sample_patch(image, label, class_locations(label), (4, 4), 1.0, np.random.default_rng(0), 0, 3)
    assert img.shape == (6, 4, 4) and lab.shape == (1, 4, 4)
    # channel 1 of the slab is the centre slice x=2 of channel 0
    centre = image[0, 2]
    assert any(np.array_equal(img[1], centre[y : y + 4, z : z + 4]) for y in range(3) for z in range(4))
    assert lab.sum() == 1
