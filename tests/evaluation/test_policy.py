"""The empty-structure policy presets and their lookup."""

from __future__ import annotations

import json
import math

import pytest

from medseg.evaluation.policy import EMPTY_POLICIES, get_empty_policy


def test_presets() -> None:
    nan, reloaded, worst = (EMPTY_POLICIES[n] for n in ("nan", "reloaded", "worst"))
    assert all(math.isnan(v) for v in nan.values("both_empty", 100.0))
    assert nan.values("missed", 100.0)[0] == 0.0 and math.isnan(nan.values("missed", 100.0)[1])
    assert reloaded.values("both_empty", 100.0) == (1.0, 0.0)
    assert math.isnan(reloaded.values("false_positive", 100.0)[1])
    assert worst.values("missed", 123.0) == (0.0, 123.0)
    assert worst.values("false_positive", 7.5) == (0.0, 7.5)
    with pytest.raises(ValueError, match="computed"):
        nan.values("present", 1.0)


def test_lookup_and_did_you_mean() -> None:
    assert get_empty_policy("worst") is EMPTY_POLICIES["worst"]
    assert get_empty_policy(EMPTY_POLICIES["nan"]) is EMPTY_POLICIES["nan"]
    with pytest.raises(ValueError, match=r"'relaoded'.*Did you mean 'reloaded'"):
        get_empty_policy("relaoded")


def test_as_dict_is_strict_json() -> None:
    for policy in EMPTY_POLICIES.values():
        text = json.dumps(policy.as_dict(), allow_nan=False)
        assert policy.name in text
    assert EMPTY_POLICIES["nan"].as_dict()["both_empty"] == {"overlap": None, "distance_mm": None}
    assert EMPTY_POLICIES["worst"].as_dict()["missed"] == {"overlap": 0.0, "distance_mm": "diagonal"}
