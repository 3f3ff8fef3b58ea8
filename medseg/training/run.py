"""Train a pipeline into a run directory (library entry behind ``medseg train``).

RUN_DIR holds: ``config.yaml`` (resolved), ``preprocessing.json`` (plan), ``split.json``,
``checkpoints/best.ckpt`` (highest mean validation Dice) and ``checkpoints/last.ckpt``,
``logs/`` (CSV and TensorBoard), ``learning_curve.png`` and ``run_manifest.json``
(versions, git commit, seeds, hashes of config and split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    OnExceptionCheckpoint,
)

import medseg
from medseg.config import ConfigError, PipelineConfig, dump
from medseg.data.datamodule import SegmentationDataModule, load_or_make_split
from medseg.data.fingerprint import make_plan
from medseg.data.manifest import Manifest, load_manifest
from medseg.data.preprocess import PreprocessingPlan
from medseg.logs import filter_third_party_noise
from medseg.training.curves import plot_learning_curve
from medseg.training.loggers import build_loggers
from medseg.training.module import SegmentationModule, init_weights_from, module_hparams
from medseg.training.precision import cpu_has_native_bf16, resolve_precision
from medseg.training.progress import progress_callbacks
from medseg.utils import atomic_write_text

log = logging.getLogger("medseg.train")


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_val_dice: float | None
    seconds: float


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(medseg.__file__).parent, capture_output=True, encoding="utf-8", errors="replace", timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _run_manifest(cfg: PipelineConfig, run_dir: Path, split: dict[str, Any], precision: str) -> dict[str, Any]:
    import monai
    import numpy

    return {
        "medseg": medseg.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "seed": cfg.trainer.seed,
        "precision": precision,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "config_sha256": _sha((run_dir / "config.yaml").read_text(encoding="utf-8")),
        "split_sha256": _sha(json.dumps(split, sort_keys=True)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


class _RankZeroEpochPrinter(Callback):
    """One readable line per validation, for logs without a progress bar."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}"]
        parts += [f"{k.split('/')[-1]}={float(v):.4f}" for k, v in m.items() if k.startswith("val/dice_") or k == "val/mean_dice"]
        print("  ".join(parts), flush=True)


class _SaveLast(Callback):
    """Write ``last.ckpt`` after every epoch, atomically (temporary name, then rename).

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` only writes ``last`` when it also
    saved a top-k checkpoint, i.e. only on validation epochs; a run killed between
    validations would then lose every epoch since the last one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tmp = self.path.with_name(f".{self.path.name}.part")
        trainer.save_checkpoint(tmp)  # every rank calls it; the strategy writes on rank 0
        trainer.strategy.barrier("medseg_save_last")
        if trainer.global_rank == 0:
            os.replace(tmp, self.path)


class _TimeBudget(Callback):
    """Stop after ``seconds`` of training, validating the final weights first.

    Lightning's ``Timer`` stops mid-epoch without validating, so the weights of the last
    minutes (those trained at the annealed learning rate) would never be considered for
    ``best.ckpt``. Here the stop is requested with a validation on the same epoch.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        elapsed = time.monotonic() - (self.started or time.monotonic())
        # every rank must agree, or DDP ranks would stop at different steps
        stop = trainer.strategy.reduce_boolean_decision(elapsed >= self.seconds, all=False)
        if stop and not trainer.should_stop:
            trainer.check_val_every_n_epoch = 1
            trainer.should_stop = True


def _resolve_plan(cfg: PipelineConfig, manifest: Manifest, run_dir: Path, resume: bool) -> PreprocessingPlan:
    plan_path = run_dir / "preprocessing.json"
    if resume and plan_path.exists():
        return PreprocessingPlan.load(plan_path)
    plan = make_plan(cfg, manifest)
    plan.save(plan_path)
    return plan


