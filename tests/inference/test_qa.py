"""QA flags on planted anomalies; a clean case has none; flags never stop a batch (CLI run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medseg.cli import main
from medseg.data.grid import ras_order
from medseg.inference.qa import case_flags
from medseg.inference.statistics import case_statistics
from tests.inference.inference_helpers import LABELS, save_nifti

MAP = {"background": 0, "organ": 1, "lesion": 2}
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
TRAINING = {
    "version": 1, "cases": 10,
    "structures": {
        "organ": {"label": 1, "cases": 10, "fraction_present": 1.0, "volume_ml_min": 0.05, "volume_ml_max": 0.2,
                  "components_max": 1},
        "lesion": {"label": 2, "cases": 4, "fraction_present": 0.4, "volume_ml_min": 0.001, "volume_ml_max": 0.01,
                   "components_max": 2},
    },
    "spacing_mm": {"min": [0.8, 0.8, 1.0], "max": [1.2, 1.2, 2.0]},
    "size_voxels": {"min": [30, 30, 30], "max": [60, 60, 60]},
}


def _flags(labels: np.ndarray, affine: np.ndarray = AFFINE, training: dict | None = TRAINING) -> set[tuple[str, str]]:
    rows = case_statistics("c", labels, None, affine, MAP)
    return {(f["flag"], f["structure"]) for f in case_flags("c", rows, labels, affine, training)}


def _clean() -> np.ndarray:
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[15:20, 15:20, 15:20] = 1  # 125 voxels = 0.125 mL, inside the training range
    return labels


def test_a_clean_case_has_no_flag() -> None:
    assert _flags(_clean()) == set()


def test_planted_anomalies_are_flagged() -> None:
    empty = np.zeros((40, 40, 40), np.uint8)
    assert _flags(empty) == {("missing_structure", "organ")}  # the lesion is often absent: no flag

    big = _clean()
    big[5:35, 5:35, 5:10] = 1  # 4.5 mL >> 0.2 mL
    assert ("volume_out_of_range", "organ") in _flags(big)
    small = np.zeros((40, 40, 40), np.uint8)
    small[10:13, 10:13, 10:13] = 1  # 0.027 mL < 0.05 * 0.9
    assert _flags(small) == {("volume_out_of_range", "organ")}

    split = _clean()
    split[25:27, 25:27, 25:27] = 1  # a second organ component (0.133 mL: volume still in range)
    assert _flags(split) == {("extra_components", "organ")}
    lesions = _clean()
    lesions[2, 30, 30] = lesions[4, 30, 30] = lesions[6, 30, 30] = 2  # 3 lesions > 2 ever seen
    assert _flags(lesions) == {("extra_components", "lesion")}

    edge = _clean()
    edge[17, 17, 36:40] = 1  # a second piece reaching the top slice (z = 39 on a +z axis: Superior)
    flags = case_flags("c", case_statistics("c", edge, None, AFFINE, MAP), edge, AFFINE, TRAINING)
    assert [(f["flag"], f["structure"]) for f in flags] == [("extra_components", "organ"), ("touches_edge", "organ")]
    assert "S (z=39)" in flags[1]["detail"]


def test_a_structure_never_seen_in_training_is_flagged_once() -> None:
    training = {**TRAINING, "structures": {**TRAINING["structures"], "lesion": {
        "label": 2, "cases": 0, "fraction_present": 0.0, "volume_ml_min": 0.0, "volume_ml_max": 0.0,
        "components_max": 0}}}
    labels = _clean()
    labels[30, 30, 30] = 2
    rows = case_statistics("c", labels, None, AFFINE, MAP)
    flags = case_flags("c", rows, labels, AFFINE, training)
    assert [(f["flag"], f["structure"]) for f in flags] == [("volume_out_of_range", "lesion")]
    assert "never present in the training labels" in flags[0]["detail"]


def test_input_geometry_far_from_training() -> None:
    coarse = np.diag([5.0, 1.0, 1.0, 1.0])  # 5 mm along R: > 2 x 1.2 mm
    labels = _clean()
    labels[15:20, 15:20, 15:20] = 0
    labels[17:18, 15:20, 15:20] = 1  # 25 voxels x 5 mm^3 = 0.125 mL
    assert _flags(labels, coarse) == {("input_spacing", "")}
    huge = np.zeros((200, 40, 40), np.uint8)
    huge[15:20, 15:20, 15:20] = 1
    assert _flags(huge) == {("input_size", "")}  # 200 > 2 x 60 voxels along R


def test_without_training_statistics_only_the_edge_check_runs() -> None:
    edge = np.zeros((40, 40, 40), np.uint8)
    edge[0:3, 10:12, 10:12] = 1
    assert _flags(edge, training=None) == {("touches_edge", "organ")}
    assert _flags(np.zeros((40, 40, 40), np.uint8), training=None) == set()


def test_orientation_letters_follow_the_affine() -> None:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert ras_order(lps)[1] == ["RL", "AP", "IS"]  # index 0 at the patient's right, anterior, inferior
    assert ras_order(AFFINE)[1] == ["LR", "PA", "IS"]


def test_cli_batch_with_statistics_preview_and_qa(tmp_path: Path, checkpoint: Path) -> None:
    names = [n for n, v in LABELS.items() if v]
    training = {"version": 1, "cases": 5, "structures": {
        n: {"label": LABELS[n], "cases": 5, "fraction_present": 1.0, "volume_ml_min": 1e6, "volume_ml_max": 2e6,
            "components_max": 0} for n in names},  # impossible ranges: every predicted structure is flagged
        "spacing_mm": {"min": [1.5, 1.5, 1.5], "max": [1.5, 1.5, 1.5]},
        "size_voxels": {"min": [20, 20, 20], "max": [20, 20, 20]}}
    (checkpoint / "label_statistics.json").write_text(json.dumps(training))
    rng = np.random.default_rng(0)
    for name, shape in (("a", (20, 18, 16)), ("b", (24, 20, 16))):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", rng.normal(size=shape).astype(np.float32),
                   np.diag([1.5, 1.5, 1.5, 1.0]))
    out = tmp_path / "out"
    args = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in"), "--output", str(out), "--quiet",
            "--statistics", "--preview"]
    assert main(args) == 0  # flags never fail a case
    with open(out / "qa.csv", newline="") as f:
        qa = list(csv.DictReader(f))
    with open(out / "statistics.csv", newline="") as f:
        stats = list(csv.DictReader(f))
    assert [(r["case"], r["structure"]) for r in stats] == [(c, n) for c in "ab" for n in names]
    for row in stats:  # each structure is either missing or out of range, never silently passed
        flagged = {q["flag"] for q in qa if q["case"] == row["case"] and q["structure"] == row["structure"]}
        expected = {"missing_structure"} if row["voxels"] == "0" else {"volume_out_of_range", "extra_components"}
        assert expected <= flagged, (row, flagged)
    assert not any(q["flag"] == "note" for q in qa)  # the model has its statistics
    assert (out / "previews" / "a.png").is_file() and (out / "index.html").is_file()
    # Resumed: nothing predicted again, the merged files are unchanged (no duplicated rows).
    before = [(out / n).read_text() for n in ("qa.csv", "statistics.csv")]
    assert main(args) == 0
    assert [(out / n).read_text() for n in ("qa.csv", "statistics.csv")] == before
