from __future__ import annotations

import pytest

from medseg.lookup import ConfigError, lookup, suggest


def test_lookup_returns_the_entry_or_names_what_exists():
    table = {"unet": 1, "dynunet": 2}
    assert lookup("dynunet", table, "model.name") == 2
    with pytest.raises(ConfigError, match=r"^model\.name: unknown 'dynnet' \(known: unet, dynunet\)\. Did you mean 'dynunet'\?$"):
        lookup("dynnet", table, "model.name")
    with pytest.raises(ConfigError, match=r"unknown 'zzz' \(known: none\)\.$"):
        lookup("zzz", {}, "x")


def test_suggest_only_when_close():
    assert suggest("gama", ["gamma", "noise"]) == " Did you mean 'gamma'?"
    assert suggest("qqqq", ["gamma", "noise"]) == ""
