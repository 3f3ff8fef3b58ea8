"""``medseg train``: options -> the config handed to ``training.run.train``, fold loops, exit status.

``train`` itself is replaced by a recorder, so these tests check the command layer only (the
training is covered by tests/training/test_run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import main
from medseg.config import ConfigError


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\ndata:\n  manifest: from_yaml.json\n")
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Each call of ``train`` as a dict; a ``fail_on`` run directory name raises ConfigError."""
    from medseg.training.run import TrainResult

    record: list[dict] = []

    def fake_train(cfg, run_dir, resume=False):
        record.append({"cfg": cfg, "run_dir": Path(run_dir), "resume": resume})
        if Path(run_dir).name == "fold_1":
            raise ConfigError("fold 1 has no validation cases")
        return TrainResult(Path(run_dir), Path(run_dir) / "best.ckpt", None, 0.75, 60.0)

    monkeypatch.setattr("medseg.training.run.train", fake_train)
    return record


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["train", "nope.yaml"], 2, "pipeline file not found"),
    (["train", "{pipeline}", "--fold", "x"], 2, "--fold 'x' must be a fold number or 'all'"),
    (["train", "{pipeline}", "--fold", "all"], 2, "--fold all: set data.folds"),
    (["train", "{pipeline}", "--set", "model.name=unte"], 2, "Did you mean 'unet'"),
])
def test_bad_input_is_named_with_its_exit_status(tmp_path, pipeline, calls, capsys, argv, status, message):
    values = {"pipeline": str(pipeline)}
    assert main([a.format(**values) for a in argv]) == status
    assert message in capsys.readouterr().err
    assert calls == []  # refused before any training


def test_data_set_and_resume_reach_the_config(tmp_path, pipeline, calls, capsys):
    out = tmp_path / "run"
    assert main(["train", str(pipeline), "--data", "other.json", "--set", "trainer.max_epochs=3",
                 "--output", str(out), "--resume", "--fold", "2", "--unlabelled", "extra"]) == 0
    (call,) = calls
    cfg = call["cfg"]
    assert cfg.data.manifest.endswith("other.json")  # --data replaces the pipeline's manifest
    assert cfg.trainer.max_epochs == 3 and cfg.data.fold == 2
    assert cfg.semi_supervised.unlabelled == [str(Path("extra").resolve())]  # resolved against the CWD
    assert call["run_dir"] == out and call["resume"] is True
    assert "best val mean Dice: 0.7500" in capsys.readouterr().out


def test_default_run_directory_is_runs_slash_the_pipeline_name(pipeline, calls, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(pipeline)]) == 0
    assert calls[0]["run_dir"] == Path("runs") / "p"
    assert calls[0]["cfg"].data.manifest.endswith("from_yaml.json")


def test_fold_all_trains_every_fold_and_a_failed_fold_does_not_stop_the_rest(tmp_path, pipeline, calls, capsys):
    out = tmp_path / "cv"
    assert main(["train", str(pipeline), "--set", "data.folds=3", "--fold", "all", "--output", str(out)]) == 1
    assert [c["run_dir"] for c in calls] == [out / "fold_0", out / "fold_1", out / "fold_2"]
    assert [c["cfg"].data.fold for c in calls] == [0, 1, 2]
    captured = capsys.readouterr()
    assert "medseg train: fold 1 has no validation cases" in captured.err
    assert captured.out.count("run directory:") == 2
