"""``medseg synth``: write the synthetic phantom dataset (the embedded default)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic phantom dataset + dataset.json")
    p.add_argument("--output", required=True, help="folder to write the Decathlon-layout dataset into")
    p.add_argument("--cases", type=int, default=24, help="number of cases (a quarter are held out as test)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.data.synthetic import generate_dataset

    if args.cases < 1:
        print(f"medseg synth: --cases {args.cases} must be >= 1", file=sys.stderr)
        return 2
    path = generate_dataset(args.output, cases=args.cases, seed=args.seed)
    print(f"wrote {args.cases} phantom cases and {path}")
    return 0
