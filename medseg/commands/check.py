"""``medseg check MANIFEST``: validate a dataset before training.

A thin layer over :func:`medseg.data.check.check_dataset`. Exit status: 0 when there are
no errors (warnings allowed), 1 when any error is found, 2 when the manifest itself cannot
be parsed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from medseg.commands import int_at_least

if TYPE_CHECKING:  # only argparse at import time: `medseg --help` stays fast (see cli.py)
    from medseg.data.manifest import Manifest



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``check`` subcommand (sets ``func=run``)."""
    p = subparsers.add_parser(
        "check",
        help="validate a dataset before training",
        description=(
            "Check every case of a manifest: missing/unreadable files, image/label geometry, "
            "channel counts, unknown or empty labels, NaN values, duplicate cases. Lists all "
            "problems at once. Exit status 0: no errors, 1: errors, 2: unreadable manifest."
        ),
    )
    p.add_argument("manifest", metavar="MANIFEST", help="dataset.json (Decathlon/nnU-Net) or CSV manifest")
    p.add_argument(
        "--workers", type=int_at_least(1), default=1,
        help="worker processes reading cases in parallel (default: 1)",
    )
    p.set_defaults(func=run)


def summary(manifest: Manifest) -> str:
    """One line describing a clean dataset: cases, structures and channels."""
    structures = ", ".join(f"{i} {n}" for n, i in manifest.foreground_labels.items())
    return (
        f"OK: {len(manifest.all_cases)} cases ({len(manifest.training)} training, "
        f"{len(manifest.test)} test), {len(manifest.foreground_labels)} labels ({structures}), "
        f"channels {manifest.channel_names}"
    )


def run(args: argparse.Namespace) -> int:
    """Check ``args.manifest``; print the problems or a summary; return the exit status."""
    from medseg.data.check import check_dataset, format_problems
    from medseg.data.manifest import ManifestError, load_manifest
    from medseg.logs import progress_bars

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as err:
        print(f"medseg check: {err}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", 1)
    problems = check_dataset(manifest, progress=progress_bars(), workers=workers)
    n_errors = sum(p.severity == "error" for p in problems)
    if problems:
        print(format_problems(problems, n_cases=len(manifest.all_cases)))
    if n_errors:
        return 1
    print(summary(manifest))
    return 0
