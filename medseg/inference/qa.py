"""QA flags for a predicted case: what a person should look at first in a large batch.

``OUTPUT/qa.csv`` has one row per flag, columns ``case,flag,structure,detail``:

* ``missing_structure``: a structure that every training label map contains is empty;
* ``volume_out_of_range``: a structure's volume is outside [min, max] of the training label
  volumes widened by ``volume_margin`` (default 0.1: 10 % below the minimum / above the maximum),
  or predicted although no training label map had it;
* ``extra_components``: more connected components (6-neighbourhood) than any training label had;
* ``touches_edge``: the structure reaches a face of the field of view (it may be cut off); the
  detail names the faces with anatomical letters (R/L, A/P, S/I from the affine);
* ``input_spacing`` / ``input_size``: an axis's spacing (mm) or size (voxels), in RAS order, is
  more than ``spacing_factor`` / ``size_factor`` (default 2) times outside the training range.

The training side comes from ``RUN_DIR/label_statistics.json``
(:mod:`medseg.data.label_stats`). Without it only the edge check runs, and one ``note`` row
(empty case) says so. A flag never stops the batch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.data.grid import canonical_shape, canonical_spacing, ras_order
from medseg.utils import atomic_write_text

COLUMNS = ("case", "flag", "structure", "detail")
FILE_NAME = "qa.csv"
PARTS_DIR = "qa"
FLAGS = ("missing_structure", "volume_out_of_range", "extra_components", "touches_edge", "input_spacing",
         "input_size")
DEFAULT_OPTIONS = {"volume_margin": 0.1, "spacing_factor": 2.0, "size_factor": 2.0}


def case_flags(
    case: str,
    rows: Sequence[Mapping[str, object]],
    labels: np.ndarray,
    affine: np.ndarray,
    training: Mapping[str, Any] | None,
    options: Mapping[str, float] | None = None,
    boxes: Sequence[Any] | None = None,
) -> list[dict[str, str]]:
    """The flags of one case from its statistics rows (:func:`statistics.case_statistics`) and label map.

    ``boxes``: ``scipy.ndimage.find_objects(labels)`` when the caller has it (computed otherwise).
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    flags: list[dict[str, str]] = []

    def flag(name: str, structure: str, detail: str) -> None:
        flags.append({"case": case, "flag": name, "structure": structure, "detail": detail})

    if training:
        _input_flags(flag, labels.shape, affine, training, opts)
    per_structure = (training or {}).get("structures", {})
    boxes = ndimage.find_objects(labels) if boxes is None else boxes
    _, letters = ras_order(affine)
    for row in rows:
        name, label_id, voxels = str(row["structure"]), int(str(row["label"])), int(str(row["voxels"]))
        ref = per_structure.get(name)
        if ref:
            if voxels == 0 and float(ref.get("fraction_present", 0.0)) >= 1.0:
                flag("missing_structure", name, f"empty; present in all {ref.get('cases', '?')} training label maps")
            if voxels and not int(ref.get("cases", 1)):
                flag("volume_out_of_range", name, f"{row['volume_ml']} mL; never present in the training labels")
            elif voxels:
                vol, lo, hi = float(str(row["volume_ml"])), float(ref["volume_ml_min"]), float(ref["volume_ml_max"])
                margin = opts["volume_margin"]
                if vol < lo * (1 - margin) or vol > hi * (1 + margin):
                    flag("volume_out_of_range", name,
                         f"{vol:.4g} mL; training range {lo:.4g}-{hi:.4g} mL (+/-{margin:.0%})")
                comps, most = int(str(row["components"])), int(ref["components_max"])
                if comps > most:
                    flag("extra_components", name, f"{comps} components; training at most {most}")
        if voxels and label_id - 1 < len(boxes) and boxes[label_id - 1] is not None:
            faces = [
                f"{letters[axis][end]} ({'xyz'[axis]}={'0' if end == 0 else n - 1})"
                for axis, (s, n) in enumerate(zip(boxes[label_id - 1], labels.shape, strict=True))
                for end, hit in ((0, s.start == 0), (1, s.stop == n)) if hit
            ]
            if faces:
                flag("touches_edge", name, "reaches the field of view's " + ", ".join(faces) + " face(s)")
    return flags


def _input_flags(flag: Any, shape: Sequence[int], affine: np.ndarray, training: Mapping[str, Any],
                 opts: Mapping[str, float]) -> None:
    for key, name, value, factor, unit in (
        ("spacing_mm", "input_spacing", canonical_spacing(affine), opts["spacing_factor"], "mm"),
        ("size_voxels", "input_size", canonical_shape(shape, affine), opts["size_factor"], "voxels"),
    ):
        ref = training.get(key)
        if not ref:
            continue
        for axis, (v, lo, hi) in enumerate(zip(value, ref["min"], ref["max"], strict=True)):
            if v < float(lo) / factor or v > float(hi) * factor:
                flag(name, "", f"{'RAS'[axis]} axis {v:.4g} {unit}; training {float(lo):.4g}-{float(hi):.4g} {unit} "
                     f"(flagged beyond x{factor:g})")


def part_path(output: Path | str, case: str) -> Path:
    return Path(output) / PARTS_DIR / f"{case}.csv"


def _to_csv(rows: Sequence[Mapping[str, str]], header: bool = True) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_case(output: Path | str, case: str, flags: Sequence[Mapping[str, str]]) -> Path:
    """Write one case's flags (possibly none: a header-only file records "checked") atomically."""
    path = part_path(output, case)
    atomic_write_text(path, _to_csv(flags))
    return path


def read_case(output: Path | str, case: str) -> list[dict[str, str]]:
    path = part_path(output, case)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def merge(output: Path | str, cases: Sequence[str], note: str = "") -> Path:
    """Write ``OUTPUT/qa.csv``: an optional ``note`` row, then each case's flags in case order (atomic)."""
    rows: list[Mapping[str, str]] = []
    if note:
        rows.append({"case": "", "flag": "note", "structure": "", "detail": note})
    for case in cases:
        rows.extend(read_case(output, case))
    target = Path(output) / FILE_NAME
    atomic_write_text(target, _to_csv(rows))
    return target
