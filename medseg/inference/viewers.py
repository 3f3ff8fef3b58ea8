"""Colour tables that make predicted NIfTI masks open with structure names in desktop viewers.

A NIfTI label map stores only integers; 3D Slicer and ITK-SNAP show names and colours when
given a table beside it. :func:`write_viewer_tables` writes both next to a batch of masks:

- ``labels.ctbl``: a 3D Slicer colour table, one ``id name R G B A`` line per label
  (0-255 each; Slicer splits on whitespace, so spaces in names become underscores).
  Load it with the mask (Add Data, or drag both in), then choose it as the label map's
  colour table, or load the mask as a segmentation with it (see README "Viewing results").
- ``labels.itksnap.txt``: an ITK-SNAP label description file, one
  ``IDX -R- -G- -B- -A-- VIS MSH "LABEL"`` line per label (alpha 0-1), label 0 being the
  invisible "Clear Label" as ITK-SNAP expects (Segmentation > Import Label Descriptions).

Names come from the model's manifest labels (name -> id, background included); colours from
:mod:`medseg.palette`, the same colours as previews and reports. Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medseg.palette import label_rgb
from medseg.utils import atomic_write_text

SLICER_NAME = "labels.ctbl"
ITKSNAP_NAME = "labels.itksnap.txt"


def _by_id(labels: Mapping[str, int]) -> list[tuple[int, str]]:
    """(id, name) pairs sorted by id; raises ValueError on a negative or duplicated id."""
    pairs = sorted((int(v), str(k)) for k, v in labels.items())
    ids = [i for i, _ in pairs]
    if any(i < 0 for i in ids):
        raise ValueError(f"labels {dict(labels)}: label ids must be >= 0 (0 = background)")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"labels {dict(labels)}: ids {dup} are used by several names; each id needs one name")
    return pairs


def slicer_name(name: str) -> str:
    """A structure name as one whitespace-free token (Slicer's colour-table reader splits on spaces)."""
    return "_".join(name.split()) or "unnamed"


def slicer_table(labels: Mapping[str, int]) -> str:
    """The text of a 3D Slicer colour table (``.ctbl``) for ``labels`` (name -> id).

    Background (id 0) is written transparent (A = 0), every structure opaque (A = 255).
    """
    pairs = _by_id(labels)
    lines = [
        "# 3D Slicer colour table written by medseg (names from the model's manifest)",
        f"# {len(pairs)} values",
    ]
    for label, name in pairs:
        r, g, b = label_rgb(label)
        lines.append(f"{label} {slicer_name(name)} {r} {g} {b} {0 if label == 0 else 255}")
    return "\n".join(lines) + "\n"


def itksnap_table(labels: Mapping[str, int]) -> str:
    """The text of an ITK-SNAP label description file for ``labels`` (name -> id).

    Label 0 is always ITK-SNAP's invisible "Clear Label" (whatever the manifest calls it);
    structures are opaque (alpha 1), visible and shown as meshes.
    """
    pairs = [(i, n) for i, n in _by_id(labels) if i != 0]
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by medseg)",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields:",
        "#    IDX:   Zero-based index",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description",
        "################################################",
        f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8d} {0:2d} {0:2d}    "Clear Label"',
    ]
    for label, name in pairs:
        r, g, b = label_rgb(label)
        text = name.replace('"', "'")  # the description is a quoted string
        lines.append(f'{label:5d} {r:5d} {g:4d} {b:4d} {1:8d} {1:2d} {1:2d}    "{text}"')
    return "\n".join(lines) + "\n"


def write_viewer_tables(output: Path | str, labels: Mapping[str, int]) -> list[Path]:
    """Write ``labels.ctbl`` and ``labels.itksnap.txt`` into ``output``; returns their paths."""
    output = Path(output)
    paths = [output / SLICER_NAME, output / ITKSNAP_NAME]
    texts = [slicer_table(labels), itksnap_table(labels)]  # both built before either is written
    for path, text in zip(paths, texts, strict=True):
        atomic_write_text(path, text)
    return paths
