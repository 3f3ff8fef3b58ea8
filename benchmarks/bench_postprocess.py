"""Post-processing: ``medseg.inference.postprocess`` against MONAI's transforms, time and result.

What it measures: on a synthetic 256^3 label map with five structures (an organ with holes
and an enclosed tumour, islands of every structure, speckle), anisotropic spacing
(0.8 x 0.8 x 2.5 mm), each of the three steps on every structure, done by

* medseg: ``keep_largest_component``, ``remove_small_components`` (mL from the spacing),
  ``fill_holes`` (background only), each cropped to the structure's bounding box;
* MONAI 1.x: ``KeepLargestConnectedComponent(applied_labels=[l], connectivity=1)``,
  ``RemoveSmallObjects(min_size=mm^3, connectivity=1, by_measure=True, pixdim=spacing)`` on
  the structure's mask, ``FillHoles(applied_labels=[l], connectivity=1)`` followed by putting
  back the other structures it overwrote (MONAI fills every enclosed voxel, a tumour inside an
  organ included; medseg fills background only).

It reports seconds per step (best of ``--repeat``) and whether the two label maps are
identical. MONAI's first two steps need scikit-image, which medseg does not install::

    pip install scikit-image
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_postprocess.py [--size 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from medseg.inference.postprocess import fill_holes, keep_largest_component, remove_small_components

SPACING = (0.8, 0.8, 2.5)
MIN_ML = 0.05  # 50 mm^3: 31 voxels of 1.6 mm^3


def phantom(n: int, seed: int = 0, islands: tuple[int, ...] = (1, 2, 3, 4, 5)) -> np.ndarray:
    """(n, n, n) uint8: 1 organ (holes, enclosed tumour 2), 3 two kidneys, 4 a tube, islands of ``islands``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[:n, :n, :n]
    c = n / 2
    lab = np.zeros((n, n, n), np.uint8)
    lab[((x - c) / (0.3 * n)) ** 2 + ((y - c) / (0.25 * n)) ** 2 + ((z - c) / (0.2 * n)) ** 2 <= 1] = 1
    lab[((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) <= (0.05 * n) ** 2] = 2  # tumour inside the organ
    for dx in (-0.35, 0.35):  # kidneys
        cx = c + dx * n
        lab[((x - cx) / (0.08 * n)) ** 2 + ((y - 0.8 * n) / (0.06 * n)) ** 2 + ((z - c) / (0.12 * n)) ** 2 <= 1] = 3
    lab[((x - 0.15 * n) ** 2 + (y - 0.15 * n) ** 2 <= (0.02 * n) ** 2) & (z >= 0) & (lab == 0)] = 4  # a tube
    organ = np.argwhere(lab == 1)
    for i in organ[rng.choice(len(organ), 40, replace=False)]:  # holes in the organ
        lab[tuple(slice(v, v + 2) for v in i)] = 0
    for value in islands:  # islands, 1 to 5 voxels wide
        for _ in range(60):
            i = rng.integers(0, n - 6, 3)
            w = int(rng.integers(1, 6))
            lab[i[0]:i[0] + w, i[1]:i[1] + w, i[2]:i[2] + w] = value
    return lab


def monai_steps() -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    from monai.transforms import FillHoles, KeepLargestConnectedComponent, RemoveSmallObjects

    def keep(lab: np.ndarray, label: int) -> np.ndarray:
        out = KeepLargestConnectedComponent(applied_labels=[label], is_onehot=False, connectivity=1)(lab[None].copy())
        return np.asarray(out)[0]

    def small(lab: np.ndarray, label: int) -> np.ndarray:
        mask = lab == label
        kept = RemoveSmallObjects(min_size=MIN_ML * 1000.0, connectivity=1, by_measure=True, pixdim=SPACING)(mask[None])
        out = lab.copy()
        out[mask & ~np.asarray(kept)[0].astype(bool)] = 0
        return out

    def fill(lab: np.ndarray, label: int) -> np.ndarray:
        out = np.asarray(FillHoles(applied_labels=[label], connectivity=1)(lab[None].copy()))[0]
        other = lab != 0
        out[other] = lab[other]  # background only, as medseg
        return out

    return {"keep_largest": keep, "remove_small": small, "fill_holes": fill}


def medseg_steps() -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    def keep(lab: np.ndarray, label: int) -> np.ndarray:
        out = lab.copy()
        keep_largest_component(out, label)
        return out

    def small(lab: np.ndarray, label: int) -> np.ndarray:
        out = lab.copy()
        remove_small_components(out, label, MIN_ML, SPACING)
        return out

    def fill(lab: np.ndarray, label: int) -> np.ndarray:
        out = lab.copy()
        fill_holes(out, label)
        return out

    return {"keep_largest": keep, "remove_small": small, "fill_holes": fill}


def best_of(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tight", action="store_true",
                        help="islands of structure 5 only: structures 1-4 fill a small part of the volume, "
                             "as after keep-largest on a good prediction")
    args = parser.parse_args()
    lab = phantom(args.size, islands=(5,) if args.tight else (1, 2, 3, 4, 5))
    ours, theirs = medseg_steps(), monai_steps()
    rows = []
    for step in ours:
        for label in range(1, 6):
            t_ours, a = best_of(lambda s=step, v=label: ours[s](lab, v), args.repeat)
            t_monai, b = best_of(lambda s=step, v=label: theirs[s](lab, v), args.repeat)
            rows.append({"step": step, "label": label, "medseg_s": round(t_ours, 4), "monai_s": round(t_monai, 4),
                         "identical": bool(np.array_equal(a, b)), "voxels_changed": int((a != lab).sum()),
                         "voxels_differing": int((a != b).sum())})
            print(json.dumps(rows[-1]), flush=True)
    for step in ours:
        sel = [r for r in rows if r["step"] == step]
        print(f"{step}: medseg {sum(r['medseg_s'] for r in sel):.3f} s, MONAI {sum(r['monai_s'] for r in sel):.3f} s "
              f"over 5 structures; identical on {sum(r['identical'] for r in sel)}/5")


if __name__ == "__main__":
    main()
