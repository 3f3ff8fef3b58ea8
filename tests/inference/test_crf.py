"""The 3D fully connected CRF: cleaning, spacing in mm, bounded memory, config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import medseg.inference.crf as crf_module
from medseg.config import ConfigError, CrfConfig, from_dict
from medseg.inference.crf import crf_binary, refine_probabilities, resolve_structures


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _sphere(shape: tuple[int, int, int] = (32, 32, 32), radius: float = 8) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2 for s in shape]
    return np.asarray(((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < radius**2)


def test_noisy_probabilities_with_a_clear_edge_are_cleaned() -> None:
    rng = np.random.default_rng(0)
    truth = _sphere()
    image = (2.0 * truth + rng.normal(0, 0.3, truth.shape)).astype(np.float32)
    prob = 1 / (1 + np.exp(-(np.where(truth, 1.0, -1.0) + rng.normal(0, 1.5, truth.shape))))
    before = _dice(prob > 0.5, truth)
    after = _dice(crf_binary(prob, image[None], (1.0, 1.0, 1.0), CrfConfig()).numpy() > 0.5, truth)
    assert before < 0.5 and after > 0.85  # 0.27 -> 0.89 with the default parameters
    # the bilateral kernel does the work: the image edge, not smoothing alone
    smooth_only = crf_binary(prob, image[None], (1.0, 1.0, 1.0), CrfConfig(bilateral_weight=0)).numpy()
    assert _dice(smooth_only > 0.5, truth) < after - 0.2


def test_every_input_channel_enters_the_bilateral_kernel() -> None:
    """The edge is only in channel 2; channel 1 is noise. Dropping channel 2 loses the gain."""
    rng = np.random.default_rng(1)
    truth = _sphere()
    noise = rng.normal(0, 0.3, truth.shape).astype(np.float32)
    edge = (2.0 * truth + rng.normal(0, 0.3, truth.shape)).astype(np.float32)
    prob = 1 / (1 + np.exp(-(np.where(truth, 1.0, -1.0) + rng.normal(0, 1.5, truth.shape))))
    cfg = CrfConfig(spatial_weight=0, bilateral_weight=5, bilateral_sigma_mm=5)
    both = _dice(crf_binary(prob, np.stack([noise, edge]), (1, 1, 1), cfg).numpy() > 0.5, truth)
    noise_only = _dice(crf_binary(prob, noise[None], (1, 1, 1), cfg).numpy() > 0.5, truth)
    assert both > noise_only + 0.2


def test_adjacent_structures_of_the_same_intensity_are_both_kept() -> None:
    """Head and body of one bright organ (like the anterior and posterior hippocampus), soft
    probabilities. Refined against "the rest", the head (refined first) would be pulled into
    the body by the appearance kernel (Dice 0.0 / 0.63 with that scheme); refined with every
    class in its box, both stay exact."""
    shape = (24, 32, 24)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    organ = ((x - 12) / 6) ** 2 + ((y - 16) / 12) ** 2 + ((z - 12) / 6) ** 2 < 1
    head, body = organ & (y < 16), organ & (y >= 16)
    rng = np.random.default_rng(0)
    image = (np.where(organ, 1.0, -1.0) + 0.1 * rng.normal(size=shape)).astype(np.float32)[None]
    probs = torch.zeros(3, *shape)
    probs[0] = torch.from_numpy(np.where(organ, 0.3, 0.9))
    probs[1] = torch.from_numpy(np.where(head, 0.45, np.where(body, 0.25, 0.05)))
    probs[2] = 1 - probs[0] - probs[1]
    out = refine_probabilities(probs, image, (1, 1, 1), CrfConfig(), {"background": 0, "head": 1, "body": 2})
    argmax = out.argmax(0).numpy()
    assert _dice(argmax == 1, head) > 0.99 and _dice(argmax == 2, body) > 0.99


def test_default_crf_does_not_erode_a_thin_low_contrast_structure() -> None:
    """A hippocampus-like phantom: a 10 x 32 x 10 mm ellipsoid 0.5 standard deviations darker
    than a textured surrounding, predicted with soft boundaries (logit 0.5 per mm of signed
    distance, plus smooth noise). The defaults' appearance kernel stops at this weak edge and
    gains; an edge-blind one (intensity sigma 1.0, the earlier default) only smooths, and
    erodes the structure (-0.045 Dice)."""
    shape = (40, 48, 40)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    rng = np.random.default_rng(0)
    truth = ((x - 20) / 5.0) ** 2 + ((y - 24) / 16.0) ** 2 + ((z - 20) / 5.0) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    image = np.where(truth, -0.5 + 0.3 * rng.normal(size=shape), 0.9 * texture / texture.std())
    distance = ndimage.distance_transform_edt(~truth) - ndimage.distance_transform_edt(truth)
    logit = -0.5 * (distance - 0.5) + 2.5 * ndimage.gaussian_filter(rng.normal(size=shape), 1)
    p = (1 / (1 + np.exp(-logit))).astype(np.float32)
    before = _dice(p > 0.5, truth)
    default = _dice(crf_binary(p, image[None], (1, 1, 1), CrfConfig()).numpy() > 0.5, truth)
    blind = _dice(crf_binary(p, image[None], (1, 1, 1), CrfConfig(bilateral_sigma_intensity=1.0)).numpy() > 0.5, truth)
    assert before < 0.95  # soft enough for the CRF to matter
    assert default > before - 0.01  # measured: 0.926 -> 0.962
    assert blind < before - 0.02 and blind < default - 0.05  # measured: 0.881


@pytest.mark.parametrize("axis", [0, 2])
def test_spacing_in_mm_is_honoured(axis: int) -> None:
    """A one-voxel-thick plane of weak foreground, smoothing kernel only (sigma 1 mm): with
    1 mm voxels across the plane its background neighbours 1 mm away erode it; with 5 mm
    voxels across it they are 5 sigma away and the plane, supported in-plane, stays."""
    shape = (24, 24, 24)
    prob = np.full(shape, 0.05, dtype=np.float32)
    plane = [slice(None)] * 3
    plane[axis] = slice(12, 13)
    prob[tuple(plane)] = 0.6
    image = np.zeros((1, *shape), dtype=np.float32)
    cfg = CrfConfig(bilateral_weight=0, spatial_weight=3, spatial_sigma_mm=1.0)
    iso = crf_binary(prob, image, (1.0, 1.0, 1.0), cfg).numpy()
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = 5.0
    aniso = crf_binary(prob, image, spacing, cfg).numpy()
    assert iso[tuple(plane)].max() < 0.5  # eroded
    assert aniso[tuple(plane)].min() > 0.6  # kept, strengthened by its in-plane neighbours


def _record_lattice_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Points of every permutohedral lattice built (one per refined box)."""
    sizes: list[int] = []
    original = crf_module.Lattice

    def recording(features: torch.Tensor) -> object:
        sizes.append(features.shape[0])
        return original(features)

    monkeypatch.setattr(crf_module, "Lattice", recording)
    return sizes


