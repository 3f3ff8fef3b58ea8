"""trainer.precision: auto -> bf16 only where the hardware computes bf16 natively."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from medseg.training import precision as P

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def test_cpu_flags_parse_x86_and_arm(tmp_path: Path) -> None:
    assert P.cpu_flags(_cpuinfo(tmp_path, ZEN3)) == {"fpu", "sse", "sse2", "avx", "avx2", "fma"}
    assert "bf16" in P.cpu_flags(_cpuinfo(tmp_path, GRAVITON3))
    assert P.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(("text", "native"), [(ZEN3, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True)])
def test_native_bf16_detection(tmp_path: Path, text: str, native: bool) -> None:
    assert P.cpu_has_native_bf16(P.cpu_flags(_cpuinfo(tmp_path, text))) is native


def test_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.resolve_precision("auto", "auto", cpu_bf16=False) == "32"
    assert P.resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16-mixed"


def test_auto_on_gpu_prefers_bf16_then_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision("auto", "auto", cpu_bf16=False) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", "gpu", cpu_bf16=False) == "16-mixed"
    # an explicit CPU accelerator ignores the GPU
    assert P.resolve_precision("auto", "cpu", cpu_bf16=False) == "32"


def test_explicit_precision_is_kept_with_a_warning_when_emulated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="medseg.train"):
        assert P.resolve_precision("bf16-mixed", "cpu", cpu_bf16=False) == "bf16-mixed"
    assert "emulated" in caplog.text and "auto" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg.train"):
        assert P.resolve_precision("bf16-mixed", "cpu", cpu_bf16=True) == "bf16-mixed"
        assert P.resolve_precision("32", "cpu", cpu_bf16=False) == "32"
    assert caplog.text == ""


def test_default_is_auto_mixed_on_gpu_fp32_on_plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.config import PipelineConfig

    default = PipelineConfig().trainer.precision
    assert default == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve_precision(default, "auto", cpu_bf16=False) == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.resolve_precision(default, "auto", cpu_bf16=False) == "32"
