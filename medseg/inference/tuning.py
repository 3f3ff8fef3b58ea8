"""Choosing the post-processing on validation data (``medseg tune-postprocess``).

Like nnU-Net's post-processing choice on cross-validation predictions, but with more
candidates. The run's validation cases (each fold run's own ``split.json`` validation
cases, predicted by that fold's network: out-of-fold), or every labelled case of a given
manifest (predicted by the whole ensemble), are predicted once; their class probabilities
are kept on the network grid together with the network input and the reference label
resampled to that grid (float16 probabilities: memory ~ 2 bytes x classes x voxels per case).
Then per structure, greedily, each stage keeping a candidate only when it raises that
structure's mean validation Dice by more than ``margin``:

1. CRF (:mod:`medseg.inference.crf`) with one of a small grid of parameter sets, or none;
   one parameter set is shared by the structures it helps (``inference.crf`` has one);
2. connected components: none, largest component, or islands below 1%, 5% or 20% of the
   structure's median reference volume removed;
3. hole filling or not.

Dice is measured on the network grid (the post-processing steps count volumes in mL, so a
threshold means the same on the input grid). The choice and the Dice before/after go to
``RUN_DIR/postprocessing.json``; its ``inference`` section is what ``medseg predict --model
RUN_DIR`` applies (:mod:`medseg.inference.tuned`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.config import CrfConfig, load
from medseg.data.grid import label_dtype, voxel_spacing
from medseg.data.io import read_label, read_volume
from medseg.data.manifest import Case, load_manifest
from medseg.data.preprocess import prepare_case
from medseg.inference.crf import refine_probabilities
from medseg.inference.postprocess import fill_holes, keep_largest_component, remove_small_components
from medseg.inference.predictor import Predictor, PredictorSpec
from medseg.inference.tuned import TUNED_NAME
from medseg.utils import atomic_write_text

DEFAULT_MARGIN = 0.002
"""Minimum gain in mean validation Dice for a step to be kept."""
CRF_GRID: tuple[dict[str, float], ...] = (
    {},
    {"bilateral_weight": 5.0, "bilateral_sigma_mm": 5.0},
    {"bilateral_sigma_intensity": 1.0},
)
"""CRF parameter sets tried (changes from :class:`CrfConfig`'s defaults): the defaults (an
edge-stopping appearance kernel), a stronger and wider one (DeepMedic-like, for lesions
with a clear edge), one that ignores weak edges (for noisy images)."""
ISLAND_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.2)


@dataclass
class ValidationCase:
    """One labelled case on the network grid: probabilities, network input, reference."""

    name: str
    probs: torch.Tensor
    """(K, X, Y, Z) float16 class probabilities."""
    image: np.ndarray
    """(C, X, Y, Z) float32 network input."""
    label: np.ndarray
    """(X, Y, Z) reference label (uint8, uint16 above label 255)."""
    spacing: tuple[float, float, float]
    """mm per axis."""


def member_runs(run_dir: Path | str) -> list[Path]:
    """The fold runs ``RUN_DIR/fold_<k>`` holding a config, or ``[RUN_DIR]``."""
    run_dir = Path(run_dir)
    folds = sorted(p for p in run_dir.glob("fold_*") if (p / "config.yaml").is_file())
    if folds:
        return folds
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--model {run_dir}: no config.yaml (nor fold_<k>/config.yaml); pass a run directory")
    return [run_dir]


def _read_case(case: Case, predictor: Predictor) -> ValidationCase:
    vols = [read_volume(p) for p in case.images]
    image = np.concatenate([v.array[None] if v.array.ndim == 3 else v.array for v in vols], axis=0)
    if case.label is None:  # pragma: no cover - callers pass labelled cases only
        raise ValueError(f"{case.name}: no label; tuning needs labelled cases")
    prepared = prepare_case(image, vols[0].affine, predictor.plan, read_label(case.label).array)
    probs = predictor.probabilities(prepared).to(torch.float16)
    if prepared.label is None:  # pragma: no cover - prepare_case returns the label it was given
        raise RuntimeError(f"{case.name}: the label was lost in preprocessing")
    return ValidationCase(case.name, probs, prepared.image, prepared.label, voxel_spacing(prepared.affine))


def validation_cases(run_dir: Path | str, data: Path | str | None = None, device: str = "cpu",
                     progress: Callable[[str], None] | None = None) -> tuple[list[ValidationCase], dict[str, int]]:
    """Predict the validation cases of ``run_dir`` (or every labelled case of ``data``).

    Returns the cases and the model's labels (name -> id, background included).
    """
    runs = member_runs(run_dir)
    out: list[ValidationCase] = []
    if data is not None:
        predictor = Predictor.from_spec(PredictorSpec([str(r) for r in runs], device, postprocess=False, crf=False))
        cases = [c for c in load_manifest(data).all_cases if c.label is not None]
        if not cases:
            raise ValueError(f"--data {data}: no case has a label; tuning needs labelled cases")
        for case in cases:
            out.append(_read_case(case, predictor))
            if progress:
                progress(case.name)
        return out, predictor.labels
    labels: dict[str, int] = {}
    for run in runs:
        cfg = load(run / "config.yaml")
        split_path = run / "split.json"
        if cfg.data.manifest is None or not split_path.is_file():
            raise FileNotFoundError(f"{run}: needs split.json and data.manifest in config.yaml; or pass --data MANIFEST")
        val = set(json.loads(split_path.read_text(encoding="utf-8"))["val"])
        if not val:
            raise ValueError(f"{split_path}: no validation cases; pass a labelled manifest with --data MANIFEST")
        predictor = Predictor.from_spec(PredictorSpec([str(run)], device, postprocess=False, crf=False))
        labels = predictor.labels
        for case in load_manifest(cfg.data.manifest).training:
            if case.name in val and case.label is not None:
                out.append(_read_case(case, predictor))
                if progress:
                    progress(case.name)
    return out, labels


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return math.nan if total == 0 else 2.0 * int((pred & ref).sum()) / total


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _score(maps: Sequence[np.ndarray], cases: Sequence[ValidationCase], label: int) -> float:
    return _mean([_dice(m == label, c.label == label) for m, c in zip(maps, cases, strict=True)])


def _argmax(probs: torch.Tensor) -> np.ndarray:
    """(K, X, Y, Z) probabilities -> (X, Y, Z) label map (uint8, uint16 above 256 classes)."""
    return probs.argmax(0).numpy().astype(label_dtype(int(probs.shape[0]) - 1))


def _crf_maps(cases: Sequence[ValidationCase], cfg: CrfConfig, name: str, labels: Mapping[str, int]) -> list[np.ndarray]:
    one = dataclasses.replace(cfg, enabled=True, structures=[name])
    return [_argmax(refine_probabilities(c.probs.float(), c.image, c.spacing, one, labels)) for c in cases]


def tune(cases: Sequence[ValidationCase], labels: Mapping[str, int], margin: float = DEFAULT_MARGIN,
         crf_grid: Sequence[Mapping[str, float]] = CRF_GRID) -> dict[str, Any]:
    """Choose the post-processing per structure; returns ``postprocessing.json``'s content
    (without the provenance fields)."""
    if not cases:
        raise ValueError("no validation case to tune on")
    structures = {n: i for n, i in labels.items() if i != 0}
    base = [_argmax(c.probs.float()) for c in cases]
    before = {n: _score(base, cases, i) for n, i in structures.items()}
    # stage 1: CRF, one parameter set shared by the structures it helps
    crf_maps: list[dict[str, list[np.ndarray]]] = []
    crf_dice: list[dict[str, float]] = []
    for params in crf_grid:
        cfg = CrfConfig(**params)  # type: ignore[arg-type]
        refined = {n: _crf_maps(cases, cfg, n, labels) for n in structures}
        crf_maps.append(refined)
        crf_dice.append({n: _score(refined[n], cases, structures[n]) for n in structures})
    gains = [sum(d[n] - before[n] for n in structures if d[n] - before[n] > margin) for d in crf_dice]
    best = int(np.argmax(gains)) if gains and max(gains) > 0 else None
    report: dict[str, Any] = {}
    inference: dict[str, Any] = {"keep_largest_component": [], "min_component_ml": {}, "fill_holes": []}
    crf_structures = []
    for name, label in structures.items():
        trials: dict[str, float] = {"none": before[name]}
        for k, d in enumerate(crf_dice):
            trials[f"crf_{k}"] = d[name]
        use_crf = best is not None and crf_dice[best][name] - before[name] > margin
        maps = crf_maps[best][name] if use_crf and best is not None else base
        current = crf_dice[best][name] if use_crf and best is not None else before[name]
        if use_crf:
            crf_structures.append(name)
        # stage 2: connected components
        vols = [float((c.label == label).sum()) * float(np.prod(c.spacing)) / 1000.0 for c in cases]
        median_ml = float(np.median([v for v in vols if v > 0])) if any(v > 0 for v in vols) else 0.0
        options: dict[str, float | None] = {"largest_component": None}  # name -> island volume, mL
        for f in ISLAND_FRACTIONS:
            below = float(f"{f * median_ml:.4g}")
            if below > 0:
                options[f"islands_below_{below:g}_ml"] = below
        component, best_maps = "none", maps
        for key, ml in options.items():
            candidate = [m.copy() for m in maps]
            for m, c in zip(candidate, cases, strict=True):
                if ml is None:
                    keep_largest_component(m, label)
                else:
                    remove_small_components(m, label, ml, c.spacing)
            score = _score(candidate, cases, label)
            trials[key] = score
            if score > current + margin:
                component, current, best_maps = key, score, candidate
        if component == "largest_component":
            inference["keep_largest_component"].append(name)
        elif component != "none":
            inference["min_component_ml"][name] = options[component]
        # stage 3: hole filling
        filled = [m.copy() for m in best_maps]
        for m in filled:
            fill_holes(m, label)
        score = _score(filled, cases, label)
        trials["fill_holes"] = score
        holes = score > current + margin
        if holes:
            current = score
            inference["fill_holes"].append(name)
        report[name] = {
            "label": label, "crf": use_crf, "components": component, "fill_holes": holes,
            "dice_before": before[name], "dice_after": current, "trials": trials,
        }
    if crf_structures and best is not None:
        inference["crf"] = dataclasses.asdict(
            dataclasses.replace(CrfConfig(**crf_grid[best]), enabled=True, structures=crf_structures))  # type: ignore[arg-type]
    return {
        "margin": margin, "cases": [c.name for c in cases],
        "crf_grid": [dict(g) for g in crf_grid], "crf_choice": best,
        "mean_dice_before": _mean(list(before.values())),
        "mean_dice_after": _mean([r["dice_after"] for r in report.values()]),
        "structures": report, "inference": inference,
    }


def tune_postprocess(run_dir: Path | str, data: Path | str | None = None, device: str = "cpu",
                     margin: float = DEFAULT_MARGIN, crf: bool = True,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict the validation cases, choose the post-processing, write ``RUN_DIR/postprocessing.json``."""
    cases, labels = validation_cases(run_dir, data, device, progress)
    result = tune(cases, labels, margin, CRF_GRID if crf else ())
    result = {
        "medseg_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir), "data": str(data) if data else "split.json validation cases",
        "dice_grid": "network", **result,
    }
    text = json.dumps(_clean(result), indent=2, allow_nan=False) + "\n"
    atomic_write_text(Path(run_dir) / TUNED_NAME, text)
    return result


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