def test_large_boxes_are_refined_on_a_coarser_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _record_lattice_sizes(monkeypatch)
    truth = _sphere((40, 40, 40), 12)
    prob = np.where(truth, 0.8, 0.2).astype(np.float32)
    image = 3.0 * truth[None].astype(np.float32)
    out = crf_binary(prob, image, (1, 1, 1), CrfConfig(max_voxels=10_000))
    assert sizes == [20 * 20 * 20]  # factor ceil((64000 / 10000) ** (1/3)) = 2: 8000 <= 10000 voxels
    # full resolution gives Dice 1.0 here; the 2 mm grid loses some of the boundary
    assert out.shape == truth.shape and _dice(out.numpy() > 0.5, truth) > 0.93


def test_more_classes_in_a_box_mean_a_coarser_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory grows with voxels x classes: four classes get half the voxels of two."""
    sizes = _record_lattice_sizes(monkeypatch)
    probs = torch.full((4, 40, 40, 40), 0.25)
    out = crf_module.crf_refine(probs, np.zeros((1, 40, 40, 40), np.float32), (1, 1, 1), CrfConfig(max_voxels=10_000))
    assert sizes == [14**3]  # budget 5000 voxels: factor ceil((64000 / 5000) ** (1/3)) = 3
    assert out.shape == probs.shape and torch.allclose(out.sum(0), torch.ones(40, 40, 40), atol=1e-5)


def test_refine_works_per_structure_in_its_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two small structures in a large volume: the CRF sees only their boxes plus the margin,
    never the whole volume, and the class probabilities still sum to one."""
    shapes: list[tuple[int, ...]] = []
    original = crf_module._mean_field

    def recording(prob: torch.Tensor, image: torch.Tensor, spacing: Sequence[float], cfg: CrfConfig) -> torch.Tensor:
        shapes.append(tuple(prob.shape))
        return original(prob, image, spacing, cfg)

    monkeypatch.setattr(crf_module, "_mean_field", recording)
    shape = (80, 80, 40)
    probs = torch.zeros(3, *shape)
    probs[0] = 1.0
    probs[:, 10:16, 10:16, 10:14] = torch.tensor([0.1, 0.9, 0.0])[:, None, None, None]
    probs[:, 60:70, 60:64, 20:22] = torch.tensor([0.2, 0.0, 0.8])[:, None, None, None]
    image = 3.0 * (probs[0] < 0.5).numpy()[None].astype(np.float32)  # both structures bright
    cfg = CrfConfig(margin_mm=4.0)
    refine_probabilities(probs, image, (1.0, 1.0, 2.0), cfg, {"background": 0, "a": 1, "b": 2})
    # margin 4 mm = 4 voxels in X/Y, 2 voxels in Z; two classes in each box (the other
    # structure is not predicted there)
    assert shapes == [(2, 14, 14, 8), (2, 18, 12, 6)]
    assert torch.allclose(probs.sum(0), torch.ones(shape), atol=1e-5)
    assert probs[1, 12, 12, 12] > 0.5 and probs[2, 65, 62, 21] > 0.5


