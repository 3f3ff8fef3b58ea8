"""Applying RUN_DIR/postprocessing.json: found for runs and fold runs, explicit settings win,
and a predictor with the tuned choice removes a planted island."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.config import CrfConfig, InferenceConfig
from medseg.data.preprocess import PreprocessingPlan
from medseg.inference.predictor import LoadedModel, Predictor
from medseg.inference.tuned import find_tuned, load_tuned, merge_tuned, with_tuned
from tests.inference.inference_helpers import ThresholdNet, tiny_config

TUNED = {"keep_largest_component": ["object"], "min_component_ml": {}, "fill_holes": ["object"],
         "crf": {"enabled": True, "structures": ["object"], "bilateral_weight": 3.0}}


def _write(folder: Path, inference: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "postprocessing.json").write_text(json.dumps({"structures": {}, "inference": inference}))
    return folder


def test_found_beside_a_run_a_checkpoint_and_above_fold_runs(tmp_path: Path) -> None:
    run = _write(tmp_path / "run", TUNED)
    (run / "checkpoints").mkdir()
    (run / "fold_0").mkdir()
    assert find_tuned(run) == run / "postprocessing.json"
    assert find_tuned(run / "checkpoints" / "best.ckpt") == run / "postprocessing.json"
    assert find_tuned(run / "fold_0") == run / "postprocessing.json"
    assert find_tuned(tmp_path / "elsewhere") is None


def test_explicit_settings_win_key_by_key() -> None:
    merged = merge_tuned(InferenceConfig(), TUNED)
    assert merged.keep_largest_component == ["object"] and merged.fill_holes == ["object"]
    assert merged.crf.enabled and merged.crf.bilateral_weight == 3.0
    explicit = InferenceConfig(fill_holes=["other"], crf=CrfConfig(iterations=2))
    merged = merge_tuned(explicit, TUNED)
    assert merged.fill_holes == ["other"] and merged.keep_largest_component == ["object"]
    assert merged.crf == CrfConfig(iterations=2)


def test_a_broken_file_names_the_fix(tmp_path: Path) -> None:
    run = _write(tmp_path / "run", {"fill_holes": "object"})  # not a list
    with pytest.raises(ValueError, match="rerun medseg tune-postprocess or delete it"):
        load_tuned(run / "postprocessing.json")


def test_predictor_with_the_tuned_choice_removes_a_planted_island(tmp_path: Path) -> None:
    shape, affine = (30, 20, 20), np.eye(4)
    image = np.zeros(shape, np.float32)
    image[2:12, 2:12, 2:12] = 100.0
    image[20:23, 5:8, 5:8] = 100.0  # the island
    plan = PreprocessingPlan(target_spacing=[1.0, 1.0, 1.0], normalization="none",
                             labels={"background": 0, "object": 1}, crop_foreground=False)
    run = _write(tmp_path / "run", {"keep_largest_component": ["object"]})
    cfg = with_tuned(tiny_config(), run)
    labels = Predictor([LoadedModel(ThresholdNet(50.0).eval(), cfg)], plan).predict_array(image, affine)
    assert labels[21, 6, 6] == 0 and int(labels.sum()) == 1000
    raw = Predictor([LoadedModel(ThresholdNet(50.0).eval(), tiny_config())], plan).predict_array(image, affine)
    assert raw[21, 6, 6] == 1
