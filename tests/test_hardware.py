"""CPU feature detection and the inference autocast dtype (``inference.precision``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg import hardware as P

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


def test_inference_autocast_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert P.inference_autocast_dtype("fp32", "cpu", cpu_bf16=True) is None
    assert P.inference_autocast_dtype("bf16", "cpu", cpu_bf16=False) is torch.bfloat16  # asked for: kept
    assert P.inference_autocast_dtype("auto", "cpu", cpu_bf16=True) is torch.bfloat16
    assert P.inference_autocast_dtype("auto", "cpu", cpu_bf16=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.inference_autocast_dtype("auto", "cuda:0", cpu_bf16=False) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.inference_autocast_dtype("auto", torch.device("cuda", 1), cpu_bf16=False) is torch.bfloat16
    with pytest.raises(ValueError, match=r"inference\.precision 'fp16': expected one of fp32, bf16, auto"):
        P.inference_autocast_dtype("fp16", "cpu")