def _refine_whole_box(probs: torch.Tensor, image: np.ndarray, spacing: Sequence[float], cfg: CrfConfig,
                      labels: dict[str, int]) -> torch.Tensor:
    """The reference: each box's class probabilities copied whole, refined by crf_refine (pooled,
    mean field, trilinear back), written back whole (what refine_probabilities did before it
    worked slab by slab)."""
    margin = [int(np.ceil(cfg.margin_mm / s)) for s in spacing]
    for label in sorted(i for i in labels.values() if i):
        argmax = probs.argmax(0)
        box = crf_module._box((argmax == label).numpy(), margin)
        if box is None:
            continue
        sub = probs[(slice(None), *box)]
        classes = sorted({0, label, *(int(c) for c in torch.unique(argmax[box]))})
        local = sub[classes].clone()
        local[0] += (sub.sum(0) - local.sum(0)).clamp_min(0)
        before = sub[label].clone()
        after = crf_module.crf_refine(local, image[(slice(None), *box)], spacing, cfg)[classes.index(label)]
        rest = sub.sum(0) - before
        tiny = rest <= 1e-6
        sub.mul_(torch.where(tiny, torch.zeros_like(rest), (1 - after) / rest.clamp_min(1e-6))[None])
        sub[0] += torch.where(tiny, 1 - after, torch.zeros_like(after))
        sub[label] = after
    return probs


