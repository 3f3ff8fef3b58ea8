"""Find the cases to predict in ``--input PATH`` and read each one as a (C, X, Y, Z) volume.

PATH may be:

* a NIfTI/NRRD/MHA file: one case (a 4D NIfTI holds all channels);
* a folder of such files: one case per file, or per nnU-Net channel group when files are
  named ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``… (channel index after the last
  underscore; used when the model has several channels, or when every file ends in
  ``_0000``);
* a manifest (Decathlon/nnU-Net ``dataset.json``, a folder holding one, or a CSV): its
  test cases (or its training cases when it lists no test cases), channels in the
  manifest's order, matched to the model's channel names when both name them;
* a folder holding a DICOM series: one case named after the folder; or a folder of such
  folders, one case per subfolder.

Finding cases never reads pixel data, so a broken file fails its own case (in
:func:`read_case`), not the listing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.io import (
    COMPACT,
    ImageReadError,
    Volume,
    compact_dtype,
    is_dicom_series_dir,
    is_image_path,
    read_volume,
    same_geometry,
)
from medseg.utils import case_name

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class InputError(ValueError):
    """``--input`` cannot be interpreted; the message says what was expected."""


@dataclass
class InputCase:
    """One case to predict: its name and one source per channel (or one 4D file / DICOM folder)."""

    name: str
    sources: list[Path]
    error: str | None = None
    """Set when the case is known to be incomplete before reading (e.g. a missing channel)."""

    @property
    def is_dicom(self) -> bool:
        return len(self.sources) == 1 and self.sources[0].is_dir()


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _looks_like_dicom_folder(folder: Path) -> bool:
    """A DICOM series folder, or a folder of files that are not images (kept so it fails loudly)."""
    if is_dicom_series_dir(folder):
        return True
    files = [p for p in _visible(folder) if p.is_file()]
    return bool(files) and not any(is_image_path(p) for p in files) and not any(p.is_dir() for p in _visible(folder))


def _group_channels(files: list[Path], num_channels: int) -> list[InputCase]:
    names = [case_name(f) for f in files]
    matches = [m for m in (_CHANNEL.match(n) for n in names) if m is not None]
    grouped = len(matches) == len(files) and (num_channels > 1 or all(m["channel"] == "0000" for m in matches))
    if not grouped:
        return [InputCase(n, [f]) for n, f in zip(names, files, strict=True)]
    groups: dict[str, dict[int, Path]] = {}
    for m, f in zip(matches, files, strict=True):
        groups.setdefault(m["case"], {})[int(m["channel"])] = f
    cases = []
    for name, chans in sorted(groups.items()):
        expected = list(range(num_channels))
        error = None
        if sorted(chans) != expected:
            error = (
                f"channels {sorted(chans)} found for case {name!r} but the model takes {num_channels} "
                f"({', '.join(f'{name}_{i:04d}' for i in expected)}); add the missing files"
            )
        cases.append(InputCase(name, [chans[i] for i in sorted(chans)], error))
    return cases


def _manifest_cases(path: Path, channel_names: list[str], split: str) -> list[InputCase]:
    from medseg.data.manifest import load_manifest

    manifest = load_manifest(path)
    chosen = {"test": manifest.test, "training": manifest.training, "all": manifest.all_cases}.get(split)
    if chosen is None:  # auto
        chosen = manifest.test or manifest.training
    order = list(range(len(manifest.channel_names)))
    if sorted(manifest.channel_names) == sorted(channel_names) and manifest.channel_names != channel_names:
        order = [manifest.channel_names.index(n) for n in channel_names]
    cases = []
    for case in chosen:
        error = None
        images = case.images
        if len(images) == len(order) > 1:
            images = [images[i] for i in order]
        elif len(images) != 1 and len(images) != len(channel_names):
            error = f"manifest lists {len(images)} channel files; the model takes {len(channel_names)} {channel_names}"
        cases.append(InputCase(case.name, list(images), error))
    return cases


@contextlib.contextmanager
def _quiet_gdcm() -> Iterator[None]:
    """Silence ITK's "No Series were found" warnings while probing folders for DICOM."""
    import SimpleITK as sitk

    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)


