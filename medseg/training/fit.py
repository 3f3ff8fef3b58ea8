"""The run directory and the Lightning Trainer shared by ``medseg train`` and ``medseg pretrain``.

One place decides how a run starts, resumes, checkpoints (``checkpoints/best.ckpt`` by a
monitored validation metric, ``last.ckpt`` after every epoch, ``interrupted.ckpt`` on a
crash), stops on its wall-time budget, logs (CSV + TensorBoard; a resumed part in
``logs/resume_<n>/``) and summarises (``learning_curve.png``, ``train_summary.json``).
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
from typing import Any, Literal

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
from medseg.config import PipelineConfig
from medseg.hardware import cpu_has_native_bf16
from medseg.logs import ensure_handler, filter_third_party_noise
from medseg.training.curves import plot_learning_curve
from medseg.training.loggers import build_loggers
from medseg.training.progress import progress_callbacks
from medseg.utils import atomic_write_text

log = logging.getLogger("medseg.train")


@dataclass
class FitResult:
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_score: float | None
    epochs: int
    steps: int


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


def run_manifest(cfg: PipelineConfig, run_dir: Path, split: dict[str, Any], precision: str) -> dict[str, Any]:
    """Versions, git commit, seed and hashes of config and split: what reproduces a run."""
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


class _RankZeroEpochLog(Callback):
    """One readable line per validation on the ``medseg.train`` logger (rank 0 only), for
    logs without a progress bar; ``--quiet`` silences it with the rest of the INFO lines."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}"]
        parts += [f"{k.split('/')[-1]}={float(v):.4f}" for k, v in m.items() if k.startswith("val/dice_") or k == self.monitor]
        log.info("  ".join(parts))


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


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs an empty run directory, ``--resume`` one with a checkpoint."""
    ckpt_dir = run_dir / "checkpoints"
    last, interrupted = ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt"
    if resume and not (last.exists() or interrupted.exists()):
        raise FileNotFoundError(f"{last}: nothing to resume from; run without --resume to start training")
    if not resume and (last.exists() or interrupted.exists()):
        # (Lightning's fit would otherwise silently resume from interrupted.ckpt)
        raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --output")


def build_callbacks(
    cfg: PipelineConfig, ckpt_dir: Path, best: ModelCheckpoint | None, monitor: str, mode: Literal["min", "max"]
) -> list[Callback]:
    """Checkpointing (``best`` by ``monitor`` when given, ``last`` every epoch, ``interrupted`` on a
    crash), the per-validation log line, early stopping, the time budget and weight averaging."""
    t = cfg.trainer
    callbacks: list[Callback] = [_SaveLast(ckpt_dir / "last.ckpt"), OnExceptionCheckpoint(ckpt_dir, filename="interrupted"),
                                 _RankZeroEpochLog(monitor)]
    if best is not None:
        callbacks.insert(0, best)
        if t.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor, mode=mode, patience=t.early_stopping_patience))
    if t.max_time_minutes:
        callbacks.append(_TimeBudget(t.max_time_minutes * 60.0))
    if cfg.optim.ema_decay:
        # Lightning swaps the averaged weights in for validation and writes them as the
        # checkpoint's state_dict (the trained ones under current_model_state, for --resume)
        callbacks.append(EMAWeightAveraging(decay=cfg.optim.ema_decay))
    return callbacks


def build_strategy(cfg: PipelineConfig) -> Any:
    """The Trainer's strategy: the config's name, or DDP with gloo on CPUs (NCCL on GPUs)."""
    t = cfg.trainer
    if t.strategy != "ddp":
        return t.strategy
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(process_group_backend="gloo" if t.accelerator == "cpu" else None, find_unused_parameters=False)


def fit(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    cfg: PipelineConfig,
    run_dir: Path,
    *,
    resume: bool,
    precision: str,
    has_val: bool,
    monitor: str,
    mode: Literal["min", "max"],
    started: float,
) -> FitResult:
    """Fit ``module`` into ``run_dir`` with the pipeline's trainer settings.

    ``monitor`` (e.g. ``val/mean_dice``, mode max) selects ``best.ckpt`` and drives early
    stopping; without validation cases only ``last.ckpt`` is written.
    """
    filter_third_party_noise()
    ensure_handler()
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    last, interrupted = ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt"
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                              auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = build_callbacks(cfg, ckpt_dir, best_cb if has_val else None, monitor, mode)
    show_bar, progress = progress_callbacks(t.progress_bar, t.progress_interval_seconds)
    callbacks += progress
    # A resumed run logs into logs/resume_<n>/ (Lightning's CSV logger would otherwise
    # overwrite the first run's metrics.csv); the learning curve merges all of them.
    log_version = f"resume_{len(list((run_dir / 'logs').glob('resume_*'))) + 1}" if resume else ""
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg),
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
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(newest))
    else:
        with warnings.catch_warnings():
            # With OnExceptionCheckpoint, Lightning turns a fresh fit's ckpt_path=None into "last"
            # and warns twice that there is nothing to load: true, and expected, for a new run.
            warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
            trainer.fit(module, datamodule=datamodule)
    best = Path(best_cb.best_model_path) if has_val and best_cb.best_model_path else None
    if best is None and (ckpt_dir / "best.ckpt").exists():
        best = ckpt_dir / "best.ckpt"
    score = float(best_cb.best_model_score) if has_val and best_cb.best_model_score is not None else None
    if trainer.global_rank == 0:
        plot_learning_curve(run_dir / "logs", run_dir / "learning_curve.png")
        summary = {"best_checkpoint": str(best) if best else None, f"best_{monitor.replace('/', '_')}": score,
                   "seconds": round(time.time() - started, 1), "epochs": trainer.current_epoch, "steps": trainer.global_step,
                   "precision": precision, "memory_format": getattr(module, "memory_format_choice", None)}
        atomic_write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    return FitResult(best, last if last.exists() else None, score, trainer.current_epoch, trainer.global_step)
