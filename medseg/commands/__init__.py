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
