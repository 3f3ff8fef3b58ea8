"""``medseg predict``: options -> PredictorSpec and batch call, exit status 0 / 1 / 2.

The predictor, the case finder and the batch are replaced by recorders; prediction itself is
covered in tests/inference/test_batch.py and test_predictor.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from medseg.cli import main


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict:
    from medseg.inference.batch import CaseResult

    rec: dict = {"statuses": ["ok", "skipped"]}

    def from_spec(spec):
        rec["spec"] = spec
        return SimpleNamespace(channel_names=["image"], labels={"background": 0, "organ": 1})

    def find_cases(path, channel_names, split):
        rec["find"] = (path, channel_names, split)
        return ["case"]

    def predict_batch(predictor, cases, output, fmt, resume, workers, progress, extras, scheduler=None):
        rec["batch"] = {"output": output, "format": fmt, "resume": resume, "workers": workers, "extras": extras,
                        "scheduler": scheduler}
        return [CaseResult(f"c{i}", s, 1.0, "unreadable" if s == "failed" else "")
                for i, s in enumerate(rec["statuses"])]

    monkeypatch.setattr("medseg.inference.predictor.Predictor.from_spec", from_spec)
    monkeypatch.setattr("medseg.inference.inputs.find_cases", find_cases)
    monkeypatch.setattr("medseg.inference.batch.predict_batch", predict_batch)
    return rec


def test_options_reach_the_predictor_spec_and_the_batch(tmp_path, recorded, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", "a", "--model", "b", "--input", "in", "--output", str(out), "--tta",
                 "--overlap", "0.25", "--sw-batch-size", "3", "--no-postprocess", "--no-crf", "--device", "cpu",
                 "--format", "both", "--no-resume", "--workers", "2", "--split", "test", "--block-mb", "512"]) == 0
    spec = recorded["spec"]
    assert spec.block_bytes == 512 * 2**20
    assert spec.models == ["a", "b"] and spec.device == "cpu" and spec.tta is True
    assert spec.overlap == 0.25 and spec.sw_batch_size == 3 and spec.postprocess is False and spec.crf is False
    assert recorded["find"] == ("in", ["image"], "test")
    assert recorded["batch"] == {"output": out, "format": "both", "resume": False, "workers": 2, "extras": None,
                                 "scheduler": None}
    assert "1 predicted, 1 skipped (already done), 0 failed" in capsys.readouterr().out


def test_defaults_leave_the_checkpoint_settings_alone(tmp_path, recorded):
    assert main(["predict", "--model", "a", "--input", "in", "--output", str(tmp_path / "o")]) == 0
    spec = recorded["spec"]
    assert (spec.tta, spec.overlap, spec.sw_batch_size, spec.crf, spec.postprocess) == (None, None, None, None, True)
    assert spec.block_bytes is None
    assert recorded["batch"]["resume"] is True and recorded["batch"]["format"] == "nifti"
    assert recorded["find"][2] == "auto"


def test_a_failed_case_exits_1_and_is_named(tmp_path, recorded, capsys):
    recorded["statuses"] = ["ok", "failed"]
    assert main(["predict", "--model", "a", "--input", "in", "--output", str(tmp_path / "o")]) == 1
    assert "failed c1: unreadable" in capsys.readouterr().err


def test_unusable_requests_exit_2_before_the_batch(tmp_path, recorded, capsys):
    assert main(["predict", "--model", "a", "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "is the input folder; choose another folder" in capsys.readouterr().err
    assert main(["predict", "--model", "a", "--input", "in", "--output", "o", "--sw-batch-size", "0"]) == 2
    assert "--sw-batch-size 0" in capsys.readouterr().err
    assert "batch" not in recorded
    for bad in (["--overlap", "1"], ["--workers", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--model", "a", "--input", "in", "--output", "o", *bad])
        assert exit_info.value.code == 2


def test_a_missing_model_exits_2_without_an_output_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(tmp_path / "o"), "--input", str(tmp_path / "empty"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not Path(tmp_path / "o").exists()
