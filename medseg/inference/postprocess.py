"""Per-structure post-processing of a label map: largest component, small islands, holes.

Configured by structure name in the pipeline's ``inference`` section
(``keep_largest_component``, ``min_component_ml``, ``fill_holes``) and applied in that
order. Connected components use face connectivity (6-neighbourhood in 3D, scipy's
default). Volumes are in mL from the voxel spacing in mm (1 mL = 1000 mm^3), so a
threshold means the same on a 0.5 mm and a 3 mm scan. Voxels removed from a structure
become background; filling a hole only turns *background* voxels into the structure (a
cavity holding another structure, e.g. a tumour inside an organ, is left alone).

Why not MONAI's ``KeepLargestConnectedComponent`` / ``RemoveSmallObjects`` / ``FillHoles``
(measured with ``benchmarks/bench_postprocess.py``: 256^3 uint8 label map, five structures,
0.8 x 0.8 x 2.5 mm, each step on each structure, 1 CPU thread, MONAI 1.6.1, scikit-image 0.26):

* same result: with ``connectivity=1``, ``by_measure=True, pixdim=spacing`` and the other
  structures put back after ``FillHoles`` the label maps are identical on 14 of 15
  structure x step pairs; the 15th is a tie (many equal-size islands), where we keep the first
  component in raster order and MONAI's unstable argsort another;
* faster, because each step works inside the structure's bounding box: islands everywhere
  (boxes = the volume) 3.4 / 3.3 / 13.6 s (keep / remove / fill, five structures) against
  MONAI's 4.1 / 7.1 / 17.9 s; compact structures (``--tight``) 1.4 / 1.5 / 4.2 s against
  3.2 / 8.5 / 17.2 s;
* ``FillHoles`` turns every enclosed voxel into the structure, a tumour inside an organ
  included (we fill background only), and the other two need scikit-image, which medseg does
  not otherwise install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.config import InferenceConfig, suggest


@dataclass
class PostprocessSpec:
    """Post-processing by label id (resolved from structure names)."""

    keep_largest: list[int] = field(default_factory=list)
    min_component_ml: dict[int, float] = field(default_factory=dict)
    fill_holes: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.keep_largest or self.min_component_ml or self.fill_holes)


def _resolve(names: Sequence[str], labels: Mapping[str, int], key: str) -> list[int]:
    ids = []
    for name in names:
        if name not in labels or labels[name] == 0:
            known = [n for n, v in labels.items() if v != 0]
            raise ValueError(
                f"inference.{key}: structure {name!r} is not one of the model's structures {known}."
                + suggest(name, known)
            )
        ids.append(labels[name])
    return ids


def resolve_spec(cfg: InferenceConfig, labels: Mapping[str, int]) -> PostprocessSpec:
    """Map the config's structure names to label ids; unknown names are an error."""
    mins = cfg.min_component_ml
    for name, ml in mins.items():
        if ml < 0:
            raise ValueError(f"inference.min_component_ml.{name}: {ml} mL is negative; expected a volume >= 0")
    min_ids = _resolve(list(mins), labels, "min_component_ml")
    return PostprocessSpec(
        keep_largest=_resolve(cfg.keep_largest_component, labels, "keep_largest_component"),
        min_component_ml={i: float(mins[n]) for i, n in zip(min_ids, mins, strict=True)},
        fill_holes=_resolve(cfg.fill_holes, labels, "fill_holes"),
    )


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of ``mask`` and their voxel counts (index 0 = background)."""
    comp, n = ndimage.label(mask)
    return comp, np.bincount(comp.ravel(), minlength=n + 1)


def keep_largest_component(labels: np.ndarray, label: int) -> None:
    """In place: keep only the largest connected component of ``label``."""
    box = _bbox(labels == label)
    if box is None:
        return
    sub = labels[box]
    comp, sizes = _components(sub == label)
    if len(sizes) <= 2:
        return
    sizes[0] = 0
    sub[(comp != int(sizes.argmax())) & (comp > 0)] = 0


def remove_small_components(labels: np.ndarray, label: int, min_ml: float, spacing: Sequence[float]) -> None:
    """In place: remove connected components of ``label`` smaller than ``min_ml`` mL."""
    box = _bbox(labels == label)
    if box is None or min_ml <= 0:
        return
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sub = labels[box]
    comp, sizes = _components(sub == label)
    small = sizes * voxel_ml < min_ml
    small[0] = False
    sub[small[comp]] = 0


def fill_holes(labels: np.ndarray, label: int) -> None:
    """In place: background voxels enclosed by ``label`` (in 3D) become ``label``."""
    box = _bbox(labels == label)
    if box is None:
        return
    sub = labels[box]
    mask = sub == label
    holes = ndimage.binary_fill_holes(mask) & ~mask & (sub == 0)
    sub[holes] = label


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    objects = ndimage.find_objects(mask.astype(np.uint8))
    return objects[0] if objects and objects[0] is not None else None


def postprocess(labels: np.ndarray, spacing: Sequence[float], spec: PostprocessSpec) -> np.ndarray:
    """Apply ``spec`` to an (X, Y, Z) label map in place and return it. ``spacing`` in mm."""
    for label in spec.keep_largest:
        keep_largest_component(labels, label)
    for label, ml in spec.min_component_ml.items():
        remove_small_components(labels, label, ml, spacing)
    for label in spec.fill_holes:
        fill_holes(labels, label)
    return labels
