"""Structured channel pruning of a trained run into an ordinary, smaller run directory.

Route: the pruned network is an ordinary network of the same family with narrower levels.
Every level's width ``c`` in ``model.channels`` becomes ``max(1, round(c * ratio))``;
torch-pruning's dependency graph finds the coupled channel groups (a convolution, its norm,
activation, the residual and skip-connection concatenations that consume it) and removes, in
each group, the channels of least L1 weight norm (``GroupMagnitudeImportance(p=1)``), so the
kept filters carry their trained weights. The output head (found as the tensors whose shape
follows the class count) keeps its classes. The pruned state dict is then loaded into a
network freshly built from the config with the new ``model.channels`` (the shapes must match
exactly, or the family is refused), so the checkpoint stores only a config and a state
dict: ``medseg predict``, ``export`` and ``export --quantize`` rebuild it unchanged and no
torch-pruning is needed to use a pruned run. Storing torch-pruning's modified module graph
instead would tie every later load to that library and to pickled modules.

Fine-tuning runs the normal training loop (:func:`medseg.training.run.train`) on the pruned
config with ``init_from`` = the pruned weights and ``trainer.max_time_minutes`` = the budget.
It is not optional in practice: in an instance-normalised network a filter's norm says little
about its channel's role, and the hippocampus DynUNet pruned at R = 0.5 predicts no foreground
until fine-tuned (benchmarks/RESULTS.md, "Deployment").
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medseg.config import PipelineConfig, from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.deploy.traceable import TraceEntry, traceable
from medseg.models.checkpoint import best_checkpoint, in_channels, load_network
from medseg.models.registry import build_network
from medseg.models.upsample import upsample_mode
from medseg.utils import atomic_path, atomic_write_text

INIT_FILE = "pruned_init.ckpt"
# Families whose pruned network model.channels rebuilds (checked on every prune; the tracing
# work-arounds are in medseg.deploy.traceable). AttentionUnet's attention gates and SegResNet's
# widths (not model.channels alone) are not supported.
PRUNABLE = ("unet", "residual_unet", "dynunet")
REPORT = "prune_report.json"


def check_ratio(ratio: float) -> None:
    """``ratio`` is the fraction of channels kept: strictly between 0 and 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--ratio {ratio}: expected the fraction of channels to keep, strictly between 0 and 1, e.g. 0.5")


def pruned_widths(channels: list[int], ratio: float) -> list[int]:
    """The per-level widths that keep ``ratio`` of each level's channels (at least one)."""
    check_ratio(ratio)
    return [max(1, round(c * ratio)) for c in channels]


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def pruned_config(cfg: PipelineConfig, ratio: float) -> PipelineConfig:
    """``cfg`` with ``model.channels`` narrowed by ``ratio`` (validated like any pipeline)."""
    raw = cfg.to_dict()
    raw["model"]["channels"] = pruned_widths(list(cfg.model.channels), ratio)
    return from_dict(raw)


def prune_network(net: torch.nn.Module, cfg: PipelineConfig, plan: PreprocessingPlan, ratio: float) -> tuple[torch.nn.Module, PipelineConfig]:
    """(a fresh network of the pruned config holding the kept filters, that config)."""
    import torch_pruning as tp

    from medseg.training.init_from import layer_roles

    if cfg.model.name not in PRUNABLE:
        raise ValueError(
            f"model.name {cfg.model.name}: medseg prune supports {list(PRUNABLE)}; distil this run into a smaller "
            "network instead, or train a narrower model.channels"
        )
    if upsample_mode(cfg.model) == "pixelshuffle":  # torch-pruning mis-sizes the sub-pixel shuffle's groups
        raise ValueError(
            f"model.upsample {cfg.model.upsample}: medseg prune supports deconv and interp up-sampling; distil this "
            "run into a narrower network instead"
        )
    n_in, n_out = in_channels(cfg, plan), plan.num_classes
    target_cfg = pruned_config(cfg, ratio)
    _, heads = layer_roles(cfg.model, n_in, n_out)
    work = copy.deepcopy(net).cpu().eval()
    ignored = list({work.get_submodule(name.rsplit(".", 1)[0]) for name in heads})
    with traceable(work):
        entry = TraceEntry(work, n_in, cfg.model.spatial_dims)
        example = torch.randn(1, n_in, *cfg.data.patch_size)
        graph = tp.DependencyGraph().build_dependency(entry, example_inputs=example)
        ignored.append(entry.entry)
        importance = tp.importance.GroupMagnitudeImportance(p=1)
        # lazily: each group is traced after the previous ones were pruned (a concatenation's offsets change)
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(torch.nn.modules.conv._ConvNd,)):
            scores = importance(group)
            n = len(scores)
            drop = n - max(1, round(n * ratio))
            if drop > 0:
                dep = group[0].dep
                idxs = torch.argsort(scores)[:drop].tolist()
                graph.get_pruning_group(dep.target.module, dep.handler, idxs).prune()
    fresh = build_network(target_cfg.model, n_in, n_out)
    want = {k: v.shape for k, v in fresh.state_dict().items()}
    got = {k: v.shape for k, v in work.state_dict().items()}
    wrong = [f"{k}: pruned {tuple(got.get(k, ()))} vs rebuilt {tuple(s)}" for k, s in want.items() if got.get(k) != s]
    if wrong or set(got) != set(want):
        raise ValueError(  # a guard: PRUNABLE families pass it
            f"model.name {cfg.model.name}: pruning does not give the network that model.channels "
            f"{target_cfg.model.channels} builds ({'; '.join(wrong[:3]) or 'different tensors'}); prune one of "
            f"{list(PRUNABLE)} with model.upsample deconv or interp"
        )
    fresh.load_state_dict(work.state_dict())
    return fresh.eval(), target_cfg


