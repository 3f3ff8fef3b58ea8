"""The ``medseg`` subcommands: one thin module per command (``add_parser`` + ``run``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type=`` for an integer >= ``minimum`` (worker and batch counts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            example = "--workers 4" if minimum >= 1 else "4"
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}, e.g. {example}")
        return value

    return parse


def fraction_below_one(what: str, example: str) -> Callable[[str], float]:
    """argparse ``type=`` for a number in [0, 1) (an overlap, a Dice margin)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what} in [0, 1), e.g. {example}")
        return value

    return parse
