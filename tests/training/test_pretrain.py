"""Masked-volume pretraining: the mask, the loss, a run on an images-only folder, kill and
resume, and fine-tuning from it through ``medseg train``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg.cli import main
from medseg.config import from_dict
from medseg.data.synthetic import generate_dataset
from medseg.models.checkpoint import load_network
from medseg.training.pretrain import block_mask, masked_mse, pretrain
from tests.training.kill import kill_after_first_checkpoint

TINY = ["data.patch_size=[16,16,16]", "data.batch_size=2", "data.target_spacing=[4.0,4.0,4.0]", "model.channels=[4,8]",
        "trainer.max_epochs=2", "trainer.steps_per_epoch=3", "trainer.val_every_n_epochs=1",
        "trainer.progress_bar=false", "trainer.accelerator=cpu", "pretrain.mask_block=4", "data.val_fraction=0.34"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("phantoms"), cases=4, seed=5)


def test_block_mask_hides_exactly_the_ratio_in_whole_blocks():
    mask = block_mask((3, 2, 16, 16, 12), ratio=0.6, block=4, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 16, 16, 12) and set(mask.unique().tolist()) == {0.0, 1.0}
    blocks = mask.reshape(3, 4, 4, 4, 4, 3, 4)  # (b, gx, bx, gy, by, gz, bz)
    per_block = blocks.amax(dim=(2, 4, 6))
    assert torch.equal(per_block, blocks.amin(dim=(2, 4, 6)))  # constant within every block
    assert per_block.flatten(1).sum(1).tolist() == [round(0.6 * 48)] * 3
    assert not torch.equal(mask[0], mask[1])  # each sample its own mask
    cropped = block_mask((1, 1, 10, 10), 0.5, 4)
    assert cropped.shape == (1, 1, 10, 10)  # grids that do not divide the patch are cropped


def test_masked_mse_counts_hidden_voxels_only():
    image = torch.zeros(1, 2, 4, 4, 4)
    restored = torch.zeros_like(image)
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., :2] = 1.0
    restored[..., 2:] = 100.0  # wrong only where the voxels were visible: no loss
    assert float(masked_mse(restored, image, mask)) == 0.0
    restored[..., 0] = 1.0  # half of the hidden voxels off by 1 in both channels
    assert float(masked_mse(restored, image, mask)) == pytest.approx(0.5)


@pytest.mark.slow
def test_pretrain_on_an_images_only_folder_then_fine_tune(phantoms, tmp_path):
    images = phantoms.parent / "imagesTr"  # a plain folder of NIfTI images, no manifest
    run = tmp_path / "pre"
    result = pretrain(from_dict({}, TINY), [str(images)], run)
    for name in ("config.yaml", "preprocessing.json", "split.json", "run_manifest.json", "train_summary.json",
                 "learning_curve.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert json.loads((run / "run_manifest.json").read_text())["task"] == "pretrain"
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 3 and split["val"]
    with (run / "logs" / "metrics.csv").open() as fh:
        losses = [float(r["val/recon_loss"]) for r in csv.DictReader(fh) if r.get("val/recon_loss")]
    assert len(losses) == 2 and result.best_score == pytest.approx(min(losses), rel=1e-5)
    with pytest.raises(ValueError, match="fine-tune it first"):
        load_network(run / "checkpoints" / "best.ckpt")
    # fine-tune from the run directory through the CLI
    out = tmp_path / "fine"
    args = ["train", str(tmp_path / "p.yaml"), "--data", str(phantoms), "--output", str(out), "--set", f"init_from={run}"]
    (tmp_path / "p.yaml").write_text("name: fine\noptim:\n  loaded_lr_scale: 0.1\n")
    assert main([*args, *[a for s in TINY for a in ("--set", s)]]) == 0
    report = json.loads((out / "init_from_report.json").read_text())
    assert report["source"] == str(run / "checkpoints" / "best.ckpt")
    assert report["reinitialised"] and report["loaded"] and not report["skipped"] and not report["missing"]
    assert not report["plan_differences"]  # same pipeline, same plan
    loaded = report["loaded"][0]
    pre = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]["net." + loaded]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert pre.shape == ckpt["state_dict"]["net." + loaded].shape
    # optim.loaded_lr_scale: the loaded tensors' group at a tenth of the rate of the rest (the head)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[0]["lr"] == pytest.approx(0.1 * groups[1]["lr"])
    n_loaded = sum(1 for name in report["loaded"] + report["adapted"] if not name.endswith(("running_mean",
                                                                                         "running_var",
                                                                                         "num_batches_tracked")))
    assert len(groups[0]["params"]) == n_loaded and len(groups[1]["params"]) > 0
    # a resumed run rebuilds the same two groups (its optimiser state would not load otherwise)
    resumed = [a for s in TINY if not s.startswith("trainer.max_epochs") for a in ("--set", s)]
    assert main([*args, *resumed, "--set", "trainer.max_epochs=3", "--resume"]) == 0
    again = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert again["epoch"] == 2 and len(again["optimizer_states"][0]["param_groups"]) == 2


@pytest.mark.slow
def test_killed_pretraining_resumes(phantoms, tmp_path):
    run = tmp_path / "pre"
    (tmp_path / "p.yaml").write_text("trainer:\n  max_epochs: 60\n")
    args = [sys.executable, "-m", "medseg", "pretrain", str(tmp_path / "p.yaml"), "--data", str(phantoms),
            "--output", str(run)]
    args += [a for s in TINY if not s.startswith("trainer.max_epochs") for a in ("--set", s)]
    last = run / "checkpoints" / "last.ckpt"
    done = kill_after_first_checkpoint(args, run)
    assert done < 59
    again = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace")
    assert again.returncode == 1 and "--resume" in again.stderr  # a fresh run never overwrites it
    out = subprocess.run([*args, "--resume", "--set", f"trainer.max_epochs={done + 2}"], capture_output=True,
                         encoding="utf-8", errors="replace")
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == done + 1
    assert "fine-tune with: medseg train" in out.stdout


@pytest.mark.slow
def test_genesis_pretraining_runs_and_learns(phantoms, tmp_path):
    run = tmp_path / "pre"
    pretrain(from_dict({}, [*TINY, "trainer.max_epochs=4", "trainer.steps_per_epoch=6", "pretrain.method=genesis"]),
             [str(phantoms)], run)
    assert "method: genesis" in (run / "config.yaml").read_text()
    with (run / "logs" / "metrics.csv").open() as fh:
        losses = [float(r["val/recon_loss"]) for r in csv.DictReader(fh) if r.get("val/recon_loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the same fixed corruptions restored better


def test_pretrain_input_errors_name_the_fix(tmp_path):
    (tmp_path / "p.yaml").write_text("name: p\n")
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", str(tmp_path / "p.yaml"), "--data", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()  # failed before anything was written
