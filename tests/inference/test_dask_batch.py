"""``medseg predict --scheduler local:N``: same masks, log and resume as the serial path; a
worker killed mid-batch fails (or reruns) its case, never the batch."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.cli import main
from medseg.inference import dask_batch
from medseg.inference.batch import predict_batch
from medseg.inference.inputs import find_cases
from medseg.inference.predictor import Predictor
from tests.inference.inference_helpers import save_nifti

NAMES = ("a", "b", "c")


def _log(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predict_log.csv").open(newline="", encoding="utf-8") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


def _inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    for name in NAMES:
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", rng.random((14, 12, 10)).astype(np.float32), np.eye(4))
    return tmp_path / "in"


def test_local_cluster_matches_serial_and_resumes(tmp_path: Path, checkpoint: Path) -> None:
    base = ["predict", "--model", str(checkpoint), "--input", str(_inputs(tmp_path)), "--quiet"]
    assert main([*base, "--output", str(tmp_path / "serial")]) == 0
    assert main([*base, "--output", str(tmp_path / "dask"), "--scheduler", "local:2"]) == 0
    for name in NAMES:
        serial = np.asanyarray(nib.load(str(tmp_path / "serial" / f"{name}.nii.gz")).dataobj)
        on_dask = np.asanyarray(nib.load(str(tmp_path / "dask" / f"{name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(serial, on_dask)
    log = _log(tmp_path / "dask")
    assert list(log) == list(NAMES) and {r["status"] for r in log.values()} == {"ok"}  # input order
    assert main([*base, "--output", str(tmp_path / "dask"), "--scheduler", "local:2"]) == 0
    assert {r["status"] for r in _log(tmp_path / "dask").values()} == {"skipped"}


def test_worker_killed_mid_batch(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dask

    real = dask_batch.dask_predict_case

    def dies_on_b(case, *args):  # type: ignore[no-untyped-def]
        if case.name == "b":
            os._exit(1)  # the worker process dies mid-case
        return real(case, *args)

    monkeypatch.setattr(dask_batch, "dask_predict_case", dies_on_b)
    predictor = Predictor.from_checkpoints([checkpoint])
    cases = find_cases(_inputs(tmp_path), predictor.channel_names)
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        results = predict_batch(predictor, cases, out, progress=False, scheduler="local:2")
    status = {r.case: r.status for r in results}
    # c may share b's dying worker: its rerun then finds c's verified mask and skips it
    assert status["a"] == "ok" and status["b"] == "failed" and status["c"] in ("ok", "skipped")
    assert (out / "c.nii.gz").is_file()
    log = _log(out)
    assert log["b"]["status"] == "failed" and "KilledWorker" in log["b"]["error"]
    assert not (out / "b.nii.gz").exists() and (out / "a.nii.gz").is_file()
    monkeypatch.setattr(dask_batch, "dask_predict_case", real)
    again = predict_batch(predictor, cases, out, progress=False)  # resume: only b is predicted
    assert {r.case: r.status for r in again} == {"a": "skipped", "b": "ok", "c": "skipped"}
