"""Up-sampling choice (``model.upsample``, ``model.interp_mode``) for every U-Net family.

MONAI's ``UNet``, ``AttentionUnet`` and ``DynUNet`` hard-code a transposed convolution in
each decoder step. :func:`apply_upsample` builds the network as MONAI does, then replaces
every transposed convolution (``nn.ConvTranspose{1,2,3}d``) by the chosen block with the
same input/output channels and scale factor (its stride), so the encoder, skip
connections, norms, activations and deep-supervision heads are MONAI's own:

* ``deconv``: the transposed convolution is kept (MONAI's network unchanged).
* ``interp``: ``nn.Upsample`` (``interp_mode`` nearest, or linear = bilinear in 2D and
  trilinear in 3D with ``align_corners=False``) followed by a 3^d convolution from the
  input to the output channels (a "resize-convolution").
* ``pixelshuffle``: MONAI's ``SubpixelUpsample``: a 3^d convolution to
  ``out * scale^d`` channels (ICNR initialised), sub-pixel shuffle, then MONAI's
  pad-and-average-pool against checkerboard artefacts.

A transposed convolution with stride 1 (a level that does not change resolution, e.g.
``model.strides: [1, 2, ...]``) becomes an ordinary convolution of the same kernel for
``interp`` and ``pixelshuffle``: there is nothing to up-sample and no transposed
convolution is left in the network.

``segresnet`` has the three modes natively (MONAI's ``upsample_mode``: ``nontrainable`` is
``interp``); :func:`set_interp_mode` applies ``interp_mode`` to its ``nn.Upsample`` layers.
``nontrainable`` is accepted everywhere as MONAI's name for ``interp`` (configs and
checkpoints written before ``interp`` existed load unchanged).
"""

from __future__ import annotations

import torch.nn as nn
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv

from medseg.config import ModelConfig

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def upsample_mode(cfg: ModelConfig) -> str:
    """``cfg.upsample`` with MONAI's alias ``nontrainable`` read as ``interp``."""
    return "interp" if cfg.upsample == "nontrainable" else cfg.upsample


def torch_interp_mode(interp_mode: str, spatial_dims: int) -> str:
    """The ``nn.Upsample`` mode for ``model.interp_mode``: nearest, or (bi/tri)linear by dimension."""
    if interp_mode == "nearest":
        return "nearest"
    return ("linear", "bilinear", "trilinear")[spatial_dims - 1]


def _align_corners(interp_mode: str) -> bool | None:
    return None if interp_mode == "nearest" else False  # nn.Upsample refuses align_corners for nearest


def upsample_block(
    spatial_dims: int, in_channels: int, out_channels: int, scale: int, mode: str, interp_mode: str, bias: bool = True
) -> nn.Module:
    """One decoder up-sampling step: ``in_channels`` -> ``out_channels``, spatial size x ``scale``.

    ``mode`` is ``interp`` or ``pixelshuffle`` (``deconv`` needs no replacement); ``scale``
    must be >= 2 (a stride-1 step is an ordinary convolution, see :func:`apply_upsample`).
    """
    conv = Conv[Conv.CONV, spatial_dims]
    if mode == "interp":
        return UpSample(
            spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            scale_factor=scale,
            mode="nontrainable",
            pre_conv=None,
            post_conv=conv(in_channels, out_channels, kernel_size=3, padding=1, bias=bias),
            interp_mode=torch_interp_mode(interp_mode, spatial_dims),
            align_corners=_align_corners(interp_mode),
        )
    if mode == "pixelshuffle":
        return UpSample(
            spatial_dims, in_channels=in_channels, out_channels=out_channels, scale_factor=scale,
            mode="pixelshuffle", bias=bias,
        )
    raise ValueError(f"upsample_block: mode {mode!r} is not interp or pixelshuffle")


def _replacement(conv_t: nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d, mode: str,
                 interp_mode: str) -> nn.Module:
    dims = len(conv_t.stride)
    strides, kernels = set(conv_t.stride), set(conv_t.kernel_size)
    if len(strides) != 1 or len(kernels) != 1:
        raise ValueError(f"apply_upsample: anisotropic transposed convolution {conv_t} is not supported")
    scale, kernel = strides.pop(), kernels.pop()
    pad = conv_t.padding[0] if isinstance(conv_t.padding, tuple) else conv_t.padding
    out_pad = conv_t.output_padding[0]
    n = 8  # the replacement must give the same output size: (n - 1) s - 2 p + k + op == n s
    if (n - 1) * scale - 2 * int(pad) + kernel + out_pad != n * scale:
        raise ValueError(f"apply_upsample: {conv_t} does not scale its input by its stride")
    bias = conv_t.bias is not None
    if scale == 1:
        if kernel % 2 == 0:
            raise ValueError(f"apply_upsample: stride-1 transposed convolution {conv_t} has an even kernel")
        return Conv[Conv.CONV, dims](
            conv_t.in_channels, conv_t.out_channels, kernel_size=kernel, padding=kernel // 2, bias=bias
        )
    return upsample_block(dims, conv_t.in_channels, conv_t.out_channels, scale, mode, interp_mode, bias)


def apply_upsample(net: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Replace every transposed convolution in ``net`` by ``cfg``'s up-sampling block (in place).

    Returns ``net``; ``deconv`` leaves it unchanged. Used for unet, residual_unet,
    attention_unet and dynunet, whose MONAI classes build transposed convolutions only.
    """
    mode = upsample_mode(cfg)
    if mode == "deconv":
        return net
    targets = [(name, m) for name, m in net.named_modules() if isinstance(m, _TRANSPOSED)]
    for name, conv_t in targets:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, _replacement(conv_t, mode, cfg.interp_mode))
    return net


def set_interp_mode(net: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Give every ``nn.Upsample`` in ``net`` the interpolation of ``cfg.interp_mode`` (in place)."""
    for m in net.modules():
        if isinstance(m, nn.Upsample):
            m.mode = torch_interp_mode(cfg.interp_mode, cfg.spatial_dims)
            m.align_corners = _align_corners(cfg.interp_mode)
    return net
