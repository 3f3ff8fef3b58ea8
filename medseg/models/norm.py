"""Normalisation layers of a built network set to ``model.norm``.

MONAI's ``AttentionUnet`` hard-codes its norms: batch norm in its convolution blocks,
up-sampling convolutions and attention gates, and instance norm without affine
parameters in the convolutions that merge the skip connection. :func:`apply_norm` makes
every one of them the configured layer, the one the other networks get from MONAI:
``instance`` -> ``InstanceNorm{1,2,3}d(affine=True)``, ``batch`` -> ``BatchNorm{1,2,3}d``.
"""

from __future__ import annotations

import torch.nn as nn

from medseg.config import ModelConfig

_BATCH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_INSTANCE = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _wanted(m: nn.Module, norm: str) -> nn.Module | None:
    """The layer replacing norm layer ``m`` under ``model.norm: norm`` (None: ``m`` is already right)."""
    if not isinstance(m, nn.modules.batchnorm._NormBase) or type(m) not in _BATCH + _INSTANCE:
        return None
    dims = (_BATCH.index(type(m)) if isinstance(m, _BATCH) else _INSTANCE.index(type(m))) + 1  # type: ignore[arg-type]
    if norm == "instance":
        if isinstance(m, _INSTANCE) and m.affine:
            return None
        return _INSTANCE[dims - 1](m.num_features, eps=m.eps, affine=True)
    if isinstance(m, _BATCH):
        return None
    return _BATCH[dims - 1](m.num_features, eps=m.eps)


def apply_norm(net: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Make every batch/instance norm layer in ``net`` the one ``cfg.norm`` names (in place)."""
    targets = [(name, new) for name, m in net.named_modules() if (new := _wanted(m, cfg.norm)) is not None]
    for name, new in targets:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, new)
    return net
