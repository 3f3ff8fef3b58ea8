"""medseg's public Python API: the ``medseg`` commands as functions (``medseg.train`` ...).

Each function is a thin layer over the library functions that ``medseg/commands/*.py`` call,
with the same defaults, so a script and the command line give the same result. They are
importable from the package root (``medseg.train``, ``medseg.predict``, ``medseg.Predictor``,
``medseg.evaluate``, ``medseg.check``); ``import medseg`` stays light and loads this module,
and with it torch and Lightning, on first use.

Every example below runs as written (``tests/test_api.py`` runs them) on synthetic phantoms
from :func:`medseg.data.synthetic.generate_dataset`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medseg.config import PipelineConfig
    from medseg.data.check import Problem
    from medseg.inference.batch import CaseResult
    from medseg.inference.predictor import Predictor
    from medseg.training.run import TrainResult

PathLike = str | Path


def _overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """``key=value`` strings from either form (a mapping's values written as YAML/JSON)."""
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError(f"overrides={overrides!r}: expected a list of 'key=value' strings or a mapping, not one string")
    return list(overrides)


def load_pipeline(
    pipeline: PathLike | Mapping[str, Any] | PipelineConfig, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> PipelineConfig:
    """A validated :class:`~medseg.config.PipelineConfig` from a YAML path, a mapping or a config.

    ``overrides``: ``["trainer.max_epochs=3"]`` or ``{"trainer.max_epochs": 3}``, as ``--set``.
    Raises :class:`~medseg.config.ConfigError` naming a bad key or value.
    """
    from medseg.config import PipelineConfig, from_dict, load

    items = _overrides(overrides)
    if isinstance(pipeline, PipelineConfig):
        return from_dict(asdict(pipeline), items)
    if isinstance(pipeline, Mapping):
        return from_dict(dict(pipeline), items)
    return load(pipeline, items)


def train(
    pipeline: PathLike | Mapping[str, Any] | PipelineConfig,
    data: PathLike | None = None,
    output: PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    resume: bool = False,
) -> TrainResult:
    """Train a pipeline into a run directory, as ``medseg train``; returns a ``TrainResult``.

    ``pipeline``: a YAML file (``pipelines/demo.yaml``), a mapping of the same sections, or a
    ``PipelineConfig``. ``data``: a manifest replacing ``data.manifest`` (``--data``).
    ``output``: the run directory (default ``runs/<pipeline name>``). ``overrides``: as
    ``--set``. ``resume``: continue from ``checkpoints/last.ckpt``. One validation line per
    validation is printed; ``TrainResult`` has ``run_dir``, ``best_checkpoint``,
    ``last_checkpoint``, ``best_val_dice`` and ``seconds``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import medseg
    >>> from medseg.data.synthetic import generate_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> manifest = generate_dataset(Path(tmp.name) / "data", cases=4, shape=(32, 32, 24))
    >>> tiny = {"data": {"patch_size": [16, 16, 16], "target_spacing": [4.0, 4.0, 4.0]},
    ...         "model": {"channels": [4, 8]},
    ...         "trainer": {"max_epochs": 1, "steps_per_epoch": 2, "val_every_n_epochs": 1,
    ...                     "memory_format": "contiguous", "progress_bar": False}}
    >>> result = medseg.train(tiny, data=manifest, output=Path(tmp.name) / "run")
    >>> result.best_checkpoint.name, 0.0 <= result.best_val_dice <= 1.0
    ('best.ckpt', True)
    >>> tmp.cleanup()
    """
    from medseg.training.run import train as train_run

    items = _overrides(overrides)
    if data is not None:
        items.append(f"data.manifest={json.dumps(str(data))}")
    cfg = load_pipeline(pipeline, items)
    run_dir = Path(output) if output is not None else Path("runs") / cfg.name
    return train_run(cfg, run_dir, resume=resume)


def predict(
    model: PathLike | Sequence[PathLike] | Predictor,
    input: PathLike,
    output: PathLike,
    *,
    format: str = "nifti",
    device: str = "auto",
    tta: bool | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    precision: str | None = None,
    postprocess: bool = True,
    split: str = "auto",
    resume: bool = True,
    workers: int = 0,
    progress: bool = False,
) -> list[CaseResult]:
    """Predict every case of ``input`` into ``output``, as ``medseg predict``.

    ``model``: a run directory (its best checkpoint), a ``.ckpt``, an export folder, a list
    of them (an ensemble), or a :class:`Predictor`. ``input``: a NIfTI file, a folder, a
    manifest or DICOM series. Writes ``output/<case>.nii.gz`` (and/or ``.dcm``),
    ``predict_log.csv`` and the viewer colour tables; returns one ``CaseResult`` (``case``,
    ``status`` ok|failed|skipped, ``seconds``, ``error``) per case: a bad case is reported,
    never raised. The other arguments are the command's options.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import nibabel as nib
    >>> import medseg
    >>> from medseg.data.synthetic import generate_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = Path(tmp.name)
    >>> manifest = generate_dataset(root / "data", cases=4, shape=(32, 32, 24))
    >>> tiny = {"data": {"patch_size": [16, 16, 16], "target_spacing": [4.0, 4.0, 4.0]},
    ...         "model": {"channels": [4, 8]},
    ...         "trainer": {"max_epochs": 1, "steps_per_epoch": 2, "val_every_n_epochs": 1,
    ...                     "memory_format": "contiguous", "progress_bar": False}}
    >>> _ = medseg.train(tiny, data=manifest, output=root / "run")
    >>> results = medseg.predict(root / "run", root / "data" / "imagesTs", root / "pred", device="cpu")
    >>> [(r.case, r.status) for r in results]
    [('phantom_003', 'ok')]
    >>> image = nib.load(root / "data" / "imagesTs" / "phantom_003.nii.gz")
    >>> mask = nib.load(root / "pred" / "phantom_003.nii.gz")
    >>> mask.shape == image.shape, bool((mask.affine == image.affine).all())
    (True, True)
    >>> sorted(p.name for p in (root / "pred").glob("labels.*"))
    ['labels.ctbl', 'labels.itksnap.txt']
    >>> tmp.cleanup()
    """
    from medseg.inference.batch import predict_batch
    from medseg.inference.inputs import InputError, find_cases
    from medseg.inference.predictor import Predictor, PredictorSpec

    if isinstance(model, Predictor):
        predictor = model
    else:
        models = [model] if isinstance(model, str | Path) else list(model)
        predictor = Predictor.from_spec(PredictorSpec(
            models=[str(m) for m in models], device=device, tta=tta, overlap=overlap,
            sw_batch_size=sw_batch_size, postprocess=postprocess, precision=precision,
        ))
    if Path(input).resolve() == Path(output).resolve():
        raise InputError(f"output {output}: is the input folder; choose another folder")
    cases = find_cases(input, predictor.channel_names, split)
    return predict_batch(predictor, cases, output, format, resume, workers, progress)


def evaluate(pred: PathLike, ref: PathLike, output: PathLike, **options: Any) -> dict[str, Any]:
    """Compare predicted label maps with references, as ``medseg evaluate``; returns the summary.

    ``pred``: a folder of ``<case>.nii.gz``; ``ref``: a folder or a manifest. Writes
    ``metrics.csv`` (one row per case and structure: dice, iou, hd95, assd, nsd in mm,
    volumes in mL), ``cases.csv``, ``summary.json`` and ``report.html``/``report.md``
    into ``output``. ``options``: those of
    :func:`medseg.evaluation.evaluate.evaluate` (``labels``, ``nsd_tolerance`` in mm,
    ``workers``, ``empty_policy``, ``resample_pred``, ``group_by``, ``progress`` ...;
    ``progress`` defaults to False here).

    >>> import csv
    >>> import tempfile
    >>> from pathlib import Path
    >>> import medseg
    >>> from medseg.data.synthetic import generate_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = Path(tmp.name)
    >>> manifest = generate_dataset(root / "data", cases=3, shape=(32, 32, 24))
    >>> summary = medseg.evaluate(root / "data" / "labelsTs", manifest, root / "eval")  # a perfect prediction
    >>> rows = list(csv.DictReader(open(root / "eval" / "metrics.csv")))
    >>> sorted({(r["structure"], float(r["dice"])) for r in rows})
    [('lesion', 1.0), ('organ', 1.0), ('vessel', 1.0)]
    >>> tmp.cleanup()
    """
    from medseg.evaluation.evaluate import evaluate as evaluate_run

    options.setdefault("progress", False)
    return evaluate_run(pred, ref, output, **options)


def check(manifest: PathLike, workers: int = 1, progress: bool = False) -> list[Problem]:
    """Every problem of a dataset, as ``medseg check``; an empty list for a clean dataset.

    ``manifest``: a Decathlon/nnU-Net ``dataset.json`` or a CSV manifest. Each ``Problem``
    has ``case``, ``kind`` (a short code), ``message`` (naming the fix) and ``severity``
    (error|warning);
    :func:`medseg.data.check.format_problems` prints them as the command does.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import medseg
    >>> from medseg.data.synthetic import generate_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> manifest = generate_dataset(Path(tmp.name) / "data", cases=3, shape=(32, 32, 24))
    >>> medseg.check(manifest)
    []
    >>> (Path(tmp.name) / "data" / "labelsTr" / "phantom_001.nii.gz").write_bytes(b"not an image")
    12
    >>> [(p.severity, p.case, p.kind) for p in medseg.check(manifest)]
    [('error', 'phantom_001', ...)]
    >>> tmp.cleanup()
    """
    from medseg.data.check import check_dataset

    return check_dataset(manifest, progress=progress, workers=workers)
