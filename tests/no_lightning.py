"""Predict in a subprocess where Lightning cannot be imported (a deployment without the training stack)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def predict_without_lightning(model: Path, image: Path, output: Path) -> subprocess.CompletedProcess:
    """``medseg predict --model MODEL --input IMAGE --output OUTPUT`` with Lightning unimportable;
    the process also fails if medseg's training modules were imported."""
    code = (
        "import sys\n"
        "for m in ('pytorch_lightning', 'lightning', 'lightning_fabric'):\n"
        "    sys.modules[m] = None  # import fails\n"
        "from medseg.cli import main\n"
        f"rc = main(['predict', '--model', {str(model)!r}, '--input', {str(image)!r}, '--output', {str(output)!r}])\n"
        "heavy = [m for m in ('medseg.training.module', 'medseg.training.run', 'medseg.training.fit') if m in sys.modules]\n"
        "assert not heavy, f'training stack imported: {heavy}'\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace")
