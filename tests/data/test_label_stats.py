"""Training label statistics: hand-checked ranges, RAS-ordered geometry, lookup beside a model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.label_stats import (
    FILE_NAME,
    compute_label_statistics,
    load_for_models,
    write_label_statistics,
)

LABELS = {"background": 0, "liver": 1, "lesion": 2}


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _labels(tmp_path: Path) -> list[Path]:
    paths = []
    # Case 0: liver 8 voxels, lesion 2 separate voxels; 2 mm isotropic (8 mm^3 per voxel).
    a = np.zeros((10, 10, 10), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    a[6, 6, 6] = a[8, 8, 8] = 2
    paths.append(save_nifti(tmp_path / "a.nii.gz", a, np.diag([2.0, 2.0, 2.0, 1.0])))
    # Case 1: liver 27 voxels, no lesion; stored with axes (S, R, A): spacing 3 along S, size 6 along S.
    b = np.zeros((6, 12, 14), np.uint8)
    b[0:3, 0:3, 0:3] = 1
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 3.0, 1.0, 1.0, 1.0
    paths.append(save_nifti(tmp_path / "b.nii.gz", b, affine))
    return paths


def test_statistics_of_training_labels(tmp_path: Path) -> None:
    stats = compute_label_statistics(_labels(tmp_path), LABELS)
    assert stats["cases"] == 2
    liver, lesion = stats["structures"]["liver"], stats["structures"]["lesion"]
    assert liver["fraction_present"] == 1.0 and liver["cases"] == 2 and liver["components_max"] == 1
    assert liver["volume_ml_min"] == pytest.approx(8 * 8 / 1000) and liver["volume_ml_max"] == pytest.approx(27 * 3 / 1000)  # 3 mm^3 voxels
    assert lesion["fraction_present"] == 0.5 and lesion["components_max"] == 2
    assert lesion["volume_ml_min"] == lesion["volume_ml_max"] == pytest.approx(2 * 8 / 1000)
    # Geometry per world axis (R, A, S), whatever the storage order.
    assert stats["spacing_mm"] == {"min": [1.0, 1.0, 2.0], "max": [2.0, 2.0, 3.0]}
    assert stats["size_voxels"] == {"min": [10, 10, 6], "max": [12, 14, 10]}


def test_found_beside_a_run_directory_or_its_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_label_statistics(run, _labels(tmp_path), LABELS)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    for model in (run, run / "checkpoints" / "best.ckpt"):
        stats, note = load_for_models([model])
        assert note == "" and stats is not None and stats["structures"]["liver"]["cases"] == 2
    # Ensemble with a second run whose liver was bigger and always had its lesion: union of ranges.
    other = json.loads((run / FILE_NAME).read_text())
    other["structures"]["liver"]["volume_ml_max"] = 5.0
    other["structures"]["lesion"]["fraction_present"] = 1.0
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / FILE_NAME).write_text(json.dumps(other))
    stats, note = load_for_models([run, tmp_path / "run2"])
    assert stats is not None and note == ""
    assert stats["structures"]["liver"]["volume_ml_max"] == 5.0
    assert stats["structures"]["lesion"]["fraction_present"] == 0.5  # "always present" must hold for every model
    stats, note = load_for_models([tmp_path / "old_run"])
    assert stats is None and "only structures touching the edge" in note
    stats, note = load_for_models([run, tmp_path / "old_run"])
    assert stats is not None and "old_run" in note
