"""Dataset manifests: Decathlon ``dataset.json``, the nnU-Net v2 variant, and CSV.

Formats read (paths are relative to the manifest's folder):

* **Decathlon (MSD)**: ``labels`` as id -> name, ``modality`` as index -> name,
  ``training`` as a list of ``{"image", "label"}`` (multi-channel images are 4D NIfTI),
  ``test`` as a list of paths (or of ``{"image", "label"}`` objects, as ``medseg synth``
  writes for its labelled hold-out cases).
* **nnU-Net v2**: ``labels`` as name -> id, ``channel_names``, ``file_ending``; cases are
  found as ``imagesTr/<case>_<XXXX><file_ending>`` (one file per channel) and
  ``labelsTr/<case><file_ending>``; ``imagesTs`` likewise, labels from ``labelsTs`` if any.
* **CSV**: a header with ``image`` (and ``image2``, ``image_t2``… for more channels),
  optional ``label``, ``case`` and ``split`` (train/test) columns; any other column (site,
  scanner) is kept as case metadata for subgroup reports. Label names come from a sidecar
  ``<stem>.labels.json`` (``{"labels": {"1": "liver"}}`` or ``{"liver": 1}``) when present.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.utils import case_name


class ManifestError(ValueError):
    """A manifest cannot be parsed; the message names the file, the entry and the fix."""


@dataclass
class Case:
    """One case: one image file per channel (or one 4D file), an optional label map."""

    name: str
    images: list[Path]
    label: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    path: Path
    name: str
    channel_names: list[str]
    labels: dict[str, int]
    """Structure name -> label id, background (0) included."""
    training: list[Case]
    test: list[Case] = field(default_factory=list)
    format: str = "decathlon"

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    @property
    def label_names(self) -> dict[int, str]:
        return {v: k for k, v in self.labels.items()}

    @property
    def is_ct(self) -> bool:
        return any(c.strip().upper() == "CT" for c in self.channel_names)

    @property
    def all_cases(self) -> list[Case]:
        return self.training + self.test

    def case(self, name: str) -> Case:
        for c in self.all_cases:
            if c.name == name:
                return c
        raise KeyError(f"{self.path}: no case named {name!r}")


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / p).resolve()


def _parse_labels(raw: Any, path: Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise ManifestError(f"{path}: 'labels' must be a non-empty mapping (id -> name or name -> id)")
    labels: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            raise ManifestError(
                f"{path}: label {key!r} is a region ({value}); region-based labels are not "
                "supported, give one integer id per structure"
            )
        if str(key).lstrip("-").isdigit() and isinstance(value, str):  # Decathlon id -> name
            labels[value] = int(key)
        elif isinstance(value, int | str) and str(value).lstrip("-").isdigit():  # nnU-Net name -> id
            labels[str(key)] = int(value)
        else:
            raise ManifestError(f"{path}: cannot read label entry {key!r}: {value!r}")
    if any(v < 0 for v in labels.values()):
        raise ManifestError(f"{path}: label ids must be >= 0, got {sorted(labels.values())}")
    if len(set(labels.values())) != len(labels):
        raise ManifestError(f"{path}: label ids must be unique (one id per structure), got {labels}")
    if 0 not in labels.values():
        labels = {"background": 0, **labels}
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def _channel_list(raw: Any, path: Path, key: str) -> list[str]:
    """Channel names ordered by their integer index keys (``{"0": "T1", "1": "T2"}``)."""
    if not isinstance(raw, dict) or not all(str(k).isdigit() for k in raw):
        raise ManifestError(f"{path}: {key!r} must map channel indices to names like {{\"0\": \"T1\"}}; got {raw!r}")
    return [str(raw[k]) for k in sorted(raw, key=int)]


def _case_entry(entry: Any, root: Path, path: Path, where: str) -> Case:
    if isinstance(entry, str):
        image, label = entry, None
    elif isinstance(entry, dict) and "image" in entry:
        image, label = entry["image"], entry.get("label")
    else:
        raise ManifestError(f"{path}: {where} entry {entry!r} needs an 'image' path")
    images = image if isinstance(image, list) else [image]
    paths = [_resolve(root, str(i)) for i in images]
    return Case(case_name(paths[0]), paths, _resolve(root, str(label)) if label else None)


def _nnunet_cases(root: Path, folder: str, label_folder: str, ending: str, nch: int) -> list[Case]:
    img_dir = root / folder
    if not img_dir.is_dir():
        return []
    pattern = re.compile(rf"^(.*)_(\d{{4}}){re.escape(ending)}$")
    groups: dict[str, dict[int, Path]] = {}
    for f in sorted(img_dir.iterdir()):
        m = pattern.match(f.name)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = f
    cases = []
    for name, chans in sorted(groups.items()):
        images = [chans.get(i, img_dir / f"{name}_{i:04d}{ending}") for i in range(nch)]
        label = root / label_folder / f"{name}{ending}"
        cases.append(Case(name, images, label if label.exists() or folder == "imagesTr" else None))
    return cases


def _read_json(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    root = path.parent
    labels = _parse_labels(raw.get("labels"), path)
    name = str(raw.get("name", path.parent.name))
    if "channel_names" in raw:  # nnU-Net v2
        channel_names = _channel_list(raw["channel_names"], path, "channel_names")
        ending = str(raw.get("file_ending", ".nii.gz"))
        training = _nnunet_cases(root, "imagesTr", "labelsTr", ending, len(channel_names))
        test = _nnunet_cases(root, "imagesTs", "labelsTs", ending, len(channel_names))
        if not training and raw.get("training"):
            training = [_case_entry(e, root, path, "training") for e in raw["training"]]
        return Manifest(path, name, channel_names, labels, training, test, "nnunet")
    channel_names = _channel_list(raw.get("modality", {"0": "image"}), path, "modality")
    if "training" not in raw or not isinstance(raw["training"], list):
        raise ManifestError(f"{path}: Decathlon manifest needs a 'training' list of {{image, label}}")
    training = [_case_entry(e, root, path, "training") for e in raw["training"]]
    test = [_case_entry(e, root, path, "test") for e in raw.get("test", [])]
    return Manifest(path, name, channel_names, labels, training, test, "decathlon")


def _read_csv(path: Path) -> Manifest:
    root = path.parent
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        image_cols = [c for c in columns if c.startswith("image")]
        if not image_cols:
            raise ManifestError(f"{path}: CSV needs an 'image' column; found columns {columns}")
        image_cols.sort(key=lambda c: (c != "image", c))
        meta_cols = [c for c in columns if c not in (*image_cols, "label", "case", "split")]
        training: list[Case] = []
        test: list[Case] = []
        for row_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("image"):
                raise ManifestError(f"{path}: line {row_no} has no image path")
            images = [_resolve(root, row[c]) for c in image_cols if row.get(c)]
            label = _resolve(root, row["label"]) if row.get("label") else None
            case = Case(row.get("case") or case_name(images[0]), images, label, {c: row.get(c, "") for c in meta_cols})
            (test if row.get("split", "train").lower() == "test" else training).append(case)
    labels: dict[str, int] = {"background": 0}
    sidecar = path.with_suffix(".labels.json")
    channel_names = [c if c != "image" else "image" for c in image_cols]
    if sidecar.exists():
        try:
            side = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ManifestError(f"{sidecar}: not valid JSON ({err})") from err
        if not isinstance(side, dict):
            raise ManifestError(f"{sidecar}: expected a JSON object like {{\"labels\": {{\"1\": \"liver\"}}}}")
        labels = _parse_labels(side.get("labels", side), sidecar)
        if "channel_names" in side:
            channel_names = [str(v) for v in side["channel_names"]]
    return Manifest(path, path.stem, channel_names, labels, training, test, "csv")


def load_manifest(path: Path | str) -> Manifest:
    """Read a Decathlon/nnU-Net ``dataset.json`` or a CSV manifest (structure only).

    This parses the manifest; ``medseg.data.check.check_dataset`` validates the files.
    """
    path = Path(path).resolve()
    if path.is_dir() and (path / "dataset.json").exists():
        path = path / "dataset.json"
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; pass a dataset.json or a .csv file")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    return _read_json(path)
