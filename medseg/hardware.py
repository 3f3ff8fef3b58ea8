"""What this machine computes natively, for the precision choices of training and inference.

bf16 is only a win where the hardware computes in bf16. On a CPU with AVX512-BF16 or AMX
(Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) oneDNN runs bf16
convolutions natively: 1.75x the training steps/s of fp32 for our 3D U-Nets on a 2-core
Xeon, 2.4x the inference windows/s of the hippocampus DynUNet on a Zen 4 core. Without
them bf16 is emulated and can be 10x or more slower than fp32 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags meaning that oneDNN computes bf16 convolutions natively."""

INFERENCE_PRECISIONS = ("fp32", "bf16", "auto")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags listed in ``cpuinfo`` (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | frozenset[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, ARM BF16).

    Only Linux exposes the flags (``/proc/cpuinfo``); elsewhere the answer is False, the
    safe choice (fp32 is never pathologically slow).
    """
    if flags is None:
        flags = _this_cpu_flags()
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS) or "bf16" in flags


@functools.cache
def _this_cpu_flags() -> frozenset[str]:
    """This machine's flags, read once (``inference.precision: auto`` asks per window batch)."""
    return frozenset(cpu_flags() if sys.platform.startswith("linux") else ())


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format of a network with ``spatial_dims`` spatial axes."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def inference_autocast_dtype(precision: str, device: torch.device | str,
                             cpu_bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of a network's forward pass for ``inference.precision`` on ``device``
    (None: fp32, no autocast).

    ``bf16``: bfloat16 wherever asked. ``auto``: bfloat16 on a CPU that computes it natively
    and on a GPU that supports it, float16 on an older GPU, fp32 elsewhere. ``cpu_bf16``
    overrides the CPU detection (tests).
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference.precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16):
        return torch.bfloat16
    return None
