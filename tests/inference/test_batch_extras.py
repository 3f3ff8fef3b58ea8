"""Batch extras: a resumed case recomputes only its missing parts; the options pickle for workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from medseg.inference.batch import predict_batch
from medseg.inference.batch_extras import BatchExtras
from medseg.inference.inputs import find_cases
from tests.inference.inference_helpers import save_nifti, threshold_predictor


def test_resume_recomputes_only_missing_parts(tmp_path: Path) -> None:
    image = np.zeros((16, 16, 12), np.float32)
    image[4:10, 5:11, 3:8] = 150.0
    save_nifti(tmp_path / "in" / "a.nii.gz", image, np.eye(4))
    predictor = threshold_predictor([1.0, 1.0, 1.0], 100.0, crop=False)
    cases = find_cases(tmp_path / "in", ["image"])
    out = tmp_path / "out"
    extras = BatchExtras(dict(predictor.labels), statistics=True, preview=True)
    assert predict_batch(predictor, cases, out, progress=False, extras=extras)[0].status == "ok"
    parts = [out / "statistics" / "a.csv", out / "qa" / "a.csv", out / "previews" / "a.png"]
    stamps = [p.stat().st_mtime_ns for p in parts]
    (out / "previews" / "a.png").unlink()
    (out / "index.html").unlink()
    [again] = predict_batch(predictor, cases, out, progress=False, extras=extras)
    assert again.status == "skipped", again.error
    assert (out / "previews" / "a.png").is_file() and (out / "index.html").is_file()
    assert [p.stat().st_mtime_ns for p in parts[:2]] == stamps[:2]  # untouched
    [row] = (out / "statistics.csv").read_text().splitlines()[1:]
    assert row.startswith("a,1,object,180,")  # 6 x 6 x 5 voxels above the threshold


def test_options_survive_pickling_for_worker_processes() -> None:
    extras = BatchExtras({"background": 0, "x": 1}, statistics=True, training={"cases": 2}, training_note="n")
    assert pickle.loads(pickle.dumps(extras)) == extras
