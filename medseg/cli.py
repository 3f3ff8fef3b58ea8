"""The ``medseg`` console entry point: a thin layer over the library.

Each subcommand lives in ``medseg.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> exit status``. Command modules import only argparse at module level, so
``medseg train`` reports a typo in a pipeline before torch or MONAI are loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medseg.logs import add_verbosity_options, level_from_args, setup_logging

COMMANDS = ("synth", "check", "plan", "pretrain", "train", "predict", "evaluate", "export", "prune", "distill",
            "tune_postprocess")


def build_parser() -> argparse.ArgumentParser:
    from medseg import __version__

    parser = argparse.ArgumentParser(
        prog="medseg",
        description="3D medical image segmentation: train, predict in exact geometry, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"medseg.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # --quiet / --verbose on every subcommand
        add_verbosity_options(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(level_from_args(args))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
