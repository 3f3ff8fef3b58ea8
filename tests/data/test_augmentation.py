import pytest
import torch

from medseg.catalogue import AUGMENTATION_PRESETS
from medseg.config import ConfigError
from medseg.data.augmentation import PRESETS, build_augmentation, preset_probabilities
from medseg.data.spatial_augment import RandSpatialAugmentd


def test_names_agree():
    assert {k: tuple(e.name for e in v) for k, v in PRESETS.items()} == AUGMENTATION_PRESETS


def test_limited_data_has_every_required_transform():
    names = set(preset_probabilities("limited_data"))
    assert {"flip", "affine", "elastic", "gamma", "contrast", "noise", "blur", "bias_field", "low_resolution"} <= names


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS)
def test_presets_keep_patch_shape_and_label_values(preset, dims):
    patch = (16,) * dims
    crop = (20,) * dims
    aug = build_augmentation(preset, dims, patch, {k: 1.0 for k in preset_probabilities(preset)})
    aug.set_random_state(0)
    img = torch.randn(1, *(crop if preset != "none" else patch))
    lab = (torch.rand(1, *img.shape[1:]) > 0.5).float() * 2
    out = aug({"image": img, "label": lab})
    expected = patch if preset != "none" else img.shape[1:]
    assert tuple(out["image"].shape[1:]) == tuple(expected)
    assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 2.0}


def test_probability_override_and_typo():
    aug = build_augmentation("limited_data", 3, (16, 16, 16), {"elastic": 0.0})
    (spatial,) = [t for t in aug.transforms if isinstance(t, RandSpatialAugmentd)]
    assert spatial.elastic_prob == 0.0 and spatial.affine_prob == 0.25
    only_elastic = build_augmentation("limited_data", 3, (16, 16, 16), {"affine": 0.0, "elastic": 0.5})
    (spatial,) = [t for t in only_elastic.transforms if isinstance(t, RandSpatialAugmentd)]
    assert (spatial.affine_prob, spatial.elastic_prob) == (0.0, 0.5)
    neither = build_augmentation("limited_data", 3, (16, 16, 16), {"affine": 0.0, "elastic": 0.0})
    assert not any(isinstance(t, RandSpatialAugmentd) for t in neither.transforms)
    with pytest.raises(ConfigError, match=r"no transform 'gama'.*Did you mean 'gamma'"):
        build_augmentation("limited_data", 3, (16, 16, 16), {"gama": 0.5})


def test_label_resampling_choice_reaches_the_spatial_transform():
    def label_mode(**kwargs: str) -> str:
        aug = build_augmentation("limited_data", 3, (16, 16, 16), **kwargs)
        (spatial,) = [t for t in aug.transforms if isinstance(t, RandSpatialAugmentd)]
        return spatial.modes[1]

    assert label_mode() == "label_linear"
    assert label_mode(label_resampling="nearest") == "nearest"
    with pytest.raises(ConfigError, match=r"data.label_resampling: 'neares'.*Did you mean 'nearest'"):
        label_mode(label_resampling="neares")


def test_zero_probability_preset_is_identity():
    aug = build_augmentation("light", 3, (8, 8, 8), {k: 0.0 for k in preset_probabilities("light")})
    img = torch.randn(1, 8, 8, 8)
    out = aug({"image": img.clone(), "label": torch.zeros(1, 8, 8, 8)})
    torch.testing.assert_close(torch.as_tensor(out["image"]), img)


@pytest.mark.parametrize("axes", [(0,), (1, 2), ()])
def test_flips_only_along_the_allowed_axes(axes):
    only_flip = {k: (1.0 if k == "flip" else 0.0) for k in preset_probabilities("light")}
    aug = build_augmentation("light", 3, (6, 7, 8), only_flip, mirror_axes=axes)
    img = torch.arange(6 * 7 * 8, dtype=torch.float32).reshape(1, 6, 7, 8)
    out = aug({"image": img.clone(), "label": img.clone()})
    expected = torch.flip(img, [1 + a for a in axes]) if axes else img
    torch.testing.assert_close(torch.as_tensor(out["image"]), expected)
    torch.testing.assert_close(torch.as_tensor(out["label"]), expected)
    with pytest.raises(ConfigError, match=r"mirror axes \(3,\): a 3D patch has axes 0\.\.2"):
        build_augmentation("light", 3, (6, 7, 8), only_flip, mirror_axes=(3,))
