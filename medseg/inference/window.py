"""Sliding-window prediction of class probabilities on the network's grid, 3D or 2D.

Used by validation during training and by the :mod:`medseg.inference.predictor`. Windows
are blended with Gaussian weights (MONAI ``sliding_window_inference``); mirroring TTA
averages softmax probabilities over every combination of flips of the axes mirrored in
training (``data.mirror_axes``, nnU-Net's rule). A 2D network predicts a
3D volume slice by slice along ``slice_axis`` (with ``slab_slices`` neighbouring slices
as channels for 2.5D) and the slices are stacked back in place.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medseg.config import PipelineConfig, patch_mirror_axes
from medseg.hardware import channels_last_format, inference_autocast_dtype


def _logits_only(net: torch.nn.Module, autocast: torch.dtype | None = None,
                 layout: torch.memory_format | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network's full-resolution output; with ``autocast`` (bf16/fp16) its forward pass
    runs in that dtype on the input's device and the output comes back as float32, so the
    blending, softmax and argmax stay fp32 (:func:`network_autocast`); with ``layout`` the
    input is given that memory format (:func:`network_layout` has converted the weights)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        if autocast is None:
            out = net(x)
        else:
            with torch.autocast(device_type=x.device.type, dtype=autocast):
                out = net(x)
        if isinstance(out, list | tuple):  # deep supervision heads: the first is full resolution
            out = out[0]
        elif out.ndim == x.ndim + 1:  # DynUNet stacks heads on dim 1 in training mode
            out = out[:, 0]
        if layout is not None:  # the blending adds windows into contiguous sums: strided adds are slower
            out = out.contiguous()
        return out if autocast is None else out.float()

    return run


_LAYOUTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, torch.memory_format | None]] = weakref.WeakKeyDictionary()
"""Per network: the ``memory_format`` setting it was prepared for and the layout its weights
were converted to (None: PyTorch's default)."""


def _forward_seconds(net: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None,
                     layout: torch.memory_format | None) -> float:
    """Seconds of one window batch through ``net`` as the windows run it in ``layout``
    (:func:`_logits_only`: the input and output conversions included)."""
    run = _logits_only(net, autocast, layout)
    with torch.no_grad():
        start = time.perf_counter()
        run(x)
        return time.perf_counter() - start


_MANAGED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
"""Networks whose layout inference may choose and change (a :class:`Predictor`'s); others,
such as a network being trained and validated, are run as they are."""


def manage_layout(net: torch.nn.Module) -> None:
    """Let inference choose ``net``'s memory format (``inference.memory_format``)."""
    _MANAGED.add(net)


def layout_managed(net: torch.nn.Module) -> bool:
    return net in _MANAGED


def network_layout(net: torch.nn.Module, cfg: PipelineConfig, example: Sequence[int]) -> torch.memory_format | None:
    """The memory format ``net`` runs in for ``inference.memory_format`` (None: as it is),
    its weights converted to it; only for networks given to :func:`manage_layout` (a
    network in training keeps the layout ``trainer.memory_format`` chose). ``auto``, once
    per network: on a CPU, a forward pass of zeros of shape ``example`` (a window batch)
    timed in both layouts (a warm-up, then the best of two each, with the configured
    precision), the faster kept; elsewhere PyTorch's default (as ``trainer.memory_format``,
    :mod:`medseg.training.layout`)."""
    requested = cfg.inference.memory_format
    if requested not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"inference.memory_format {requested!r}: expected auto, channels_last or contiguous")
    if net not in _MANAGED:
        return None
    prepared = _LAYOUTS.get(net)
    if prepared is not None and prepared[0] == requested:
        return prepared[1]
    fmt = channels_last_format(len(example) - 2)
    params = list(net.parameters())
    choice: torch.memory_format | None = fmt if requested == "channels_last" else None
    if requested == "auto" and params and params[0].device.type == "cpu" and len(example) in (4, 5):
        autocast = network_autocast(net, cfg)
        x = torch.zeros(tuple(example), device=params[0].device)
        best: dict[torch.memory_format | None, float] = {}
        for i in range(3):
            for layout in (None, fmt):
                net.to(memory_format=layout or torch.contiguous_format)  # type: ignore[call-overload]
                seconds = _forward_seconds(net, x, autocast, layout)
                if i:
                    best[layout] = min(best.get(layout, seconds), seconds)
        choice = fmt if best[fmt] < best[None] else None
    if params:
        net.to(memory_format=choice or torch.contiguous_format)  # type: ignore[call-overload]
    _LAYOUTS[net] = (requested, choice)
    return choice


