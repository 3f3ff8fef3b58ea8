"""``medseg pretrain``: exit status per kind of failure and the fine-tuning hint (pretraining
itself: tests/training/test_pretrain.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import main


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "p.yaml").write_text("name: p\n")
    (tmp_path / "empty").mkdir()
    return {"pipeline": str(tmp_path / "p.yaml"), "empty": str(tmp_path / "empty"), "out": str(tmp_path / "o")}


@pytest.mark.parametrize(("extra", "message"), [
    ([], "no NIfTI images"),
    (["--set", "pretrain.mask_ratio=2"], "mask_ratio: 2.0 is not in (0, 1)"),
])
def test_bad_input_exits_2_before_writing(folders, capsys, extra, message):
    argv = ["pretrain", folders["pipeline"], "--data", folders["empty"], "--output", folders["out"], *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not Path(folders["out"]).exists()  # nothing written on a refused command


def test_an_occupied_run_directory_exits_1_and_success_prints_the_fine_tuning_command(folders, monkeypatch, capsys):
    from medseg.training.fit import FitResult

    seen: list[tuple] = []

    def fake_pretrain(cfg, sources, run_dir, resume=False):
        seen.append((cfg.pretrain.mask_ratio, list(sources), str(run_dir), resume))
        if not resume:
            raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it")
        return FitResult(None, Path(run_dir) / "last.ckpt", 0.125, 3, 30)

    monkeypatch.setattr("medseg.training.pretrain.pretrain", fake_pretrain)
    argv = ["pretrain", folders["pipeline"], "--data", "a.json", "--data", "b", "--output", folders["out"],
            "--set", "pretrain.mask_ratio=0.5"]
    assert main(argv) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert seen[-1] == (0.5, ["a.json", "b"], folders["out"], True)
    out = capsys.readouterr().out
    assert "best validation reconstruction loss: 0.1250" in out
    assert f"fine-tune with: medseg train {folders['pipeline']} --set init_from={folders['out']}" in out
