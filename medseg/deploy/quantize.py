"""Post-training static int8 quantisation of an ONNX export with ONNX Runtime.

``medseg export --quantize int8 --calibration MANIFEST`` exports the fp32 ONNX network,
runs it on real preprocessed calibration windows (:mod:`medseg.deploy.calibration`) to
measure activation ranges, and writes ``model.int8.onnx``: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each convolution, which ONNX Runtime's CPU provider fuses
into integer QLinearConv kernels), int8 weights with one scale per output channel,
symmetric int8 activations (zero point 0: OpenVINO then fuses the dequantisation into its
int8 kernels, normalisations and transposed convolutions included; with uint8 activations
their zero points cost separate Subtract nodes, 24 % of the time, and the transposed
convolutions ran in fp32: 1.44x fewer windows/s on the hippocampus DynUNet,
benchmarks/RESULTS.md). Normalisation layers, activations and the final softmax-free
logits stay float in the graph. :func:`int8_ops` reports which operators carry int8 tensors.

The export folder keeps the same ``medseg_export.json`` as a float export, so
``medseg predict --model DIR`` runs it through the same windows, TTA, resampling and
geometry checks; it runs with OpenVINO where installed, else ONNX Runtime
(:mod:`medseg.deploy.runtime`), never the training stack.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medseg.utils import atomic_path, atomic_write_text

INT8_FILE = "model.int8.onnx"
INT8_KIND = "onnx-int8"
QUANTISED_OPS = ("Conv", "ConvTranspose")  # the compute; norms and activations stay float


def _require_ort() -> Any:
    try:
        import onnxruntime.quantization as q
    except ImportError as err:
        raise RuntimeError("int8 quantisation needs onnx and onnxruntime: pip install 'medseg[deploy]'") from err
    return q


def check_request(quantize: str | None, calibration: str | Path | None, fmt: str | None, precision: str) -> None:
    """Reject a quantisation request that cannot work, before any compute (names the fix)."""
    if quantize is None:
        if calibration is not None:
            raise ValueError(f"--calibration {calibration} without --quantize: add --quantize int8, or drop --calibration")
        return
    if quantize != "int8":
        raise ValueError(f"--quantize {quantize}: expected int8")
    if calibration is None:
        raise ValueError(
            "--quantize int8 needs calibration data to measure activation ranges: add --calibration MANIFEST "
            "(the training manifest, or any manifest of the model's kind of images)"
        )
    if not Path(calibration).is_file():
        raise ValueError(f"--calibration {calibration}: no such manifest file; pass a dataset.json or CSV manifest")
    if fmt not in (None, "onnx"):
        raise ValueError(f"--quantize int8 with --format {fmt}: int8 exports are ONNX only; drop --format or use onnx")
    if precision != "fp32":
        raise ValueError(f"--quantize int8 with --precision {precision}: choose one of them")


class _Windows:
    """An ONNX Runtime calibration reader over (N, C, *patch) windows, ``batch`` at a time."""

    def __init__(self, windows: np.ndarray, batch: int = 1) -> None:
        self.batches = [windows[i : i + batch] for i in range(0, len(windows), batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {"image": self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def quantize_onnx(fp32: Path, int8: Path, windows: np.ndarray) -> None:
    """Write the static int8 (QDQ, per-channel weights) version of ``fp32`` calibrated on ``windows``."""
    q = _require_ort()
    reader = _Windows(windows)
    quiet = logging.getLogger()  # the quantiser logs "consider pre-processing" notes at WARNING
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with atomic_path(int8) as tmp:
            q.quantize_static(
                str(fp32), str(tmp), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTISED_OPS),
                extra_options={"ActivationSymmetric": True},
            )
    finally:
        quiet.setLevel(level)


def int8_ops(path: Path) -> dict[str, int]:
    """Operator counts of the quantised graph: QuantizeLinear/DequantizeLinear pairs and the float ops left."""
    import onnx

    model = onnx.load(str(path))
    return dict(Counter(node.op_type for node in model.graph.node))


def export_int8(model: Path | str, output: Path | str, calibration: Path | str, cases: int = 8, per_case: int = 4) -> dict[str, Any]:
    """Export ``model`` (run directory or checkpoint) as an int8 ONNX folder; returns its metadata."""
    from medseg.deploy.calibration import calibration_windows
    from medseg.inference.export import METADATA, export_model
    from medseg.models.checkpoint import best_checkpoint, load_network

    check_request("int8", calibration, "onnx", "fp32")
    if cases < 1:
        raise ValueError(f"--calibration-cases {cases}: expected an integer >= 1, e.g. 8")
    _require_ort()
    _, cfg, plan = load_network(best_checkpoint(model), "cpu")
    windows = calibration_windows(calibration, cfg, plan, cases, per_case)  # fails early on a wrong manifest
    output = Path(output)
    meta = export_model(model, output, ("onnx",))
    fp32 = output / meta["files"]["onnx"]
    quantize_onnx(fp32, output / INT8_FILE, windows)
    fp32_bytes = fp32.stat().st_size
    fp32.unlink()
    meta["files"] = {INT8_KIND: INT8_FILE}
    meta["precision"] = "int8"
    meta["quantization"] = {
        "quantiser": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per output channel", "activations": "int8 symmetric",
        "calibration": str(Path(calibration).resolve()), "calibration_windows": len(windows),
        "method": "MinMax", "fp32_bytes": fp32_bytes, "int8_bytes": (output / INT8_FILE).stat().st_size,
        "ops": int8_ops(output / INT8_FILE),
    }
    meta["input"] = "float32 (B, in_channels, *patch_size) window; quantised inside the graph"
    atomic_write_text(output / METADATA, json.dumps(meta, indent=2))
    return meta
