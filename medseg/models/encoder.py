"""Which of a U-Net's tensors form its encoder, found by running it rather than by layer names.

A forward pass of the architecture on the meta device (no memory, no compute) records the
order in which its modules start and the shape of what each receives and returns.
Everything that starts before the first module whose output is spatially larger than its
input (an up-sampling block: a transposed convolution, an interpolation, a pixel shuffle) or
the first leaf whose output has fewer channels (the expanding path narrows: a stride-1 "up-sampling" of a last level that keeps
the size, a 1x1 reduction before an interpolation, an attention gate) is the encoder: the
contracting path and the bottleneck, whose channels never shrink. The expanding path, its
attention gates and skip merges, and every output head come after. This holds for each network family of
:mod:`medseg.models.registry` without naming their layers (MONAI's ``UNet`` nests its
levels in ``SkipConnection`` modules, ``DynUNet`` lists them, ``SegResNet`` up-samples by
interpolation).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from medseg.config import ModelConfig, network_divisor
from medseg.models.registry import build_network


def _shape(x: object) -> tuple[int, int] | None:
    """(channels, spatial voxels) of a module's (first) tensor input or output."""
    if isinstance(x, tuple | list):
        x = next((t for t in x if isinstance(t, torch.Tensor)), None)
    return (int(x.shape[1]), math.prod(x.shape[2:])) if isinstance(x, torch.Tensor) and x.ndim > 2 else None


def encoder_tensor_names(model: ModelConfig, in_channels: int, out_channels: int) -> frozenset[str]:
    """Names (as in the network's ``state_dict``) of the encoder's parameters and buffers."""
    with torch.device("meta"):
        net = build_network(model, in_channels, out_channels).eval()
    names = {m: name for name, m in net.named_modules() if m is not net}
    leaves = {m for m in names if not list(m.children())}
    started: dict[nn.Module, int] = {}  # module -> when its forward began (pre-order)
    decoder_starts: list[int] = []

    def begin(module: nn.Module, inputs: tuple[object, ...]) -> None:
        started.setdefault(module, len(started))

    def end(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        before, after = _shape(inputs), _shape(output)
        if before is None or after is None:
            return
        # an up-sampling block (whatever it contains), or a leaf that narrows the channels
        if after[1] > before[1] or (module in leaves and after[0] < before[0]):
            decoder_starts.append(started[module])

    hooks = [h for m in names for h in (m.register_forward_pre_hook(begin), m.register_forward_hook(end))]
    try:
        size = 2 * network_divisor(model)
        with torch.no_grad():
            net(torch.empty((1, in_channels, *([size] * model.spatial_dims)), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    if not decoder_starts:
        raise ValueError(f"model {model.name!r}: no up-sampling or narrowing layer found; it has no decoder to warm up")
    first = min(decoder_starts)
    out: set[str] = set()
    for m in leaves:
        if started.get(m, first) < first:  # leaves that never ran are not the encoder
            prefix = names[m]
            out.update(f"{prefix}.{n}" for n, _ in m.named_parameters(recurse=False))
            out.update(f"{prefix}.{n}" for n, _ in m.named_buffers(recurse=False))
    return frozenset(out)
