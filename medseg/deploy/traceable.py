"""MONAI networks made traceable by torch-pruning's dependency graph, for the time of a prune.

torch-pruning traces one forward pass through autograd and maps every operation to the module
that ran it. Four things in MONAI's networks defeat that mapping; :func:`traceable` works
around each of them on a network (in place, restored on exit, the computation unchanged) and
:class:`TraceEntry` is the module to trace:

* a skip concatenation whose input is the raw image (MONAI's outermost ``SkipConnection``)
  has no producer to size: :class:`TraceEntry` puts an identity 1x1 convolution in front;
* a PReLU with one shared slope has no channel count for torch-pruning: replaced by an
  identity while tracing (it is channel-free, nothing of it is pruned);
* DynUNet's blocks call one in-place ``lrelu`` module after each of their convolutions: one
  graph node would join two channel groups, and the in-place op hides the skip's producer
  behind copy-slice nodes (the concatenation cannot be sized). Activations run as plain,
  out-of-place functions while tracing;
* DynUNet's residual blocks add with ``out += residual``: the second norm hides behind a
  copy-slice node and would stay unpruned. They add out of place while tracing.

DynUNet's deep-supervision heads are written into a list by its skip layers and dropped by its
forward in eval mode: :class:`TraceEntry` returns them with the output, so the decoder widths
that feed them are in the graph.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_ACTIVATIONS = (torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.ELU, torch.nn.GELU, torch.nn.SiLU)


def is_dynunet(net: torch.nn.Module) -> bool:
    from monai.networks.nets import DynUNet

    return isinstance(net, DynUNet)


class TraceEntry(torch.nn.Module):
    """``net`` behind an identity 1x1 convolution ``entry`` (never to be pruned).

    Returns the network's output; for a DynUNet the tuple (output, every deep-supervision head).
    """

    def __init__(self, net: torch.nn.Module, channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
        self.entry = conv(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.entry.weight.copy_(torch.eye(channels).reshape(channels, channels, *([1] * spatial_dims)))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        net: Any = self.net
        if is_dynunet(net):
            out = net.output_block(net.skip_layers(self.entry(x)))
            return (out, *(list(net.heads) if net.deep_supervision else []))
        out = net(self.entry(x))
        return out[0] if isinstance(out, list | tuple) else out  # type: ignore[no-any-return]


class _AsFunction:
    """An activation module called as a plain function (no forward hooks), out of place."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = copy.deepcopy(module)
        if hasattr(self.module, "inplace"):
            setattr(self.module, "inplace", False)  # noqa: B010  (an attribute of some activations only)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward(x)  # type: ignore[no-any-return]


def _res_block_forward(block: Any, inp: torch.Tensor) -> torch.Tensor:
    """MONAI's ``UnetResBlock.forward`` with the residual added out of place (same result)."""
    out = block.lrelu(block.norm1(block.conv1(inp)))
    out = block.norm2(block.conv2(out))
    residual = inp
    if hasattr(block, "conv3"):
        residual = block.conv3(residual)
    if hasattr(block, "norm3"):
        residual = block.norm3(residual)
    return block.lrelu(out + residual)  # type: ignore[no-any-return]


@contextmanager
def traceable(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``net`` with the work-arounds above applied in place; every one is undone on exit."""
    from monai.networks.blocks.dynunet_block import UnetResBlock

    shared = {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.PReLU) and m.num_parameters == 1}
    for name in shared:
        net.set_submodule(name, torch.nn.Identity())
    # an instance attribute shadows the registered child (nn.Module looks children up only when
    # normal lookup fails): the module stays registered, in its place, and is not called
    swapped: list[tuple[torch.nn.Module, str]] = []
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, _ACTIVATIONS):
                parent.__dict__[name] = _AsFunction(child)
                swapped.append((parent, name))
    residual_blocks = [m for m in net.modules() if isinstance(m, UnetResBlock)]
    for block in residual_blocks:
        block.forward = types.MethodType(_res_block_forward, block)  # type: ignore[method-assign]
    try:
        yield net
    finally:
        for block in residual_blocks:
            del block.forward
        for parent, name in swapped:
            del parent.__dict__[name]
        for name, module in shared.items():
            net.set_submodule(name, module)
