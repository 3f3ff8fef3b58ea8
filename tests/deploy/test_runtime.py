"""The int8 runtimes: OpenVINO runs with torch's thread count, and computes what ONNX Runtime does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.deploy.runtime import OpenVinoNetwork, int8_network


def _onnx_conv(path: Path) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU()).eval()
    torch.onnx.export(net, (torch.randn(1, 1, 8, 8, 8),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_uses_torchs_thread_count(tmp_path: Path, threads: int) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        net = OpenVinoNetwork(_onnx_conv(tmp_path / "m.onnx"))
    finally:
        torch.set_num_threads(before)
    assert int(net.compiled.get_property("INFERENCE_NUM_THREADS")) == threads


def test_openvino_and_onnxruntime_agree(tmp_path: Path) -> None:
    path = _onnx_conv(tmp_path / "m.onnx")
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        a, b = int8_network(path, "openvino")(x), int8_network(path, "onnxruntime")(x)
    assert a.shape == (2, 4, 8, 8, 8)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
