"""Predictor: masks land in the input's exact geometry (threshold network, known answer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import CrfConfig
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.predictor import LoadedModel, Predictor
from tests.inference.inference_helpers import (
    ThresholdNet,
    dice,
    make_checkpoint,
    rotation,
    sphere_image,
    threshold_predictor,
    tiny_config,
)

THRESHOLD = 88.0  # 100 - radius 12 mm


def _affine(linear: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = origin
    return aff


GEOMETRIES = {
    # name: (shape, affine, plan target spacing (canonical order), minimum Dice)
    "ras_1mm": ((40, 36, 34), _affine(np.eye(3), (-20, -15, 5)), [1.0, 1.0, 1.0], 1.0),
    "lps_anisotropic": ((48, 40, 14), _affine(np.diag([-0.8, -0.9, 2.5]), (30, 25, -10)), [0.8, 0.9, 2.5], 1.0),
    "resampled_down": ((48, 40, 14), _affine(np.diag([-0.8, -0.8, 2.5]), (30, 25, -10)), [1.6, 1.6, 2.5], 0.97),
    "resampled_up": ((18, 16, 14), _affine(np.diag([2.0, 2.2, 2.5]), (-15, -14, -12)), [1.0, 1.0, 1.25], 0.97),
    "oblique_permuted": (
        (20, 36, 30),
        _affine(rotation(0.3, 0.35) @ np.array([[0, 1.0, 0], [0, 0, -1.1], [1.6, 0, 0]]), (-14, 18, -16)),
        [1.0, 1.1, 1.6],
        0.97,
    ),
    "oblique_resampled": (
        (26, 24, 22),
        _affine(rotation(-0.4, 0.2) @ np.diag([1.3, -1.2, 1.5]), (-16, 14, -15)),
        [1.0, 1.0, 1.0],
        0.97,
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_mask_is_the_threshold_of_the_input_in_its_own_geometry(name: str) -> None:
    shape, affine, spacing, min_dice = GEOMETRIES[name]
    # An off-centre sphere: a missing flip or permutation would move the mask.
    centre = affine[:3, :3] @ (np.array(shape) * [0.38, 0.6, 0.4]) + affine[:3, 3]
    image = sphere_image(shape, affine, centre)
    expected = image > THRESHOLD
    assert 300 < expected.sum() < 0.5 * expected.size
    predictor = threshold_predictor(spacing, THRESHOLD)
    labels = predictor.predict_array(image, affine)
    assert labels.shape == shape and labels.dtype == np.uint8
    score = dice(labels == 1, expected)
    assert score >= min_dice, f"{name}: Dice {score:.4f}"
    # Resampling may move boundary voxels, but not the object: a half-voxel grid shift moves
    # the centroid by 0.3-0.8 mm here.
    def centroid(mask: np.ndarray) -> np.ndarray:
        return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]

    np.testing.assert_allclose(centroid(labels == 1), centroid(expected), atol=0.1)
    # The object mirrored along any axis scores far lower: the test would catch a flipped axis.
    for axis in range(3):
        assert dice(np.flip(labels, axis) == 1, expected) < 0.9


def test_crop_outside_foreground_is_background() -> None:
    shape, affine = (30, 30, 30), np.eye(4)
    image = sphere_image(shape, affine, np.array([15.0, 15.0, 15.0]), box_margin=8)
    predictor = threshold_predictor([1.0, 1.0, 1.0], 50.0)  # inside the box everything is > 50
    labels = predictor.predict_array(image, affine)
    np.testing.assert_array_equal(labels == 1, image > 50.0)
    assert labels[:8].max() == 0


def test_ensemble_averages_probabilities(plan: PreprocessingPlan, tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a.ckpt", plan, seed=1)
    b = make_checkpoint(tmp_path / "b.ckpt", plan, seed=2)
    image = np.random.default_rng(0).random((1, 20, 18, 16)).astype(np.float32)
    one_a, one_b = Predictor.from_checkpoints([a]), Predictor.from_checkpoints([b])
    both = Predictor.from_checkpoints([a, b])
    prepared = both.prepare(image, np.eye(4))
    expected = (one_a.probabilities(prepared) + one_b.probabilities(prepared)) / 2
    torch.testing.assert_close(both.probabilities(prepared), expected)
    assert both.predict_array(image, np.eye(4)).shape == (20, 18, 16)


def test_ensemble_with_different_plans_is_refused(plan: PreprocessingPlan, tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a.ckpt", plan)
    other = PreprocessingPlan(target_spacing=[2.0, 2.0, 2.0], normalization="zscore", labels=plan.labels)
    b = make_checkpoint(tmp_path / "b.ckpt", other)
    with pytest.raises(ValueError, match=r"preprocessing differs .* in 'target_spacing'"):
        Predictor.from_checkpoints([a, b])


def test_tta_and_window_overrides(plan: PreprocessingPlan, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "a.ckpt", plan)
    predictor = Predictor.from_checkpoints([ckpt], tta=True, overlap=0.25, sw_batch_size=2)
    inf = predictor.models[0].cfg.inference
    assert (inf.tta, inf.overlap, inf.sw_batch_size) == (True, 0.25, 2)
    prepared = predictor.prepare(np.random.default_rng(1).random((12, 12, 12)).astype(np.float32), np.eye(4))
    probs = predictor.probabilities(prepared)
    torch.testing.assert_close(probs.sum(0), torch.ones(probs.shape[1:]))
    with pytest.raises(ValueError, match=r"overlap 1\.5"):
        Predictor.from_checkpoints([ckpt], overlap=1.5)


def test_tta_of_a_mirror_symmetric_network_changes_nothing() -> None:
    """ThresholdNet is pointwise, so flipping commutes with it: TTA must give the same mask."""
    shape, affine = (24, 22, 20), np.diag([1.0, 1.0, 1.0, 1.0])
    image = sphere_image(shape, affine, np.array([9.0, 12.0, 10.0]))
    plain = threshold_predictor([1.0, 1.0, 1.0], THRESHOLD).predict_array(image, affine)
    tta = threshold_predictor([1.0, 1.0, 1.0], THRESHOLD, tta=True).predict_array(image, affine)
    np.testing.assert_array_equal(plain, tta)


def test_two_dimensional_network_predicts_slice_wise() -> None:
    cfg = tiny_config()
    cfg.model.spatial_dims = 2
    cfg.data.patch_size = [16, 16]
    plan = PreprocessingPlan(target_spacing=[1.0, 1.0, 1.0], normalization="none", labels={"background": 0, "o": 1})
    predictor = Predictor([LoadedModel(ThresholdNet(THRESHOLD).eval(), cfg)], plan)
    shape, affine = (22, 20, 18), np.diag([-1.0, 1.0, 1.0, 1.0])
    image = sphere_image(shape, affine, np.array([-8.0, 9.0, 8.0]))
    np.testing.assert_array_equal(predictor.predict_array(image, affine) == 1, image > THRESHOLD)


def test_wrong_channel_count_is_a_clear_error(plan: PreprocessingPlan, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoints([make_checkpoint(tmp_path / "a.ckpt", plan)])
    with pytest.raises(ValueError, match=r"expected \(C, X, Y, Z\) with C = 1 channels"):
        predictor.predict_array(np.zeros((2, 8, 8, 8), np.float32), np.eye(4))


def test_configured_postprocessing_is_applied_by_structure_name() -> None:
    shape, affine = (30, 20, 20), np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm^3 voxels
    image = np.zeros(shape, np.float32)
    image[2:12, 2:12, 2:12] = 100.0  # 1000 voxels = 2 mL
    image[20:23, 5:8, 5:8] = 100.0  # 27 voxels = 0.054 mL
    image[5:8, 5:8, 5:8] = 0.0  # a hole
    cfg = tiny_config(keep_largest_component=["object"], fill_holes=["object"])
    plan = PreprocessingPlan(target_spacing=[2.0, 1.0, 1.0], normalization="none", labels={"background": 0, "object": 1},
                             crop_foreground=False)
    labels = Predictor([LoadedModel(ThresholdNet(50.0).eval(), cfg)], plan).predict_array(image, affine)
    assert int(labels.sum()) == 1000 and labels[21, 6, 6] == 0 and labels[6, 6, 6] == 1
    raw = Predictor([LoadedModel(ThresholdNet(50.0).eval(), cfg)], plan, apply_postprocess=False)
    unprocessed = raw.predict_array(image, affine)
    assert unprocessed[21, 6, 6] == 1 and unprocessed[6, 6, 6] == 0
    small = tiny_config(min_component_ml={"object": 0.1})
    labels = Predictor([LoadedModel(ThresholdNet(50.0).eval(), small)], plan).predict_array(image, affine)
    assert labels[21, 6, 6] == 0 and labels[3, 3, 3] == 1
    with pytest.raises(ValueError, match="'organ' is not one of the model's structures"):
        Predictor([LoadedModel(ThresholdNet(50.0).eval(), tiny_config(fill_holes=["organ"]))], plan)


def test_crf_runs_on_the_network_grid_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inference.crf.enabled`` (or ``crf=True``) refines the network-grid probabilities with
    the network-grid image and its spacing; ``apply_postprocess=False`` turns the config's
    CRF off, ``crf=True`` wins over both."""
    import medseg.inference.predictor as predictor_module

    calls: list[tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]] = []

    def recording(probs: torch.Tensor, image: np.ndarray, spacing: tuple[float, ...], cfg: object,
                  labels: object) -> torch.Tensor:
        calls.append((tuple(probs.shape), tuple(image.shape), tuple(spacing)))
        return probs

    monkeypatch.setattr(predictor_module, "refine_probabilities", recording)
    shape, affine = (30, 20, 20), np.diag([1.0, 1.0, 1.0, 1.0])
    image = np.zeros(shape, np.float32)
    image[2:12, 2:12, 2:12] = 100.0
    plan = PreprocessingPlan(target_spacing=[2.0, 1.0, 1.0], normalization="none",
                             labels={"background": 0, "object": 1}, crop_foreground=False)
    net = ThresholdNet(50.0).eval()
    Predictor([LoadedModel(net, tiny_config())], plan).predict_array(image, affine)
    assert calls == []  # off by default
    on = tiny_config(crf=CrfConfig(enabled=True))
    Predictor([LoadedModel(net, on)], plan).predict_array(image, affine)
    assert calls == [((2, 15, 20, 20), (1, 15, 20, 20), (2.0, 1.0, 1.0))]
    Predictor([LoadedModel(net, on)], plan, apply_postprocess=False).predict_array(image, affine)
    assert len(calls) == 1
    Predictor([LoadedModel(net, tiny_config())], plan, apply_postprocess=False, crf=True).predict_array(image, affine)
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"inference\.crf\.structures: 'organ' is not one of"):
        Predictor([LoadedModel(net, tiny_config(crf=CrfConfig(enabled=True, structures=["organ"])))], plan)


