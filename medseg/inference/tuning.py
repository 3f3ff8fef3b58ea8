"""Choosing the post-processing on validation data (``medseg tune-postprocess``).

Like nnU-Net's post-processing choice on cross-validation predictions, but with more
candidates. The run's validation cases (each fold run's own ``split.json`` validation
cases, predicted by that fold's network: out-of-fold), or every labelled case of a given
manifest (predicted by the whole ensemble), are predicted once; their class probabilities
are kept on the network grid together with the network input and the reference label
resampled to that grid (float16 probabilities: memory ~ 2 bytes x classes x voxels per case).
Then, each stage keeping a candidate only when it is *supported* (:func:`supported`): it
raises mean validation Dice by more than ``margin`` and the gain is consistent across cases
(the one-sided Student-t lower bound of the mean per-case gain at ``confidence`` is above
zero), so that one or two lucky cases do not choose a step:

1. CRF (:mod:`medseg.inference.crf`) with one of a small grid of parameter sets, or none.
   Refining one structure rescales the other classes' probabilities in its box, so a
   structure that is not refined can still change: a CRF candidate is scored by its effect
   on *every* structure. Per parameter set, the refined structures are chosen by greedy
   forward selection: a structure joins the set when refining it *together with* those
   already chosen (as ``medseg predict`` refines them) raises the sum over all structures
   of the change in mean Dice by more than ``margin``; the parameter set whose set gains
   most is kept (``inference.crf`` has one);
2. per structure, after the chosen CRF: connected components: none, largest component,
   or islands below 1%, 5% or 20% of the structure's median reference volume removed
   (a step turns only that structure's voxels into background, so it changes no other
   structure's Dice);
3. per structure, in label order after every component step (as ``medseg predict``
   applies them): hole filling or not (it fills only background).

Dice is measured on the network grid (the post-processing steps count volumes in mL, so a
threshold means the same on the input grid). The choice and the Dice before/after go to
``RUN_DIR/postprocessing.json``: ``dice_after`` is what the chosen settings give on the
tuning cases with every step applied together (:func:`apply_choice`, the steps of
``medseg predict``), side effects included; its ``inference`` section is what ``medseg predict --model
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
from medseg.config import CrfConfig, InferenceConfig, from_dict, load
from medseg.data.grid import label_dtype, voxel_spacing
from medseg.data.io import read_label, read_volume
from medseg.data.manifest import Case, load_manifest
from medseg.data.preprocess import prepare_case
from medseg.inference.crf import crf_settings, refine_probabilities
from medseg.inference.postprocess import (
    fill_holes,
    keep_largest_component,
    postprocess,
    remove_small_components,
    resolve_spec,
)
from medseg.inference.predictor import Predictor, PredictorSpec
from medseg.inference.tuned import TUNED_NAME, merge_tuned
from medseg.utils import atomic_write_text

DEFAULT_MARGIN = 0.002
"""Minimum gain in mean validation Dice for a step to be kept."""
DEFAULT_CONFIDENCE = 0.9
"""One-sided confidence that a kept step's mean per-case gain is positive (:func:`supported`)."""
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


