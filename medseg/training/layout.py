"""Choose the tensor memory layout for training (``trainer.memory_format: auto``).

oneDNN's CPU convolutions can be much faster on channels-last tensors (N, *spatial, C in
memory) than in PyTorch's default channels-first layout, above all in the backward pass,
but not for every network: on a 2-core AMD EPYC a training step of the hippocampus
DynUNet (8-128 channels, 40x56x40, batch 2) took 308 ms channels-last against 396 ms, the
attention U-Net gained 1.10x, and the demo's MONAI UNet (16-128, 64x64x48) *lost* (106 ms
against 95 ms). So ``auto`` on a CPU times a few training steps of the actual network on a
batch of the configured shape in both layouts (a copy of the network, so nothing is
trained) and keeps the faster; on a GPU it keeps PyTorch's default. ``channels_last`` /
``contiguous`` force a layout. Results are the same up to rounding either way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from medseg.hardware import channels_last_format

Timer = Callable[[torch.nn.Module, torch.Tensor, "torch.memory_format | None"], float]


def step_seconds(net: torch.nn.Module, example: torch.Tensor, memory_format: torch.memory_format | None) -> float:
    """Wall time of one forward + backward pass of ``net`` on ``example`` in ``memory_format``."""
    x = example if memory_format is None else example.contiguous(memory_format=memory_format)
    start = time.perf_counter()
    net(x).mean().backward()  # every registered network returns one tensor (DynUNet stacks its heads)
    return time.perf_counter() - start


def choose_memory_format(
    requested: str, device_type: str, net: torch.nn.Module, example: torch.Tensor, repeats: int = 3,
    timer: Timer = step_seconds,
) -> tuple[torch.memory_format | None, str]:
    """(layout to train in, or None for PyTorch's default; a line saying why).

    ``example``: a CPU batch of the training shape (B, C, *spatial); timed only on a CPU.
    ``net`` itself is left untouched: the timing runs on a copy.
    """
    fmt = channels_last_format(example.ndim - 2)
    if requested == "channels_last":
        return fmt, "channels_last (requested)"
    if requested == "contiguous":
        return None, "contiguous (requested)"
    if requested != "auto":
        raise ValueError(f"trainer.memory_format: {requested!r}; expected auto, channels_last or contiguous")
    if device_type != "cpu":
        return None, f"contiguous (PyTorch's default on {device_type})"
    trial = {None: copy.deepcopy(net).train(), fmt: copy.deepcopy(net).train().to(memory_format=fmt)}  # type: ignore[call-overload]
    best: dict[torch.memory_format | None, float] = {}
    for i in range(repeats + 1):  # the first round warms oneDNN's caches up and is not counted
        for layout, model in trial.items():
            seconds = timer(model, example, layout)
            model.zero_grad(set_to_none=True)
            if i:
                best[layout] = min(best.get(layout, seconds), seconds)
    choice = fmt if best[fmt] < best[None] else None
    name = "channels_last" if choice is not None else "contiguous"
    return choice, f"{name} (a training step: {best[fmt] * 1000:.0f} ms channels-last, {best[None] * 1000:.0f} ms contiguous)"
