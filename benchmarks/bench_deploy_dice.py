"""Held-out Dice and whole-batch predict time of a run and its int8 export (same cases, same run).

    python benchmarks/bench_deploy_dice.py RUN_DIR INT8_EXPORT [DATA_DIR] [N]

DATA_DIR: the Decathlon folder of the run's manifest (default ../shared/data/Task04_Hippocampus);
the first N (default 20) of the run's validation cases (split.json) are predicted by each model.
Prints one JSON line: mean foreground Dice per model, seconds, and int8-vs-fp32 mask agreement.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from medseg.data.io import read_label, read_volume
from medseg.inference.predictor import Predictor


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return float(2 * (x & y).sum() / total) if total else 1.0  # both empty: agree


def main(run: Path, export: Path, data: Path, n: int) -> dict[str, object]:
    cases = json.loads((run / "split.json").read_text(encoding="utf-8"))["val"][:n]
    out: dict[str, object] = {"cases": len(cases)}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for name, model in (("fp32", run), ("int8", export)):
        predictor = Predictor.from_checkpoints([model])
        labels = [v for v in predictor.plan.labels.values() if v > 0]
        start, dice, agree = time.perf_counter(), [], []
        for case in cases:
            mask = predictor.predict_volume(read_volume(data / "imagesTr" / f"{case}.nii.gz"))
            ref = read_label(data / "labelsTr" / f"{case}.nii.gz").array
            masks.setdefault(case, {})[name] = mask
            dice.append(np.mean([_dice(mask, ref, lab) for lab in labels]))
            if name != "fp32":
                agree.append(np.mean([_dice(mask, masks[case]["fp32"], lab) for lab in labels]))
        out[name] = {"mean_dice": float(np.mean(dice)), "seconds": time.perf_counter() - start,
                     "dice_vs_fp32": float(np.mean(agree)) if agree else None}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    data_dir = Path(args[2]) if len(args) > 2 else Path("../shared/data/Task04_Hippocampus")
    print(json.dumps(main(Path(args[0]), Path(args[1]), data_dir, int(args[3]) if len(args) > 3 else 20)))