def save_checkpoint(path: Path, net: torch.nn.Module, cfg: PipelineConfig, plan: PreprocessingPlan) -> None:
    """A medseg checkpoint (config, plan, ``net.*`` weights) that :func:`load_network` rebuilds."""
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"hyper_parameters": {"config": cfg.to_dict(), "plan": asdict(plan)}, "state_dict": state}, str(tmp))


def prune_run(model: Path | str, data: Path | str | None, output: Path | str, ratio: float,
              finetune_minutes: float = 10.0, finetune_lr: float | None = None) -> dict[str, Any]:
    """Prune the best network of ``model`` into the run directory ``output``; returns the report.

    ``finetune_minutes`` > 0 fine-tunes on ``data`` (a manifest) for that long, at learning rate
    ``finetune_lr`` (default: the run's ``optim.lr``: the pruned network has lost much of what it
    did and relearns at the from-scratch rate better than at a tenth of it, benchmarks/RESULTS.md,
    "Deployment"); 0 writes the
    pruned weights as they are (``checkpoints/best.ckpt``).
    """
    check_ratio(ratio)
    if finetune_lr is not None and not finetune_lr > 0:
        raise ValueError(f"--finetune-lr {finetune_lr}: expected a positive learning rate, e.g. 0.0003")
    if finetune_minutes < 0:
        raise ValueError(f"--finetune-minutes {finetune_minutes}: expected minutes >= 0 (0: no fine-tuning)")
    if finetune_minutes > 0 and (data is None or not Path(data).is_file()):
        raise ValueError(f"--data {data}: fine-tuning needs the training manifest file; pass --data MANIFEST")
    output = Path(output)
    if (output / "checkpoints").exists():
        raise FileExistsError(f"{output}: already holds a run; choose a new --output")
    source = best_checkpoint(model)
    net, cfg, plan = load_network(source, "cpu")
    pruned, cfg2 = prune_network(net, cfg, plan, ratio)
    report: dict[str, Any] = {
        "source": str(Path(source).resolve()), "ratio": ratio, "channels": list(cfg.model.channels),
        "pruned_channels": list(cfg2.model.channels), "parameters": count_parameters(net),
        "pruned_parameters": count_parameters(pruned), "importance": "L1 norm of each channel group (torch-pruning)",
        "finetune_minutes": finetune_minutes,
        "finetune_lr": (finetune_lr or cfg.optim.lr) if finetune_minutes > 0 else None,
    }
    output.mkdir(parents=True, exist_ok=True)
    if finetune_minutes == 0:
        from medseg.config import dump

        save_checkpoint(output / "checkpoints" / "best.ckpt", pruned, cfg2, plan)
        dump(cfg2, output / "config.yaml")
        plan.save(output / "preprocessing.json")
    else:
        from medseg.training.run import train

        save_checkpoint(output / INIT_FILE, pruned, cfg2, plan)
        raw = cfg2.to_dict()
        raw["init_from"] = str(output / INIT_FILE)
        raw["data"]["manifest"] = str(data)
        raw["trainer"]["max_time_minutes"] = finetune_minutes
        raw["optim"]["lr"] = report["finetune_lr"]
        result = train(from_dict(raw), output)
        report["finetuned_best_checkpoint"] = str(result.best_checkpoint)
        report["finetuned_best_score"] = result.best_val_dice
    atomic_write_text(output / REPORT, json.dumps(report, indent=2))
    return report
