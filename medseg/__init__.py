"""medseg: 3D medical image segmentation with exact geometry and clinical evaluation.

The public API (:mod:`medseg.api`): ``medseg.train``, ``medseg.predict``, ``medseg.Predictor``,
``medseg.evaluate`` and ``medseg.check``. They are loaded on first use, so ``import medseg``
imports neither torch nor Lightning (the command line and ``medseg --version`` stay fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "train": "medseg.api",
    "predict": "medseg.api",
    "evaluate": "medseg.api",
    "check": "medseg.api",
    "Predictor": "medseg.inference.predictor",
}
__all__ = ["Predictor", "__version__", "check", "evaluate", "predict", "train"]

if TYPE_CHECKING:
    from medseg.api import check, evaluate, predict, train
    from medseg.inference.predictor import Predictor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
