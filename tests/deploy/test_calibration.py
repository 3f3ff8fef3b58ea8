"""Calibration windows: crops of the case preprocessed with the run's plan, reproducible, and
refused for a manifest that does not fit the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.config import from_dict
from medseg.data.datamodule import load_case
from medseg.data.manifest import load_manifest
from medseg.data.preprocess import PreprocessingPlan
from medseg.data.synthetic import generate_dataset
from medseg.deploy.calibration import calibration_windows

PATCH = [8, 8, 8]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("calib"), cases=3, seed=4, shape=(24, 24, 20))


def _setup(manifest: Path) -> tuple:
    cfg = from_dict({"data": {"patch_size": PATCH, "target_spacing": [6.0, 6.0, 6.0], "foreground_ratio": 0.5}})
    m = load_manifest(manifest)
    plan = PreprocessingPlan(target_spacing=[6.0, 6.0, 6.0], normalization="zscore",
                             channel_names=list(m.channel_names), labels=dict(m.labels))
    return cfg, plan, m


def _is_crop(window: np.ndarray, image: np.ndarray) -> bool:
    """True when ``window`` (C, *PATCH) equals some PATCH-sized box of ``image`` (C, X, Y, Z)."""
    px, py, pz = PATCH
    for x in range(image.shape[1] - px + 1):
        for y in range(image.shape[2] - py + 1):
            for z in range(image.shape[3] - pz + 1):
                if np.array_equal(image[:, x:x + px, y:y + py, z:z + pz], window):
                    return True
    return False


def test_windows_are_crops_of_the_preprocessed_cases_in_order(dataset):
    cfg, plan, m = _setup(dataset)
    windows = calibration_windows(dataset, cfg, plan, cases=2, per_case=3, seed=1)
    assert windows.shape == (6, 1, *PATCH) and windows.dtype == np.float32
    for i, case in enumerate(m.training[:2]):
        image = load_case(case, plan)["image"]
        assert image.shape[1:] != (24, 24, 20)  # resampled to the plan's 6 mm grid
        for w in windows[3 * i:3 * i + 3]:
            assert _is_crop(w, image)
    np.testing.assert_array_equal(windows, calibration_windows(dataset, cfg, plan, cases=2, per_case=3, seed=1))
    assert not np.array_equal(windows, calibration_windows(dataset, cfg, plan, cases=2, per_case=3, seed=2))


def test_a_manifest_that_does_not_fit_the_model_is_refused(dataset, tmp_path):
    cfg, plan, _ = _setup(dataset)
    two_channels = PreprocessingPlan(**{**plan.__dict__, "channel_names": ["T1", "T2"]})
    with pytest.raises(ValueError, match=r"has 1 image channel\(s\), the model expects 2 \(\['T1', 'T2'\]\)"):
        calibration_windows(dataset, cfg, two_channels, cases=1)
    empty = tmp_path / "dataset.json"
    empty.write_text(json.dumps({"name": "e", "modality": {"0": "MRI"}, "labels": {"0": "background"},
                                 "training": [], "test": []}))
    with pytest.raises(ValueError, match="lists no cases"):
        calibration_windows(empty, cfg, plan)
