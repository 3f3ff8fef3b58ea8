"""``make demo``: the steps in order through the CLI, reuse of finished steps, resume of an
interrupted training, and the Dice gate. The CLI is replaced by a recorder that writes what each
step would (the real steps: tests/test_cli_end_to_end.py, tests/test_install.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg import demo
from medseg.config import load


def test_the_packaged_demo_pipeline_is_a_valid_pipeline():
    path = demo.default_pipeline()
    assert path.is_file() and path.name == "demo.yaml"
    assert load(path).name  # parses and validates


class FakeCli:
    def __init__(self, dice: float = 0.9, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.dice, self.fail = dice, fail

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        command = argv[0]
        if command == self.fail:
            return 1
        if command == "synth":
            out = Path(argv[argv.index("--output") + 1])
            out.mkdir(parents=True)
            (out / "dataset.json").write_text("{}")
        elif command == "train":
            run = Path(argv[argv.index("--output") + 1])
            run.mkdir(parents=True, exist_ok=True)
            (run / "train_summary.json").write_text("{}")
        elif command == "evaluate":
            out = Path(argv[argv.index("--output") + 1])
            out.mkdir(parents=True)
            stats = {"dice": {"mean": self.dice}, "iou": {"mean": self.dice - 0.1}}
            (out / "summary.json").write_text(json.dumps({"structures": {"organ": stats, "lesion": stats}}))
        return 0


def test_steps_in_order_then_reuse_on_a_second_run(tmp_path, monkeypatch, capsys):
    cli = FakeCli()
    monkeypatch.setattr(demo, "medseg", cli)
    assert demo.main(["--output", str(tmp_path), "--cases", "5", "--seed", "2", "--set", "trainer.max_epochs=1"]) == 0
    assert [c[0] for c in cli.calls] == ["synth", "check", "train", "predict", "evaluate"]
    assert cli.calls[0][-4:] == ["--cases", "5", "--seed", "2"]
    assert cli.calls[2][-2:] == ["--set", "trainer.max_epochs=1"] and "--resume" not in cli.calls[2]
    out = capsys.readouterr().out
    assert "every structure reached mean Dice >= 0.8" in out and "organ" in out

    cli.calls.clear()
    (tmp_path / "evaluation" / "summary.json").unlink()
    (tmp_path / "evaluation").rmdir()
    assert demo.main(["--output", str(tmp_path)]) == 0
    assert [c[0] for c in cli.calls] == ["check", "predict", "evaluate"]  # data and run reused


def test_an_interrupted_training_resumes(tmp_path, monkeypatch):
    cli = FakeCli()
    monkeypatch.setattr(demo, "medseg", cli)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text("{}")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_text("")
    assert demo.main(["--output", str(tmp_path)]) == 0
    train = next(c for c in cli.calls if c[0] == "train")
    assert train[-1] == "--resume"


@pytest.mark.parametrize("failing", ["synth", "check", "train", "predict"])
def test_a_failed_step_stops_the_demo_with_status_1(tmp_path, monkeypatch, failing):
    cli = FakeCli(fail=failing)
    monkeypatch.setattr(demo, "medseg", cli)
    assert demo.main(["--output", str(tmp_path)]) == 1
    assert cli.calls[-1][0] == failing


def test_a_structure_below_the_dice_gate_fails_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "medseg", FakeCli(dice=0.79))
    assert demo.main(["--output", str(tmp_path)]) == 1
    assert "lowest structure mean Dice 0.790 is below 0.8" in capsys.readouterr().err
