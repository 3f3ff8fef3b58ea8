"""Train a pipeline into a run directory (library entry behind ``medseg train``).

RUN_DIR holds: ``config.yaml`` (resolved), ``preprocessing.json`` (plan), ``split.json``
(train/val, and which training cases keep their labels and which images are unlabelled),
``checkpoints/best.ckpt`` (highest mean validation Dice) and ``checkpoints/last.ckpt``,
``logs/`` (CSV and TensorBoard), ``learning_curve.png``, ``run_manifest.json`` (versions,
git commit, seeds, hashes of config and split) and, with ``init_from``,
``init_from_report.json``. The Trainer and the run directory's life cycle are
:mod:`medseg.training.fit`'s.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from medseg.config import ConfigError, PipelineConfig, dump
from medseg.config_checks import check_class_count
from medseg.data.datamodule import SegmentationDataModule, load_or_make_split
from medseg.data.fingerprint import make_plan
from medseg.data.manifest import Case, Manifest, load_manifest
from medseg.data.preprocess import PreprocessingPlan
from medseg.data.unlabelled import describe, label_budget, labelled_and_unlabelled, unlabelled_pool
from medseg.training.fit import check_run_dir, fit, run_manifest
from medseg.training.init_from import init_weights_from, loaded_names, summary_line
from medseg.training.module import SegmentationModule, module_hparams
from medseg.training.precision import resolve_precision
from medseg.utils import atomic_write_text

log = logging.getLogger("medseg.train")


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_val_dice: float | None
    seconds: float


def _resolve_plan(cfg: PipelineConfig, manifest: Manifest, run_dir: Path, resume: bool) -> PreprocessingPlan:
    plan_path = run_dir / "preprocessing.json"
    if resume and plan_path.exists():
        return PreprocessingPlan.load(plan_path)
    plan = make_plan(cfg, manifest)
    plan.save(plan_path)
    return plan


def plan_cases(
    cfg: PipelineConfig, manifest: Manifest, split: dict[str, Any], train_labelled: list[Case],
    unlabelled_sources: list[str] | None = None,
) -> tuple[dict[str, Any], list[Case]]:
    """Which training cases keep their labels and which images train without: decided from
    file lists only, so every impossible combination fails before any compute.

    Returns the split with ``labelled`` and ``unlabelled`` (names) added, and the
    unlabelled image-only cases (empty without a semi-supervised method, unless
    ``unlabelled_sources`` is a list: ``medseg distill``, whose module learns from any
    unlabelled images there are, the manifest's and those sources').
    """
    s = cfg.semi_supervised
    try:
        labelled, hidden = label_budget(split["train"], cfg.data.labelled_cases, cfg.trainer.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    pool: list[Case] = []
    if s.method == "none" and unlabelled_sources is None:
        if s.unlabelled:
            raise ConfigError(
                f"semi_supervised.unlabelled: {s.unlabelled} is given but semi_supervised.method is none; "
                "set --set semi_supervised.method=mean_teacher to learn from them, or drop --unlabelled"
            )
        unused = [c.name for c in manifest.training if c.label is None]
        if unused:
            log.warning(f"{len(unused)} training cases have no label and are not used ({', '.join(unused[:3])}...); "
                        "--set semi_supervised.method=mean_teacher learns from them")
        if hidden:
            log.info(f"data.labelled_cases={len(labelled)}: the labels of {len(hidden)} training cases are hidden and "
                     "those cases unused; --set semi_supervised.method=mean_teacher learns from their images")
    else:
        pool = unlabelled_pool(manifest, [*s.unlabelled, *(unlabelled_sources or [])], train_labelled)
        pool += [Case(n, list(manifest.case(n).images), None) for n in hidden]
        if not pool and s.method != "none":
            raise ConfigError(
                f"semi_supervised.method: {s.method} needs unlabelled images and {manifest.path} has none; "
                "add --unlabelled MANIFEST|FOLDER, or set data.labelled_cases=N to train on N labels"
            )
    return {**split, "labelled": labelled, "unlabelled": [c.name for c in pool]}, pool


def train(
    cfg: PipelineConfig, run_dir: str | Path, resume: bool = False,
    module_factory: Callable[..., SegmentationModule] | None = None,
    unlabelled_sources: list[str] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; ``resume`` continues from ``checkpoints/last.ckpt``.

    ``module_factory(config=..., plan=...)`` builds the module instead of
    :class:`SegmentationModule` (``medseg distill``: a student with teachers);
    ``unlabelled_sources`` (a list, maybe empty) feeds it unlabelled images without a
    semi-supervised method: see :func:`plan_cases`."""
    start = time.time()
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: no dataset given; set it in the pipeline or pass --data MANIFEST")
    run_dir = Path(run_dir)
    manifest = load_manifest(cfg.data.manifest)
    check_class_count(cfg, len(manifest.labels))
    labelled_cases, _ = labelled_and_unlabelled(manifest)
    if not labelled_cases:
        raise ConfigError(
            f"{manifest.path}: no training case has a label, and medseg train learns from labels; add label paths, "
            f"or learn from these images with `medseg pretrain PIPELINE --data {manifest.path} --output RUN` "
            "and fine-tune with --set init_from=RUN"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(run_dir, resume)
    split = load_or_make_split(run_dir / "split.json", [c.name for c in labelled_cases], cfg)
    split, unlabelled = plan_cases(cfg, manifest, split, labelled_cases, unlabelled_sources)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank == 0:
        dump(cfg, run_dir / "config.yaml")
        atomic_write_text(run_dir / "split.json", json.dumps(split, indent=2))
    plan = _resolve_plan(cfg, manifest, run_dir, resume or rank > 0)
    if rank == 0 and not (run_dir / "label_statistics.json").is_file():  # for predict's QA flags
        from medseg.data.label_stats import write_label_statistics

        train_names = set(split["labelled"])  # the labels this run learns from
        write_label_statistics(run_dir, [c.label for c in labelled_cases if c.name in train_names and c.label],
                               plan.labels)
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if rank == 0:
        if cfg.trainer.precision == "auto":
            log.info(f"trainer.precision auto -> {precision}")
        log.info(f"training on {describe(split)}")
        atomic_write_text(run_dir / "run_manifest.json", json.dumps(run_manifest(cfg, run_dir, split, precision), indent=2))
    cache = Path(os.environ.get("MEDSEG_CACHE", run_dir / "cache"))
    dm = SegmentationDataModule(cfg, manifest, plan, split, cache_dir=cache, unlabelled=unlabelled)
    module = (module_factory or SegmentationModule)(**module_hparams(cfg, plan))
    if cfg.init_from and not resume:
        report = init_weights_from(module, cfg.init_from)
        atomic_write_text(run_dir / "init_from_report.json", json.dumps(report, indent=2))
        if rank == 0:
            log.info(f"{summary_line(report)} (details in {run_dir / 'init_from_report.json'})")
    elif cfg.init_from and (run_dir / "init_from_report.json").is_file():  # resumed: the same optimiser groups
        report = json.loads((run_dir / "init_from_report.json").read_text(encoding="utf-8"))
        module.loaded_from_init = loaded_names(report)
    result = fit(module, dm, cfg, run_dir, resume=resume, precision=precision, has_val=bool(split["val"]),
                 monitor="val/mean_dice", mode="max", started=start)
    return TrainResult(run_dir, result.best_checkpoint, result.last_checkpoint, result.best_score, time.time() - start)
