"""Arrays spilled to a temporary file: same values, read-only, apart from the original's memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.inference.spill import spilled


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_large_array_is_mapped_from_an_unlinked_file_in_its_own_order(
    order: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    base = np.asarray(np.random.default_rng(0).integers(-1024, 3000, (2, 30, 20, 10)), dtype=np.int16, order=order)
    view = base[0]  # what a batch keeps: the first channel of the input
    out = spilled(view, min_bytes=1)
    assert isinstance(out, np.memmap) and not np.shares_memory(out, base)
    np.testing.assert_array_equal(out, view)
    assert out.flags.f_contiguous == view.flags.f_contiguous and out.dtype == np.int16
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] = 1
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing is left behind


def test_a_small_array_is_copied_not_spilled() -> None:
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = spilled(base[0])
    assert not isinstance(out, np.memmap) and not np.shares_memory(out, base)
    np.testing.assert_array_equal(out, base[0])