def find_cases(path: Path | str, channel_names: list[str], split: str = "auto") -> list[InputCase]:
    """The cases in ``path`` (see the module docstring). ``split``: auto, test, training or all
    (manifests only). Raises :class:`InputError` when ``path`` holds nothing to predict."""
    with _quiet_gdcm():
        return _find_cases(Path(path), channel_names, split)


def _find_cases(path: Path, channel_names: list[str], split: str) -> list[InputCase]:
    if not path.exists():
        raise InputError(f"{path}: input not found; pass a NIfTI file, a folder, a manifest or a DICOM folder")
    num_channels = len(channel_names)
    if path.is_file():
        if path.suffix.lower() in (".json", ".csv"):
            return _manifest_cases(path, channel_names, split)
        return [InputCase(case_name(path), [path])]
    if (path / "dataset.json").is_file():
        return _manifest_cases(path / "dataset.json", channel_names, split)
    if is_dicom_series_dir(path):
        return [InputCase(path.name, [path])]
    entries = _visible(path)
    files = [p for p in entries if p.is_file() and is_image_path(p)]
    cases = _group_channels(files, num_channels) if files else []
    cases += [InputCase(d.name, [d]) for d in entries if d.is_dir() and _looks_like_dicom_folder(d)]
    if not cases:
        raise InputError(
            f"{path}: no images found (expected .nii/.nii.gz/.nrrd/.mha files, a dataset.json, "
            "or DICOM series folders)"
        )
    seen: dict[str, int] = {}
    for case in cases:
        seen[case.name] = seen.get(case.name, 0) + 1
    duplicates = sorted(n for n, k in seen.items() if k > 1)
    if duplicates:
        raise InputError(f"{path}: several inputs map to the same case name {duplicates}; rename them")
    return sorted(cases, key=lambda c: c.name)


def read_case(case: InputCase, num_channels: int) -> Volume:
    """Read a case as a :class:`Volume` with a (C, X, Y, Z) array, checked for use.

    The array keeps stored integers of up to 16 bits (``medseg.data.io.COMPACT``: CT in HU
    as int16, half the memory of float32, the same values); anything else is float32.
    Raises :class:`ImageReadError` for a missing channel, a channel-count or geometry
    mismatch, or non-finite values, with a one-line reason.
    """
    if case.error:
        raise ImageReadError(f"{case.name}: {case.error}")
    vols = [read_volume(src, dtype=COMPACT) for src in case.sources]
    first = vols[0]
    arrays = []
    for src, vol in zip(case.sources, vols, strict=True):
        if not same_geometry(vol, first):
            raise ImageReadError(
                f"{src}: geometry (shape {vol.spatial_shape}) differs from {case.sources[0].name} "
                f"(shape {first.spatial_shape}); all channels of a case must share one grid"
            )
        arrays.append(vol.array if vol.array.ndim == 4 else vol.array[None])
    dtype = compact_dtype(np.result_type(*arrays))  # int16 with uint16 channels: float32
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0, dtype=dtype)
    if image.shape[0] != num_channels:
        raise ImageReadError(
            f"{case.sources[0]}: image has {image.shape[0]} channel(s) but the model takes {num_channels}; "
            "give one file per channel (<case>_0000, _0001…) or a 4D NIfTI"
        )
    if np.issubdtype(image.dtype, np.floating):
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        if bad:
            raise ImageReadError(
                f"{case.sources[0]}: {bad} of {image.size} voxels are NaN or infinite; fix or re-export the image"
            )
    # any memory order (NIfTI's is Fortran): a C-order copy would be a second full-size image
    first.array = image if image.dtype == dtype else image.astype(dtype)
    return first