def trained_on(run_dir: Path | str, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that a member run of ``run_dir`` trained on (its ``split.json``)."""
    train: set[str] = set()
    for run in member_runs(run_dir):
        split = Path(run) / "split.json"
        if split.is_file():
            train.update(json.loads(split.read_text(encoding="utf-8")).get("train", []))
    return sorted(n for n in names if n in train)


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return math.nan if total == 0 else 2.0 * int((pred & ref).sum()) / total


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _case_dice(maps: Sequence[np.ndarray], cases: Sequence[ValidationCase], label: int) -> np.ndarray:
    """Per-case Dice of ``label`` (NaN where prediction and reference are both empty)."""
    return np.array([_dice(m == label, c.label == label) for m, c in zip(maps, cases, strict=True)], dtype=np.float64)


def _score(maps: Sequence[np.ndarray], cases: Sequence[ValidationCase], label: int) -> float:
    return _mean(list(_case_dice(maps, cases, label)))


def case_gains(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Per-case Dice change; a case whose prediction and reference are both empty on one side
    (Dice undefined, i.e. perfect) counts as 1 there; undefined on both sides: no change."""
    a = np.where(np.isnan(after), 1.0, after)
    b = np.where(np.isnan(before), 1.0, before)
    return a - b


def _check_confidence(confidence: float) -> None:
    if not 0 <= confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a number in [0, 1), e.g. 0.9 (0: the margin alone)")


def supported(gains: np.ndarray, mean_gain: float, margin: float, confidence: float) -> bool:
    """Whether a step with these per-case Dice ``gains`` (:func:`case_gains`, summed over
    the structures it changes) and this change of mean Dice is kept: ``mean_gain`` above
    ``margin`` and, unless ``confidence`` is 0, the one-sided Student-t lower bound at
    ``confidence`` of the mean per-case gain above zero (at least two cases; identical gains
    on every case need no spread)."""
    if not mean_gain > margin:
        return False
    if confidence <= 0:
        return True
    if len(gains) < 2:
        return False
    from scipy.stats import t

    spread = float(np.std(gains, ddof=1))
    bound = float(np.mean(gains)) - float(t.ppf(confidence, len(gains) - 1)) * spread / math.sqrt(len(gains))
    return bound > 0


def _argmax(probs: torch.Tensor) -> np.ndarray:
    """(K, X, Y, Z) probabilities -> (X, Y, Z) label map (uint8, uint16 above 256 classes)."""
    return probs.argmax(0).numpy().astype(label_dtype(int(probs.shape[0]) - 1))


def crf_config(params: Mapping[str, float], structures: Sequence[str]) -> CrfConfig:
    """The CRF ``medseg predict`` runs for a tuned choice: ``params`` (changes from
    :class:`CrfConfig`'s defaults) on ``structures``, read back through the config parser
    as ``postprocessing.json``'s ``inference.crf`` is."""
    section = dataclasses.asdict(dataclasses.replace(CrfConfig(**params), enabled=True,  # type: ignore[arg-type]
                                                     structures=list(structures)))
    return from_dict({"inference": {"crf": section}}).inference.crf


def apply_choice(case: ValidationCase, inference: Mapping[str, Any], labels: Mapping[str, int]) -> np.ndarray:
    """The network-grid label map of ``case`` under a tuned ``inference`` section, by the
    steps ``medseg predict`` runs: the tuned settings merged into the defaults
    (:func:`medseg.inference.tuned.merge_tuned`), the CRF of :func:`crf_settings` on the
    probabilities (:func:`refine_probabilities`), the argmax, then :func:`postprocess`."""
    cfg = merge_tuned(InferenceConfig(), dict(inference))
    crf = crf_settings(cfg.crf, labels)
    probs = case.probs.float()
    if crf.enabled:
        refine_probabilities(probs, case.image, case.spacing, crf, labels)
    out = _argmax(probs)
    return postprocess(out, case.spacing, resolve_spec(cfg, labels))


class _JointCrf:
    """Joint CRF refinements of sets of structures for one parameter set, on every case.

    :func:`refine_probabilities` refines structures one after another, each from the
    probabilities the previous ones left; the probabilities after each refined prefix (in
    label order) are cached (float32: 4 bytes x classes x voxels per case and prefix; the
    prefixes that no later candidate set starts with are dropped after each round), so
    that a set that extends a scored one costs one structure's refinement per case."""

    def __init__(self, cases: Sequence[ValidationCase], params: Mapping[str, float], labels: Mapping[str, int]):
        self.cases, self.params, self.labels = cases, params, labels
        self.names = {i: n for n, i in labels.items() if i != 0}
        self.cache: dict[tuple[int, ...], list[torch.Tensor]] = {(): [c.probs.float() for c in cases]}

    def probs(self, ids: Sequence[int]) -> list[torch.Tensor]:
        key = tuple(sorted(ids))
        if key not in self.cache:
            prev = self.probs(key[:-1])
            cfg = crf_config(self.params, [self.names[key[-1]]])
            self.cache[key] = [refine_probabilities(p.clone(), c.image, c.spacing, cfg, self.labels)
                               for p, c in zip(prev, self.cases, strict=True)]
        return self.cache[key]

    def keep_extensions_of(self, chosen: set[int]) -> None:
        """Drop the cached prefixes that no superset of ``chosen`` starts with."""
        for key in list(self.cache):
            if key and not {i for i in chosen if i <= key[-1]} <= set(key):
                del self.cache[key]


def _all_case_dice(maps: Sequence[np.ndarray], cases: Sequence[ValidationCase], structures: Mapping[str, int]
                   ) -> dict[str, np.ndarray]:
    return {n: _case_dice(maps, cases, i) for n, i in structures.items()}


def _means(per_case: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {n: _mean(list(v)) for n, v in per_case.items()}


def _all_scores(maps: Sequence[np.ndarray], cases: Sequence[ValidationCase], structures: Mapping[str, int]) -> dict[str, float]:
    return _means(_all_case_dice(maps, cases, structures))


def _total_case_gains(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-case sum over structures of the Dice change."""
    return np.sum([case_gains(after[n], before[n]) for n in before], axis=0)


def _total_change(after: Mapping[str, float], before: Mapping[str, float]) -> float:
    """Sum over structures of the change in mean Dice (structures without a defined Dice skipped)."""
    return float(sum(after[n] - before[n] for n in before if math.isfinite(after[n]) and math.isfinite(before[n])))


def _crf_search(cases: Sequence[ValidationCase], labels: Mapping[str, int], structures: Mapping[str, int],
                before: Mapping[str, np.ndarray], params: Mapping[str, float], margin: float,
                confidence: float) -> dict[str, Any]:
    """Greedy forward selection of the structures refined together with ``params``: each
    round adds, among the structures whose joint refinement (with those already chosen) is
    :func:`supported` on the sum over *all* structures of the Dice change, the one that
    raises that sum's mean most."""
    joint = _JointCrf(cases, params, labels)
    chosen: set[int] = set()
    current = dict(before)
    steps: list[dict[str, Any]] = []
    while len(chosen) < len(structures):
        tried: dict[str, dict[str, np.ndarray]] = {}
        for name, i in structures.items():
            if i not in chosen:
                tried[name] = _all_case_dice([_argmax(p) for p in joint.probs([*chosen, i])], cases, structures)
        current_means = _means(current)
        gains = {n: _total_change(_means(s), current_means) for n, s in tried.items()}
        kept = {n: supported(_total_case_gains(s, current), gains[n], margin, confidence) for n, s in tried.items()}
        steps.append({"refined": [n for n, i in structures.items() if i in chosen],
                      "total_dice_change_if_added": gains, "supported_if_added": kept,
                      "dice_if_added": {n: _means(s) for n, s in tried.items()}})
        candidates = [n for n in tried if kept[n]]
        if not candidates:
            break
        best = max(candidates, key=lambda n: gains[n])
        chosen.add(structures[best])
        current = tried[best]
        joint.keep_extensions_of(chosen)
    scores = _means(current)
    names = [n for n, i in structures.items() if i in chosen]
    maps = [_argmax(p) for p in joint.probs(list(chosen))] if chosen else None
    return {"structures": names, "dice": scores, "case_dice": current,
            "total_change": _total_change(scores, _means(before)), "steps": steps, "maps": maps}


def tune(cases: Sequence[ValidationCase], labels: Mapping[str, int], margin: float = DEFAULT_MARGIN,
         crf_grid: Sequence[Mapping[str, float]] = CRF_GRID, confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Choose the post-processing; returns ``postprocessing.json``'s content (without the
    provenance fields). Every ``dice_after`` is that of :func:`apply_choice` with the
    chosen ``inference`` section on ``cases``. A step is kept where :func:`supported`
    (``confidence`` 0: on the mean gain and ``margin`` alone)."""
    if not cases:
        raise ValueError("no validation case to tune on")
    _check_confidence(confidence)
    structures = dict(sorted(((n, i) for n, i in labels.items() if i != 0), key=lambda item: item[1]))
    base = [_argmax(c.probs.float()) for c in cases]
    before_cases = _all_case_dice(base, cases, structures)
    before = _means(before_cases)
    # stage 1: the CRF, one parameter set, the structures it refines chosen jointly
    searches = [_crf_search(cases, labels, structures, before_cases, params, margin, confidence)
                for params in crf_grid]
    gains = [s["total_change"] if s["structures"] else 0.0 for s in searches]
    ok = [bool(s["structures"]) and supported(_total_case_gains(s["case_dice"], before_cases), g, margin, confidence)
          for s, g in zip(searches, gains, strict=True)]
    best = max((k for k in range(len(searches)) if ok[k]), key=lambda k: gains[k], default=None)
    crf_search = searches[best] if best is not None else None
    maps = [m.copy() for m in crf_search["maps"]] if crf_search is not None else [m.copy() for m in base]
    after_crf = dict(crf_search["dice"]) if crf_search is not None else dict(before)
    report: dict[str, Any] = {}
    inference: dict[str, Any] = {"keep_largest_component": [], "min_component_ml": {}, "fill_holes": []}
    # stage 2, per structure: connected components (a step changes only its structure's
    # voxels, to background, so it changes no other structure's Dice)
    for name, label in structures.items():
        trials: dict[str, float] = {"none": before[name]}
        for k, s in enumerate(searches):
            trials[f"crf_{k}"] = s["dice"][name]
        current = after_crf[name]
        current_cases = _case_dice(maps, cases, label)
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
            per_case = _case_dice(candidate, cases, label)
            score = _mean(list(per_case))
            trials[key] = score
            if supported(case_gains(per_case, current_cases), score - current, margin, confidence):
                component, current, current_cases, best_maps = key, score, per_case, candidate
        maps = best_maps
        if component == "largest_component":
            inference["keep_largest_component"].append(name)
        elif component != "none":
            inference["min_component_ml"][name] = options[component]
        report[name] = {"label": label, "crf": crf_search is not None and name in crf_search["structures"],
                        "components": component, "trials": trials}
    # stage 3, in label order after every component step (as predict applies them): hole
    # filling turns only background into the structure
    for name, label in structures.items():
        filled = [m.copy() for m in maps]
        for m in filled:
            fill_holes(m, label)
        per_case, unfilled = _case_dice(filled, cases, label), _case_dice(maps, cases, label)
        score = _mean(list(per_case))
        report[name]["trials"]["fill_holes"] = score
        holes = supported(case_gains(per_case, unfilled), score - _mean(list(unfilled)), margin, confidence)
        if holes:
            maps = filled
            inference["fill_holes"].append(name)
        report[name]["fill_holes"] = holes
    if crf_search is not None and best is not None:
        inference["crf"] = dataclasses.asdict(crf_config(crf_grid[best], crf_search["structures"]))
    after = _all_scores(maps, cases, structures)
    for name in structures:
        report[name] |= {"dice_before": before[name], "dice_after_crf": after_crf[name], "dice_after": after[name]}
    return {
        "margin": margin, "confidence": confidence, "cases": [c.name for c in cases],
        "crf_grid": [dict(g) for g in crf_grid], "crf_choice": best,
        "crf_search": [{"structures": s["structures"], "total_dice_change": s["total_change"], "steps": s["steps"]}
                       for s in searches],
        "mean_dice_before": _mean(list(before.values())),
        "mean_dice_after": _mean(list(after.values())),
        "structures": report, "inference": inference,
    }


def tune_postprocess(run_dir: Path | str, data: Path | str | None = None, device: str = "cpu",
                     margin: float = DEFAULT_MARGIN, crf: bool = True,
                     progress: Callable[[str], None] | None = None,
                     confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Predict the validation cases, choose the post-processing, write ``RUN_DIR/postprocessing.json``."""
    _check_confidence(confidence)  # before any prediction
    cases, labels = validation_cases(run_dir, data, device, progress)
    result = tune(cases, labels, margin, CRF_GRID if crf else (), confidence)
    warnings = []
    seen = trained_on(run_dir, [c.name for c in cases]) if data is not None else []
    if seen:
        warnings.append(
            f"--data {data}: {len(seen)} of the {len(cases)} tuning cases were training cases of the network "
            f"({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}); its predictions there are better than on new "
            "cases, so the choice may not carry over: tune on validation or out-of-fold cases"
        )
    result = {
        "medseg_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir), "data": str(data) if data else "split.json validation cases",
        "dice_grid": "network", "warnings": warnings, **result,
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
