"""Choose the training precision for the machine at hand (``trainer.precision: auto``).

bf16 autocast is only a win where the hardware computes in bf16. On a CPU with
AVX512-BF16 or AMX (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later)
oneDNN runs bf16 convolutions natively: 1.75x the training steps/s of fp32 for our 3D
U-Nets on a 2-core Xeon. Without them bf16 is emulated: on a 2-core AMD EPYC (Zen 3,
AVX2) one step of the hippocampus residual U-Net took 13 s in bf16 against 0.75 s in
fp32. A pipeline written on one machine must not become 17x slower on another, hence
``auto``. On a GPU, ``auto`` is bf16-mixed where the GPU supports bf16 (Ampere and later),
else fp16-mixed with loss scaling.
"""

from __future__ import annotations

import logging

import torch

from medseg.hardware import cpu_has_native_bf16

log = logging.getLogger("medseg.train")


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting ends up on a CUDA GPU here."""
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(requested: str, accelerator: str, cpu_bf16: bool | None = None) -> str:
    """The Lightning precision string for ``trainer.precision`` on this machine.

    ``requested`` other than "auto" is kept, with a warning when it is bf16 on a CPU that
    would emulate it. ``cpu_bf16`` overrides the CPU detection (tests).
    """
    gpu = uses_gpu(accelerator)
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    if requested != "auto":
        if requested == "bf16-mixed" and not gpu and not native:
            log.warning(
                "trainer.precision: bf16-mixed on a CPU without AVX512-BF16/AMX is emulated and can be "
                "10x or more slower than fp32; set trainer.precision: auto (or 32) for this machine"
            )
        return requested
    if gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native else "32"
