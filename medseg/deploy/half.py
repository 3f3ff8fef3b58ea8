"""fp16 exports for GPU users: half-precision weights and arithmetic behind a float32 interface.

The exported file stores every parameter as float16 (half the size of fp32) and runs the
network in half precision; it casts the float32 window to float16 on the way in and the
logits back to float32 on the way out, so the sliding window, TTA and blending that feed it
are unchanged. Half-precision convolutions are a GPU feature: on a CPU they are slow (or,
in older torch builds, missing), so fp16 exports are for ``--device cuda``.
"""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "fp16")


class HalfPrecision(torch.nn.Module):
    """``net`` in float16, taking and returning float32 tensors."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def half_precision(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``net`` wrapped for ``precision`` (fp32: unchanged, fp16: :class:`HalfPrecision`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: expected one of {list(PRECISIONS)}")
    return net if precision == "fp32" else HalfPrecision(net).eval()
