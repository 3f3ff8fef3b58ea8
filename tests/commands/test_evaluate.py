"""``medseg evaluate`` on the command line: options, exit status, messages (the evaluation itself:
tests/evaluation/)."""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import pytest

from medseg.commands.evaluate import EMPTY_POLICY_NAMES, add_parser, parse_tolerances
from medseg.evaluation.policy import EMPTY_POLICIES


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medseg")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return int(args.func(args))


def test_parse_tolerances() -> None:
    assert parse_tolerances(None) == 1.0 and parse_tolerances(["2.5"]) == 2.5
    assert parse_tolerances(["2", "organ=3"]) == {"default": 2.0, "organ": 3.0}
    with pytest.raises(ValueError, match=r"'abc': expected MM or STRUCTURE=MM"):
        parse_tolerances(["abc"])
    with pytest.raises(ValueError, match="positive"):
        parse_tolerances(["organ=0"])


def test_policy_names_in_help_match_the_registry() -> None:
    assert set(EMPTY_POLICY_NAMES) == set(EMPTY_POLICIES)


def test_clean_run_exits_0(phantoms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = _run(["--pred", str(phantoms["pred"]), "--ref", str(phantoms["manifest"]), "--output", str(out),
               "--nsd-tolerance", "2", "--nsd-tolerance", "organ=3", "--workers", "2"])
    assert rc == 0
    assert "evaluated 6 cases" in capsys.readouterr().out
    with (out / "metrics.csv").open() as fh:
        tolerances = {(r["structure"], r["nsd_tolerance_mm"]) for r in csv.DictReader(fh)}
    assert tolerances == {("organ", "3"), ("lesion", "2"), ("vessel", "2")}


def test_problem_exits_1(phantoms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(phantoms["pred"], pred)
    (pred / "phantom_002.nii.gz").unlink()
    rc = _run(["--pred", str(pred), "--ref", str(phantoms["manifest"]), "--output", str(tmp_path / "out")])
    assert rc == 1
    assert "phantom_002: reference has no prediction" in capsys.readouterr().err
    assert (tmp_path / "out" / "report.html").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--empty-policy", "zero"], "empty policy 'zero' is not known"),
        (["--nsd-tolerance", "x=y"], "expected MM or STRUCTURE=MM"),
        (["--nsd-tolerance", "livr=2"], "no structure of that name"),
        (["--group-by", "site"], "--group-by 'site': no case has that metadata column"),
    ],
)
def test_unusable_input_exits_2(phantoms: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                extra: list[str], message: str) -> None:
    rc = _run(["--pred", str(phantoms["pred"]), "--ref", str(phantoms["manifest"]), "--output", str(tmp_path), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_prediction_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run(["--pred", str(tmp_path / "nope"), "--ref", str(tmp_path), "--output", str(tmp_path / "o")])
    assert rc == 2 and "prediction folder not found" in capsys.readouterr().err
