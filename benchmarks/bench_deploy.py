"""Network throughput of fp32 torch, fp32 ONNX Runtime and int8 ONNX Runtime (windows/s, 1 thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_deploy.py [demo|hippocampus ...]

demo: the phantom/demo UNet (pipelines/demo.yaml); hippocampus: the DynUNet of
pipelines/hippocampus_3d.yaml (8-128 channels, patch 40x56x40). Random weights: the
question is the speed of the kernels, not the masks (tests/deploy checks the masks).
The int8 graph is calibrated on standard-normal windows (z-score-like inputs). Prints one
JSON line per network, with the operators left in the int8 graph.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from medseg.config import load as load_config
from medseg.deploy.quantize import int8_ops, quantize_onnx
from medseg.inference.export import _export_onnx, _LogitsOnly
from medseg.models.registry import build_network

PIPELINES = {"demo": "pipelines/demo.yaml", "hippocampus": "pipelines/hippocampus_3d.yaml"}
REPEATS = 5


def _rate(fn, x: np.ndarray) -> float:
    fn(x)  # warm-up
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn(x)
    return REPEATS * len(x) / (time.perf_counter() - start)


def _pruned(cfg, ratio: float):
    """torch fp32 forward of the same family with every level's width times ``ratio`` (what prune builds)."""
    from medseg.deploy.prune import pruned_config

    net = _LogitsOnly(build_network(pruned_config(cfg, ratio).model, 1, 3)).eval()
    return lambda a: net(torch.from_numpy(a))


def _openvino(fp32: Path, int8: Path, x: np.ndarray) -> dict[str, float]:
    """OpenVINO CPU on the same fp32 and QDQ int8 ONNX files (it runs QDQ graphs in int8), if installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    out = {}
    for key, path in (("openvino_fp32", fp32), ("openvino_int8", int8)):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
        out[key] = _rate(lambda a, c=compiled: c(a), x)
    return out


def bench(name: str) -> dict[str, object]:
    torch.set_num_threads(1)
    cfg = load_config(PIPELINES[name])
    torch.manual_seed(0)
    net = _LogitsOnly(build_network(cfg.model, 1, 3)).eval()
    x = np.random.default_rng(0).normal(size=(2, 1, *cfg.data.patch_size)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m8.onnx"
        _export_onnx(net, torch.from_numpy(x[:1]), fp32, cfg.model.spatial_dims)
        calib = np.random.default_rng(1).normal(size=(8, 1, *cfg.data.patch_size)).astype(np.float32)
        quantize_onnx(fp32, int8, calib)
        s32 = ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"])
        s8 = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
        out = {
            "network": name, "patch": cfg.data.patch_size, "channels": cfg.model.channels,
            "torch_fp32": _rate(lambda a: net(torch.from_numpy(a)), x),
            "ort_fp32": _rate(lambda a: s32.run(None, {"image": a}), x),
            "ort_int8": _rate(lambda a: s8.run(None, {"image": a}), x),
            **_openvino(fp32, int8, x),
            **{f"torch_fp32_pruned_{r}": _rate(_pruned(cfg, r), x) for r in (0.5, 0.25)},
            "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size, "int8_ops": int8_ops(int8),
        }
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PIPELINES):
        print(json.dumps(bench(name)), flush=True)
