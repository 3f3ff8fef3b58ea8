"""``medseg pretrain``: self-supervised pretraining of a pipeline's network on images alone."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a pipeline's network on unlabelled images (masked-volume reconstruction)",
        description="Labels, if present, are ignored. Fine-tune the result with "
                    "`medseg train PIPELINE --set init_from=RUN_DIR`.",
    )
    p.add_argument("pipeline", help="pipeline YAML file (its network, patch size, preprocessing and trainer budget)")
    p.add_argument("--data", action="append", required=True, metavar="MANIFEST|FOLDER",
                   help="images to learn from: a dataset.json, a CSV (an image column is enough) or a folder of "
                        "NIfTI images (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set pretrain.mask_ratio=0.75 (repeatable)")
    p.add_argument("--output", required=True, help="run directory for the pretrained network")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.ckpt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.config import ConfigError, load
    from medseg.data.manifest import ManifestError

    try:
        cfg = load(args.pipeline, args.overrides)
        from medseg.training.pretrain import pretrain

        result = pretrain(cfg, args.data, args.output, resume=args.resume)
    except (ConfigError, ManifestError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"medseg pretrain: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError | ManifestError) else 1
    score = f"{result.best_score:.4f}" if result.best_score is not None else "n/a"
    print(f"run directory: {args.output}  best checkpoint: {result.best_checkpoint or result.last_checkpoint}  "
          f"best validation reconstruction loss: {score}\n"
          f"fine-tune with: medseg train {args.pipeline} --set init_from={args.output}")
    return 0
