"""Fine-tuning start (``init_from: RUN_DIR|CKPT``): weights from another run, matched by name.

Every tensor of the network whose name and shape fit is loaded. Where the two networks
differ in a way fine-tuning expects, the tensor is made to fit rather than dropped:

* the output head (every tensor whose shape depends on the number of output channels: the
  final convolution, deep-supervision heads) is re-initialised when the class count differs,
  and always when the source is a ``medseg pretrain`` run (its head restores images);
* the first convolution, when the input channel count differs, is adapted: each new input
  channel gets the sum of the source's channel weights divided by the new channel count, so
  that an image repeated on every channel gives the source's response.

Which tensors are "the head" and "the first convolution" is found by building the
architecture a second time with one more output (or input) channel on the meta device and
comparing shapes, which holds for every network family without naming its layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medseg.config import ModelConfig
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.checkpoint import best_checkpoint, in_channels, read_checkpoint
from medseg.models.registry import build_network


def _shapes(model: ModelConfig, in_channels: int, out_channels: int) -> dict[str, torch.Size]:
    with torch.device("meta"):
        net = build_network(model, in_channels, out_channels)
    return {k: v.shape for k, v in net.state_dict().items()}


def _varying_dim(a: torch.Size, b: torch.Size) -> int | None:
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y] if len(a) == len(b) else []
    return diff[0] if len(diff) == 1 else None


def layer_roles(model: ModelConfig, in_channels: int, out_channels: int) -> tuple[dict[str, int], set[str]]:
    """(input tensors -> their input-channel axis, output-head tensor names) of a network."""
    base = _shapes(model, in_channels, out_channels)
    more_in = _shapes(model, in_channels + 1, out_channels)
    more_out = _shapes(model, in_channels, out_channels + 1)
    inputs = {k: d for k in base if (d := _varying_dim(base[k], more_in[k])) is not None}
    heads = {k for k in base if base[k] != more_out[k]}
    return inputs, heads


def resolve_source(path: str | Path) -> Path:
    """A checkpoint file, or the best checkpoint of a run directory (``medseg train`` or
    ``medseg pretrain``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"init_from: {p} does not exist; give a run directory or a .ckpt file")
    return best_checkpoint(p)


def _plan_differences(source_hp: dict[str, Any], plan: PreprocessingPlan) -> list[str]:
    src = source_hp.get("plan") or {}
    notes = []
    for key in ("target_spacing", "normalization"):
        if key in src and src[key] != getattr(plan, key):
            notes.append(f"{key}: source {src[key]} vs this run {getattr(plan, key)}")
    # channel counts, not names: a folder of images has none
    if "channel_names" in src and len(src["channel_names"]) != len(plan.channel_names):
        notes.append(f"input channels: source {len(src['channel_names'])} vs this run {len(plan.channel_names)}")
    return notes


def init_weights_from(module: Any, path: str | Path) -> dict[str, Any]:
    """Copy weights from ``path`` into ``module.net`` (and its mean teacher); return the report.

    Report keys: ``source``, ``loaded``, ``adapted`` (first convolution, other channel count),
    ``reinitialised`` (output head), ``skipped`` (``name: source shape -> shape``: the
    architectures differ there), ``missing`` (not in the source), ``unused`` (source tensors
    with no counterpart) and ``plan_differences`` (preprocessing that differs from the
    source's, which weakens what the weights transfer).
    """
    ckpt_path = resolve_source(path)
    ckpt = read_checkpoint(ckpt_path)
    state = ckpt.get("state_dict", ckpt)
    source = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")} or dict(state)
    hp = ckpt.get("hyper_parameters") or {}
    from_pretraining = hp.get("task") == "pretrain"
    cfg, plan = module.cfg, module.plan
    n_in = in_channels(cfg, plan)
    inputs, heads = layer_roles(cfg.model, n_in, plan.num_classes)
    target = module.net.state_dict()
    report: dict[str, Any] = {"source": str(ckpt_path), "loaded": [], "adapted": [], "reinitialised": [],
                              "skipped": [], "missing": [], "unused": sorted(k for k in source if k not in target),
                              "plan_differences": _plan_differences(hp, plan)}
    with torch.no_grad():
        for name, tensor in target.items():
            src = source.get(name)
            if src is None:
                report["missing"].append(name)
            elif name in heads and (from_pretraining or src.shape != tensor.shape):
                report["reinitialised"].append(name)
            elif src.shape == tensor.shape:
                tensor.copy_(src)
                report["loaded"].append(name)
            elif name in inputs and _varying_dim(src.shape, tensor.shape) == inputs[name]:
                axis = inputs[name]
                tensor.copy_((src.sum(axis, keepdim=True) / tensor.shape[axis]).expand_as(tensor))
                report["adapted"].append(name)
            else:
                report["skipped"].append(f"{name}: {tuple(src.shape)} -> {tuple(tensor.shape)}")
    module.net.load_state_dict(target)
    module.loaded_from_init = loaded_names(report)
    if getattr(module, "teacher", None) is not None:
        module.teacher.load_state_dict(module.net.state_dict())
    return report


def loaded_names(report: dict[str, Any]) -> frozenset[str]:
    """The tensors of ``net`` that a report's source provided (loaded or adapted)."""
    return frozenset(report["loaded"] + report["adapted"])


def summary_line(report: dict[str, Any]) -> str:
    """One line for the log; the details are in ``init_from_report.json``."""
    line = (f"init_from {report['source']}: {len(report['loaded'])} tensors loaded, {len(report['adapted'])} adapted "
            f"(input channels), {len(report['reinitialised'])} re-initialised (output head), "
            f"{len(report['skipped'])} skipped, {len(report['missing'])} not in the source")
    if report["plan_differences"]:
        line += "; preprocessing differs from the source's: " + "; ".join(report["plan_differences"])
    return line

