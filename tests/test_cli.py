"""The ``medseg`` entry point: every command registered, version, interrupts, unknown commands."""

from __future__ import annotations

import argparse

import pytest

import medseg
from medseg.cli import COMMANDS, build_parser, main


def test_every_command_is_registered_with_verbosity_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = {c.replace("_", "-") for c in COMMANDS}  # module tune_postprocess -> command tune-postprocess
    assert set(sub.choices) == names
    for name in names:
        opts = set(sub.choices[name]._option_string_actions)
        assert {"--quiet", "--verbose"} <= opts, name


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medseg {medseg.__version__}"


def test_unknown_and_missing_command_exit_2(capsys):
    for argv in (["trian"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    real = build_parser

    def parser_with_interrupt() -> argparse.ArgumentParser:
        parser = real()
        sub = next(a for a in parser._actions if a.dest == "command")
        sub.choices["synth"].set_defaults(func=interrupted)
        return parser

    monkeypatch.setattr("medseg.cli.build_parser", parser_with_interrupt)
    assert main(["synth", "--output", "x"]) == 130
    assert capsys.readouterr().err.strip() == "medseg: interrupted"


def test_the_command_status_is_the_exit_status(monkeypatch):
    real = build_parser

    def parser_returning(status: int):
        def build() -> argparse.ArgumentParser:
            parser = real()
            sub = next(a for a in parser._actions if a.dest == "command")
            sub.choices["check"].set_defaults(func=lambda args: status)
            return parser
        return build

    for status in (0, 1, 2):
        monkeypatch.setattr("medseg.cli.build_parser", parser_returning(status))
        assert main(["check", "m.json"]) == status
