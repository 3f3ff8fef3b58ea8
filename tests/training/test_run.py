"""Training runs on tiny phantoms: run directory contents, 2D/3D families, resume, DDP."""

from __future__ import annotations

import csv
import functools
import json
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import ConfigError, from_dict
from medseg.data.datamodule import load_or_make_split, make_split
from medseg.data.synthetic import generate_dataset
from medseg.models.checkpoint import best_checkpoint
from medseg.training.run import train
from tests.training.kill import kill_after_first_checkpoint

pytestmark = pytest.mark.slow

TINY = [
    "data.patch_size=[16,16,16]",
    "data.batch_size=2",
    "data.target_spacing=[4.0,4.0,4.0]",
    "model.channels=[4,8]",
    "trainer.max_epochs=2",
    "trainer.steps_per_epoch=3",
    "trainer.val_every_n_epochs=1",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return generate_dataset(out, cases=6, seed=3)


def tiny_cfg(manifest: Path, *extra: str):
    return from_dict({}, [f"data.manifest={manifest}", *TINY, *extra])


def test_run_directory_contents(phantoms, tmp_path, recwarn):
    result = train(tiny_cfg(phantoms), tmp_path / "run")
    # Lightning's "nothing to resume" warnings are noise on a fresh run
    assert not [w for w in recwarn if "ckpt_path" in str(w.message)]
    run = tmp_path / "run"
    for name in ("config.yaml", "preprocessing.json", "split.json", "run_manifest.json", "train_summary.json",
                 "learning_curve.png", "logs/metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert list((run / "logs" / "tb").glob("events.*")), "no TensorBoard log"
    manifest = json.loads((run / "run_manifest.json").read_text(encoding="utf-8"))
    assert {"medseg", "monai", "torch", "pytorch_lightning", "seed", "config_sha256", "split_sha256"} <= set(manifest)
    assert result.best_val_dice is not None and 0.0 <= result.best_val_dice <= 1.0
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    assert re.match(r"(channels_last|contiguous) \(a training step: \d+ ms channels-last", summary["memory_format"])
    assert best_checkpoint(run) == run / "checkpoints" / "best.ckpt"
    label_stats = json.loads((run / "label_statistics.json").read_text(encoding="utf-8"))  # for predict's QA
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    assert label_stats["cases"] == len(split["train"]) and label_stats["structures"]
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_cfg(phantoms), run)


def test_fresh_run_refuses_a_directory_with_an_interrupted_checkpoint(phantoms, tmp_path):
    # Lightning would silently resume from it; only --resume may
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "interrupted.ckpt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_cfg(phantoms), tmp_path / "run")


@pytest.mark.parametrize(
    "extra",
    [
        ["model.name=attention_unet", "trainer.precision=bf16-mixed"],
        ["model.name=residual_unet", "data.augmentation=limited_data", "optim.name=sgd", "optim.scheduler=cosine",
         "optim.warmup_epochs=1", "trainer.early_stopping_patience=1"],
        ["model.name=unet", "model.spatial_dims=2", "data.patch_size=[16,16]", "data.slab_slices=3",
         "model.upsample=interp"],
        ["model.name=attention_unet", "model.spatial_dims=2", "data.patch_size=[16,16]", "data.slice_axis=0",
         "model.upsample=pixelshuffle"],
        ["model.name=residual_unet", "model.spatial_dims=2", "data.patch_size=[16,16]", "data.slab_slices=5"],
        ["model.name=dynunet", "model.channels=[4,8,16]", "model.deep_supervision=true", "loss.name=dice_focal",
         "model.upsample=interp", "model.interp_mode=nearest"],
    ],
    ids=["attention3d_bf16", "residual3d_limited_sgd", "unet2.5d_interp", "attention2d_pixelshuffle", "residual2.5d",
         "dynunet_ds_interp_nearest"],
)
def test_families_train(phantoms, tmp_path, extra):
    result = train(tiny_cfg(phantoms, *extra), tmp_path / "run")
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()


def test_early_stopping_stops_when_validation_stops_improving(phantoms, tmp_path):
    """A learning rate too small to change any prediction: validation Dice is flat, so with
    patience 1 training ends after its second validation instead of running all 8 epochs."""
    frozen = ["trainer.max_epochs=8", "optim.lr=1e-12", "optim.warmup_epochs=0"]
    stopped = train(tiny_cfg(phantoms, *frozen, "trainer.early_stopping_patience=1"), tmp_path / "stopped")
    summary = json.loads((tmp_path / "stopped" / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["epochs"] == 2 and stopped.best_val_dice is not None
    train(tiny_cfg(phantoms, *frozen), tmp_path / "full")
    assert json.loads((tmp_path / "full" / "train_summary.json").read_text(encoding="utf-8"))["epochs"] == 8


def test_resume_continues_from_last_checkpoint(phantoms, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(phantoms, "trainer.max_epochs=1"), run)
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["epoch"] == 0 and first["global_step"] == 3
    train(tiny_cfg(phantoms, "trainer.max_epochs=2"), run, resume=True)
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 6  # continued, not restarted


def test_ema_weights_are_saved_loaded_and_resumed(phantoms, tmp_path):
    """optim.ema_decay: checkpoints hold the averaged weights (what predictions load) and
    the trained ones for --resume, which continues both."""
    from medseg.models.checkpoint import load_network

    run = tmp_path / "run"
    train(tiny_cfg(phantoms, "trainer.max_epochs=1", "optim.ema_decay=0.5"), run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, trained = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if k.startswith("net."))
    net, _, _ = load_network(run / "checkpoints" / "last.ckpt")
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, averaged["net." + name])
    train(tiny_cfg(phantoms, "trainer.max_epochs=2", "optim.ema_decay=0.5"), run, resume=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6 and "current_model_state" in resumed
    assert any(not torch.equal(resumed["state_dict"][k], averaged[k]) for k in averaged if k.startswith("net."))


def test_kill_mid_epoch_then_resume(phantoms, tmp_path):
    """A training process killed mid-run resumes with --resume from the CLI."""
    run = tmp_path / "run"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("trainer:\n  max_epochs: 40\n")
    args = [sys.executable, "-m", "medseg", "train", str(pipeline), "--data", str(phantoms), "--output", str(run)]
    args += [a for s in TINY if not s.startswith("trainer.max_epochs") for a in ("--set", s)]
    last = run / "checkpoints" / "last.ckpt"
    done = kill_after_first_checkpoint(args, run)
    assert done < 39
    out = subprocess.run([*args, "--resume", "--set", "trainer.max_epochs=" + str(done + 2)], capture_output=True, encoding="utf-8", errors="replace")
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == done + 1


def test_split_is_seeded_saved_and_reused(tmp_path):
    names = [f"c{i}" for i in range(10)]
    cfg = from_dict({"data": {"folds": 5, "fold": 2}})
    split = make_split(names, cfg)
    folds = split["all_folds"]
    assert sorted(functools.reduce(operator.iadd, folds, [])) == sorted(names) and all(len(f) == 2 for f in folds)
    assert split["val"] == folds[2] and not set(split["val"]) & set(split["train"])
    path = tmp_path / "split.json"
    saved = load_or_make_split(path, names, cfg)
    path.write_text(json.dumps({**saved, "val": ["c0", "c1"], "train": names[2:]}))
    assert load_or_make_split(path, names, cfg)["val"] == ["c0", "c1"]  # reused, not recomputed
    assert make_split(names, from_dict({"trainer": {"seed": 7}}))["val"] != make_split(names, cfg)["val"]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test runs on Linux CI")
def test_ddp_two_cpu_processes_reduce_metrics_and_write_checkpoint_once(phantoms, tmp_path):
    run = tmp_path / "ddp"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: ddp\n")
    args = [sys.executable, "-m", "medseg", "train", str(pipeline), "--data", str(phantoms), "--output", str(run)]
    for s in [*TINY, "trainer.strategy=ddp", "trainer.devices=2", "data.val_fraction=0.5"]:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"], ckpts  # one of each, written by rank 0 only
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("val/mean_dice")]
    assert rows, "no validation logged"
    # every validation case counted exactly once across the two ranks
    assert float(rows[-1]["val/cases"]) == len(split["val"])
    # the reduced Dice equals a single-process validation of the same weights
    from medseg.data.datamodule import cached_case
    from medseg.data.manifest import load_manifest
    from medseg.data.preprocess import PreprocessingPlan
    from medseg.inference.window import predict_probabilities
    from medseg.models.checkpoint import load_network
    from medseg.training.module import case_dice

    net, cfg, plan = load_network(run / "checkpoints" / "last.ckpt")
    plan = PreprocessingPlan.load(run / "preprocessing.json")
    manifest = load_manifest(phantoms)
    sums, counts = np.zeros(3), np.zeros(3)
    for name in split["val"]:
        case = cached_case(manifest.case(name), plan, None)
        pred = predict_probabilities(net, torch.from_numpy(case["image"]), cfg).argmax(0)
        d, v = case_dice(pred, torch.from_numpy(case["label"].astype(np.int64)), plan.num_classes)
        sums += d.numpy() * v.numpy()
        counts += v.numpy()
    expected = np.mean((sums / np.maximum(counts, 1))[counts > 0])
    last_epoch = max(int(r["epoch"]) for r in rows)
    logged = next(float(r["val/mean_dice"]) for r in rows if int(r["epoch"]) == last_epoch)
    assert logged == pytest.approx(expected, abs=1e-4)


def test_learning_curve_merges_resumed_logs(phantoms, tmp_path):
    from medseg.training.curves import read_epoch_metrics

    run = tmp_path / "run"
    train(tiny_cfg(phantoms, "trainer.max_epochs=1"), run)
    train(tiny_cfg(phantoms, "trainer.max_epochs=2"), run, resume=True)
    assert (run / "logs" / "metrics.csv").exists() and (run / "logs" / "resume_1" / "metrics.csv").exists()
    epochs = read_epoch_metrics(run / "logs")["train/loss_epoch"]
    assert sorted(epochs) == [0, 1]  # the first run's epoch survived the resume


def test_time_budget_stops_and_validates_the_final_weights(phantoms, tmp_path):
    import time

    start = time.time()
    result = train(tiny_cfg(phantoms, "trainer.max_epochs=500", "trainer.max_time_minutes=0.15",
                            "trainer.val_every_n_epochs=1000"), tmp_path / "run")
    assert time.time() - start < 60
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["epochs"] < 499
    # validation never came due by the schedule (every 1000 epochs) but ran at the stop
    assert result.best_val_dice is not None and (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()


def test_label_less_manifest_fails_before_any_compute(phantoms, tmp_path):
    images = sorted((phantoms.parent / "imagesTr").glob("*.nii.gz"))
    csv_path = tmp_path / "images.csv"
    csv_path.write_text("image\n" + "\n".join(str(p) for p in images) + "\n")
    with pytest.raises(ConfigError, match=r"no training case has a label.*medseg pretrain"):
        train(tiny_cfg(csv_path), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["data.labelled_cases=9"], r"labelled_cases: 9 is more than the 3 cases of the training split"),
    (["semi_supervised.method=mean_teacher"], r"needs unlabelled images.*--unlabelled"),
    (["semi_supervised.unlabelled=[x]"], r"semi_supervised.method is none"),
])
def test_limited_label_mistakes_fail_before_any_compute(phantoms, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg(phantoms, *extra), tmp_path / "run")
    assert not (tmp_path / "run" / "preprocessing.json").exists()  # no fingerprint, no preprocessing


def test_mean_teacher_with_a_label_budget_from_yaml(phantoms, tmp_path, caplog):
    from medseg.cli import main

    pipeline = tmp_path / "semi.yaml"
    pipeline.write_text("name: semi\ndata:\n  labelled_cases: 2\nsemi_supervised:\n  method: mean_teacher\n"
                        "  rampup_epochs: 1\n")
    extra = tmp_path / "more"
    extra.mkdir()
    test_image = sorted((phantoms.parent / "imagesTs").glob("*.nii.gz"))[0]
    (extra / test_image.name).symlink_to(test_image)
    args = ["train", str(pipeline), "--data", str(phantoms), "--output", str(tmp_path / "run"), "--unlabelled", str(extra)]
    with caplog.at_level("INFO", logger="medseg.train"):
        assert main([*args, *[a for s in TINY for a in ("--set", s)]]) == 0
    assert "training on 2 labelled training cases, 1 validation cases, 2 unlabelled images" in caplog.text
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["labelled"]) == 2 and set(split["labelled"]) < set(split["train"])
    hidden = sorted(set(split["train"]) - set(split["labelled"]))
    assert sorted(split["unlabelled"]) == sorted([*hidden, test_image.name.removesuffix(".nii.gz")])
    assert not set(split["unlabelled"]) & set(split["val"])
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/consistency")]
    assert rows and all(float(r["train/consistency"]) >= 0 for r in rows)
    weights = [float(r["train/consistency_weight"]) for r in rows]
    assert weights[0] < weights[-1] == pytest.approx(1.0)  # ramped up over the first epoch
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(k.startswith("teacher.") for k in state)  # resumable with its teacher


def test_class_weights_are_checked_against_the_manifest_before_any_compute(phantoms, tmp_path):
    with pytest.raises(ConfigError, match=r"class_weights: \[1.0, 2.0\] has 2 values; expected 4"):
        train(tiny_cfg(phantoms, "loss.class_weights=[1.0,2.0]"), tmp_path / "run")
    assert not (tmp_path / "run" / "preprocessing.json").exists()
