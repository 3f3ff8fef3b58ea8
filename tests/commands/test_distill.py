"""``medseg distill``: the student's config (``--data``, ``--set``), teachers, temperature and
weight reach ``distill``; refusals exit 2 (distillation itself: tests/deploy/test_distill.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import main


@pytest.fixture
def student(tmp_path: Path) -> Path:
    path = tmp_path / "student.yaml"
    path.write_text("name: student\nmodel:\n  channels: [4, 8]\n")
    return path


def test_options_reach_distill(student, monkeypatch, capsys):
    from medseg.training.run import TrainResult

    seen: list[tuple] = []

    def distill(cfg, teachers, run_dir, temperature=2.0, weight=0.5, unlabelled=None):
        seen.append((cfg.data.manifest, cfg.model.channels, cfg.trainer.max_epochs, teachers, run_dir, temperature, weight,
                     unlabelled))
        return TrainResult(Path(run_dir), Path(run_dir) / "best.ckpt", None, 0.5, 1.0)

    monkeypatch.setattr("medseg.deploy.distill.distill", distill)
    assert main(["distill", str(student), "--teacher", "t1", "--teacher", "t2", "--data", "d.json", "--output", "s",
                 "--temperature", "4", "--weight", "0.25", "--set", "trainer.max_epochs=2", "--unlabelled", "u"]) == 0
    manifest, channels, epochs, teachers, run_dir, temperature, weight, unlabelled = seen[0]
    assert unlabelled == ["u"]
    assert manifest.endswith("d.json") and channels == [4, 8] and epochs == 2
    assert (teachers, run_dir, temperature, weight) == (["t1", "t2"], "s", 4.0, 0.25)
    assert "run directory: s  best checkpoint: s/best.ckpt  best val mean Dice: 0.5000" in capsys.readouterr().out


def test_refusals_exit_2(student, monkeypatch, capsys):
    def distill(cfg, teachers, run_dir, temperature=2.0, weight=0.5, unlabelled=None):
        raise ValueError(f"--weight {weight}: expected a number in [0, 1]")

    monkeypatch.setattr("medseg.deploy.distill.distill", distill)
    base = ["distill", str(student), "--teacher", "t", "--data", "d.json", "--output", "s"]
    assert main([*base, "--weight", "2"]) == 2
    assert "medseg distill: --weight 2.0: expected a number in [0, 1]" in capsys.readouterr().err
    assert main([*base, "--set", "model.nmae=unet"]) == 2  # a config error, before distill runs
    assert "model.nmae" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(student), "--data", "d.json", "--output", "s"])  # --teacher is required
    assert exit_info.value.code == 2
