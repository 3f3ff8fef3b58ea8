"""The int8 runtime choice: OpenVINO when installed (or asked for), ONNX Runtime otherwise, both
giving the network's output for the same ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from medseg.deploy import runtime
from medseg.deploy.runtime import OpenVinoNetwork, int8_network
from medseg.inference.export import OnnxNetwork


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(3, 2, 1)).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    axes = {0: "n", 2: "x", 3: "y", 4: "z"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    return path, net


@pytest.mark.parametrize(("runtime_name", "kind"), [("openvino", OpenVinoNetwork), ("onnxruntime", OnnxNetwork)])
def test_both_runtimes_run_the_file_like_torch(onnx_file, runtime_name, kind):
    path, net = onnx_file
    module = int8_network(path, runtime_name)
    assert type(module) is kind
    x = torch.randn(2, 1, 8, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x), atol=1e-4, rtol=1e-4)


def test_auto_prefers_openvino_and_the_environment_can_force_onnxruntime(onnx_file, monkeypatch):
    path, _ = onnx_file
    assert type(int8_network(path)) is OpenVinoNetwork  # openvino is installed by the dev extra
    monkeypatch.setenv("MEDSEG_INT8_RUNTIME", "onnxruntime")
    assert type(int8_network(path)) is OnnxNetwork
    monkeypatch.setattr(runtime, "_has_openvino", lambda: False)
    monkeypatch.setenv("MEDSEG_INT8_RUNTIME", "auto")
    assert type(int8_network(path)) is OnnxNetwork


def test_bad_or_missing_runtime_is_named(onnx_file, monkeypatch):
    path, _ = onnx_file
    monkeypatch.setenv("MEDSEG_INT8_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match=r"MEDSEG_INT8_RUNTIME=tensorrt: expected one of \['auto', 'openvino', 'onnxruntime'\]"):
        int8_network(path)
    monkeypatch.setattr(runtime, "_has_openvino", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'medseg\[deploy\]'"):
        int8_network(path, "openvino")


@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_uses_torchs_thread_count(onnx_file, threads):
    path, _ = onnx_file
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        net = OpenVinoNetwork(path)
    finally:
        torch.set_num_threads(before)
    assert int(net.compiled.get_property("INFERENCE_NUM_THREADS")) == threads
