from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from medseg.config_parse import build, set_dotted
from medseg.lookup import ConfigError


@dataclass
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list)
    name: str | None = None


def test_build_checks_types_keys_and_literals():
    got = build(Outer, {"inner": {"rate": "3e-5", "mode": "b"}, "sizes": [1, 2]})
    assert got.inner.rate == 3e-5 and got.inner.mode == "b" and got.sizes == [1, 2] and got.name is None
    with pytest.raises(ConfigError, match=r"^inner\.rat: unknown key \(valid keys here: rate, mode\)\. Did you mean 'rate'\?"):
        build(Outer, {"inner": {"rat": 1}})
    with pytest.raises(ConfigError, match=r"sizes\[1\]: got 'x', expected an integer"):
        build(Outer, {"sizes": [1, "x"]})
    with pytest.raises(ConfigError, match=r"inner\.mode: 'c' is not one of \['a', 'b'\]"):
        build(Outer, {"inner": {"mode": "c"}})
    with pytest.raises(ConfigError, match=r"inner\.rate: got True, expected a number"):
        build(Outer, {"inner": {"rate": True}})


def test_set_dotted_parses_yaml_and_names_bad_assignments():
    values: dict = {"inner": {"rate": 1.0}}
    set_dotted(values, "inner.mode=b")
    set_dotted(values, "sizes=[3, 4]")
    assert values == {"inner": {"rate": 1.0, "mode": "b"}, "sizes": [3, 4]}
    with pytest.raises(ConfigError, match="expected key=value"):
        set_dotted(values, "inner.mode")
    with pytest.raises(ConfigError, match="sizes is not a section"):
        set_dotted(values, "sizes.x=1")
