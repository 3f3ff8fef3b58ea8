"""The runtime that executes an int8 export: OpenVINO where installed, else ONNX Runtime.

Both read the same QDQ ``model.int8.onnx``. Chosen by measurement (benchmarks/RESULTS.md,
"Deployment", AMD EPYC AVX2, 1 thread): on the hippocampus DynUNet OpenVINO runs the int8
file at 9.1 windows/s against ONNX Runtime's 1.7 and torch fp32's 4.7; on the demo UNet 15.0
against 9.1 and 11.0. ONNX Runtime's CPU provider has no integer ConvTranspose and wraps every
float op (norms, activations) in a dequantise/quantise pair; OpenVINO fuses them.
``MEDSEG_INT8_RUNTIME=onnxruntime`` forces ONNX Runtime.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("auto", "openvino", "onnxruntime")


class OpenVinoNetwork(torch.nn.Module):
    """An OpenVINO CPU model behind the ``nn.Module`` interface the sliding window uses."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        import openvino as ov

        # as many threads as torch uses (OMP_NUM_THREADS / torch.set_num_threads): OpenVINO's own
        # default takes every core, which would make fp32 torch and int8 incomparable
        # f32: on CPUs with native bf16 (AVX512-BF16, AMX) OpenVINO otherwise runs every op that is not
        # int8 in bf16, ~5e-3 off torch's fp32 output on a random conv net (tests/deploy/test_runtime.py)
        self.compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        )
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # device probe for the window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compiled(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))[0]
        return torch.from_numpy(np.array(out)).to(x.device)


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def int8_network(path: Path | str, runtime: str | None = None) -> torch.nn.Module:
    """The int8 ONNX file at ``path`` as a module; ``runtime``: auto (default, or ``MEDSEG_INT8_RUNTIME``),
    openvino, onnxruntime."""
    from medseg.inference.export import OnnxNetwork

    runtime = runtime or os.environ.get("MEDSEG_INT8_RUNTIME", "auto")
    if runtime not in RUNTIMES:
        raise ValueError(f"MEDSEG_INT8_RUNTIME={runtime}: expected one of {list(RUNTIMES)}")
    if runtime == "openvino" or (runtime == "auto" and _has_openvino()):
        if not _has_openvino():
            raise RuntimeError("the openvino runtime is not installed: pip install 'medseg[deploy]'")
        return OpenVinoNetwork(path)
    return OnnxNetwork(path)
