"""``medseg evaluate``: score predicted label maps against references, write the reports.

A thin layer over :func:`medseg.evaluation.evaluate.evaluate`. Exit status: 0 when every
case was evaluated without a problem, 1 when any case had one (unreadable file, geometry
mismatch, unknown label, unmatched case; the rest is still evaluated and the problems are
in the report), 2 when the input is unusable (missing folder, bad manifest, no case
matches, bad option value).
"""

from __future__ import annotations

import argparse
import sys

from medseg.commands import int_at_least

EMPTY_POLICY_NAMES = ("nan", "reloaded", "worst")



def parse_tolerances(values: list[str] | None) -> float | dict[str, float]:
    """``["1.0"]`` -> 1.0; ``["2", "liver=3"]`` -> {"default": 2, "liver": 3} (mm)."""
    if not values:
        return 1.0
    out: dict[str, float] = {}
    for item in values:
        name, sep, number = item.rpartition("=")
        key = name.strip() if sep else "default"
        try:
            value = float(number)
        except ValueError:
            raise ValueError(
                f"--nsd-tolerance {item!r}: expected MM or STRUCTURE=MM, e.g. --nsd-tolerance 1.0 "
                "--nsd-tolerance liver=2.5"
            ) from None
        if not value > 0:
            raise ValueError(f"--nsd-tolerance {item!r}: the tolerance must be a positive number of mm")
        out[key] = value
    return out["default"] if list(out) == ["default"] else out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against references: metrics.csv, summary.json, HTML/Markdown report",
        description=(
            "Per case and structure: Dice, IoU, HD, HD95, ASSD, NSD (surface-distance surfel "
            "definition, mm), volumes (mL), TP/FP/FN; per case: pixel accuracy, mean and "
            "frequency-weighted IoU, confusion matrix, boundary F1/IoU. Writes OUTPUT/metrics.csv, "
            "cases.csv, confusion_matrices.json, summary.json, report.html and report.md. "
            "Exit status 0: ok, 1: some case had a problem, 2: unusable input."
        ),
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted <case>.nii.gz label maps")
    p.add_argument("--ref", required=True, metavar="DIR|MANIFEST",
                   help="folder of reference <case>.nii.gz label maps, or a manifest (its cases' labels)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the outputs")
    p.add_argument("--labels", metavar="MANIFEST",
                   help="manifest naming the structures (and giving case metadata) when --ref is a folder")
    p.add_argument("--nsd-tolerance", action="append", metavar="MM|STRUCTURE=MM",
                   help="NSD and boundary tolerance in mm (default 1.0); repeat STRUCTURE=MM for "
                        "per-structure tolerances, e.g. --nsd-tolerance 1 --nsd-tolerance liver=2.5")
    p.add_argument("--workers", type=int_at_least(1), default=None,
                   help="worker processes for the cases and the report's figures (default: one per "
                        "available CPU core, at most one per case)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="one task per case on a Dask cluster: tcp://HOST:PORT, or local:N for N local "
                        "workers (needs medseg[dask])")
    p.add_argument("--resample-pred", action="store_true",
                   help="resample a prediction whose grid differs from the reference's (nearest "
                        "neighbour) instead of failing the case")
    p.add_argument("--empty-policy", default="nan", metavar="NAME",
                   help="values when a structure is absent: nan (default; nnU-Net/MONAI), reloaded "
                        "(MetricsReloaded: both empty = perfect), worst (missing = 0 and image "
                        "diagonal); see medseg/evaluation/CONVENTIONS.md")
    p.add_argument("--group-by", metavar="COLUMN",
                   help="manifest metadata column (e.g. site, scanner) for subgroup tables")
    p.add_argument("--baseline", metavar="DIR",
                   help="a second prediction folder (e.g. without CRF) evaluated into OUTPUT/baseline and "
                        "compared case by case: OUTPUT/comparison.csv, paired Dice/HD95 differences "
                        "with 95%% CIs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; print where the outputs are and any problems; return the exit status."""
    from medseg.evaluation.evaluate import evaluate
    from medseg.evaluation.inputs import EvaluationInputError
    from medseg.logs import progress_bars

    try:
        tolerance = parse_tolerances(args.nsd_tolerance)
    except ValueError as err:
        print(f"medseg evaluate: error: {err}", file=sys.stderr)
        return 2
    try:
        summary = evaluate(
            args.pred, args.ref, args.output, labels=args.labels, nsd_tolerance=tolerance,
            workers=args.workers, empty_policy=args.empty_policy, resample_pred=args.resample_pred,
            group_by=args.group_by, progress=progress_bars(), scheduler=args.scheduler,
        )
    except EvaluationInputError as err:
        print(f"medseg evaluate: error: {err}", file=sys.stderr)
        return 2
    if args.baseline:
        from pathlib import Path

        from medseg.evaluation.compare import write_comparison

        try:
            evaluate(
                args.baseline, args.ref, Path(args.output) / "baseline", labels=args.labels,
                nsd_tolerance=tolerance, workers=args.workers, empty_policy=args.empty_policy,
                resample_pred=args.resample_pred, group_by=args.group_by, progress=progress_bars(),
                scheduler=args.scheduler,
            )
        except EvaluationInputError as err:
            print(f"medseg evaluate: error: --baseline {args.baseline}: {err}", file=sys.stderr)
            return 2
        comparison = write_comparison(args.output, args.baseline)
        print(f"compared with the baseline {args.baseline}: comparison.csv (prediction - baseline)")
        for row in comparison["rows"]:
            if row["metric"] == "dice" and row["n"]:
                print(f"  {row['structure']}: Dice {row['mean_diff']:+.4f} "
                      f"[{row['ci95_low']:+.4f}, {row['ci95_high']:+.4f}] (n={row['n']})")
    cases = summary["cases"]
    print(f"evaluated {cases['evaluated']} cases; wrote metrics.csv, cases.csv, summary.json, "
          f"report.html and report.md to {args.output}")
    for name, entry in summary["structures"].items():
        dice = entry["dice"]
        if dice["n"] and entry["empty_rules"]["both_empty"] < entry["n_cases"]:  # absent everywhere: skip
            print(f"  {name}: Dice {dice['mean']:.3f} ± {dice['std']:.3f} (n={dice['n']})")
    if summary["problems"]:
        print(f"{len(summary['problems'])} problem(s):", file=sys.stderr)
        for problem in summary["problems"]:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    return 0
