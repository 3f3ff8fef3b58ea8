"""``medseg tune-postprocess``: options reach ``tune_postprocess``, the choice is printed per
structure, refusals exit 2 (the tuning itself: tests/inference/test_tuning.py)."""

from __future__ import annotations

import pytest

from medseg.cli import main

RESULT = {
    "cases": ["a", "b", "c"],
    "structures": {
        "organ": {"crf": False, "components": "keep_largest", "fill_holes": True, "dice_before": 0.9, "dice_after": 0.925},
        "lesion": {"crf": False, "components": "none", "fill_holes": False, "dice_before": 0.5, "dice_after": 0.5},
    },
}


def test_options_reach_the_tuner_and_the_choice_is_printed(monkeypatch, capsys):
    seen: list[tuple] = []

    def tune_postprocess(run_dir, data=None, device="cpu", margin=0.002, crf=True, progress=None, confidence=0.9):
        seen.append((run_dir, data, device, margin, crf, confidence))
        return RESULT | {"warnings": ["--data d.json: 2 of the 3 tuning cases were training cases"]} if data else RESULT

    monkeypatch.setattr("medseg.inference.tuning.tune_postprocess", tune_postprocess)
    assert main(["tune-postprocess", "--model", "run", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert main(["tune-postprocess", "--model", "run", "--data", "d.json", "--margin", "0.01", "--no-crf",
                 "--confidence", "0", "--device", "cpu"]) == 0
    assert seen == [("run", None, "cpu", 0.002, True, 0.9), ("run", "d.json", "cpu", 0.01, False, 0.0)]
    assert "warning: --data d.json: 2 of the 3 tuning cases were training cases" in capsys.readouterr().err
    assert out[:3] == ["tuned on 3 cases -> run/postprocessing.json",
                       "  organ: keep_largest, fill_holes (Dice 0.9000 -> 0.9250)",
                       "  lesion: nothing (Dice 0.5000 -> 0.5000)"]


def test_refusals_exit_2(monkeypatch, capsys):
    def tune_postprocess(run_dir, data=None, device="cpu", margin=0.002, crf=True, progress=None, confidence=0.9):
        raise FileNotFoundError(f"{run_dir}/split.json: not found")

    monkeypatch.setattr("medseg.inference.tuning.tune_postprocess", tune_postprocess)
    assert main(["tune-postprocess", "--model", "run", "--device", "cpu"]) == 2
    assert "medseg tune-postprocess: run/split.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["tune-postprocess", "--model", "run", "--margin", "1"])
    assert exit_info.value.code == 2
