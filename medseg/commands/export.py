"""``medseg export``: a checkpoint as TorchScript and/or ONNX plus its preprocessing metadata.

A thin layer over :func:`medseg.inference.export.export_model`. Exit status 0 on success,
2 when the model cannot be loaded or exported.
"""

from __future__ import annotations

import argparse
import sys

from medseg.commands import int_at_least


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
    p.add_argument("--format", choices=("torchscript", "onnx", "both"), default=None,
                   help="torchscript (default), onnx (needs the onnx package) or both; onnx with --quantize int8")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: half-precision weights and arithmetic for GPUs (float32 in and out)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8: post-training static quantisation (ONNX Runtime), calibrated on --calibration")
    p.add_argument("--calibration", metavar="MANIFEST", default=None,
                   help="manifest whose training cases calibrate --quantize int8 (preprocessed with the run's plan)")
    p.add_argument("--calibration-cases", type=int_at_least(1), default=8, metavar="N",
                   help="calibration cases (4 patch-size windows each; default 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.deploy.quantize import check_request, export_int8
    from medseg.inference.export import METADATA, export_model

    fmt = args.format or ("onnx" if args.quantize else "torchscript")
    formats = ("torchscript", "onnx") if fmt == "both" else (fmt,)
    try:
        check_request(args.quantize, args.calibration, args.format, args.precision)  # before any compute
        if args.quantize:
            meta = export_int8(args.model, args.output, args.calibration, args.calibration_cases)
        else:
            meta = export_model(args.model, args.output, formats, args.precision)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"medseg export: {err}", file=sys.stderr)
        return 2
    files = ", ".join(meta["files"].values())
    print(f"exported {meta['source_checkpoint']} -> {args.output}: {files}, {METADATA}")
    return 0
