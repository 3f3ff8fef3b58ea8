"""``medseg distill``: train a pipeline's network from labels plus trained teachers' soft masks.

A thin layer over :func:`medseg.deploy.distill.distill`. Exit status 0 on success, 2 on a bad
request (no teacher, teachers with other labels or preprocessing, bad temperature/weight).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``distill`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "distill",
        help="knowledge distillation: a (smaller) network learns from the labels and trained teachers",
        description=(
            "Train PIPELINE's network into --output with loss (1 - W) * label loss + W * T^2 * KL(teachers || "
            "student) at temperature T, the teachers' softmax averaged; the teachers' term also covers unlabelled "
            "images (the manifest's cases without a label and --unlabelled sources). The output is an ordinary run "
            "directory."
        ),
    )
    p.add_argument("pipeline", help="the student's pipeline YAML (usually narrower model.channels)")
    p.add_argument("--teacher", action="append", default=[], required=True, metavar="RUN_DIR",
                   help="a trained run of the same labels and preprocessing (repeatable: an ensemble)")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="training manifest")
    p.add_argument("--output", required=True, metavar="RUN_DIR", help="the student's run directory")
    p.add_argument("--temperature", type=float, default=2.0, metavar="T", help="softmax temperature (default 2)")
    p.add_argument("--weight", type=float, default=0.5, metavar="W",
                   help="weight of the teachers' term in [0, 1] (default 0.5; the labels get 1 - W)")
    p.add_argument("--unlabelled", action="append", default=[], metavar="MANIFEST|FOLDER",
                   help="more unlabelled images for the teachers' term (every image of a manifest, labels ignored, "
                        "or a folder of NIfTI images; repeatable); the manifest's cases without a label are always used")
    p.add_argument("--labelled-only", action="store_true",
                   help="learn from the labelled training cases only (no unlabelled image, not even the manifest's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline field (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.config import ConfigError
    from medseg.config import load as load_pipeline
    from medseg.deploy.distill import distill

    try:
        cfg = load_pipeline(args.pipeline, [*args.overrides, f"data.manifest={args.data}"])
        if args.labelled_only and args.unlabelled:
            raise ValueError(f"--labelled-only with --unlabelled {args.unlabelled}: choose one")
        unlabelled = None if args.labelled_only else args.unlabelled
        result = distill(cfg, args.teacher, args.output, args.temperature, args.weight, unlabelled)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"medseg distill: {err}", file=sys.stderr)
        return 2
    score = f"{result.best_val_dice:.4f}" if result.best_val_dice is not None else "n/a"
    print(f"run directory: {args.output}  best checkpoint: {result.best_checkpoint}  best val mean Dice: {score}")
    return 0
