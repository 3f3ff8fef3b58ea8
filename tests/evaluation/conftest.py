"""Fixtures of the evaluation tests: a small synthetic dataset with perturbed predictions."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.io import read_label, write_label
from medseg.data.manifest import load_manifest
from medseg.data.synthetic import generate_dataset

from .evaluation_helpers import import_surface_distance


@pytest.fixture(scope="session")
def sd() -> ModuleType:
    """DeepMind's surface-distance, the independent reference implementation."""
    pytest.importorskip("surface_distance")
    return import_surface_distance()


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six synthetic phantom cases (``medseg synth``) and predictions: case 0 organ dilated,
    case 1 lesion missed (relabelled organ), case 2 vessel shifted; the rest exact.

    Also a CSV manifest of the same cases with a ``site`` column (A, A, B, B, B, empty).
    """
    root = tmp_path_factory.mktemp("phantoms")
    manifest_path = generate_dataset(root / "data", cases=6, seed=3, shape=(36, 36, 28))
    manifest = load_manifest(manifest_path)
    pred_dir = root / "pred"
    for i, case in enumerate(manifest.all_cases):
        assert case.label is not None
        vol = read_label(case.label)
        arr = vol.array.copy()
        if i == 0:
            arr[ndimage.binary_dilation(arr == 1) & (arr == 0)] = 1
        elif i == 1:
            arr[arr == 2] = 1
        elif i == 2:
            vessel = arr == 3
            arr[vessel] = 1
            arr[np.roll(vessel, 2, axis=0) & (arr == 0)] = 3
        write_label(pred_dir / f"{case.name}.nii.gz", arr, vol)
    sites = ["A", "A", "B", "B", "B", ""]
    lines = ["case,image,label,site"] + [
        f"{c.name},{c.images[0]},{c.label},{s}" for c, s in zip(manifest.all_cases, sites, strict=True)
    ]
    csv_path = root / "cases.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    (root / "cases.labels.json").write_text(json.dumps({"labels": {"1": "organ", "2": "lesion", "3": "vessel"}}))
    return {"root": root, "manifest": manifest_path, "pred": pred_dir, "csv": csv_path}


@pytest.fixture(scope="session")
def evaluated(phantoms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``evaluate`` on the phantoms (CSV manifest, grouped by site, 2 workers): (output, summary)."""
    from medseg.evaluation.evaluate import evaluate

    out = tmp_path_factory.mktemp("evaluated")
    summary = evaluate(phantoms["pred"], phantoms["csv"], out, workers=2, group_by="site", progress=False,
                       n_boot=200)
    return out, summary
