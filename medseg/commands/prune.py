"""``medseg prune``: keep a fraction of a trained run's channels, fine-tune, write a new run.

A thin layer over :func:`medseg.deploy.prune.prune_run`. Exit status 0 on success, 2 on a
bad request (ratio outside (0, 1), missing data, unsupported family, occupied output).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``prune`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "prune",
        help="structured channel pruning of a trained run, then fine-tuning, into a new run directory",
        description=(
            "Keep the fraction RATIO of each level's channels (those of largest L1 weight norm, torch-pruning), "
            "fine-tune for --finetune-minutes on --data, and write an ordinary run directory (model.channels "
            "narrowed): predict, export and export --quantize use it unchanged."
        ),
    )
    p.add_argument("--model", required=True, metavar="RUN_DIR|CKPT", help="the trained run to prune")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="training manifest for fine-tuning")
    p.add_argument("--output", required=True, metavar="RUN_DIR2", help="new run directory")
    p.add_argument("--ratio", required=True, type=float, metavar="R", help="fraction of channels to keep, in (0, 1)")
    p.add_argument("--finetune-minutes", type=float, default=10.0, metavar="M",
                   help="fine-tuning budget in minutes (default 10; 0: the pruned weights as they are)")
    p.add_argument("--finetune-lr", type=float, default=None, metavar="LR",
                   help="fine-tuning learning rate (default: the run's optim.lr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.deploy.prune import REPORT, prune_run

    try:
        report = prune_run(args.model, args.data, args.output, args.ratio, args.finetune_minutes, args.finetune_lr)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"medseg prune: {err}", file=sys.stderr)
        return 2
    print(
        f"pruned {report['source']} -> {args.output}: channels {report['channels']} -> {report['pruned_channels']}, "
        f"parameters {report['parameters']} -> {report['pruned_parameters']} ({args.output}/{REPORT})"
    )
    return 0
