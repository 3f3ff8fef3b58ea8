"""Calibration windows for post-training quantisation: real preprocessed patches of a manifest.

The cases are preprocessed with the run's own plan (resampling to its target spacing, its
normalisation), and windows are cut at the network's patch size the way training samples
them (``data.foreground_ratio`` of them centred on a labelled voxel where a label exists), so
the activation ranges the quantiser measures are the ones the network sees when predicting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.config import PipelineConfig
from medseg.data.preprocess import PreprocessingPlan


def calibration_windows(
    manifest_path: Path | str, cfg: PipelineConfig, plan: PreprocessingPlan,
    cases: int = 8, per_case: int = 4, seed: int = 0,
) -> np.ndarray:
    """(cases * per_case, C, *patch_size) float32 windows from the first ``cases`` training cases."""
    from medseg.data.datamodule import load_case
    from medseg.data.manifest import load_manifest
    from medseg.data.sampling import sample_patch

    manifest = load_manifest(manifest_path)
    chosen = manifest.training[:cases] or manifest.test[:cases]
    if not chosen:
        raise ValueError(f"--calibration {manifest_path}: the manifest lists no cases; pass the training manifest")
    rng = np.random.default_rng(seed)
    d = cfg.data
    windows = []
    for case in chosen:
        if len(case.images) != len(plan.channel_names):
            raise ValueError(
                f"--calibration {manifest_path}: case {case.name} has {len(case.images)} image channel(s), the model "
                f"expects {len(plan.channel_names)} ({plan.channel_names}); pass a manifest of the model's dataset"
            )
        item = load_case(case, plan)
        for _ in range(per_case):
            img, _lab = sample_patch(
                item["image"], item["label"], item["locations"], tuple(d.patch_size), d.foreground_ratio, rng,
                d.slice_axis, d.slab_slices,
            )
            windows.append(np.ascontiguousarray(img, dtype=np.float32))
    return np.stack(windows)
