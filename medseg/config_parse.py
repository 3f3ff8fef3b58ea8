"""Plain mappings (parsed YAML) -> typed dataclasses, every key and value checked.

Unknown keys name the closest valid key; wrong types and impossible values name the field,
the value and what is expected (from the field's annotation). Nothing is ever executed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from medseg.lookup import ConfigError, suggest


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
"""A decimal number in scientific or plain notation (what float fields accept as text)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build(tp, value, key + ".")
    if origin is Literal:
        choices = get_args(tp)
        # YAML may give 32 for "32": compare as strings when the choices are strings.
        for choice in choices:
            if value == choice or (isinstance(choice, str) and str(value) == choice):
                return choice
        raise ConfigError(
            f"{key}: {value!r} is not one of {list(choices)}." + suggest(str(value), map(str, choices))
        )
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad
        return [_coerce(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, get_args(tp)[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            # PyYAML reads YAML 1.1, where 3e-5 (no decimal point) is a string, not a float.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - all annotations above are handled


def build(cls: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from a plain mapping, every key and value checked."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{prefix}{key}: unknown key (valid keys here: {', '.join(names)})."
                + suggest(key, names)
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def set_dotted(values: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.sub=value`` override (value parsed as YAML) to a raw dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. trainer.max_epochs=3")
    dotted, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    node = values
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value
