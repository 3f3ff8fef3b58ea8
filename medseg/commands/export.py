"""``medseg export``: a checkpoint as TorchScript and/or ONNX plus its preprocessing metadata.

A thin layer over :func:`medseg.inference.export.export_model`. Exit status 0 on success,
2 when the model cannot be loaded or exported.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "export",
        help="export a trained network (TorchScript/ONNX) with its preprocessing metadata",
        description=(
            "Write OUTPUT/model.ts and/or OUTPUT/model.onnx (a patch-size window -> logits) and "
            "OUTPUT/medseg_export.json (plan, patch size, overlap, spatial_dims, labels...). "
            "'medseg predict --model OUTPUT' runs the exported model through the same pipeline."
        ),
    )
    p.add_argument("--model", required=True, metavar="RUN_DIR|CKPT", help="run directory or .ckpt file")
    p.add_argument("--output", required=True, metavar="DIR", help="export folder")
    p.add_argument("--format", choices=("torchscript", "onnx", "both"), default="torchscript",
                   help="torchscript (default), onnx (needs the onnx package) or both")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.inference.export import METADATA, export_model

    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    try:
        meta = export_model(args.model, args.output, formats)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"medseg export: {err}", file=sys.stderr)
        return 2
    files = ", ".join(meta["files"].values())
    print(f"exported {meta['source_checkpoint']} -> {args.output}: {files}, {METADATA}")
    return 0