@pytest.mark.parametrize("kind", ["conv", "head"])
def test_block_wise_prediction_equals_the_whole_volume_path(kind: str) -> None:
    """40 classes, overlapping Gaussian windows, mirroring TTA on two axes, resampling to an
    anisotropic input grid: cut into many blocks, the labels are those of one whole-volume
    pass through MONAI's sliding window and a full resampling of every class, except where
    the two best classes tie within float rounding (head: blended as features, the finished
    passes kept in float16)."""
    from medseg.data.inverse import labels_to_input
    from medseg.inference.blockwise import feature_split
    from medseg.inference.resample import resample_argmax
    from medseg.inference.window import predict_probabilities
    from tests.inference.test_blockwise import ConvNet, HeadNet, _cfg

    classes = 40
    plan = PreprocessingPlan(target_spacing=[1.5, 1.5, 2.0], normalization="zscore", crop_foreground=False,
                             labels={"background": 0, **{f"s{i}": i for i in range(1, classes)}})
    cfg = _cfg([16, 16, 16], True, mirror=[0, 2])
    net = (ConvNet(classes, seed=3) if kind == "conv" else HeadNet(classes, seed=3)).eval()
    assert (feature_split(net, cfg, classes, 1) is not None) == (kind == "head")
    image = torch.randn(30, 28, 14, generator=torch.Generator().manual_seed(0)).numpy()
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    predictor = Predictor([LoadedModel(net, cfg)], plan, apply_postprocess=False, block_bytes=80_000)
    got = predictor.predict_array(image, affine)
    assert predictor.last_plan is not None and len(predictor.last_plan.blocks) >= 4

    prepared = predictor.prepare(image, affine)
    with torch.no_grad():
        probs = predict_probabilities(net, torch.from_numpy(prepared.image), cfg, tta=True)
    crop = tuple(s.stop - s.start for s in prepared.bbox)
    expected = labels_to_input(resample_argmax(probs, crop), prepared, affine)
    differ = got != expected
    assert differ.mean() < 1e-3, f"{int(differ.sum())} of {differ.size} voxels differ"
    assert len(np.unique(got)) > 10  # a fragmented map: many boundaries were resampled


