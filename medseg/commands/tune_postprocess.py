"""``medseg tune-postprocess``: choose the post-processing on validation data.

A thin layer over :func:`medseg.inference.tuning.tune_postprocess`. Writes
``RUN_DIR/postprocessing.json``, which ``medseg predict --model RUN_DIR`` then applies
(``--no-postprocess`` skips it; an explicit ``inference.*`` setting in the pipeline wins).
Exit status 0: written; 2: unusable input.
"""

from __future__ import annotations

import argparse
import sys

from medseg.commands import fraction_below_one


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``tune-postprocess`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "tune-postprocess",
        help="choose CRF / connected-component / hole-filling post-processing on validation cases",
        description=(
            "Predict the run's validation cases (split.json; out-of-fold for fold_<k> runs) or every "
            "labelled case of --data, then per structure keep a CRF, a connected-component step and "
            "hole filling only where each raises that structure's mean validation Dice by more than "
            "--margin, consistently across cases (--confidence). Writes RUN_DIR/postprocessing.json (choice, Dice before/after)."
        ),
    )
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="run directory (or one holding fold_<k>/ runs)")
    p.add_argument("--data", metavar="MANIFEST", help="labelled manifest to tune on instead of the validation split")
    p.add_argument("--margin", type=fraction_below_one("a Dice gain", "0.002"), default=0.002, help="minimum mean Dice gain to keep a step (default 0.002)")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="one-sided confidence (Student t over the cases) that a kept step's mean per-case gain is "
                        "positive; 0: the margin alone (default 0.9)")
    p.add_argument("--no-crf", action="store_true", help="do not try the CRF (faster)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Tune, print the choice per structure; return the exit status."""
    from medseg.inference.predictor import resolve_device
    from medseg.inference.tuning import tune_postprocess

    try:
        device = resolve_device(args.device)
        result = tune_postprocess(args.model, args.data, device, args.margin, crf=not args.no_crf,
                                  progress=lambda name: print(f"  predicted {name}", file=sys.stderr),
                                  confidence=args.confidence)
    except (FileNotFoundError, ValueError) as err:
        print(f"medseg tune-postprocess: {err}", file=sys.stderr)
        return 2
    for warning in result.get("warnings", []):
        print(f"medseg tune-postprocess: warning: {warning}", file=sys.stderr)
    print(f"tuned on {len(result['cases'])} cases -> {args.model}/postprocessing.json")
    for name, entry in result["structures"].items():
        steps = [s for s, on in (("crf", entry["crf"]), (entry["components"], entry["components"] != "none"),
                                 ("fill_holes", entry["fill_holes"])) if on]
        print(f"  {name}: {', '.join(steps) or 'nothing'} (Dice {entry['dice_before']:.4f} -> {entry['dice_after']:.4f})")
    return 0
