"""A full ``medseg predict`` batch over good and broken inputs: outputs, log, exit status, resume."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.data.io import read_volume
from medseg.inference import batch
from medseg.inference.batch import check_nifti_output, predict_batch
from medseg.inference.inputs import find_cases
from medseg.inference.predictor import Predictor
from tests.inference.inference_helpers import rotation, save_nifti, write_dicom_series

BROKEN = ("corrupt", "truncated", "empty", "nan", "flat2d", "five_d", "text")


def _mixed_folder(root: Path) -> Path:
    """Good NIfTI (LPS anisotropic, oblique with qform only), a DICOM series, and broken files."""
    rng = np.random.default_rng(0)
    folder = root / "input"
    lps = np.diag([-0.8, -0.8, 2.5, 1.0])
    lps[:3, 3] = [40.0, 30.0, -20.0]
    save_nifti(folder / "lps_aniso.nii.gz", rng.random((30, 26, 8)).astype(np.float32), lps, 1, 1)
    obl = np.eye(4)
    obl[:3, :3] = rotation(0.3, -0.25) @ np.diag([1.1, 1.3, 1.7])
    obl[:3, 3] = [-5.0, 12.0, 7.0]
    save_nifti(folder / "oblique.nii.gz", (rng.random((18, 16, 12)) * 100).astype(np.float32), obl, 1, 0)
    write_dicom_series(folder / "ct_series", (rng.random((24, 20, 6)) * 400 - 100).astype(np.int16),
                       (0.9, 0.9, 2.0), (-10.0, -12.0, 30.0))
    raw = (folder / "lps_aniso.nii.gz").read_bytes()
    (folder / "corrupt.nii.gz").write_bytes(bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    (folder / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (folder / "text.nii.gz").write_text("this is a text file, not an image\n")
    nib.save(nib.Nifti1Image(np.zeros((0, 10, 10), np.float32), np.eye(4)), str(folder / "empty.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((10, 10, 10), np.nan, np.float32), np.eye(4)), str(folder / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((12, 10), np.float32), np.eye(4)), str(folder / "flat2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 2, 3), np.float32), np.eye(4)), str(folder / "five_d.nii.gz"))
    return folder


def _log(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predict_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "status", "seconds", "error"]
    return {r["case"]: r for r in rows}


def _same_header(out: Path, src: Path) -> None:
    pred, ref = nib.load(str(out)), nib.load(str(src))
    assert pred.shape == ref.shape[:3]
    np.testing.assert_array_equal(pred.affine, ref.affine)
    for code in ("qform_code", "sform_code"):
        assert int(pred.header[code]) == int(ref.header[code]), code
    np.testing.assert_array_equal(pred.header.get_qform(), ref.header.get_qform())
    np.testing.assert_array_equal(pred.header.get_sform(), ref.header.get_sform())


def test_batch_over_good_and_broken_inputs_then_resume(tmp_path: Path, checkpoint: Path) -> None:
    folder = _mixed_folder(tmp_path)
    out = tmp_path / "pred"
    args = ["predict", "--model", str(checkpoint), "--input", str(folder), "--output", str(out), "--quiet"]
    assert main(args) == 1  # some cases failed

    log = _log(out)
    assert set(log) == {"lps_aniso", "oblique", "ct_series", *BROKEN}
    for name in ("lps_aniso", "oblique", "ct_series"):
        assert log[name]["status"] == "ok", log[name]
    for name in ("lps_aniso", "oblique"):
        _same_header(out / f"{name}.nii.gz", folder / f"{name}.nii.gz")
    dicom = read_volume(folder / "ct_series")
    seg = nib.load(str(out / "ct_series.nii.gz"))
    assert seg.shape == dicom.spatial_shape and np.allclose(seg.affine, dicom.affine, atol=1e-5)
    assert np.asanyarray(seg.dataobj).max() <= 2
    reasons = {
        "corrupt": "not a gzip file", "truncated": "Compressed file ended", "text": "not a gzip file",
        "empty": "expected a 3D volume", "nan": "1000 of 1000 voxels are NaN", "flat2d": "2 dimensions",
        "five_d": "5 dimensions",
    }
    for name, reason in reasons.items():
        assert log[name]["status"] == "failed" and reason in log[name]["error"], log[name]
        assert "\n" not in log[name]["error"]
        assert not (out / f"{name}.nii.gz").exists()
    assert not [p for p in out.iterdir() if ".part" in p.name]  # no temporary files left

    # Resume: finished cases are skipped (files untouched), broken ones fail again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert main(args) == 1
    log = _log(out)
    assert {n for n, r in log.items() if r["status"] == "skipped"} == {"lps_aniso", "oblique", "ct_series"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == mtimes

    # A damaged output is not "done": it is predicted again.
    (out / "oblique.nii.gz").write_bytes(gzip.compress(b"garbage"))
    assert main(args) == 1
    assert _log(out)["oblique"]["status"] == "ok"
    _same_header(out / "oblique.nii.gz", folder / "oblique.nii.gz")

    # --no-resume redoes everything.
    before = (out / "lps_aniso.nii.gz").stat().st_mtime_ns
    assert main([*args, "--no-resume"]) == 1
    assert _log(out)["lps_aniso"]["status"] == "ok"
    assert (out / "lps_aniso.nii.gz").stat().st_mtime_ns != before


def test_all_good_inputs_exit_zero_and_single_file_input(tmp_path: Path, checkpoint: Path) -> None:
    src = save_nifti(tmp_path / "one.nii.gz", np.random.default_rng(1).random((20, 18, 16)).astype(np.float32),
                     np.diag([1.2, 1.2, 1.2, 1.0]))
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(checkpoint), "--input", str(src), "--output", str(out), "--quiet",
                 "--overlap", "0.25", "--sw-batch-size", "2", "--device", "cpu"]) == 0
    _same_header(out / "one.nii.gz", src)
    assert _log(out)["one"]["status"] == "ok"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "one.nii.gz").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_unusable_model_or_input_exit_2(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", str(tmp_path / "nope"), "--input", str(tmp_path), "--output",
                 str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(checkpoint), "--input", str(tmp_path / "missing"), "--output",
                 str(tmp_path / "o")]) == 2


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", rng.random((12, 12, 12)).astype(np.float32), np.eye(4))
    predictor = Predictor.from_checkpoints([checkpoint])
    cases = find_cases(tmp_path / "in", predictor.channel_names)
    real_save = nib.save
    calls = []

    def save_then_die(img: nib.Nifti1Image, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:  # second case: half a file, then Ctrl-C
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real_save(img, path)

    monkeypatch.setattr(nib, "save", save_then_die)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_batch(predictor, cases, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "labels.ctbl", "labels.itksnap.txt", "predict_config.json",
                                                     "predict_log.csv"]
    assert _log(out)["a"]["status"] == "ok" and "b" not in _log(out)


def test_header_mismatch_after_writing_is_an_error(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((10, 10, 10), np.float32), np.eye(4), 1, 1)
    predictor = Predictor.from_checkpoints([checkpoint])
    real = batch.write_label

    def wrong_codes(path: Path, labels: np.ndarray, reference: object) -> None:
        real(path, labels, reference)  # type: ignore[arg-type]
        img = nib.load(str(path))
        img.header.set_sform(img.affine, code=0)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(path))

    monkeypatch.setattr(batch, "write_label", wrong_codes)
    [result] = predict_batch(predictor, find_cases(src, ["image"]), tmp_path / "out", progress=False)
    assert result.status == "failed" and "sform (code 0) differs from the input's (code 1)" in result.error
    assert not (tmp_path / "out" / "a.nii.gz").exists()


def test_check_nifti_output_rejects_other_geometry(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "a.nii.gz", np.ones((4, 4, 4), np.float32), np.eye(4))
    ref = read_volume(src)
    out = save_nifti(tmp_path / "b.nii.gz", np.ones((4, 4, 4), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="affine"):
        check_nifti_output(out, ref)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_parallel_workers_give_the_same_masks(tmp_path: Path, checkpoint: Path) -> None:
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", rng.random((14, 12, 10)).astype(np.float32), np.eye(4))
    base = ["predict", "--model", str(checkpoint), "--input", str(tmp_path / "in"), "--quiet"]
    assert main([*base, "--output", str(tmp_path / "serial")]) == 0
    assert main([*base, "--output", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    for name in ("a", "b", "c"):
        serial = np.asanyarray(nib.load(str(tmp_path / "serial" / f"{name}.nii.gz")).dataobj)
        parallel = np.asanyarray(nib.load(str(tmp_path / "parallel" / f"{name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(serial, parallel)
    assert {r["status"] for r in _log(tmp_path / "parallel").values()} == {"ok"}


def test_progress_bar_shows_case_and_time(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_nifti(tmp_path / "p.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    predictor = Predictor.from_checkpoints([checkpoint])
    predict_batch(predictor, find_cases(src, ["image"]), tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "1/1" in err and "p: ok" in err


def test_multichannel_ensemble_with_tta_from_nnunet_folder_and_manifest(tmp_path: Path) -> None:
    from medseg.data.preprocess import PreprocessingPlan
    from tests.inference.inference_helpers import make_checkpoint

    plan = PreprocessingPlan(target_spacing=[1.5, 1.5, 1.5], normalization="zscore", channel_names=["T1", "T2"],
                             labels={"background": 0, "tumour": 1})
    folds = [make_checkpoint(tmp_path / f"fold_{k}" / "checkpoints" / "best.ckpt", plan, seed=k) for k in (0, 1)]
    rng = np.random.default_rng(4)
    affine = np.diag([-1.0, -1.0, 1.2, 1.0])
    for ch in (0, 1):
        save_nifti(tmp_path / "imagesTs" / f"brain_{ch:04d}.nii.gz", rng.random((16, 14, 12)).astype(np.float32), affine)
    models = [a for f in folds for a in ("--model", str(f.parents[1]))]
    out = tmp_path / "out"
    assert main(["predict", *models, "--input", str(tmp_path / "imagesTs"), "--output", str(out), "--tta", "--quiet"]) == 0
    _same_header(out / "brain.nii.gz", tmp_path / "imagesTs" / "brain_0000.nii.gz")
    config = (out / "predict_config.json").read_text(encoding="utf-8")
    assert "fold_0" in config and "fold_1" in config and '"tta": true' in config
    # The same case through a CSV manifest listing the channels.
    (tmp_path / "cases.csv").write_text("case,image,image_t2,split\nbrain,imagesTs/brain_0000.nii.gz,"
                                        "imagesTs/brain_0001.nii.gz,test\n")
    out2 = tmp_path / "out2"
    assert main(["predict", *models, "--input", str(tmp_path / "cases.csv"), "--output", str(out2), "--tta",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out2 / "brain.nii.gz")).dataobj),
                                  np.asanyarray(nib.load(str(out / "brain.nii.gz")).dataobj))


def test_worker_devices_round_robin_over_gpus():
    from medseg.inference.batch import worker_device

    assert [worker_device(i, "cuda", 2) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device(3, "cuda:0", 0) == "cpu"  # no GPU visible: CPU workers
    assert worker_device(1, "cpu", 4) == "cpu"


@pytest.mark.parametrize("extras", ["none", "in memory", "spilled"])
def test_input_image_is_freed_before_the_network_runs(tmp_path: Path, checkpoint: Path,
                                                      monkeypatch: pytest.MonkeyPatch, extras: str) -> None:
    """The batch holds the input only until it is prepared (a 512x512x300 CT is 157 MB as
    int16): while the network runs, no full-size input array is alive in memory. Statistics
    or previews need the first channel's intensities after the prediction: a small one stays
    in memory, a large one (here: any) waits in a temporary file, memory-mapped."""
    import gc
    import inspect

    from medseg.data.io import Volume
    from medseg.inference import spill
    from medseg.inference.batch_extras import BatchExtras
    from medseg.inference.inputs import InputCase

    if extras == "spilled":
        monkeypatch.setattr(spill, "SPILL_BYTES", 1)
    shape = (21, 19, 17)
    ct = (np.random.default_rng(2).random(shape) * 2000 - 1000).astype(np.int16)
    src = save_nifti(tmp_path / "ct.nii.gz", ct, np.diag([1.2, 1.2, 1.2, 1.0]))
    size = ct.size
    del ct  # only the batch's own copies may be found below
    predictor = Predictor.from_checkpoints([checkpoint / "checkpoints" / "best.ckpt"], device="cpu")
    alive: list[list[tuple[int, ...]]] = []
    original = predictor.predict_prepared

    def big(o: object) -> bool:
        return isinstance(o, np.ndarray) and o.dtype == np.int16 and o.size >= size

    def spy(prepared, affine):  # type: ignore[no-untyped-def]
        # arrays are not tracked by gc: look in every caller's locals and in tracked containers
        gc.collect()
        held = [v for info in inspect.stack() for v in info.frame.f_locals.values()]
        for o in gc.get_objects():
            if isinstance(o, Volume):
                held.append(o.array)
            elif isinstance(o, list | tuple):
                held.extend(o)
            elif isinstance(o, dict):
                held.extend(o.values())
        alive.append(sorted({(tuple(o.shape), isinstance(o, np.memmap)) for o in held if big(o)}))
        return original(prepared, affine)

    monkeypatch.setattr(predictor, "predict_prepared", spy)
    parts = BatchExtras(predictor.labels, statistics=True) if extras != "none" else None
    result = batch.predict_case(predictor, InputCase("ct", [src]), tmp_path / "out", resume=False, extras=parts)
    assert result.status == "ok", result.error
    assert alive == {"none": [[]], "in memory": [[(shape, False)]], "spilled": [[(shape, True)]]}[extras]
    if parts is not None:  # the statistics read the intensities back
        assert (tmp_path / "out" / "statistics" / "ct.csv").is_file()


def test_mask_is_written_while_the_extras_are_computed(tmp_path: Path, checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer and the extras run at the same time: each waits to see the other started
    (a serial order would time out on one side)."""
    import threading

    from medseg.inference.batch_extras import BatchExtras
    from medseg.inference.inputs import InputCase

    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((10, 10, 10), np.float32), np.eye(4), 1, 1)
    predictor = Predictor.from_checkpoints([checkpoint])
    writing, computing = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}
    real_write, real_done = batch.write_label, BatchExtras.case_done

    def write(path: Path, labels: np.ndarray, reference: object) -> None:
        writing.set()
        seen["writer saw the extras"] = computing.wait(10)
        real_write(path, labels, reference)  # type: ignore[arg-type]

    def case_done(self: BatchExtras, *args: object, **kwargs: object) -> str:
        computing.set()
        seen["extras saw the writer"] = writing.wait(10)
        return real_done(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "write_label", write)
    monkeypatch.setattr(BatchExtras, "case_done", case_done)
    parts = BatchExtras(predictor.labels, statistics=True)
    result = batch.predict_case(predictor, InputCase("a", [src]), tmp_path / "out", resume=False, extras=parts)
    assert result.status == "ok", result.error
    assert seen == {"writer saw the extras": True, "extras saw the writer": True}
    assert (tmp_path / "out" / "a.nii.gz").is_file() and not parts.missing_parts(tmp_path / "out", "a")


