"""``medseg check``: exit status 0 / 1 / 2, the problem listing and the one-line summary.

The datasets are the hand-built ones of tests/data/test_check.py (the checks themselves are
tested there)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medseg.commands import check as check_cmd
from medseg.data.manifest import load_manifest
from tests.data.test_check import EXPECTED, _cli


def test_clean_dataset_exits_0_with_the_summary(valid_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["check", str(valid_dataset)]) == 0
    assert capsys.readouterr().out.strip() == check_cmd.summary(load_manifest(valid_dataset))
    assert check_cmd.summary(load_manifest(valid_dataset)) == (
        "OK: 3 cases (2 training, 1 test), 2 labels (1 left, 2 right), channels ['T1', 'T2']")


def test_cli_reports_errors_with_status_1(broken_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["check", str(broken_dataset), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    for case, kind in EXPECTED:
        assert kind in out and f"case {case}:" in out
    assert out.strip().splitlines()[-1] == "13 errors, 0 warnings in 12 of 14 cases"
    assert "OK:" not in out


def test_cli_status_2_for_an_unparsable_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "dataset.json"
    bad.write_text("{not json")
    assert check_cmd.run(argparse.Namespace(manifest=str(bad), workers=1)) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_rejects_zero_workers(valid_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _cli(["check", str(valid_dataset), "--workers", "0"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err
