"""Each subcommand's argument contract and its exit status on bad input (no compute)."""

from __future__ import annotations

import pytest

from medseg.cli import COMMANDS, build_parser, main


def test_every_command_is_registered_with_verbosity_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = {c.replace("_", "-") for c in COMMANDS}  # module tune_postprocess -> command tune-postprocess
    assert set(sub.choices) == names
    for name in names:
        opts = set(sub.choices[name]._option_string_actions)
        assert {"--quiet", "--verbose"} <= opts, name


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["train", "nope.yaml"], 2, "pipeline file not found"),
    (["train", "{pipeline}", "--fold", "x"], 2, "--fold 'x' must be a fold number or 'all'"),
    (["train", "{pipeline}", "--fold", "all"], 2, "--fold all: set data.folds"),
    (["train", "{pipeline}", "--set", "model.name=unte"], 2, "Did you mean 'unet'"),
    (["pretrain", "{pipeline}", "--data", "{empty}", "--output", "{out}"], 2, "no NIfTI images"),
    (["pretrain", "{pipeline}", "--data", "{empty}", "--output", "{out}", "--set", "pretrain.mask_ratio=2"], 2,
     "mask_ratio: 2.0 is not in (0, 1)"),
    (["predict", "--model", "{out}", "--input", "{empty}", "--output", "{out}"], 2, "not found"),
])
def test_bad_input_is_named_with_its_exit_status(tmp_path, capsys, argv, status, message):
    (tmp_path / "p.yaml").write_text("name: p\n")
    (tmp_path / "empty").mkdir()
    values = {"pipeline": str(tmp_path / "p.yaml"), "empty": str(tmp_path / "empty"), "out": str(tmp_path / "o")}
    assert main([a.format(**values) for a in argv]) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on a refused command
