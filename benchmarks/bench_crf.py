"""CRF measurement on real images with simulated network probabilities (no trained model).

What it measures: whether the 3D fully connected CRF (``inference.crf``, default parameters
or those changed with ``--crf KEY=VALUE``)
moves Dice up or down when the probabilities are noisy around the real anatomy of real
scans, and how long it takes per case. The probabilities are *simulated* from the reference
label (``logit = strength x one-hot + spatially correlated Gaussian noise``), not predicted
by a trained network, so this shows the CRF's mechanism on real image edges, not the gain on
a given model: ``medseg tune-postprocess`` measures that on a run's validation cases.

* ``brats``: the four two-channel cases of ``brats_sample`` (FLAIR + T1c, z-scored),
  5 classes, cropped to the brain mask; a weak model (strength 2, noise sigma 1.5).
* ``hippocampus``: the first N cases of Task04 (z-scored T1), 3 classes; a good model
  (strength 4, noise sigma 1.0): the default CRF should not cost Dice here.
* ``trained --model RUN``: not simulated: the run's own ``split.json`` validation cases
  predicted by the run (as ``medseg tune-postprocess`` does), Dice on the network grid
  without and with the CRF.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_crf.py brats|hippocampus [--cases N] [--crf KEY=VALUE ...]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_crf.py trained --model RUN [--crf KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg.config import CrfConfig
from medseg.data.grid import voxel_spacing
from medseg.data.io import read_label, read_volume
from medseg.inference.crf import refine_probabilities

DATA = Path(os.environ.get("MEDSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _probs(label: np.ndarray, k: int, strength: float, noise: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    logits = np.empty((k, *label.shape), np.float32)
    for c in range(k):
        field = ndimage.gaussian_filter(rng.normal(size=label.shape).astype(np.float32), 1.5)
        logits[c] = strength * (label == c) + noise * field / field.std()
    return torch.softmax(torch.from_numpy(logits), 0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    t = int(a.sum() + b.sum())
    return float("nan") if t == 0 else 2.0 * int((a & b).sum()) / t


def _cases(which: str, n: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]]:
    out = []
    if which == "brats":
        for folder in sorted((DATA / "brats_sample").iterdir())[:n]:
            chans = [read_volume(folder / f) for f in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")]
            label = read_label(folder / "OTMultiClass.nii.gz").array.astype(np.uint8)
            box = ndimage.find_objects((read_volume(folder / "brainmask.nii.gz").array > 0).astype(np.uint8))[0]
            image = np.stack([c.array[box] for c in chans]).astype(np.float32)
            names = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
            out.append((folder.name, image, label[box], chans[0].affine, names))
    else:
        ds = json.loads((DATA / "Task04_Hippocampus" / "dataset.json").read_text())
        for entry in ds["training"][:n]:
            img = read_volume(DATA / "Task04_Hippocampus" / entry["image"])
            arr = img.array.astype(np.float32)
            arr = (arr - arr.mean()) / (arr.std() + 1e-6)
            label = read_label(DATA / "Task04_Hippocampus" / entry["label"]).array.astype(np.uint8)
            out.append((Path(entry["image"]).name.split(".")[0], arr[None], label, img.affine,
                        {"background": 0, "Anterior": 1, "Posterior": 2}))
    return out


def _trained(model: str, cfg: CrfConfig) -> int:
    """Network-grid Dice of a trained run's validation cases without and with the CRF."""
    from medseg.inference.tuning import validation_cases

    cases, labels = validation_cases(model, device="cpu")
    structures = {n: i for n, i in labels.items() if i}
    dice: dict[str, list[tuple[float, float]]] = {n: [] for n in structures}
    seconds = []
    for case in cases:
        probs = case.probs.float()
        before = probs.argmax(0).numpy()
        t = time.perf_counter()
        refine_probabilities(probs, case.image, case.spacing, cfg, labels)
        seconds.append(time.perf_counter() - t)
        after = probs.argmax(0).numpy()
        for name, lab in structures.items():
            dice[name].append((_dice(before == lab, case.label == lab), _dice(after == lab, case.label == lab)))
    print(f"{len(cases)} validation cases of {model}\n")
    print("| structure | Dice without CRF | with CRF | difference |\n|---|---|---|---|")
    means = {n: np.nanmean(v, axis=0) for n, v in dice.items()}
    for name, (a, b) in means.items():
        print(f"| {name} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    a, b = np.mean(list(means.values()), axis=0)
    print(f"| **mean** | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    print(f"\nCRF seconds per case: mean {np.mean(seconds):.2f} (torch threads {torch.get_num_threads()})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("brats", "hippocampus", "trained"))
    ap.add_argument("--model", metavar="RUN", help="trained: the run directory (its split.json validation cases)")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--crf", action="append", default=[], metavar="KEY=VALUE",
                    help="a CRF parameter changed from the defaults, e.g. bilateral_weight=5 (repeatable)")
    args = ap.parse_args()
    changes = {k: float(v) if "." in v else int(v) for k, v in (item.split("=", 1) for item in args.crf)}
    cfg = CrfConfig(enabled=True, **changes)
    if args.which == "trained":
        if not args.model:
            ap.error("trained needs --model RUN")
        return _trained(args.model, cfg)
    strength, noise = (2.0, 1.5) if args.which == "brats" else (4.0, 1.0)
    rows = []
    for i, (name, image, label, affine, names) in enumerate(_cases(args.which, args.cases)):
        probs = _probs(label, len(names), strength, noise, seed=i)
        before = probs.argmax(0).numpy()
        t = time.perf_counter()
        refine_probabilities(probs, image, voxel_spacing(affine), cfg, names)
        seconds = time.perf_counter() - t
        after = probs.argmax(0).numpy()
        for s, lab in names.items():
            if lab and (label == lab).any():
                rows.append((name, s, _dice(before == lab, label == lab), _dice(after == lab, label == lab)))
        print(f"{name}: {image.shape[1:]} voxels, {seconds:.1f} s", file=sys.stderr)
        rows.append((name, "_seconds", seconds, seconds))
    print("| case | structure | Dice without CRF | with CRF | difference |\n|---|---|---|---|---|")
    for name, s, a, b in rows:
        if s != "_seconds":
            print(f"| {name} | {s} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    by_s: dict[str, list[tuple[float, float]]] = {}
    for _, s, a, b in rows:
        if s != "_seconds":
            by_s.setdefault(s, []).append((a, b))
    for s, v in by_s.items():
        a, b = np.mean(v, axis=0)
        print(f"| **mean** | {s} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    secs = [a for _, s, a, _ in rows if s == "_seconds"]
    print(f"\nCRF seconds per case: mean {np.mean(secs):.1f} (torch threads {torch.get_num_threads()}); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