def network_runner(net: torch.nn.Module, cfg: PipelineConfig, example: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`_logits_only` with ``cfg``'s precision and memory format (``example``: the shape
    of a window batch, for ``memory_format: auto``)."""
    layout = network_layout(net, cfg, example)
    return _logits_only(net, network_autocast(net, cfg), layout)


def network_autocast(net: torch.nn.Module, cfg: PipelineConfig) -> torch.dtype | None:
    """The autocast dtype of ``net``'s forward passes: ``inference.precision`` resolved for the
    device its parameters are on (:func:`medseg.hardware.inference_autocast_dtype`)."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    return inference_autocast_dtype(cfg.inference.precision, device)


def flips_for(cfg: PipelineConfig, tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes (0-based) of every mirrored pass: every combination of the axes mirrored
    in training with TTA, ``[()]`` without."""
    if not tta:
        return [()]
    axes = list(patch_mirror_axes(cfg))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _window_probs(
    net: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...], cfg: PipelineConfig, tta: bool
) -> torch.Tensor:
    """Softmax probabilities (B, K, *spatial) for a batch (B, C, *spatial)."""
    inf = cfg.inference
    run = network_runner(net, cfg, (inf.sw_batch_size, x.shape[1], *roi))
    flips = [tuple(2 + a for a in f) for f in flips_for(cfg, tta)]  # (B, C, *spatial) dims

    def probs_for(flip: tuple[int, ...]) -> torch.Tensor:
        xi = torch.flip(x, flip) if flip else x
        logits = sliding_window_inference(
            xi, roi, inf.sw_batch_size, run, overlap=inf.overlap, mode=inf.blend, padding_mode="constant"
        )
        probs = F.softmax(torch.as_tensor(logits).float(), dim=1)
        return torch.flip(probs, flip) if flip else probs

    total = probs_for(flips[0])  # on the device the windows ran on
    for flip in flips[1:]:
        total = total + probs_for(flip)
    return total / len(flips) if len(flips) > 1 else total


@torch.no_grad()
def predict_probabilities(
    net: torch.nn.Module, image: torch.Tensor, cfg: PipelineConfig, tta: bool = False, slice_batch: int = 16
) -> torch.Tensor:
    """Class probabilities (K, X, Y, Z) for a preprocessed image (C, X, Y, Z).

    The image is moved to the network's device for the windows; the probabilities are
    returned on the image's own device: in validation, where Lightning has put image and
    label on the GPU, they stay there for the comparison with the label; a prediction from
    a CPU image gets them on the CPU, where they become a numpy array. (The 2D path moves
    each batch of slices as it is done, so a CPU volume never lies whole on the GPU.)
    """
    device = next(net.parameters()).device
    roi = tuple(cfg.data.patch_size)
    if cfg.model.spatial_dims == 3:
        x = image[None].to(device)
        return _window_probs(net, x, roi, cfg, tta)[0].to(image.device)
    axis, slab = cfg.data.slice_axis, cfg.data.slab_slices
    vol = torch.movedim(image, 1 + axis, 1)  # (C, S, H, W)
    half = slab // 2
    padded = F.pad(vol, (0, 0, 0, 0, half, half)) if half else vol
    outs = []
    for start in range(0, vol.shape[1], slice_batch):
        stop = min(start + slice_batch, vol.shape[1])
        # (B, C*slab, H, W): slab neighbours of each slice become channels
        xs = torch.stack([padded[:, s : s + slab].reshape(-1, *vol.shape[2:]) for s in range(start, stop)])
        outs.append(_window_probs(net, xs.to(device), roi, cfg, tta).to(image.device))
    probs = torch.cat(outs, dim=0)  # (S, K, H, W)
    return torch.movedim(probs.permute(1, 0, 2, 3), 1, 1 + axis)
