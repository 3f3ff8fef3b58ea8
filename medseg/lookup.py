"""Names looked up in tables, with one error style: what was asked, what exists, what is close.

Every "unknown name" in medseg (networks, presets, losses, loggers, structures, policies)
goes through :func:`lookup` or :func:`suggest`, as MONAI's ``look_up_option`` does, so that
a typo always gets the same kind of message. Imports nothing heavy.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")


class ConfigError(ValueError):
    """A pipeline configuration is invalid; the message names the key and the fix."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def lookup(name: str, table: Mapping[str, V], what: str) -> V:
    """``table[name]``, or a ConfigError: ``{what}: unknown {name!r} (known: ...). Did you mean ...?``

    ``what`` names the setting, e.g. ``"model.name"`` or ``"data.augmentation"``.
    """
    if name in table:
        return table[name]
    known = ", ".join(map(str, table)) or "none"
    raise ConfigError(f"{what}: unknown {name!r} (known: {known})." + suggest(name, map(str, table)))
