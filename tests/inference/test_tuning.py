"""Choosing the post-processing on validation cases: hand-made probabilities with known best
steps, and the whole command on a tiny trained phantom run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import CrfConfig
from medseg.inference.crf import refine_probabilities
from medseg.inference.tuning import CRF_GRID, ValidationCase, apply_choice, member_runs, tune

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return np.asarray((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < radius**2)


def _case(i: int, island: bool, hole: bool) -> ValidationCase:
    """Organ: a ball (reference) predicted with a planted spurious island far away, and a
    3x3x3-voxel hole; lesion: a small ball predicted exactly. Image: a clear edge."""
    shape = (28, 28, 28)
    organ = _ball(shape, (10, 10, 10), 6 + i % 2)
    lesion = _ball(shape, (21, 21, 21), 3)
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    pred = label.copy()
    if island:
        pred[20:23, 3:6, 3:6] = 1
    if hole:
        pred[9:12, 9:12, 9:12] = 0
    probs = torch.zeros(3, *shape)
    for k in range(3):
        probs[k] = torch.from_numpy((pred == k).astype(np.float32)) * 0.8 + 0.1
    image = (2.0 * (label > 0)).astype(np.float32)[None]
    return ValidationCase(f"case_{i}", probs.to(torch.float16), image, label, (1.0, 1.0, 1.0))


def test_planted_island_and_hole_are_cleaned_and_nothing_else_is_chosen() -> None:
    cases = [_case(i, island=i < 3, hole=True) for i in range(4)]
    result = tune(cases, LABELS, margin=0.002, crf_grid=())
    organ, lesion = result["structures"]["organ"], result["structures"]["lesion"]
    assert organ["components"] in ("largest_component",) or organ["components"].startswith("islands_below")
    assert organ["fill_holes"] is True
    assert organ["dice_after"] == pytest.approx(1.0) and organ["dice_before"] < 0.98
    # exact prediction: no step can gain the margin, so nothing is kept
    assert lesion["components"] == "none" and lesion["fill_holes"] is False and lesion["crf"] is False
    assert lesion["dice_after"] == lesion["dice_before"] == pytest.approx(1.0)
    inference = result["inference"]
    assert inference["fill_holes"] == ["organ"] and "crf" not in inference
    assert inference["keep_largest_component"] == ["organ"] or set(inference["min_component_ml"]) == {"organ"}


def test_planted_island_is_cleaned_with_the_crf_candidates_tried() -> None:
    """The whole candidate list (the CRF grid included): the island and the hole are still
    cleaned, and the CRF is chosen only for the structure it helps."""
    cases = [_case(i, island=i < 3, hole=True) for i in range(4)]
    result = tune(cases, LABELS, margin=0.002, crf_grid=CRF_GRID)
    organ, lesion = result["structures"]["organ"], result["structures"]["lesion"]
    assert organ["dice_before"] < 0.98 and organ["dice_after"] > 0.99
    assert {"crf_0", "crf_1", "crf_2", "largest_component", "fill_holes"} <= set(organ["trials"])
    assert lesion["dice_after"] == pytest.approx(1.0)
    # the strong appearance kernel removes the dark island and fills the hole by itself
    # (0.978 -> 1.0): the CRF helps the organ, so it is chosen; nothing helps the exact lesion
    assert organ["crf"] is True and lesion["crf"] is False and lesion["components"] == "none"
    assert result["inference"]["crf"]["structures"] == ["organ"]


def test_margin_keeps_steps_that_gain_too_little() -> None:
    cases = [_case(i, island=False, hole=True) for i in range(2)]  # 27 voxels: a gain of about 0.01
    gain = tune(cases, LABELS, margin=0.0, crf_grid=())["structures"]["organ"]
    assert gain["fill_holes"] is True
    strict = tune(cases, LABELS, margin=0.05, crf_grid=())["structures"]["organ"]
    assert strict["fill_holes"] is False and strict["dice_after"] == strict["dice_before"]


def test_crf_is_chosen_where_it_helps() -> None:
    """Noisy probabilities around a ball with a clear image edge: the CRF raises Dice."""
    rng = np.random.default_rng(0)
    shape = (28, 28, 28)
    cases = []
    for i in range(2):
        truth = _ball(shape, (14, 14, 14), 7)
        logit = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.5, shape)
        p = torch.from_numpy((1 / (1 + np.exp(-logit))).astype(np.float32))
        probs = torch.stack([1 - p, p]).to(torch.float16)
        image = (2.0 * truth + rng.normal(0, 0.3, shape)).astype(np.float32)[None]
        cases.append(ValidationCase(f"c{i}", probs, image, truth.astype(np.uint8), (1.0, 1.0, 1.0)))
    result = tune(cases, {"background": 0, "ball": 1}, crf_grid=({},))
    ball = result["structures"]["ball"]
    assert ball["crf"] is True and ball["dice_after"] > ball["dice_before"] + 0.3
    assert result["inference"]["crf"]["enabled"] is True and result["inference"]["crf"]["structures"] == ["ball"]


NEIGHBOURS = {"background": 0, "big": 1, "small": 2, "far": 3}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _neighbours(seed: int) -> list[ValidationCase]:
    """Two touching structures of the same intensity: "big", a ball with noisy
    probabilities (the CRF cleans them), and "small", a ball touching it predicted right but
    narrowly (0.5 against 0.45 for "big"); and "far", a noisy ball away from both. Refining
    "big" raises its Dice, but its refined probability spreads into "small" (same intensity,
    next to a confident neighbour) and takes it over."""
    rng = np.random.default_rng(seed)
    shape = (44, 22, 22)
    cases = []
    for i in range(2):
        big = _ball(shape, (10, 11, 11), 6)
        small = _ball(shape, (18, 11, 11), 3) & ~big
        far = _ball(shape, (35, 11, 11), 5)
        label = np.zeros(shape, np.uint8)
        label[big], label[small], label[far] = 1, 2, 3
        p = 1 / (1 + np.exp(-(np.where(big | far, 1.0, -1.0) + rng.normal(0, 1.0, shape))))
        left = np.arange(shape[0])[:, None, None] < 26
        probs = np.stack([1 - p, np.where(left, p, 0), np.zeros(shape), np.where(left, 0, p)]).astype(np.float32)
        probs[:, small] = np.array([0.05, 0.45, 0.5, 0.0], np.float32)[:, None]
        image = (2.0 * (label > 0) + rng.normal(0, 0.3, shape)).astype(np.float32)[None]
        cases.append(ValidationCase(f"c{i}", torch.from_numpy(probs).to(torch.float16), image, label, (1.0, 1.0, 1.0)))
    return cases


def test_crf_that_helps_one_structure_but_harms_its_neighbour_is_not_chosen() -> None:
    cases = _neighbours(0)
    # the premise: refined alone, "big" gains (what scoring it by its own Dice sees), "small" is lost
    alone = CrfConfig(enabled=True, structures=["big"])
    for c in cases:
        before = c.probs.float().argmax(0).numpy()
        after = refine_probabilities(c.probs.float(), c.image, c.spacing, alone, NEIGHBOURS).argmax(0).numpy()
        assert _dice(after == 1, c.label == 1) > _dice(before == 1, c.label == 1) + 0.2
        assert _dice(after == 2, c.label == 2) < _dice(before == 2, c.label == 2) - 0.5
    result = tune(cases, NEIGHBOURS, crf_grid=({},))
    big, small, far = (result["structures"][n] for n in ("big", "small", "far"))
    # refining "big" is rejected (its gain is smaller than what "small" loses), "far" is refined
    assert big["crf"] is False and small["crf"] is False and far["crf"] is True
    assert result["inference"]["crf"]["structures"] == ["far"]
    first_round = result["crf_search"][0]["steps"][0]["total_dice_change_if_added"]
    assert first_round["big"] < 0 < first_round["far"]
    assert small["dice_after"] == pytest.approx(small["dice_before"])
    assert far["dice_after"] > far["dice_before"] + 0.3
    assert result["mean_dice_after"] > result["mean_dice_before"]


def test_recorded_dice_is_what_the_chosen_settings_give() -> None:
    """``dice_after`` of every structure is the Dice of the whole choice (CRF, components,
    holes) applied together by the steps ``medseg predict`` runs, on the tuning cases."""
    cases = _neighbours(1)
    result = tune(cases, NEIGHBOURS, crf_grid=({},))
    inference = result["inference"]
    assert "crf" in inference and inference["keep_largest_component"] + list(inference["min_component_ml"])
    maps = [apply_choice(c, inference, NEIGHBOURS) for c in cases]
    for name, label in NEIGHBOURS.items():
        if label:
            applied = float(np.mean([_dice(m == label, c.label == label) for m, c in zip(maps, cases, strict=True)]))
            assert result["structures"][name]["dice_after"] == pytest.approx(applied, abs=1e-12)
    assert result["mean_dice_after"] == pytest.approx(
        np.mean([result["structures"][n]["dice_after"] for n in ("big", "small", "far")]))


def test_member_runs(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.yaml"):
        member_runs(tmp_path / "run")
    for k in (1, 0):
        (tmp_path / "run" / f"fold_{k}").mkdir()
        (tmp_path / "run" / f"fold_{k}" / "config.yaml").write_text("{}\n")
    assert [p.name for p in member_runs(tmp_path / "run")] == ["fold_0", "fold_1"]


@pytest.mark.slow
def test_tune_postprocess_command_on_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.cli import main
    from medseg.config import InferenceConfig
    from medseg.inference.crf import crf_settings
    from medseg.inference.postprocess import resolve_spec
    from medseg.inference.predictor import Predictor
    from medseg.inference.tuned import merge_tuned

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", "--output", str(data), "--cases", "5", "--seed", "1"]) == 0
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n"
        "model:\n  channels: [4, 8]\n"
        "trainer:\n  max_epochs: 1\n  steps_per_epoch: 2\n  val_every_n_epochs: 1\n  progress_bar: false\n"
        "  accelerator: cpu\n"
    )
    assert main(["train", str(pipeline), "--data", str(data / "dataset.json"), "--output", str(run)]) == 0
    assert main(["tune-postprocess", "--model", str(run), "--device", "cpu"]) == 0
    tuned = json.loads((run / "postprocessing.json").read_text())
    val = json.loads((run / "split.json").read_text())["val"]
    assert tuned["cases"] == sorted(val) or sorted(tuned["cases"]) == sorted(val)
    assert set(tuned["structures"]) == {"organ", "lesion", "vessel"}
    for entry in tuned["structures"].values():
        assert set(entry["trials"]) >= {"none", "crf_0", "largest_component", "fill_holes"}
    # a step may cost a structure it does not refine, but never the sum over structures
    changes = [e["dice_after"] - e["dice_before"] for e in tuned["structures"].values() if e["dice_before"] is not None]
    assert sum(changes) >= -1e-12
    assert "tuned on" in capsys.readouterr().out
    assert tuned["warnings"] == []  # the run's own validation cases
    # tuning on cases the network trained on is allowed, but said (in the JSON and on stderr)
    assert main(["tune-postprocess", "--model", str(run), "--data", str(data / "dataset.json"), "--no-crf",
                 "--device", "cpu"]) == 0
    train_cases = json.loads((run / "split.json").read_text())["train"]
    warning = json.loads((run / "postprocessing.json").read_text())["warnings"]
    assert len(warning) == 1 and f"{len(train_cases)} of the 5 tuning cases were training cases" in warning[0]
    assert "warning: --data" in capsys.readouterr().err
    (run / "postprocessing.json").write_text(json.dumps(tuned))
    # predict resolves the tuned section to the settings the tuner scored (apply_choice's)
    cfg = merge_tuned(InferenceConfig(), tuned["inference"])
    predictor = Predictor.from_checkpoints([run], "cpu")
    assert predictor.crf == crf_settings(cfg.crf, predictor.labels)
    assert predictor.post == resolve_spec(cfg, predictor.labels)
    # the tuned choice is what predict applies; --no-postprocess skips it
    (run / "postprocessing.json").write_text(json.dumps(tuned | {"inference": {"fill_holes": ["organ"]}}))
    with_tuned = Predictor.from_checkpoints([run], "cpu")
    assert with_tuned.post.fill_holes == [1]
    assert Predictor.from_checkpoints([run], "cpu", postprocess=False).post.fill_holes == []


def _satellite_cases() -> list[ValidationCase]:
    """An organ (a ball) with a true 8-voxel satellite in cases 0-2 (predicted exactly) and a
    216-voxel spurious island in case 3: "largest component" gains ~0.11 Dice on case 3 and
    loses ~0.005 on each other case; its mean gain (~0.023) passes the margin."""
    shape = (28, 28, 28)
    cases = []
    for i in range(4):
        label = _ball(shape, (10, 10, 10), 6).astype(np.uint8)
        pred = label.copy()
        if i < 3:
            label[22:24, 3:5, 3:5] = 1
            pred[22:24, 3:5, 3:5] = 1
        else:
            pred[20:26, 2:8, 2:8] = 1
        probs = torch.stack([torch.from_numpy((pred == k).astype(np.float32)) * 0.8 + 0.1 for k in range(2)])
        cases.append(ValidationCase(f"s{i}", probs.to(torch.float16), (2.0 * label).astype(np.float32)[None], label,
                                    (1.0, 1.0, 1.0)))
    return cases


def test_a_step_that_one_case_carries_and_the_others_pay_for_is_not_kept() -> None:
    cases = _satellite_cases()
    labels = {"background": 0, "organ": 1}
    organ = tune(cases, labels, margin=0.002, crf_grid=(), confidence=0.0)["structures"]["organ"]
    # the margin alone keeps it: its mean gain is well above the margin
    assert organ["components"] == "largest_component"
    assert organ["dice_after"] > organ["dice_before"] + 0.01
    consistent = tune(cases, labels, margin=0.002, crf_grid=())["structures"]["organ"]
    assert consistent["components"] == "none" and consistent["dice_after"] == consistent["dice_before"]
    assert consistent["trials"]["largest_component"] == organ["dice_after"]


def test_supported_needs_the_margin_and_a_consistent_gain() -> None:
    from medseg.inference.tuning import case_gains, supported

    same = np.full(3, 0.01)
    assert supported(same, 0.01, 0.002, 0.9)  # identical gains: no spread to doubt
    assert not supported(same, 0.001, 0.002, 0.9)  # below the margin
    assert not supported(np.array([0.05]), 0.05, 0.002, 0.9)  # one case: no spread estimate
    assert supported(np.array([0.05]), 0.05, 0.002, 0.0)  # the margin alone
    mixed = np.array([0.12, -0.01, -0.01, -0.01])
    assert not supported(mixed, float(mixed.mean()), 0.002, 0.9)
    assert supported(mixed, float(mixed.mean()), 0.002, 0.0)
    many = np.tile(mixed + 0.02, 10)  # the same pattern shifted up, on 40 cases: consistent
    assert supported(many, float(many.mean()), 0.002, 0.9)
    # an empty structure predicted empty is perfect: a step that adds voxels there loses 1
    np.testing.assert_array_equal(case_gains(np.array([0.0, 0.9]), np.array([np.nan, 0.8])), [-1.0, 0.9 - 0.8])
    with pytest.raises(ValueError, match=r"confidence 1\.0"):
        tune(_satellite_cases(), {"background": 0, "organ": 1}, crf_grid=(), confidence=1.0)
