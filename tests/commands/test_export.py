"""``medseg export``: format / precision / quantisation options reach the exporter, bad requests
exit 2 before any compute (the export itself: tests/inference/test_export.py, tests/deploy/)."""

from __future__ import annotations

import pytest

from medseg.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    record: list[tuple] = []

    def export_model(model, output, formats=("torchscript",), precision="fp32"):
        record.append(("fp", model, output, tuple(formats), precision))
        return {"files": {f: f"model.{f}" for f in formats}, "source_checkpoint": f"{model}/best.ckpt"}

    def export_int8(model, output, calibration, cases=8, per_case=4):
        record.append(("int8", model, output, calibration, cases))
        return {"files": {"onnx": "model.int8.onnx"}, "source_checkpoint": f"{model}/best.ckpt"}

    monkeypatch.setattr("medseg.inference.export.export_model", export_model)
    monkeypatch.setattr("medseg.deploy.quantize.export_int8", export_int8)
    return record


def test_formats_and_precision(calls, capsys):
    assert main(["export", "--model", "run", "--output", "e"]) == 0
    assert main(["export", "--model", "run", "--output", "e", "--format", "both", "--precision", "fp16"]) == 0
    assert main(["export", "--model", "run", "--output", "e", "--format", "onnx"]) == 0
    assert calls == [("fp", "run", "e", ("torchscript",), "fp32"), ("fp", "run", "e", ("torchscript", "onnx"), "fp16"),
                     ("fp", "run", "e", ("onnx",), "fp32")]
    assert "exported run/best.ckpt -> e: model.torchscript, medseg_export.json" in capsys.readouterr().out


def test_int8_goes_to_the_quantiser_with_its_calibration(tmp_path, calls):
    manifest = tmp_path / "dataset.json"
    manifest.write_text("{}")
    assert main(["export", "--model", "run", "--output", "e", "--quantize", "int8", "--calibration", str(manifest),
                 "--calibration-cases", "3"]) == 0
    assert calls == [("int8", "run", "e", str(manifest), 3)]


@pytest.mark.parametrize(("extra", "message"), [
    (["--quantize", "int8"], "needs calibration data"),
    (["--calibration", "{manifest}"], "without --quantize"),
    (["--quantize", "int8", "--calibration", "{tmp}/none.json"], "no such manifest file"),
    (["--quantize", "int8", "--calibration", "{manifest}", "--format", "torchscript"], "ONNX only"),
    (["--quantize", "int8", "--calibration", "{manifest}", "--precision", "fp16"], "choose one of them"),
])
def test_impossible_requests_exit_2_before_compute(tmp_path, calls, capsys, extra, message):
    manifest = tmp_path / "dataset.json"
    manifest.write_text("{}")
    args = [a.format(manifest=manifest, tmp=tmp_path) for a in extra]
    assert main(["export", "--model", "run", "--output", str(tmp_path / "e"), *args]) == 2
    assert message in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "e").exists()


def test_a_missing_model_exits_2(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.startswith("medseg export:")
