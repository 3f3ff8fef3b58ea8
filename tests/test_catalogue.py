"""The catalogue lists exactly what the factories implement, and stays torch-free."""

from __future__ import annotations

import subprocess
import sys

from medseg.catalogue import AUGMENTATION_PRESETS, LOSS_NAMES, NETWORK_NAMES, WEIGHTED_LOSSES


def test_catalogue_matches_the_factories():
    from medseg.data.augmentation import PRESETS
    from medseg.models.registry import NETWORKS
    from medseg.training.losses import LOSSES

    assert tuple(NETWORKS) == NETWORK_NAMES and tuple(LOSSES) == LOSS_NAMES
    assert {k: tuple(e.name for e in v) for k, v in PRESETS.items()} == AUGMENTATION_PRESETS
    assert set(WEIGHTED_LOSSES) < set(LOSS_NAMES)


def test_validating_a_pipeline_imports_no_torch():
    code = ("import sys; from medseg.config import from_dict; from_dict({'model': {'name': 'dynunet'}}); "
            "print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.split() == ["False", "False"]
