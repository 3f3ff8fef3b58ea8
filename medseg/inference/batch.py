"""Unattended batch prediction: every case gets a verified output or a logged reason.

For each case: skip it when ``resume`` is on and its outputs already exist and are valid
(readable, same shape/affine/qform/sform codes as the input; a SEG that references the
input series); otherwise read, predict, write atomically, and verify the written header
against the input's (a mismatch removes the output and fails the case). A case that fails
for any reason (unreadable, truncated, empty, NaN, wrong dimensionality, wrong channel
count…) is recorded with a one-line reason and the batch goes on. With ``--format both`` a
case whose DICOM-SEG cannot be written still gets its NIfTI; it is logged failed with an
error that starts "DICOM-SEG not written (NIfTI … written)".

``OUTPUT/predict_log.csv`` (case, status ok|failed|skipped, seconds, error) is rewritten
atomically after every case, so an interrupted batch leaves a consistent log and no
half-written image. ``workers > 1`` predicts cases in parallel CPU processes (spawned,
each loading the models once and using ``cpu_count // workers`` torch threads); with
``--device cuda`` on a multi-GPU machine the workers are spread over the GPUs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medseg.data.grid import AFFINE_ATOL_MM, affine_difference, same_grid
from medseg.data.io import NIFTI_SUFFIXES, ImageReadError, Volume, read_volume, write_label
from medseg.inference.batch_extras import BatchExtras
from medseg.inference.inputs import InputCase, read_case
from medseg.inference.predictor import Predictor, PredictorSpec
from medseg.inference.spill import spilled
from medseg.inference.viewers import write_viewer_tables
from medseg.utils import atomic_write_text

FORMATS = ("nifti", "dicom-seg", "both")
LOG_NAME = "predict_log.csv"
LOG_COLUMNS = ("case", "status", "seconds", "error")


@dataclass
class CaseResult:
    case: str
    status: str
    """ok, failed or skipped."""
    seconds: float
    error: str = ""


def output_paths(output: Path, case: InputCase, fmt: str) -> list[Path]:
    """The files a case produces: ``<case>.nii.gz`` and/or ``<case>.dcm`` (DICOM-SEG)."""
    paths = []
    if fmt in ("nifti", "both"):
        paths.append(output / f"{case.name}.nii.gz")
    if fmt in ("dicom-seg", "both"):
        paths.append(output / f"{case.name}.dcm")
    return paths


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or repr(err)
    name = type(err).__name__
    text = text if isinstance(err, ImageReadError) else f"{name}: {text}"
    return text if len(text) <= 600 else text[:597] + "..."


def input_reference(case: InputCase) -> Volume:
    """The input's geometry: header only for NIfTI, a full read otherwise (DICOM, NRRD)."""
    src = case.sources[0]
    if src.is_file() and src.name.lower().endswith(NIFTI_SUFFIXES):
        try:
            img: Any = nib.load(str(src))
        except Exception as err:
            raise ImageReadError(f"{src}: unreadable NIfTI ({type(err).__name__}: {err})") from err
        shape = tuple(int(s) for s in img.shape[:3])
        return Volume(_shape_only(shape), np.asarray(img.affine, float), img.header.copy(), str(src))
    return read_volume(src)


