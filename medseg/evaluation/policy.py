"""The empty-structure policy: what a metric is when a structure is absent.

Four situations, decided per case and structure from the voxel counts (the "empty rule"
recorded in ``metrics.csv``):

* ``present``: in both reference and prediction: every metric is computed;
* ``both_empty``: in neither (a correct "absent");
* ``missed``: in the reference only (prediction empty);
* ``false_positive``: in the prediction only (reference empty).

For the last three a policy gives one value to the overlap metrics (Dice, IoU, NSD,
boundary F1, boundary IoU) and one to the distance metrics (HD, HD95, ASSD). Published
tools disagree, hence the presets (see ``CONVENTIONS.md``); the report counts how many
cases fell under each rule so that no mean hides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medseg.config import suggest

EmptyRule = Literal["present", "both_empty", "missed", "false_positive"]
EMPTY_RULES: tuple[EmptyRule, ...] = ("present", "both_empty", "missed", "false_positive")
DIAGONAL = "diagonal"
"""A distance value meaning "the image diagonal in mm": the worst distance possible."""

NAN = math.nan


@dataclass(frozen=True)
class EmptyPolicy:
    """Values for the three empty situations: (overlap value, distance value in mm).

    A distance value is a number (mm), NaN, or ``"diagonal"`` (the image's diagonal in mm).
    """

    name: str
    description: str
    both_empty: tuple[float, float | str]
    missed: tuple[float, float | str]
    false_positive: tuple[float, float | str]

    def values(self, rule: EmptyRule, diagonal_mm: float) -> tuple[float, float]:
        """(overlap value, distance value in mm) for an empty ``rule``."""
        if rule == "present":
            raise ValueError("the 'present' rule has computed values, not policy values")
        overlap, distance = getattr(self, rule)
        return float(overlap), diagonal_mm if distance == DIAGONAL else float(distance)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly description (NaN as None)."""

        def clean(v: float | str) -> float | str | None:
            return None if isinstance(v, float) and math.isnan(v) else v

        out: dict[str, object] = {"name": self.name, "description": self.description}
        for rule in EMPTY_RULES[1:]:
            overlap, distance = getattr(self, rule)
            out[rule] = {"overlap": clean(overlap), "distance_mm": clean(distance)}
        return out


EMPTY_POLICIES: dict[str, EmptyPolicy] = {
    "nan": EmptyPolicy(
        "nan",
        "nnU-Net / MONAI: undefined values are NaN and left out of means (counted in the "
        "report); both empty -> NaN; missed or false positive -> overlap 0, distances NaN",
        both_empty=(NAN, NAN),
        missed=(0.0, NAN),
        false_positive=(0.0, NAN),
    ),
    "reloaded": EmptyPolicy(
        "reloaded",
        "MetricsReloaded: both empty -> overlap 1 and distances 0 (a correct absence is "
        "perfect); missed or false positive -> overlap 0, distances NaN",
        both_empty=(1.0, 0.0),
        missed=(0.0, NAN),
        false_positive=(0.0, NAN),
    ),
    "worst": EmptyPolicy(
        "worst",
        "both empty -> overlap 1, distances 0; missed or false positive -> overlap 0 and "
        "distances the image diagonal in mm (the worst possible, as challenges such as BraTS "
        "do), so every case counts in every mean",
        both_empty=(1.0, 0.0),
        missed=(0.0, DIAGONAL),
        false_positive=(0.0, DIAGONAL),
    ),
}
DEFAULT_EMPTY_POLICY = "nan"


def get_empty_policy(policy: str | EmptyPolicy) -> EmptyPolicy:
    """Look up a policy by name (``nan``, ``reloaded``, ``worst``); pass instances through."""
    if isinstance(policy, EmptyPolicy):
        return policy
    if policy not in EMPTY_POLICIES:
        raise ValueError(
            f"empty policy {policy!r} is not known; expected one of {sorted(EMPTY_POLICIES)}."
            f"{suggest(policy, EMPTY_POLICIES)} (e.g. --empty-policy nan)"
        )
    return EMPTY_POLICIES[policy]
