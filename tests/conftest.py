"""Shared fixtures: the real-data folder (skips when absent) and small geometry helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``$MEDSEG_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("MEDSEG_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MEDSEG_DATA)")
    return path


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
