"""``medseg plan``: fingerprint a dataset and write a proposed pipeline YAML."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="dataset fingerprint -> proposed pipeline YAML")
    p.add_argument("manifest", help="dataset.json (Decathlon / nnU-Net v2) or CSV manifest")
    p.add_argument("--output", help="write the pipeline here (default: print it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from medseg.config import from_dict
    from medseg.data.fingerprint import compute_fingerprint
    from medseg.data.manifest import ManifestError, load_manifest
    from medseg.data.planner import propose_pipeline
    from medseg.utils import atomic_write_text

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as err:
        print(f"medseg plan: {err}", file=sys.stderr)
        return 2
    fp = compute_fingerprint(manifest.training)
    proposal = propose_pipeline(manifest, fp)
    from_dict(proposal)  # the proposal must itself be a valid pipeline
    text = (
        f"# proposed by `medseg plan {args.manifest}` from {len(fp.spacings)} cases: "
        f"median spacing {[round(s, 3) for s in fp.median_spacing]} mm, median shape {fp.median_shape} voxels\n"
        + yaml.safe_dump(proposal, sort_keys=False)
    )
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0
