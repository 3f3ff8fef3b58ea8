"""fp16 exports: half-precision weights in the file, float32 in and out, close to the fp32 logits."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch

from medseg.cli import main
from medseg.deploy.half import HalfPrecision, half_precision
from medseg.inference.export import METADATA, load_exported
from medseg.models.checkpoint import load_network


def test_fp16_export_stores_half_weights(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = phantom_run
    out = tmp_path / "e16"
    assert main(["export", "--model", str(run), "--output", str(out), "--format", "both", "--precision", "fp16"]) == 0
    assert json.loads((out / METADATA).read_text(encoding="utf-8"))["precision"] == "fp16"
    net, _, _ = load_exported(out, "torchscript")
    assert {p.dtype for p in net.parameters()} == {torch.float16}
    model = onnx.load(str(out / "model.onnx"))
    conv_weights = [i for i in model.graph.initializer if i.dims and len(i.dims) == 5]
    assert conv_weights and {i.data_type for i in conv_weights} == {onnx.TensorProto.FLOAT16}
    ref, _, _ = load_network(run / "checkpoints" / "best.ckpt")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        y = net(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, ref(x), atol=0.05, rtol=0.05)


def test_half_precision_wrapper() -> None:
    net = torch.nn.Conv3d(1, 2, 3)
    assert half_precision(net, "fp32") is net
    wrapped = half_precision(torch.nn.Conv3d(1, 2, 3), "fp16")
    assert isinstance(wrapped, HalfPrecision) and next(wrapped.parameters()).dtype == torch.float16
    try:
        half_precision(net, "fp8")
    except ValueError as err:
        assert "expected one of ['fp32', 'fp16']" in str(err)
    else:
        raise AssertionError("fp8 accepted")


def test_predict_in_bf16_gives_the_fp32_masks(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``medseg predict --precision bf16`` (autocast on this CPU): Dice >= 0.98 against the fp32
    masks per structure, and the batch's predict_config.json says which precision ran."""
    import nibabel as nib
    import numpy as np

    run, manifest = phantom_run
    images = manifest.parent / "imagesTs"
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / precision
        assert main(["predict", "--model", str(run), "--input", str(images), "--output", str(outs[precision]),
                     "--device", "cpu", "--precision", precision]) == 0
        described = json.loads((outs[precision] / "predict_config.json").read_text(encoding="utf-8"))
        assert [m["precision"] for m in described["inference"]] == [precision]
    masks = sorted(p.name for p in outs["fp32"].glob("*.nii.gz"))
    assert masks
    for name in masks:
        a, b = (np.asarray(nib.load(str(outs[p] / name)).dataobj) for p in ("fp32", "bf16"))
        labels = [int(v) for v in np.unique(a) if v > 0]
        assert labels
        for label in labels:
            x, y = a == label, b == label
            assert 2 * (x & y).sum() / (x.sum() + y.sum()) >= 0.98, (name, label)
