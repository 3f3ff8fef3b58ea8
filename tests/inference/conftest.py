"""Fixtures for the inference tests (helpers live in inference_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.data.preprocess import PreprocessingPlan
from tests.inference.inference_helpers import LABELS, make_checkpoint


@pytest.fixture
def plan() -> PreprocessingPlan:
    return PreprocessingPlan(target_spacing=[1.5, 1.5, 1.5], normalization="zscore", labels=dict(LABELS))


@pytest.fixture
def checkpoint(tmp_path: Path, plan: PreprocessingPlan) -> Path:
    """A run directory holding checkpoints/best.ckpt of a random tiny 3-class UNet."""
    make_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", plan)
    return tmp_path / "run"