def _shape_only(shape: Sequence[int]) -> np.ndarray:
    """A zero-memory stand-in array carrying only a spatial shape (for geometry checks)."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(int(s) for s in shape))


def check_nifti_output(path: Path, reference: Volume) -> None:
    """Raise ValueError unless ``path`` is a readable integer label map in ``reference``'s geometry.

    Compares shape, affine (``grid.AFFINE_ATOL_MM``), and when the input is NIfTI its qform/sform and codes.
    """
    try:
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # a full read also detects truncated .gz files
    except Exception as err:
        raise ValueError(f"{path}: unreadable output ({type(err).__name__}: {err})") from err
    if tuple(img.shape) != reference.spatial_shape:
        raise ValueError(f"{path}: shape {img.shape} differs from the input's {reference.spatial_shape}")
    if not same_grid(img.shape, img.affine, reference.spatial_shape, reference.affine):
        raise ValueError(f"{path}: affine {img.affine.tolist()} differs from the input's {reference.affine.tolist()}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{path}: data type {data.dtype} is not an integer label map")
    ref = reference.header
    if isinstance(ref, nib.Nifti1Header):
        hdr = img.header
        for kind in ("qform", "sform"):
            got_aff, got_code = getattr(hdr, f"get_{kind}")(coded=True)
            ref_aff, ref_code = getattr(ref, f"get_{kind}")(coded=True)
            same = int(got_code) == int(ref_code) and (
                (got_aff is None and ref_aff is None)
                or (got_aff is not None and ref_aff is not None and affine_difference(got_aff, ref_aff) <= AFFINE_ATOL_MM)
            )
            if not same:
                raise ValueError(f"{path}: {kind} (code {got_code}) differs from the input's (code {ref_code})")


def outputs_valid(paths: Sequence[Path], case: InputCase) -> bool:
    """True when every output exists and matches the input (used by ``resume``)."""
    if not all(p.is_file() for p in paths):
        return False
    try:
        reference = input_reference(case)
        for path in paths:
            if path.name.endswith(".dcm"):
                from medseg.inference.dicom_seg import check_dicom_seg

                check_dicom_seg(path, reference)
            else:
                check_nifti_output(path, reference)
    except Exception:  # anything wrong with an old output means: predict again
        return False
    return True


def predict_case(
    predictor: Predictor, case: InputCase, output: Path, fmt: str = "nifti", resume: bool = True,
    extras: BatchExtras | None = None,
) -> CaseResult:
    """Predict one case into ``output``; never raises for a bad input (see the result's error).

    ``extras``: statistics / QA / preview parts per case (:mod:`medseg.inference.batch_extras`).
    """
    start = time.perf_counter()
    paths = output_paths(output, case, fmt)
    try:
        if resume and outputs_valid(paths, case):
            extra_error = extras.case_skipped(output, case, len(predictor.channel_names), next(
                (p for p in paths if p.name.endswith(".nii.gz")), None)) if extras else ""
            return CaseResult(case.name, "failed" if extra_error else "skipped",
                              round(time.perf_counter() - start, 3), extra_error)
        if fmt != "nifti" and not case.is_dicom:
            raise ImageReadError(
                f"{case.sources[0]}: --format {fmt} needs a DICOM series input (DICOM-SEG references the "
                "source slices); use --format nifti for this case"
            )
        volume = read_case(case, len(predictor.channel_names))
        seg_error = ""
        if fmt != "nifti":
            from medseg.inference.dicom_seg import load_sources

            try:
                load_sources(volume.dicom_files)  # fail before predicting if no SEG can be written
            except Exception as err:
                if fmt == "dicom-seg":
                    raise
                seg_error = one_line(err)  # --format both: the NIfTI is still written
        prepared = predictor.prepare(volume.array, volume.affine)
        reference = Volume(_shape_only(volume.spatial_shape), volume.affine, volume.header, volume.source,
                           volume.dicom_files)
        # first channel, input units, for extras (spilled to a temporary file while the network
        # runs: not part of its peak); otherwise the input is freed before the network runs
        image = spilled(volume.array[0]) if extras else None
        del volume
        labels = predictor.predict_prepared(prepared, reference.affine)
        del prepared
        if extras:
            extra_error, seg_error = _outputs_beside_extras(
                extras, output, case.name, labels, image, reference, paths, predictor.labels, fmt, seg_error)
        else:
            seg_error = write_outputs(paths, labels, reference, predictor.labels, fmt, seg_error)
            extra_error = ""
    except Exception as err:  # one bad case never stops the batch
        return CaseResult(case.name, "failed", round(time.perf_counter() - start, 3), one_line(err))
    errors = [f"DICOM-SEG not written (NIfTI {case.name}.nii.gz written): {seg_error}"] if seg_error else []
    errors += [f"mask written, but {extra_error}"] if extra_error else []  # a part the user asked for is missing
    if errors:  # --format both: the NIfTI is written and verified, only the SEG failed
        return CaseResult(case.name, "failed", round(time.perf_counter() - start, 3), "; ".join(errors))
    return CaseResult(case.name, "ok", round(time.perf_counter() - start, 3))


def write_outputs(
    paths: Sequence[Path], labels: np.ndarray, reference: Volume, label_names: Mapping[str, int], fmt: str,
    seg_error: str,
) -> str:
    """Write and verify the case's mask files; returns the DICOM-SEG error that ``--format both``
    tolerates ("" when none), raises for anything else."""
    for path in paths:
        if path.name.endswith(".dcm"):
            from medseg.inference.dicom_seg import write_dicom_seg

            try:
                if seg_error:
                    raise ValueError(seg_error)
                write_dicom_seg(path, labels, reference, label_names, version=_version())
            except Exception as err:
                if fmt == "dicom-seg":
                    raise
                seg_error = seg_error or one_line(err)
        else:
            write_label(path, labels, reference)
            try:
                check_nifti_output(path, reference)
            except ValueError:
                path.unlink(missing_ok=True)
                raise
    return seg_error


def _outputs_beside_extras(
    extras: BatchExtras, output: Path, case: str, labels: np.ndarray, image: np.ndarray | None,
    reference: Volume, paths: Sequence[Path], label_names: Mapping[str, int], fmt: str, seg_error: str,
) -> tuple[str, str]:
    """The mask files, then the preview, written in a thread while the statistics and QA flags
    are computed: the writer spends its time in zlib (which releases the GIL), the preview in
    Pillow, the statistics in numpy and cc3d. Returns the extras' and the SEG's errors; a mask
    that cannot be written fails the case and removes its parts."""

    def write_then_preview() -> tuple[str, str]:
        seg = write_outputs(paths, labels, reference, label_names, fmt, seg_error)
        return seg, (extras.preview_done(output, case, labels, image, reference.affine) if extras.preview else "")

    with ThreadPoolExecutor(1, thread_name_prefix="medseg-write") as pool:
        written = pool.submit(write_then_preview)
        try:
            extra_error = extras.case_done(output, case, labels, image, reference.affine, ["statistics", "qa"])
        finally:
            try:
                seg_error, preview_error = written.result()
            except BaseException:
                extras.remove_parts(output, case)
                raise
    return "; ".join(e for e in (extra_error, preview_error) if e), seg_error


def _version() -> str:
    import medseg

    return str(getattr(medseg, "__version__", "0"))


def write_log(path: Path, results: Sequence[CaseResult]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for r in results:
        writer.writerow([r.case, r.status, f"{r.seconds:.3f}", r.error])
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------ worker processes

_WORKER: Predictor | None = None


def worker_device(index: int, device: str, gpus: int) -> str:
    """Device of worker ``index``: CUDA workers are spread round-robin over ``gpus`` GPUs."""
    if gpus > 0 and device.startswith("cuda"):
        return f"cuda:{index % gpus}"
    return "cpu"


def _init_worker(spec: PredictorSpec, counter: Any = None, gpus: int = 0) -> None:
    global _WORKER
    if counter is not None:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        spec = dataclasses.replace(spec, device=worker_device(index, spec.device, gpus))
    _WORKER = Predictor.from_spec(spec)


def _worker_case(case: InputCase, output: Path, fmt: str, resume: bool, extras: BatchExtras | None = None
                 ) -> CaseResult:
    if _WORKER is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker not initialised")
    return predict_case(_WORKER, case, output, fmt, resume, extras)


def predict_batch(
    predictor: Predictor,
    cases: Sequence[InputCase],
    output: Path | str,
    fmt: str = "nifti",
    resume: bool = True,
    workers: int = 0,
    progress: bool = True,
    extras: BatchExtras | None = None,
    scheduler: str | None = None,
) -> list[CaseResult]:
    """Predict ``cases`` into ``output``; returns one :class:`CaseResult` per case, in order.

    ``fmt``: nifti, dicom-seg or both. ``workers`` > 1 needs a predictor built from files
    (``Predictor.from_spec``/``from_checkpoints``) so each worker can load it; so does
    ``scheduler`` (a Dask address or ``local:N``: one task per case, :mod:`medseg.inference.dask_batch`).
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {list(FORMATS)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "predict_config.json", json.dumps(predictor.describe(), indent=2, default=str))
    if fmt in ("nifti", "both"):  # names and colours for 3D Slicer / ITK-SNAP beside the masks
        write_viewer_tables(output, predictor.labels)
    log_path = output / LOG_NAME
    done: dict[str, CaseResult] = {}
    bar = tqdm(total=len(cases), unit="case", desc="predict", disable=not progress, dynamic_ncols=True)

    def record(result: CaseResult) -> None:
        done[result.case] = result
        write_log(log_path, [done[c.name] for c in cases if c.name in done])
        bar.set_postfix_str(f"{result.case}: {result.status} {result.seconds:.1f}s", refresh=False)
        bar.update(1)
        if result.status == "failed":
            bar.write(f"failed {result.case}: {result.error}")

    try:
        if scheduler:
            from medseg.inference.dask_batch import run_dask

            run_dask(predictor, cases, output, fmt, resume, scheduler, record, extras)
        elif workers > 1:
            _run_parallel(predictor, cases, output, fmt, resume, workers, record, extras)
        else:
            for case in cases:
                record(predict_case(predictor, case, output, fmt, resume, extras))
    finally:
        bar.close()
        if extras:  # merged statistics.csv / qa.csv and index.html, also after an interruption
            extras.finish(output, [c.name for c in cases], done)
    return [done[c.name] for c in cases if c.name in done]


def _run_parallel(
    predictor: Predictor, cases: Sequence[InputCase], output: Path, fmt: str, resume: bool, workers: int,
    record: Any, extras: BatchExtras | None = None,
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if predictor.spec is None:
        raise ValueError("workers > 1 needs a Predictor built with Predictor.from_spec/from_checkpoints")
    # Multi-GPU: with a CUDA device, one worker process per GPU slot (round-robin), each
    # predicting whole cases; inference is embarrassingly parallel, so this does what
    # Lightning's DDP predict would without gathering tensors across ranks.
    gpus = torch.cuda.device_count() if str(predictor.spec.device).startswith("cuda") else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    spec = dataclasses.replace(predictor.spec, threads=threads, device=predictor.spec.device if gpus else "cpu")
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(spec, counter, gpus)) as pool:
        futures = {pool.submit(_worker_case, c, output, fmt, resume, extras): c for c in cases}
        try:
            for future in as_completed(futures):
                case = futures[future]
                try:
                    record(future.result())
                except Exception as err:  # a worker that died (e.g. out of memory)
                    record(CaseResult(case.name, "failed", 0.0, one_line(err)))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
