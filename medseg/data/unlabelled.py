"""Images without labels: where they come from, and the label budget of a learning curve.

Unlabelled images feed self-supervised pretraining (``medseg pretrain``) and
semi-supervised training (``semi_supervised.method``). They come from

* a manifest's cases that have no label: Decathlon ``test`` entries given as plain paths,
  nnU-Net ``imagesTs`` without ``labelsTs``, CSV rows with an empty ``label``;
* extra sources (``--unlabelled`` / ``semi_supervised.unlabelled``, ``medseg pretrain --data``):
  a manifest (every case's image, labels ignored) or a folder of NIfTI images;
* ``data.labelled_cases: N``: the training cases outside a seeded subset of N.

Nothing here reads voxels: these are decisions on file lists, made before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.io import is_image_path
from medseg.data.manifest import Case, Manifest, ManifestError, load_manifest
from medseg.utils import case_name


def image_folder_manifest(folder: Path) -> Manifest:
    """A label-less manifest of every NIfTI image in ``folder`` (one case per file).

    Multi-channel images must be 4D files (channels last, as Decathlon stores them); the
    channel count is read from the first image's header.
    """
    import nibabel as nib

    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))
    if not files:
        raise ManifestError(
            f"{folder}: no NIfTI images (.nii / .nii.gz) in this folder; pass a folder of images, "
            "a dataset.json or a CSV manifest"
        )
    shape = nib.load(str(files[0])).shape  # type: ignore[attr-defined]  # (header only: no voxels read)
    channels = ["image"] if len(shape) == 3 else [f"channel_{i}" for i in range(shape[3])]
    cases = [Case(case_name(f), [f.resolve()]) for f in files]
    return Manifest(folder / "dataset.json", folder.name, channels, {"background": 0}, cases, [], "folder")


def load_images(path: str | Path) -> Manifest:
    """A manifest (JSON / CSV) or, where no manifest is found, a folder of NIfTI images."""
    p = Path(path)
    if p.is_dir() and not (p / "dataset.json").exists():
        return image_folder_manifest(p)
    return load_manifest(p)


def labelled_and_unlabelled(manifest: Manifest) -> tuple[list[Case], list[Case]]:
    """(training cases with a label, cases of any kind without one).

    Labelled ``test`` cases are a hold-out for evaluation: they are in neither list.
    """
    labelled = [c for c in manifest.training if c.label is not None]
    unlabelled = [c for c in manifest.all_cases if c.label is None]
    return labelled, unlabelled


def every_image(manifests: list[Manifest]) -> list[Case]:
    """Every case of every manifest as an image-only case, each image file once.

    Names are made unique (``name``, ``name-2``, ...) so that caches and logs never mix
    two images that share a file name in different datasets.
    """
    out: list[Case] = []
    seen_files: set[tuple[str, ...]] = set()
    names: set[str] = set()
    for manifest in manifests:
        for case in manifest.all_cases:
            key = tuple(str(Path(p).resolve()) for p in case.images)
            if key in seen_files:
                continue
            seen_files.add(key)
            name, k = case.name, 2
            while name in names:
                name, k = f"{case.name}-{k}", k + 1
            names.add(name)
            out.append(Case(name, list(case.images), None, dict(case.metadata)))
    return out


def unlabelled_pool(manifest: Manifest, extra_sources: list[str], labelled: list[Case]) -> list[Case]:
    """The unlabelled images for semi-supervised training, without any labelled training image.

    ``manifest``'s label-less cases plus every image of ``extra_sources``; an image that is
    also a labelled training case is dropped (it would otherwise be learnt twice).
    """
    _, own = labelled_and_unlabelled(manifest)
    extra = [load_images(s) for s in extra_sources]
    label_files = {tuple(str(Path(p).resolve()) for p in c.images) for c in labelled}
    pool = every_image([Manifest(manifest.path, manifest.name, manifest.channel_names, manifest.labels, own), *extra])
    return [c for c in pool if tuple(str(Path(p).resolve()) for p in c.images) not in label_files]


def label_budget(train_names: list[str], n: int | None, seed: int) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled) training case names for ``data.labelled_cases = n``.

    A seeded, nested choice: for one seed, the 10 cases kept at n=10 are among the 20 kept
    at n=20, so the points of a learning curve differ only by the labels added.
    """
    names = sorted(train_names)
    if n is None:
        return names, []
    if n > len(names):
        raise ValueError(
            f"data.labelled_cases: {n} is more than the {len(names)} cases of the training split; "
            f"use at most {len(names)} or null to use every label"
        )
    order = [names[i] for i in np.random.default_rng([seed, 7919]).permutation(len(names))]
    return sorted(order[:n]), sorted(order[n:])


def describe(split: dict[str, Any]) -> str:
    """One line for the log: how many labelled, validation and unlabelled cases a run uses."""
    parts = [f"{len(split['labelled'])} labelled training cases", f"{len(split['val'])} validation cases"]
    if split.get("unlabelled"):
        parts.append(f"{len(split['unlabelled'])} unlabelled images")
    return ", ".join(parts)