def train(cfg: PipelineConfig, run_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; ``resume`` continues from ``checkpoints/last.ckpt``."""
    start = time.time()
    filter_third_party_noise()
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: no dataset given; set it in the pipeline or pass --data MANIFEST")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    last, interrupted = ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt"
    if resume and not (last.exists() or interrupted.exists()):
        raise FileNotFoundError(f"{last}: nothing to resume from; run without --resume to start training")
    if not resume and (last.exists() or interrupted.exists()):
        # (Lightning's fit would otherwise silently resume from interrupted.ckpt)
        raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --output")
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    manifest = load_manifest(cfg.data.manifest)
    if rank == 0:
        dump(cfg, run_dir / "config.yaml")
    plan = _resolve_plan(cfg, manifest, run_dir, resume or rank > 0)
    split = load_or_make_split(run_dir / "split.json", [c.name for c in manifest.training], cfg)
    t = cfg.trainer
    precision = resolve_precision(t.precision, t.accelerator)
    if rank == 0:
        if t.precision == "auto":
            print(f"trainer.precision auto -> {precision}", flush=True)
        atomic_write_text(run_dir / "run_manifest.json", json.dumps(_run_manifest(cfg, run_dir, split, precision), indent=2))
    dm = SegmentationDataModule(cfg, manifest, plan, split, cache_dir=Path(os.environ.get("MEDSEG_CACHE", run_dir / "cache")))
    module = SegmentationModule(**module_hparams(cfg, plan))
    if cfg.init_from and not resume:
        report = init_weights_from(module, cfg.init_from)
        atomic_write_text(run_dir / "init_from_report.json", json.dumps(report, indent=2))
        print(
            f"init_from {cfg.init_from}: {len(report['loaded'])} tensors loaded, {len(report['reshaped'])} reshaped, "
            f"{len(report['skipped'])} skipped, {len(report['missing'])} not in the checkpoint "
            f"(details in {run_dir / 'init_from_report.json'})"
        )
    has_val = bool(split["val"])
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/mean_dice", mode="max", save_top_k=1,
                              auto_insert_metric_name=False, enable_version_counter=False)
    callbacks: list[Callback] = [_SaveLast(last), OnExceptionCheckpoint(ckpt_dir, filename="interrupted"), _RankZeroEpochPrinter()]
    if has_val:
        callbacks.insert(0, best_cb)
    if has_val and t.early_stopping_patience:
        callbacks.append(EarlyStopping("val/mean_dice", mode="max", patience=t.early_stopping_patience))
    if t.max_time_minutes:
        callbacks.append(_TimeBudget(t.max_time_minutes * 60.0))
    if cfg.optim.ema_decay:
        # Lightning swaps the averaged weights in for validation and writes them as the
        # checkpoint's state_dict (the trained ones under current_model_state, for --resume)
        callbacks.append(EMAWeightAveraging(decay=cfg.optim.ema_decay))
    show_bar, progress = progress_callbacks(t.progress_bar, t.progress_interval_seconds)
    callbacks += progress
    # A resumed run logs into logs/resume_<n>/ (Lightning's CSV logger would otherwise
    # overwrite the first run's metrics.csv); the learning curve merges all of them.
    log_version = f"resume_{len(list((run_dir / 'logs').glob('resume_*'))) + 1}" if resume else ""
    strategy: Any = t.strategy
    if t.strategy == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo" if t.accelerator == "cpu" else None, find_unused_parameters=False)
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,  # type: ignore[arg-type]
        check_val_every_n_epoch=t.val_every_n_epochs,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=callbacks,
        logger=build_loggers(t.loggers, run_dir, log_version, cfg.name),
        log_every_n_steps=max(1, min(50, t.steps_per_epoch)),
        enable_progress_bar=show_bar,
        deterministic=t.deterministic,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    if resume:
        # an interrupted run (Ctrl-C, exception) leaves interrupted.ckpt mid-epoch: take the newer
        newest = max((p for p in (last, interrupted) if p.exists()), key=lambda p: p.stat().st_mtime)
        trainer.fit(module, datamodule=dm, ckpt_path=str(newest))
    else:
        with warnings.catch_warnings():
            # With OnExceptionCheckpoint, Lightning turns a fresh fit's ckpt_path=None into "last"
            # and warns twice that there is nothing to load: true, and expected, for a new run.
            warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
            trainer.fit(module, datamodule=dm)
    best = Path(best_cb.best_model_path) if has_val and best_cb.best_model_path else None
    if best is None and (ckpt_dir / "best.ckpt").exists():
        best = ckpt_dir / "best.ckpt"
    score = float(best_cb.best_model_score) if has_val and best_cb.best_model_score is not None else None
    if trainer.global_rank == 0:
        plot_learning_curve(run_dir / "logs", run_dir / "learning_curve.png")
        summary = {"best_checkpoint": str(best) if best else None, "best_val_mean_dice": score,
                   "seconds": round(time.time() - start, 1), "epochs": trainer.current_epoch, "steps": trainer.global_step,
                   "precision": precision, "memory_format": module.memory_format_choice}
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    return TrainResult(run_dir, best, last if last.exists() else None, score, time.time() - start)


def best_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best one in a run directory (falling back to last.ckpt)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path}: no checkpoints/best.ckpt or last.ckpt; pass a run directory or a .ckpt file")
