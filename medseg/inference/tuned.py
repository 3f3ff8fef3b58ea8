"""Reading ``RUN_DIR/postprocessing.json`` (written by ``medseg tune-postprocess``) and
merging its choice into a model's ``inference`` settings.

The tuned choice fills only the settings the pipeline left at their defaults: an explicit
``inference.keep_largest_component``, ``min_component_ml``, ``fill_holes`` or ``crf`` in
the pipeline wins over the tuned one (key by key), and ``--no-postprocess`` skips both.
For an ensemble of fold runs (``--model RUN_DIR/fold_0 --model RUN_DIR/fold_1``) the file
is looked for in the first model's folder, then in its parent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medseg.config import ConfigError, CrfConfig, InferenceConfig, PipelineConfig, from_dict

TUNED_NAME = "postprocessing.json"


def find_tuned(model: Path | str) -> Path | None:
    """``postprocessing.json`` of a run directory (or of the parent of a fold run), or None."""
    path = Path(model)
    if not path.is_dir():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    for folder in (path, path.parent):
        if (folder / TUNED_NAME).is_file():
            return folder / TUNED_NAME
    return None


def load_tuned(path: Path | str) -> dict[str, Any]:
    """The ``inference`` section of a ``postprocessing.json`` (checked against the config types)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        section = data["inference"]
        from_dict({"inference": section})
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as err:
        raise ValueError(
            f"{path}: not a usable postprocessing.json ({err}); rerun medseg tune-postprocess or delete it"
        ) from err
    return dict(section)


def merge_tuned(inference: InferenceConfig, tuned: dict[str, Any]) -> InferenceConfig:
    """``inference`` with the tuned settings filled in where the pipeline kept the default."""
    default = InferenceConfig()
    out = dataclasses.replace(inference)
    for key in ("keep_largest_component", "min_component_ml", "fill_holes"):
        if key in tuned and getattr(inference, key) == getattr(default, key):
            setattr(out, key, tuned[key])
    if "crf" in tuned and inference.crf == CrfConfig():
        out.crf = from_dict({"inference": {"crf": tuned["crf"]}}).inference.crf
    return out


def with_tuned(cfg: PipelineConfig, model: Path | str) -> PipelineConfig:
    """``cfg`` with the tuned post-processing of ``model``'s run merged in (unchanged if none)."""
    path = find_tuned(model)
    if path is None:
        return cfg
    return dataclasses.replace(cfg, inference=merge_tuned(cfg.inference, load_tuned(path)))