@pytest.mark.parametrize("max_voxels", [1_000_000, 2_500])
def test_slab_by_slab_refinement_equals_whole_box_refinement(monkeypatch: pytest.MonkeyPatch, max_voxels: int) -> None:
    """Slabs of 4 planes (not a multiple of the pooling factor 3): pooling, interpolation
    back and write-back slab by slab give the whole-box result (the memory bound must not
    change the answer), at full resolution and downsampled."""
    monkeypatch.setattr(crf_module, "SLAB_VOXELS", 4 * 30 * 22)
    rng = np.random.default_rng(0)
    shape = (29, 30, 22)
    logits = torch.from_numpy(ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0, 2, 2, 2)).astype(np.float32))
    probs = torch.softmax(6 * logits, 0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    labels = {"background": 0, "a": 1, "b": 2}
    cfg = CrfConfig(max_voxels=max_voxels, margin_mm=2.0)
    if max_voxels < 10_000:  # 3 classes in a whole-grid box: budget 1666 voxels, factor 3
        assert crf_module._pool_factor(shape, 3, max_voxels) == 3
    expected = _refine_whole_box(probs.clone(), image, (1.0, 1.2, 2.0), cfg, labels)
    got = refine_probabilities(probs.clone(), image, (1.0, 1.2, 2.0), cfg, labels)
    assert not torch.allclose(expected, probs, atol=1e-3)  # the CRF changed something
    assert torch.allclose(got, expected, atol=1e-5)


def test_slab_upsampling_is_trilinear_interpolation() -> None:
    q = torch.rand(7, 5, 4)
    shape = (20, 13, 11)
    rows = crf_module._upsampled_rows(q, shape)
    whole = torch.cat([rows(slice(a, min(20, a + 3))) for a in range(0, 20, 3)])
    expected = F.interpolate(q[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    assert torch.allclose(whole, expected, atol=1e-6)


def test_argmax_and_classes_are_computed_in_small_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crf_module, "SLAB_VOXELS", 50)
    probs = torch.softmax(torch.randn(5, 9, 8, 7), 0)
    probs[3] = 0  # never the argmax
    argmax = crf_module._argmax(probs)
    assert argmax.dtype == torch.uint8 and torch.equal(argmax.long(), probs.argmax(0))
    assert crf_module._classes_in(argmax[2:7], 5) == sorted(int(c) for c in torch.unique(probs.argmax(0)[2:7]))
    assert 3 not in crf_module._classes_in(argmax, 5)
    many = torch.softmax(torch.randn(300, 4, 3, 2), 0)
    assert crf_module._argmax(many).dtype == torch.int16
    assert torch.equal(crf_module._argmax(many).long(), many.argmax(0))


def test_structures_and_config_validation() -> None:
    labels = {"background": 0, "liver": 1, "tumour": 2}
    assert resolve_structures(CrfConfig(), labels) == [1, 2]
    assert resolve_structures(CrfConfig(structures=["tumour"]), labels) == [2]
    with pytest.raises(ValueError, match=r"'tumor' is not one of .*Did you mean 'tumour'"):
        resolve_structures(CrfConfig(structures=["tumor"]), labels)
    cfg = from_dict({"inference": {"crf": {"enabled": True, "iterations": 3}}})
    assert cfg.inference.crf.enabled and cfg.inference.crf.iterations == 3
    with pytest.raises(ConfigError, match=r"inference\.crf\.spatial_sigma_mm"):
        from_dict({"inference": {"crf": {"spatial_sigma_mm": 0}}})


def test_predict_crf_option_turns_the_crf_on(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.inference.predictor as predictor_module
    from medseg.cli import main
    from tests.inference.inference_helpers import save_nifti

    calls: list[int] = []
    original = predictor_module.refine_probabilities

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor_module, "refine_probabilities", counting)
    rng = np.random.default_rng(0)
    save_nifti(tmp_path / "in" / "case.nii.gz", rng.normal(size=(20, 18, 16)).astype(np.float32), np.eye(4))
    base = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in"), "--quiet"]
    assert main([*base, "--output", str(tmp_path / "plain")]) == 0 and calls == []
    assert main([*base, "--output", str(tmp_path / "crf"), "--crf"]) == 0 and calls == [1]
    assert (tmp_path / "crf" / "case.nii.gz").is_file()
