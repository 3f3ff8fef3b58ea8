"""A trained network and how to run it: checkpoint or run directory -> (network, config, plan).

The one loader for prediction, export and fine-tuning. It needs torch, MONAI and the
pipeline config, never Lightning or anything in ``medseg.training``: a deployment that
predicts from a checkpoint does not install or import the training stack (a medseg checkpoint
stores its resolved pipeline config and preprocessing plan as plain dicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medseg.config import PipelineConfig, from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.models.compat import network_for_state


def in_channels(cfg: PipelineConfig, plan: PreprocessingPlan) -> int:
    """The network's input channels: image channels x slab slices (2.5D) for 2D networks."""
    slab = cfg.data.slab_slices if cfg.model.spatial_dims == 2 else 1
    return len(plan.channel_names) * slab


def best_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best one in a run directory (falling back to last.ckpt)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path}: no checkpoints/best.ckpt or last.ckpt; pass a run directory or a .ckpt file")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents on the CPU (a medseg or Lightning checkpoint: plain dicts and tensors)."""
    # weights_only=False: Lightning writes loop and optimiser state that the safe loader
    # refuses; these are the user's own files.
    return torch.load(str(path), map_location="cpu", weights_only=False)  # type: ignore[no-any-return]


def load_network(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, PipelineConfig, PreprocessingPlan]:
    """Rebuild the network from a medseg checkpoint: (net in eval mode, config, plan)."""
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters")
    if not hp or "config" not in hp or "plan" not in hp:
        raise ValueError(f"{ckpt_path}: not a medseg checkpoint (no config/plan in hyper_parameters)")
    if hp.get("task") == "pretrain":
        raise ValueError(
            f"{ckpt_path}: a `medseg pretrain` run restores images and does not segment; fine-tune it first with "
            f"`medseg train PIPELINE --set init_from={Path(ckpt_path).parent.parent}` and predict with that run"
        )
    cfg = from_dict(dict(hp["config"]))
    plan = PreprocessingPlan(**dict(hp["plan"]))
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net, _ = network_for_state(cfg.model, in_channels(cfg, plan), plan.num_classes, state)  # (older layouts too)
    net.load_state_dict(state)
    return net.to(device).eval(), cfg, plan
