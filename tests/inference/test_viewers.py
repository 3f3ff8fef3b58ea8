"""Viewer colour tables: parsed back as 3D Slicer and ITK-SNAP read them, and written beside batches."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from medseg.inference.batch import predict_batch
from medseg.inference.inputs import find_cases
from medseg.inference.viewers import (
    ITKSNAP_NAME,
    SLICER_NAME,
    itksnap_table,
    slicer_table,
    write_viewer_tables,
)
from medseg.palette import label_rgb
from tests.inference.inference_helpers import save_nifti, threshold_predictor

ORGANS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 5, 'the "other" one': 23}


def parse_ctbl(text: str) -> dict[int, tuple[str, tuple[int, int, int, int]]]:
    """Slicer's reading: skip '#' lines, split on whitespace into id name R G B A."""
    rows = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        assert len(fields) == 6, line
        label, name, *rgba = fields
        rows[int(label)] = (name, tuple(int(c) for c in rgba))
    return rows  # type: ignore[return-value]


def parse_itksnap(text: str) -> dict[int, tuple[tuple[int, int, int], float, int, int, str]]:
    """ITK-SNAP's reading: IDX R G B A VIS MSH "LABEL" (the label a quoted string)."""
    rows = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = shlex.split(line)
        assert len(fields) == 8, line
        idx, r, g, b, a, vis, msh, name = fields
        rows[int(idx)] = ((int(r), int(g), int(b)), float(a), int(vis), int(msh), name)
    return rows  # type: ignore[return-value]


def test_slicer_table_ids_names_and_palette_colours() -> None:
    text = slicer_table(ORGANS)
    assert text.startswith("#")  # header comment
    rows = parse_ctbl(text)
    assert sorted(rows) == [0, 1, 2, 5, 23]
    assert rows[0] == ("background", (0, 0, 0, 0))  # transparent background
    assert rows[1] == ("liver", (31, 119, 180, 255))  # tab10 blue, as in previews and reports
    assert rows[2][0] == "right_kidney"  # one token: Slicer splits on whitespace
    for label in (2, 5, 23):
        assert rows[label][1] == (*label_rgb(label), 255)


def test_itksnap_table_clear_label_and_structures() -> None:
    rows = parse_itksnap(itksnap_table(ORGANS))
    assert sorted(rows) == [0, 1, 2, 5, 23]
    assert rows[0] == ((0, 0, 0), 0.0, 0, 0, "Clear Label")  # invisible, whatever the manifest calls it
    assert rows[2] == (label_rgb(2), 1.0, 1, 1, "right kidney")  # spaces kept inside the quotes
    assert rows[5][0] == label_rgb(5) and rows[5][4] == "spleen"
    assert rows[23][4] == "the 'other' one"  # a quote inside the name cannot end the string


def test_tables_without_background_and_bad_ids() -> None:
    rows = parse_itksnap(itksnap_table({"tumour": 1}))
    assert rows[0][4] == "Clear Label" and rows[1][4] == "tumour"
    assert sorted(parse_ctbl(slicer_table({"tumour": 1}))) == [1]
    with pytest.raises(ValueError, match="ids \\[1\\] are used by several names"):
        slicer_table({"a": 1, "b": 1, "background": 0})
    with pytest.raises(ValueError, match="must be >= 0"):
        itksnap_table({"a": -1})


def test_write_is_atomic_and_returns_paths(tmp_path: Path) -> None:
    paths = write_viewer_tables(tmp_path, ORGANS)
    assert paths == [tmp_path / SLICER_NAME, tmp_path / ITKSNAP_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SLICER_NAME, ITKSNAP_NAME])  # no leftovers
    with pytest.raises(ValueError):
        write_viewer_tables(tmp_path / "bad", {"a": 1, "b": 1})
    assert not (tmp_path / "bad" / SLICER_NAME).exists()  # nothing half-written


def test_batch_writes_tables_beside_nifti_masks_only(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.random.default_rng(0).random((12, 10, 8)).astype(np.float32),
                     np.diag([1.0, 1.0, 1.0, 1.0]))
    predictor = threshold_predictor([1.0, 1.0, 1.0], 0.5)
    out = tmp_path / "out"
    [result] = predict_batch(predictor, find_cases(src, ["image"]), out, progress=False)
    assert result.status == "ok"
    assert {i: n for i, (n, _) in parse_ctbl((out / SLICER_NAME).read_text()).items()} == {
        0: "background", 1: "object"}  # the model's manifest labels
    assert parse_itksnap((out / ITKSNAP_NAME).read_text())[1][4] == "object"

    seg_only = tmp_path / "seg_only"
    predict_batch(predictor, [], seg_only, fmt="dicom-seg", progress=False)
    assert not (seg_only / SLICER_NAME).exists()  # DICOM-SEG carries its own names