def test_a_mask_that_cannot_be_written_leaves_no_extras(tmp_path: Path, checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.inference.batch_extras import BatchExtras

    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((10, 10, 10), np.float32), np.eye(4), 1, 1)
    predictor = Predictor.from_checkpoints([checkpoint])

    def full_disk(path: Path, labels: np.ndarray, reference: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch, "write_label", full_disk)
    parts = BatchExtras(predictor.labels, statistics=True, preview=True)
    out = tmp_path / "out"
    [result] = predict_batch(predictor, find_cases(src, ["image"]), out, progress=False, extras=parts)
    assert result.status == "failed" and "No space left on device" in result.error
    assert sorted(parts.missing_parts(out, "a")) == ["preview", "qa", "statistics"]  # none merged for a failed mask
    assert not (out / "statistics.csv").exists()


def test_a_failed_preview_fails_the_case_but_keeps_mask_and_statistics(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.inference import preview
    from medseg.inference.batch_extras import BatchExtras

    src = save_nifti(tmp_path / "in" / "a.nii.gz", np.ones((10, 10, 10), np.float32), np.eye(4), 1, 1)
    predictor = Predictor.from_checkpoints([checkpoint])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(preview, "write_preview", broken)
    parts = BatchExtras(predictor.labels, statistics=True, preview=True)
    out = tmp_path / "out"
    [result] = predict_batch(predictor, find_cases(src, ["image"]), out, progress=False, extras=parts)
    assert result.status == "failed" and result.error == "mask written, but preview: RuntimeError: no fonts"
    assert parts.missing_parts(out, "a") == ["preview"] and (out / "a.nii.gz").is_file()