def test_precision_override_reaches_every_member_and_is_checked(checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoints([checkpoint, checkpoint], precision="bf16")
    assert [m.cfg.inference.precision for m in predictor.models] == ["bf16", "bf16"]
    assert [m.cfg.inference.precision for m in Predictor.from_checkpoints([checkpoint]).models] == ["fp32"]
    with pytest.raises(ValueError, match="precision 'fp16': expected one of fp32, bf16, auto"):
        Predictor.from_checkpoints([checkpoint], precision="fp16")


def test_a_predictor_chooses_its_networks_layout(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A predictor's networks are laid out by inference.memory_format (auto: the faster layout,
    here made channels-last by the timer) before its windows run."""
    from medseg.inference import window

    monkeypatch.setattr(window, "_forward_seconds",
                        lambda net, x, autocast, layout: 0.5 if layout is not None else 1.0)  # channels-last "faster"
    predictor = Predictor.from_checkpoints([checkpoint], device="cpu")
    net = predictor.models[0].net
    assert window.layout_managed(net)
    predictor.predict_array(np.random.default_rng(0).random((20, 18, 16)).astype(np.float32), np.eye(4))
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()


def test_an_ensemble_divides_the_default_block_budget(checkpoint: Path) -> None:
    from medseg.inference.blockwise import BLOCK_BYTES

    assert Predictor.from_checkpoints([checkpoint]).block_bytes == BLOCK_BYTES
    assert Predictor.from_checkpoints([checkpoint, checkpoint]).block_bytes == BLOCK_BYTES // 2
    assert Predictor.from_checkpoints([checkpoint] * 3).block_bytes == BLOCK_BYTES // 3
    assert Predictor.from_checkpoints([checkpoint, checkpoint], block_bytes=400 * 2**20).block_bytes == 400 * 2**20
