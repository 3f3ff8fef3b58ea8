"""trainer.precision: auto -> bf16 only where the hardware computes bf16 natively."""

from __future__ import annotations

import logging

import pytest
import torch

from medseg.training import precision as P


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
