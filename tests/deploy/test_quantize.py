"""int8 exports: the masks of the fp32 network, a smaller file, no training stack, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.io import read_volume
from medseg.deploy.runtime import int8_network
from medseg.inference.export import METADATA, load_exported
from medseg.inference.predictor import LoadedModel, Predictor
from tests.no_lightning import predict_without_lightning


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


@pytest.fixture(scope="module")
def int8_export(phantom_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run, manifest = phantom_run
    out = tmp_path_factory.mktemp("int8") / "export"
    assert main(["export", "--model", str(run), "--output", str(out), "--quantize", "int8",
                 "--calibration", str(manifest), "--calibration-cases", "4"]) == 0
    return out


def test_int8_export_metadata(int8_export: Path) -> None:
    meta = json.loads((int8_export / METADATA).read_text(encoding="utf-8"))
    assert meta["files"] == {"onnx-int8": "model.int8.onnx"} and meta["precision"] == "int8"
    assert not (int8_export / "model.onnx").exists()  # only the int8 network ships
    q = meta["quantization"]
    assert q["calibration_windows"] == 16 and q["int8_bytes"] < 0.8 * q["fp32_bytes"]
    assert q["ops"]["QuantizeLinear"] > 0 and q["ops"]["DequantizeLinear"] > 0
    net, _, _ = load_exported(int8_export)
    assert type(net).__name__ == "OpenVinoNetwork"  # the faster runtime, installed by the deploy extra


def test_int8_activations_are_symmetric(int8_export: Path) -> None:
    """Activations quantised to int8 with zero point 0 (OpenVINO fuses those into its int8
    kernels; uint8 zero points left Subtract nodes and fp32 transposed convolutions)."""
    import onnx
    from onnx import numpy_helper

    assert json.loads((int8_export / METADATA).read_text(encoding="utf-8"))["quantization"]["activations"] == \
        "int8 symmetric"
    model = onnx.load(str(int8_export / "model.int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert points
    assert {z.data_type for z in points} == {onnx.TensorProto.INT8}
    assert all(not numpy_helper.to_array(z).any() for z in points)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_int8_export_predicts_the_fp32_masks(phantom_run: tuple[Path, Path], int8_export: Path, runtime: str) -> None:
    run, manifest = phantom_run
    _, cfg, plan = load_exported(int8_export)
    fp32 = Predictor.from_checkpoints([run])
    int8 = Predictor([LoadedModel(int8_network(int8_export / "model.int8.onnx", runtime), cfg, "int8")], plan)
    images = sorted((manifest.parent / "imagesTs").glob("*.nii.gz"))
    assert images
    for image in images:
        volume = read_volume(image)
        expected, got = fp32.predict_volume(volume), int8.predict_volume(volume)
        labels = [int(v) for v in np.unique(expected) if v > 0]
        assert labels  # the trained network finds structures
        for label in labels:
            assert _dice(expected, got, label) >= 0.98, (image.name, label, _dice(expected, got, label))


def test_int8_runtime_choice(int8_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEG_INT8_RUNTIME", "onnxruntime")
    assert type(load_exported(int8_export)[0]).__name__ == "OnnxNetwork"
    monkeypatch.setenv("MEDSEG_INT8_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match=r"expected one of \['auto', 'openvino', 'onnxruntime'\]"):
        load_exported(int8_export)


def test_int8_export_predicts_without_lightning(int8_export: Path, phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    image = sorted((phantom_run[1].parent / "imagesTs").glob("*.nii.gz"))[0]
    out = predict_without_lightning(int8_export, image, tmp_path / "out")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / image.name).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs calibration data"),
        (["--calibration", "missing.json"], "no such manifest file"),
        (["--calibration", "MANIFEST", "--format", "torchscript"], "int8 exports are ONNX only"),
        (["--calibration", "MANIFEST", "--precision", "fp16"], "choose one of them"),
    ],
)
def test_quantize_rejects_bad_requests_before_compute(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "dataset.json"
    manifest.write_text("{}")
    extra = [str(manifest) if e == "MANIFEST" else str(tmp_path / e) if e.endswith(".json") else e for e in extra]
    # the model does not even exist: the request is refused before anything is loaded
    rc = main(["export", "--model", str(tmp_path / "no_run"), "--output", str(tmp_path / "e"), "--quantize", "int8", *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    rc = main(["export", "--model", str(tmp_path / "no_run"), "--output", str(tmp_path / "e"), "--calibration", str(manifest)])
    assert rc == 2 and "without --quantize" in capsys.readouterr().err


def test_int8_calibration_manifest_of_other_channels_is_refused(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    from medseg.deploy.quantize import export_int8

    run, manifest = phantom_run
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in data["training"]:
        entry["image"] = [str(manifest.parent / entry["image"])] * 2
    data["modality"] = {"0": "CT", "1": "CT2"}
    two = tmp_path / "two.json"
    two.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"2 image channel\(s\), the model expects 1"):
        export_int8(run, tmp_path / "e", two)
    assert not (tmp_path / "e").exists()
