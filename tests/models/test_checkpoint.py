"""The one loader of a trained network: round trip, run directories, and no Lightning needed."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import from_dict
from medseg.data.io import write_volume
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.checkpoint import best_checkpoint, in_channels, load_network
from medseg.training.module import SegmentationModule, module_hparams
from tests.no_lightning import predict_without_lightning


def _saved(tmp_path: Path, **data) -> tuple[SegmentationModule, Path]:
    cfg = from_dict({"model": {"channels": [4, 8]}, "data": {"patch_size": [16, 16, 16], **data}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1, "b": 2})
    module = SegmentationModule(**module_hparams(cfg, plan))
    # what Lightning writes: the module's hparams and state_dict (plus loop state we ignore)
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return module, path


def test_round_trip_rebuilds_the_network(tmp_path):
    module, path = _saved(tmp_path)
    net, cfg, plan = load_network(path)
    x = torch.randn(1, 1, 16, 16, 16)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x))
    assert asdict(plan) == asdict(module.plan) and cfg.model.channels == [4, 8] and not net.training


def test_run_directory_resolves_to_best_then_last(tmp_path):
    _, path = _saved(tmp_path)
    assert best_checkpoint(tmp_path / "run") == path
    path.rename(path.with_name("last.ckpt"))
    assert best_checkpoint(tmp_path / "run") == path.with_name("last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/best\.ckpt or last\.ckpt"):
        best_checkpoint(tmp_path)


def test_in_channels_counts_slab_slices_for_2d():
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", channel_names=["T1", "T2"], labels={"background": 0, "a": 1})
    cfg2d = from_dict({"model": {"spatial_dims": 2}, "data": {"patch_size": [64, 64], "slab_slices": 3}})
    assert in_channels(cfg2d, plan) == 6 and in_channels(from_dict({}), plan) == 2


def test_predict_from_a_checkpoint_without_lightning(tmp_path):
    """A deployment without the training stack: Lightning made unimportable, predict still runs."""
    _saved(tmp_path)
    image = tmp_path / "in" / "case.nii.gz"
    image.parent.mkdir()
    write_volume(image, np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4))
    out = predict_without_lightning(tmp_path / "run", image, tmp_path / "out")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "case.nii.gz").exists()
