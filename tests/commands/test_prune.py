"""``medseg prune``: options reach ``prune_run``, its refusals exit 2 (pruning itself: tests/deploy/test_prune.py)."""

from __future__ import annotations

import pytest

from medseg.cli import main


def test_options_reach_prune_run_and_the_report_is_summarised(monkeypatch, capsys):
    seen: list[tuple] = []

    def prune_run(model, data, output, ratio, finetune_minutes=10.0, finetune_lr=None):
        seen.append((model, data, output, ratio, finetune_minutes, finetune_lr))
        return {"source": f"{model}/best.ckpt", "channels": [8, 16], "pruned_channels": [4, 8],
                "parameters": 1000, "pruned_parameters": 260}

    monkeypatch.setattr("medseg.deploy.prune.prune_run", prune_run)
    assert main(["prune", "--model", "run", "--data", "d.json", "--output", "small", "--ratio", "0.5",
                 "--finetune-minutes", "0", "--finetune-lr", "0.001"]) == 0
    assert main(["prune", "--model", "run", "--data", "d.json", "--output", "small", "--ratio", "0.25"]) == 0
    assert seen == [("run", "d.json", "small", 0.5, 0.0, 0.001), ("run", "d.json", "small", 0.25, 10.0, None)]
    out = capsys.readouterr().out
    assert "pruned run/best.ckpt -> small: channels [8, 16] -> [4, 8], parameters 1000 -> 260 (small/prune_report.json)" in out


def test_refusals_exit_2(monkeypatch, capsys):
    def prune_run(model, data, output, ratio, finetune_minutes=10.0, finetune_lr=None):
        raise ValueError(f"--ratio {ratio}: expected a fraction in (0, 1)")

    monkeypatch.setattr("medseg.deploy.prune.prune_run", prune_run)
    assert main(["prune", "--model", "run", "--data", "d.json", "--output", "o", "--ratio", "1.5"]) == 2
    assert "medseg prune: --ratio 1.5: expected a fraction in (0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "run", "--data", "d.json", "--output", "o", "--ratio", "half"])
    assert exit_info.value.code == 2
