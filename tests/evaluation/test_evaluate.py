"""End to end: ``evaluate`` on synthetic phantoms writes every output, consistently, and
keeps going past bad cases."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.data.io import read_label, write_volume
from medseg.evaluation.evaluate import evaluate
from medseg.evaluation.inputs import EvaluationInputError
from medseg.evaluation.metrics import COLUMNS

OUTPUTS = ("metrics.csv", "cases.csv", "confusion_matrices.json", "summary.json", "report.html", "report.md")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_outputs(evaluated: tuple[Path, dict]) -> None:
    out, summary = evaluated
    assert all((out / name).is_file() for name in OUTPUTS)
    rows = _csv(out / "metrics.csv")
    header = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:10] == ["case", "label", "structure", "dice", "iou", "hd95", "assd", "nsd", "vol_ref_ml",
                           "vol_pred_ml"]
    assert header == list(COLUMNS) and len(rows) == 6 * 3
    by = {(r["case"], r["structure"]): r for r in rows}
    assert float(by["phantom_000", "organ"]["dice"]) < 1 and float(by["phantom_000", "organ"]["hd95"]) > 0
    assert by["phantom_001", "lesion"]["empty_rule"] == "missed" and by["phantom_001", "lesion"]["hd95"] == ""
    assert float(by["phantom_002", "vessel"]["hd"]) > 0
    assert all(float(by[f"phantom_00{i}", s]["dice"]) == 1.0 for i in (3, 4, 5) for s in ("organ", "lesion"))
    assert summary["status"] == "ok" and summary["cases"]["evaluated"] == 6
    lesion = summary["structures"]["lesion"]
    assert lesion["empty_rules"] == {"present": 5, "both_empty": 0, "missed": 1, "false_positive": 0}
    organ_dice = [float(by[f"phantom_00{i}", "organ"]["dice"]) for i in range(6)]
    assert summary["structures"]["organ"]["dice"]["mean"] == pytest.approx(np.mean(organ_dice))
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary


def test_groups_cases_and_confusion(evaluated: tuple[Path, dict]) -> None:
    out, summary = evaluated
    groups = summary["groups"]["site"]
    assert set(groups) == {"A", "B", "(missing)"} and groups["B"]["n_cases"] == 3
    cases = _csv(out / "cases.csv")
    assert [c["site"] for c in cases] == ["A", "A", "B", "B", "B", ""]
    assert all(c["status"] == "ok" for c in cases) and float(cases[3]["pixel_accuracy"]) == 1.0
    confusion = json.loads((out / "confusion_matrices.json").read_text(encoding="utf-8"))
    assert confusion["classes"] == ["background", "organ", "lesion", "vessel"]
    cm = np.array(confusion["cases"]["phantom_001"])
    assert cm.shape == (4, 4) and cm[2, 2] == 0 and cm[2, 1] > 0  # lesion predicted as organ
    worst = [w["case"] for w in summary["worst_cases"]]
    assert len(worst) == 5 and set(worst[:2]) == {"phantom_001", "phantom_002"}
    dice = [w["mean_dice"] for w in summary["worst_cases"]]
    assert dice == sorted(dice) and dice[0] == pytest.approx(min(float(c["mean_dice"]) for c in cases))
    assert summary["worst_structures_per_case"]["phantom_001"][0]["structure"] == "lesion"


def test_serial_equals_parallel(evaluated: tuple[Path, dict], phantoms: dict[str, Path], tmp_path: Path) -> None:
    out, _ = evaluated
    evaluate(phantoms["pred"], phantoms["csv"], tmp_path, workers=1, group_by="site", progress=False, n_boot=200)
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8") == (out / "metrics.csv").read_text(encoding="utf-8")


def test_bad_cases_do_not_stop_the_batch(phantoms: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(phantoms["pred"], pred)
    (pred / "phantom_001.nii.gz").write_bytes(b"garbage")
    write_volume(pred / "stranger.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    (pred / "phantom_005.nii.gz").unlink()
    summary = evaluate(pred, phantoms["manifest"], tmp_path / "out", progress=False, n_boot=50,
                       empty_policy="worst")
    assert summary["status"] == "problems"
    assert summary["cases"]["failed"] == ["phantom_001"] and summary["cases"]["evaluated"] == 4
    assert summary["cases"]["unmatched_pred"] == ["stranger"]
    assert summary["cases"]["missing_pred"] == ["phantom_005"]
    text = "\n".join(summary["problems"])
    assert "phantom_001: prediction" in text and "stranger: prediction stranger.nii.gz has no reference" in text
    assert "phantom_005: reference has no prediction" in text
    cases = {c["case"]: c["status"] for c in _csv(tmp_path / "out" / "cases.csv")}
    assert cases["phantom_001"] == "failed" and cases["stranger"] == "no_reference"
    assert cases["phantom_005"] == "no_prediction" and cases["phantom_000"] == "ok"
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Problems" in html and "phantom_001: prediction" in html
    assert {r["case"] for r in _csv(tmp_path / "out" / "metrics.csv")} == {f"phantom_00{i}" for i in (0, 2, 3, 4)}


def test_reference_folder_names_and_absent_structures(phantoms: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    for src in sorted((phantoms["root"] / "data").glob("labels*/*.nii.gz"))[:3]:
        shutil.copy(src, ref / src.name)
    pred = tmp_path / "pred"
    pred.mkdir()
    name = sorted(ref.iterdir())[0].name
    for path in sorted(ref.iterdir()):
        shutil.copy(phantoms["pred"] / path.name, pred / path.name)
    # one case predicts nothing at all, and its reference loses label 3: a both-empty row
    vol = read_label(ref / name)
    arr = vol.array.copy()
    arr[arr == 3] = 0
    write_volume(ref / name, arr, vol.affine)
    write_volume(pred / name, np.zeros_like(arr), vol.affine)
    summary = evaluate(pred, ref, tmp_path / "out", progress=False, n_boot=50)
    rows = _csv(tmp_path / "out" / "metrics.csv")
    assert {r["structure"] for r in rows} == {"label_1", "label_2", "label_3"}
    first = {r["structure"]: r for r in rows if r["case"] == name.removesuffix(".nii.gz")}
    assert first["label_3"]["empty_rule"] == "both_empty" and first["label_3"]["dice"] == ""
    assert first["label_1"]["empty_rule"] == "missed"
    assert summary["structures"]["label_3"]["empty_rules"]["both_empty"] == 1
    named = evaluate(pred, ref, tmp_path / "out2", labels=phantoms["manifest"], progress=False, n_boot=50)
    assert set(named["structures"]) == {"organ", "lesion", "vessel"}


def test_unusable_options(phantoms: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EvaluationInputError, match="Did you mean 'worst'"):
        evaluate(phantoms["pred"], phantoms["manifest"], tmp_path, empty_policy="wrost", progress=False)
    with pytest.raises(EvaluationInputError, match=r"--group-by 'scanner'.*\['site'\]"):
        evaluate(phantoms["pred"], phantoms["csv"], tmp_path, group_by="scanner", progress=False)
    assert not (tmp_path / "metrics.csv").exists()


def test_worst_policy_uses_the_diagonal(evaluated: tuple[Path, dict], phantoms: dict[str, Path],
                                        tmp_path: Path) -> None:
    summary = evaluate(phantoms["pred"], phantoms["manifest"], tmp_path, empty_policy="worst",
                       progress=False, n_boot=50)
    rows = {(r["case"], r["structure"]): r for r in _csv(tmp_path / "metrics.csv")}
    hd95 = float(rows["phantom_001", "lesion"]["hd95"])
    assert 100 < hd95 < 250 and math.isclose(hd95, float(rows["phantom_001", "lesion"]["assd"]))
    assert summary["settings"]["empty_policy"]["name"] == "worst"


def test_held_out_predictions_against_the_whole_manifest(phantoms: dict[str, Path], tmp_path: Path) -> None:
    # as in the demo: only the test split was predicted; the training split is not "missing"
    from medseg.data.manifest import load_manifest

    test_cases = [c.name for c in load_manifest(phantoms["manifest"]).test]
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in test_cases:
        shutil.copy(phantoms["pred"] / f"{name}.nii.gz", pred)
    summary = evaluate(pred, phantoms["manifest"], tmp_path / "out", progress=False, n_boot=50)
    assert summary["status"] == "ok" and summary["cases"]["evaluated"] == len(test_cases) == 2
    assert summary["cases"]["unpredicted_splits"] == {"training": 4}
    assert "Not evaluated: the manifest's training split (4 cases)" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_dask_local_cluster_equals_the_process_pool(evaluated: tuple[Path, dict], phantoms: dict[str, Path],
                                                    tmp_path: Path) -> None:
    out, summary = evaluated
    got = evaluate(phantoms["pred"], phantoms["csv"], tmp_path, group_by="site", progress=False, n_boot=200,
                   scheduler="local:2")
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8") == (out / "metrics.csv").read_text(encoding="utf-8")
    assert got["structures"] == summary["structures"] and got["pooled"] == summary["pooled"]
    with pytest.raises(EvaluationInputError, match="local:N"):
        evaluate(phantoms["pred"], phantoms["csv"], tmp_path, progress=False, scheduler="local:0")
