"""Each network family trains from YAML, in 2D and 3D, on a few real hippocampus cases."""

import csv
import json

import pytest

from medseg.config import load
from medseg.training.run import train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


FAMILY = ["model.deep_supervision=false", "model.strides=[1,2,2,2]"]
SLICES = ["model.spatial_dims=2", "data.patch_size=[56,40]", "data.slice_axis=0"]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [*FAMILY, "model.name=unet"],
        [*FAMILY, "model.name=attention_unet"],
        [*FAMILY, "model.name=residual_unet"],
        [*FAMILY, "model.name=unet", *SLICES],
        [*FAMILY, "model.name=attention_unet", *SLICES],
        [*FAMILY, "model.name=residual_unet", *SLICES],
    ],
    ids=["shipped", "unet3d", "attention3d", "residual3d", "unet2d", "attention2d", "residual2d"],
)
def test_family_trains_on_real_hippocampus(shared_data, tmp_path, extra, repo_root):
    src = shared_data / "Task04_Hippocampus" / "dataset.json"
    manifest = json.loads(src.read_text(encoding="utf-8"))
    manifest["training"] = [
        {k: str((src.parent / v).resolve()) for k, v in e.items()} for e in manifest["training"][:8]
    ]
    small = tmp_path / "dataset.json"
    small.write_text(json.dumps(manifest))
    cfg = load(
        repo_root / "pipelines" / "hippocampus_3d.yaml",
        [f"data.manifest={small}", "model.channels=[4,8,16,32,64]", "trainer.max_epochs=1", "trainer.steps_per_epoch=4",
         "trainer.val_every_n_epochs=1", "trainer.progress_bar=false", "trainer.max_time_minutes=0", *extra],
    )
    result = train(cfg, tmp_path / "run")
    assert result.best_checkpoint is not None
    rows = [r for r in csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()) if r.get("val/dice_Anterior")]
    assert rows and 0.0 <= float(rows[-1]["val/dice_Anterior"]) <= 1.0
