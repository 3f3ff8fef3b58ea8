"""``medseg predict``: label maps for a file, folder, manifest or DICOM series, in the input's geometry.

A thin layer over :class:`medseg.inference.predictor.Predictor` and
:func:`medseg.inference.batch.predict_batch`. Exit status: 0 when every case is ok or
skipped, 1 when any case failed (see OUTPUT/predict_log.csv), 2 when the models or the
input cannot be used at all.
"""

from __future__ import annotations

import argparse
import sys

from medseg.commands import fraction_below_one, int_at_least


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``predict`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "predict",
        help="predict label maps (NIfTI or DICOM-SEG) in the input's exact geometry",
        description=(
            "Predict every case of --input with one model or an ensemble (probabilities averaged). "
            "Preprocessing and window settings come from the checkpoint. Writes OUTPUT/<case>.nii.gz "
            "(and/or <case>.dcm DICOM-SEG) with the input's shape and affine, and "
            "OUTPUT/predict_log.csv. Exit status 1 when any case failed."
        ),
    )
    p.add_argument("--model", action="append", required=True, metavar="RUN_DIR|CKPT",
                   help="run directory (its best checkpoint), .ckpt file or 'medseg export' folder; "
                   "repeat to ensemble (e.g. one per cross-validation fold)")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="NIfTI file, folder of volumes, manifest, DICOM series folder or folder of them")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tta", action="store_true", default=None,
                   help="mirroring test-time augmentation: every combination of flips of the axes mirrored "
                   "in training (data.mirror_axes; all axes: 8x slower in 3D)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--format", choices=("nifti", "dicom-seg", "both"), default="nifti",
                   help="nifti (default), dicom-seg (DICOM inputs only) or both")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip cases whose outputs exist and match the input (default: on)")
    p.add_argument("--workers", type=int_at_least(0), default=0,
                   help="predict N cases in parallel CPU processes (default: 0, in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="one task per case on a Dask cluster: tcp://HOST:PORT, or local:N for N local "
                        "workers (needs medseg[dask]; see the README for SLURM)")
    p.add_argument("--overlap", type=fraction_below_one("a fraction", "--overlap 0.5"), help="sliding-window overlap (default: the checkpoint's)")
    p.add_argument("--sw-batch-size", type=int_at_least(0), help="windows per forward pass (default: the checkpoint's)")
    p.add_argument("--split", choices=("auto", "test", "training", "all"), default="auto",
                   help="manifest input: which cases (auto: test cases, else training cases)")
    p.add_argument("--no-postprocess", action="store_true", help="skip the configured post-processing")
    p.add_argument("--statistics", action="store_true",
                   help="OUTPUT/statistics.csv: volume, intensity (input units, e.g. HU), components and RAS "
                   "centroid per case and structure; also OUTPUT/qa.csv (QA flags)")
    p.add_argument("--preview", action="store_true",
                   help="OUTPUT/previews/<case>.png (three slices with the label overlay) and OUTPUT/index.html "
                   "(the batch on one page: previews, status, QA flags); also OUTPUT/qa.csv")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="3D fully connected CRF on the probabilities, per structure in its bounding box "
                        "(inference.crf.* settings; default: the config's inference.crf.enabled)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                   help="the networks' arithmetic (default: the checkpoint's inference.precision, fp32): bf16 "
                        "runs 2.4x faster on CPUs with AVX512-BF16/AMX (slow where emulated); auto picks bf16 "
                        "where the CPU or GPU has it natively")
    p.add_argument("--block-mb", type=int_at_least(1), metavar="MB",
                   help="memory for the class probabilities of one block of the network grid (default 512, "
                        "divided among the members of an ensemble): "
                        "fewer, larger blocks evaluate fewer windows twice; memory does not grow with "
                        "classes x volume either way")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg.inference.batch import LOG_NAME, predict_batch
    from medseg.inference.inputs import InputError, find_cases
    from medseg.inference.predictor import Predictor, PredictorSpec
    from medseg.logs import progress_bars

    if args.sw_batch_size == 0:
        print("medseg predict: --sw-batch-size 0: expected at least 1 window per forward pass", file=sys.stderr)
        return 2
    spec = PredictorSpec(
        models=list(args.model), device=args.device, tta=args.tta, overlap=args.overlap,
        sw_batch_size=args.sw_batch_size, postprocess=not args.no_postprocess, crf=args.crf,
        block_bytes=args.block_mb * 2**20 if args.block_mb else None, precision=args.precision,
    )
    try:
        predictor = Predictor.from_spec(spec)
        cases = find_cases(args.input, predictor.channel_names, args.split)
        output = Path(args.output)
        if Path(args.input).resolve() == output.resolve():
            raise InputError(f"--output {output}: is the input folder; choose another folder")
    except (FileNotFoundError, ValueError) as err:
        print(f"medseg predict: {err}", file=sys.stderr)
        return 2
    extras = None
    if args.statistics or args.preview:
        from medseg.inference.batch_extras import for_models

        extras = for_models(predictor.labels, spec.models, statistics=args.statistics, preview=args.preview)
    results = predict_batch(predictor, cases, output, args.format, args.resume, args.workers, progress_bars(),
                            extras, scheduler=args.scheduler)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} predicted, {counts['skipped']} skipped (already done), {counts['failed']} failed "
          f"-> {output} (log: {output / LOG_NAME})")
    for r in results:
        if r.status == "failed":
            print(f"  failed {r.case}: {r.error}", file=sys.stderr)
    return 1 if counts["failed"] else 0
