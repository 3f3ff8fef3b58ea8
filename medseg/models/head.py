"""A network's pointwise output head, split off so that its input features can be blended instead.

DynUNet, AttentionUnet and SegResNet end in a 1x1(x1) convolution from F feature channels
to K classes: ``logits = W f + b`` at every voxel. Sliding-window blending is linear
(a weighted sum divided by the sum of the weights), so blending the windows' F-channel
features and applying the head afterwards gives the blended logits exactly (up to float
rounding):  ``sum_w g_w (W f_w + b) / sum_w g_w = W (sum_w g_w f_w / sum_w g_w) + b``.
With 118 classes and F = 8 that is 15x less to accumulate per voxel, and the windows no
longer write K-channel outputs at all (:mod:`medseg.inference.blockwise`).

:func:`split_head` finds the candidate structurally (the last registered leaf module is a
pointwise convolution producing the classes) and then *verifies* it numerically on a small
random input, so a network whose forward does anything after that convolution (or does
not use it last) is never split: it is blended as logits, as before. MONAI's UNet ends in
a transposed or up-sampling convolution and is not splittable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TypeGuard

import torch
import torch.nn as nn

VERIFY_ATOL = 1e-4
"""Largest difference (relative to the logits' scale) between ``head(trunk(x))`` and
``net(x)`` accepted when verifying a split."""


class PointwiseHead:
    """``logits = weight @ features + bias`` per voxel, read from the convolution at each use
    (training updates it in place between validations)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
        self.conv = conv

    @property
    def in_channels(self) -> int:
        return int(self.conv.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.conv.out_channels)

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (K, ...) of features (F, ...) in float32, on the features' device."""
        f = features.reshape(features.shape[0], -1).float()
        w = self.conv.weight.detach().reshape(self.out_channels, self.in_channels).to(f.device, torch.float32)
        if self.conv.bias is None:
            out = w @ f
        else:
            out = torch.addmm(self.conv.bias.detach().to(f.device, torch.float32)[:, None], w, f)
        return out.reshape((self.out_channels, *features.shape[1:]))


@dataclass(frozen=True)
class SplitNetwork:
    """The network without its head (``trunk(x)`` has F channels) and the head."""

    trunk: nn.Module
    head: PointwiseHead


def _last_leaf(net: nn.Module) -> tuple[str, nn.Module] | None:
    leaves = [(name, m) for name, m in net.named_modules() if not list(m.children())]
    return leaves[-1] if leaves else None


def _is_pointwise(m: nn.Module, out_channels: int) -> TypeGuard[nn.Conv1d | nn.Conv2d | nn.Conv3d]:
    """A 1x1(x1) convolution to ``out_channels`` with no stride, dilation, groups or padding."""
    if not isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) or isinstance(m.padding, str):
        return False
    return (
        all(k == 1 for k in m.kernel_size) and all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation)
        and all(p == 0 for p in m.padding) and m.groups == 1 and m.out_channels == out_channels
    )


def _replaced(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` with the module at ``path`` replaced: parameters are shared,
    ``root`` itself is untouched (another thread may be running it)."""
    name, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    child = root._modules[name]
    if child is None:  # pragma: no cover - named_modules never yields a None child
        raise KeyError(path)
    clone._modules[name] = _replaced(child, rest, new) if rest else new
    return clone


def split_head(net: nn.Module, out_channels: int, spatial_size: tuple[int, ...], in_channels: int) -> SplitNetwork | None:
    """The network's trunk and pointwise head, or None where it does not end in one.

    ``spatial_size``: a small input size the network accepts (a multiple of its total
    down-sampling per axis); the split is verified on one random input of that size, in
    the network's current mode (prediction: eval). Never raises for an unsplittable net.
    """
    if net.training:  # training mode may stack deep-supervision heads: prediction runs eval
        return None
    leaf = _last_leaf(net)
    if leaf is None:
        return None
    path, conv = leaf
    if not _is_pointwise(conv, out_channels):
        return None
    trunk = _replaced(net, path, nn.Identity())
    head = PointwiseHead(conv)
    try:
        device = conv.weight.device
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, in_channels, *spatial_size), generator=gen).to(device=device, dtype=conv.weight.dtype)
        with torch.no_grad():
            want = _first(net(x)).float()
            features = _first(trunk(x))
            if features.shape[1] != conv.in_channels:
                return None
            got = head.apply(features[0].float())[None]
    except (RuntimeError, ValueError, TypeError):  # a forward that the trunk cannot run
        return None
    scale = float(want.abs().max()) + 1e-6
    if got.shape != want.shape or float((got - want).abs().max()) > VERIFY_ATOL * scale:
        return None
    return SplitNetwork(trunk, head)


def _first(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The full-resolution output where deep-supervision heads come as a list."""
    if isinstance(out, list | tuple):
        return out[0]
    return out
