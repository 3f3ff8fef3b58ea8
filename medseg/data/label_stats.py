"""What the training labels looked like, recorded in the run so that prediction can flag outliers.

``medseg train`` writes ``RUN_DIR/label_statistics.json`` once (right after the plan is
resolved) from the label maps of its training split; ``medseg predict --statistics/--preview``
reads it to raise QA flags (:mod:`medseg.inference.qa`). Layout::

    {"version": 1, "cases": N,
     "structures": {"liver": {"label": 1, "cases": 41, "fraction_present": 1.0,
                              "volume_ml_min": 950.2, "volume_ml_max": 2301.0, "components_max": 2}, ...},
     "spacing_mm": {"min": [R, A, S], "max": [R, A, S]},
     "size_voxels": {"min": [R, A, S], "max": [R, A, S]}}

Volumes are over the cases that contain the structure; components use face connectivity (as
in the statistics); spacing and size are per world axis (the array axis closest to R, A, S),
taken from the label maps (which share their image's grid). Only label maps are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.grid import canonical_shape, canonical_spacing
from medseg.data.io import read_label
from medseg.utils import atomic_write_text

FILE_NAME = "label_statistics.json"
VERSION = 1


def compute_label_statistics(label_paths: Sequence[Path | str], labels: Mapping[str, int]) -> dict[str, Any]:
    """Per-structure volume/component ranges and presence, and spacing/size ranges, of ``label_paths``."""
    from medseg.inference.statistics import case_statistics

    per: dict[str, dict[str, Any]] = {
        name: {"label": int(lid), "cases": 0, "volumes": [], "components_max": 0}
        for name, lid in labels.items() if int(lid) != 0
    }
    spacings, sizes = [], []
    for path in label_paths:
        vol = read_label(path)
        spacings.append(canonical_spacing(vol.affine))
        sizes.append(canonical_shape(vol.spatial_shape, vol.affine))
        for row in case_statistics(str(path), vol.array, None, vol.affine, labels):
            entry = per[str(row["structure"])]
            if int(str(row["voxels"])):
                entry["cases"] += 1
                entry["volumes"].append(float(str(row["volume_ml"])))
                entry["components_max"] = max(entry["components_max"], int(str(row["components"])))
    n = len(label_paths)
    structures = {}
    for name, entry in per.items():
        vols = entry.pop("volumes")
        structures[name] = {
            **entry,
            "fraction_present": entry["cases"] / n if n else 0.0,
            "volume_ml_min": min(vols) if vols else 0.0,
            "volume_ml_max": max(vols) if vols else 0.0,
        }
    out: dict[str, Any] = {"version": VERSION, "cases": n, "structures": structures}
    if n:
        out["spacing_mm"] = {"min": np.min(spacings, 0).tolist(), "max": np.max(spacings, 0).tolist()}
        out["size_voxels"] = {"min": np.min(sizes, 0).astype(int).tolist(), "max": np.max(sizes, 0).astype(int).tolist()}
    return out


def write_label_statistics(run_dir: Path | str, label_paths: Sequence[Path | str], labels: Mapping[str, int]) -> Path:
    """Compute and write ``RUN_DIR/label_statistics.json`` (atomic)."""
    path = Path(run_dir) / FILE_NAME
    atomic_write_text(path, json.dumps(compute_label_statistics(label_paths, labels), indent=2))
    return path


def find_files(model: Path) -> list[Path]:
    """The label statistics file(s) of a run directory (or its folds), checkpoint or export folder."""
    if model.is_dir():
        found = [model / FILE_NAME] if (model / FILE_NAME).is_file() else sorted(model.glob(f"fold_*/{FILE_NAME}"))
        return found
    for folder in (model.parent, model.parent.parent):  # RUN_DIR/checkpoints/best.ckpt
        if (folder / FILE_NAME).is_file():
            return [folder / FILE_NAME]
    return []


def combine(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record for an ensemble: the union of the ranges, the lowest presence fraction."""
    out: dict[str, Any] = json.loads(json.dumps(stats[0]))
    for other in stats[1:]:
        out["cases"] = max(int(out["cases"]), int(other["cases"]))
        for name, s in other.get("structures", {}).items():
            mine = out["structures"].setdefault(name, dict(s))
            mine["fraction_present"] = min(float(mine["fraction_present"]), float(s["fraction_present"]))
            mine["volume_ml_min"] = min(float(mine["volume_ml_min"]), float(s["volume_ml_min"]))
            mine["volume_ml_max"] = max(float(mine["volume_ml_max"]), float(s["volume_ml_max"]))
            mine["components_max"] = max(int(mine["components_max"]), int(s["components_max"]))
        for key in ("spacing_mm", "size_voxels"):
            if key in other and key in out:
                out[key] = {"min": np.minimum(out[key]["min"], other[key]["min"]).tolist(),
                            "max": np.maximum(out[key]["max"], other[key]["max"]).tolist()}
    return out


def load_for_models(models: Sequence[Path | str]) -> tuple[dict[str, Any] | None, str]:
    """The training label statistics of ``models`` (combined for an ensemble) and a note, or (None, note).

    The note is "" when every model has its statistics; otherwise it says what QA can do.
    """
    found: list[dict[str, Any]] = []
    missing = []
    for model in models:
        paths = find_files(Path(model))
        if not paths:
            missing.append(str(model))
        for path in paths:
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                missing.append(str(path))
    if not found:
        return None, (f"no {FILE_NAME} beside the model(s) {missing} (trained before medseg recorded it): "
                      "QA flags only structures touching the edge of the field of view")
    note = (f"no {FILE_NAME} for {missing}: QA compares with the training statistics of the other models"
            if missing else "")
    return combine(found), note
