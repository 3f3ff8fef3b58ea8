"""``medseg train``: train a pipeline YAML into a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a pipeline (YAML) into a run directory")
    p.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/demo.yaml")
    p.add_argument("--data", help="dataset manifest; replaces the pipeline's data.manifest")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set trainer.max_epochs=3 (repeatable)")
    p.add_argument("--output", help="run directory (default: runs/<pipeline name>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.ckpt")
    p.add_argument("--unlabelled", action="append", default=[], metavar="MANIFEST|FOLDER",
                   help="unlabelled images for semi_supervised.method (every image of a manifest, labels ignored, "
                        "or a folder of NIfTI images; repeatable; appends to semi_supervised.unlabelled)")
    p.add_argument("--fold", help="cross-validation fold k (needs data.folds >= 2), or 'all' to train every fold "
                   "into RUN_DIR/fold_<k>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.config import ConfigError, PipelineConfig
    from medseg.config import load as load_pipeline

    extra = [str(Path(u).resolve()) for u in args.unlabelled]

    def load(path: str, overrides: list[str]) -> PipelineConfig:
        cfg = load_pipeline(path, overrides)
        cfg.semi_supervised.unlabelled = [*cfg.semi_supervised.unlabelled, *extra]
        return cfg

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.manifest={args.data}")
    folds: list[int | None] = [None]
    if args.fold is not None and args.fold != "all":
        if not args.fold.isdigit():
            print(f"medseg train: --fold {args.fold!r} must be a fold number or 'all'", file=sys.stderr)
            return 2
        overrides.append(f"data.fold={args.fold}")
    try:
        cfg = load(args.pipeline, overrides)
        if args.fold == "all":
            if cfg.data.folds < 2:
                raise ConfigError("--fold all: set data.folds (e.g. --set data.folds=5) to train every fold")
            folds = list(range(cfg.data.folds))
    except ConfigError as err:
        print(f"medseg train: {err}", file=sys.stderr)
        return 2
    from medseg.training.run import train

    base = Path(args.output or Path("runs") / cfg.name)
    status = 0
    for fold in folds:
        run_dir = base
        if fold is not None:
            cfg = load(args.pipeline, [*overrides, f"data.fold={fold}"])
            run_dir = base / f"fold_{fold}"
        try:
            result = train(cfg, run_dir, resume=args.resume)
        except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:  # (ManifestError too)
            print(f"medseg train: {err}", file=sys.stderr)
            status = 1
            continue
        score = f"{result.best_val_dice:.4f}" if result.best_val_dice is not None else "n/a"
        print(f"run directory: {run_dir}  best checkpoint: {result.best_checkpoint}  "
              f"best val mean Dice: {score}  ({result.seconds / 60:.1f} min)")
    return status
