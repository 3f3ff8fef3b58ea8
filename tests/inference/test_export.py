"""Deployment export: TorchScript/ONNX predict the same masks as the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.io import read_volume
from medseg.inference.export import METADATA, export_model, load_exported
from medseg.inference.predictor import Predictor
from tests.inference.inference_helpers import save_nifti


def _image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    affine = np.diag([-1.1, 0.9, 2.0, 1.0])
    return save_nifti(tmp_path / "img.nii.gz", rng.random((26, 30, 12)).astype(np.float32), affine)


def test_torchscript_export_predicts_the_same_mask(tmp_path: Path, checkpoint: Path) -> None:
    (checkpoint / "label_statistics.json").write_text('{"version": 1, "cases": 3}')
    meta = export_model(checkpoint, tmp_path / "export", ("torchscript",))
    # The training label statistics travel with the export (predict's QA flags read them there).
    assert (tmp_path / "export" / "label_statistics.json").read_text() == '{"version": 1, "cases": 3}'
    saved = json.loads((tmp_path / "export" / METADATA).read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(meta))
    assert saved["patch_size"] == [16, 16, 16] and saved["spatial_dims"] == 3 and saved["in_channels"] == 1
    assert saved["plan"]["target_spacing"] == [1.5, 1.5, 1.5] and saved["labels"]["posterior"] == 2
    assert saved["overlap"] == 0.5 and saved["files"] == {"torchscript": "model.ts"}
    volume = read_volume(_image(tmp_path))
    expected = Predictor.from_checkpoints([checkpoint]).predict_volume(volume)
    exported = Predictor.from_checkpoints([tmp_path / "export"]).predict_volume(volume)
    assert len(np.unique(expected)) > 1  # a non-trivial mask
    np.testing.assert_array_equal(exported, expected)


def test_onnx_export_predicts_the_same_mask(tmp_path: Path, checkpoint: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(checkpoint), "--output", str(tmp_path / "export"), "--format", "both"]) == 0
    assert (tmp_path / "export" / "model.onnx").is_file() and (tmp_path / "export" / "model.ts").is_file()
    net, cfg, plan = load_exported(tmp_path / "export", "onnx")
    assert type(net).__name__ == "OnnxNetwork" and plan.num_classes == 3
    volume = read_volume(_image(tmp_path))
    expected = Predictor.from_checkpoints([checkpoint]).predict_volume(volume)
    from medseg.inference.predictor import LoadedModel

    onnx_labels = Predictor([LoadedModel(net, cfg, "onnx")], plan).predict_volume(volume)
    # ONNX Runtime's kernels round differently from torch: allow a few near-tie voxels.
    assert np.mean(onnx_labels == expected) > 0.999


def test_export_errors(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "e")]) == 2
    assert "no checkpoints/best.ckpt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected one or more of"):
        export_model(checkpoint, tmp_path / "e", ("tflite",))
    export_model(checkpoint, tmp_path / "ts", ("torchscript",))
    with pytest.raises(FileNotFoundError, match="re-export with --format onnx"):
        load_exported(tmp_path / "ts", "onnx")
