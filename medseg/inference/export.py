"""Deployment export: a checkpoint's network as TorchScript and/or ONNX, plus its metadata.

``OUTPUT/model.ts`` (TorchScript, traced) and/or ``OUTPUT/model.onnx`` (opset 17, batch
and spatial axes dynamic) map a (B, C, *patch) float32 window to (B, K, *patch) logits.
``OUTPUT/medseg_export.json`` holds everything else needed to use them exactly as the
checkpoint is used: the preprocessing plan (target spacing mm, normalisation, channel
names, label names), the resolved pipeline config, and for convenience the patch size,
overlap, window batch, blending, spatial_dims, slice axis and slab size, input channels
and class count. :func:`load_exported` turns an export folder back into a network that
:class:`medseg.inference.predictor.Predictor` runs through the same sliding window, so
``medseg predict --model EXPORT_DIR`` works too.

The network is traced at the patch size: sliding-window inference only ever feeds it
windows of that size (smaller images are padded), so tracing is exact for its use.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import PipelineConfig, from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.utils import atomic_path, atomic_write_text

METADATA = "medseg_export.json"
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
FORMAT_VERSION = 1


def is_export_dir(path: Path | str) -> bool:
    return (Path(path) / METADATA).is_file()


def _example_input(cfg: PipelineConfig, in_channels: int) -> torch.Tensor:
    return torch.zeros((1, in_channels, *cfg.data.patch_size), dtype=torch.float32)


class _LogitsOnly(torch.nn.Module):
    """The full-resolution logits of a network that may return deep-supervision heads."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return out


def export_model(
    model: Path | str, output: Path | str, formats: tuple[str, ...] = ("torchscript",), precision: str = "fp32"
) -> dict[str, Any]:
    """Export a checkpoint (or the best one of a run directory) into ``output``.

    ``formats``: any of ``torchscript``, ``onnx``. ``precision``: fp32, or fp16 (half weights
    and arithmetic for GPUs; the file still takes and returns float32, see
    :class:`medseg.deploy.half.HalfPrecision`). Returns the metadata written to
    ``medseg_export.json``. Files are written atomically.
    """
    from medseg.models.checkpoint import best_checkpoint, in_channels, load_network

    unknown = [f for f in formats if f not in FILES]
    if unknown or not formats:
        raise ValueError(f"export formats {list(formats)}: expected one or more of {list(FILES)}")
    ckpt = best_checkpoint(model)
    net, cfg, plan = load_network(ckpt, "cpu")
    wrapped: torch.nn.Module = _LogitsOnly(net).eval()
    if precision != "fp32":
        from medseg.deploy.half import half_precision

        wrapped = half_precision(wrapped, precision)
    channels = in_channels(cfg, plan)
    example = _example_input(cfg, channels)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        reference = wrapped(example)  # the network runs at its patch size
        if "torchscript" in formats:
            # TorchScript is deprecated from torch 2.10 on but still the format most C++/Triton
            # deployments load; ONNX is the longer-lived alternative (--format onnx).
            with warnings.catch_warnings(), atomic_path(output / FILES["torchscript"]) as tmp:
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(wrapped, example, check_trace=False)
                torch.jit.save(traced, str(tmp))
        if "onnx" in formats:
            _export_onnx(wrapped, example, output / FILES["onnx"], cfg.model.spatial_dims)
    meta = {
        "format_version": FORMAT_VERSION,
        "source_checkpoint": str(Path(ckpt).resolve()),
        "files": {f: FILES[f] for f in formats},
        "input": "float32 (B, in_channels, *patch_size) window of the preprocessed image",
        "output": "float32 (B, num_classes, *patch_size) logits; softmax over dim 1",
        "in_channels": channels,
        "num_classes": plan.num_classes,
        "labels": plan.labels,
        "channel_names": plan.channel_names,
        "spatial_dims": cfg.model.spatial_dims,
        "patch_size": cfg.data.patch_size,
        "slice_axis": cfg.data.slice_axis,
        "slab_slices": cfg.data.slab_slices,
        "target_spacing_mm": plan.target_spacing,
        "overlap": cfg.inference.overlap,
        "sw_batch_size": cfg.inference.sw_batch_size,
        "blend": cfg.inference.blend,
        "plan": asdict(plan),
        "config": cfg.to_dict(),
        "precision": precision,
        "torch_version": torch.__version__,
        "example_logits_shape": list(reference.shape),
    }
    atomic_write_text(output / METADATA, json.dumps(meta, indent=2))
    from medseg.data.label_stats import FILE_NAME as LABEL_STATS
    from medseg.data.label_stats import find_files

    stats = find_files(Path(ckpt))  # the training label statistics travel along (predict's QA flags)
    if stats:
        atomic_write_text(output / LABEL_STATS, stats[0].read_text(encoding="utf-8"))
    return meta


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path, spatial_dims: int) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail with a clear message)
    except ImportError as err:
        raise RuntimeError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from err
    axes = {0: "batch", **{2 + i: f"spatial{i}" for i in range(spatial_dims)}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and instance-norm notes
        # The TorchScript-based exporter (dynamo=False) needs no onnxscript and handles MONAI nets.
        torch.onnx.export(
            net, (example,), str(tmp), dynamo=False, opset_version=17, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
        )


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` interface the sliding window uses (CPU)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeError("running an ONNX export needs 'onnxruntime': pip install onnxruntime") from err
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # device probe for the window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"], {"image": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(np.asarray(out[0])).to(x.device)


def load_exported(
    folder: Path | str, kind: str = "auto", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, PipelineConfig, PreprocessingPlan]:
    """Load an export folder: (network, config, plan). ``kind``: auto (TorchScript first), torchscript, onnx, onnx-int8."""
    folder = Path(folder)
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no {METADATA}; pass a folder written by 'medseg export'")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    files: dict[str, str] = meta.get("files", {})
    if kind == "auto":
        kind = "torchscript" if "torchscript" in files else next(iter(files), "onnx")
    if kind not in files:
        raise FileNotFoundError(f"{folder}: export holds {sorted(files)}, not {kind}; re-export with --format {kind}")
    cfg, plan = from_dict(meta["config"]), PreprocessingPlan(**meta["plan"])
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            net: torch.nn.Module = torch.jit.load(str(folder / files[kind]), map_location=device)
    elif kind == "onnx-int8":
        from medseg.deploy.runtime import int8_network

        net = int8_network(folder / files[kind])  # OpenVINO where installed, else ONNX Runtime
    else:
        net = OnnxNetwork(folder / files[kind])
    return net.eval(), cfg, plan
