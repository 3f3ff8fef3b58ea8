"""A preview image of a predicted case: three orthogonal slices with the label overlay.

``OUTPUT/previews/<case>.png`` shows an axial, a coronal and a sagittal slice through the
centre of mass of the predicted foreground (the volume's centre when nothing was predicted),
the image in grey (windowed to its 1st-99th percentile over the three slices), the labels in
the colours of :mod:`medseg.palette` (the same as viewer colour tables and reports), a legend
naming the structures present in the case, and orientation letters on each panel's edges.

Orientation: the arrays are first brought to RAS axis order with the input's affine
(nibabel's ``io_orientation``: a permutation and flips, no resampling), then shown in the
radiological convention: axial and coronal panels with the patient's Right on the viewer's
left, Anterior up (axial) / Superior up (coronal); the sagittal panel with Anterior on the
left and Superior up. Pixels are drawn with their physical aspect ratio (spacing in mm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.palette import label_rgb_float
from medseg.utils import atomic_path

PARTS_DIR = "previews"
OVERLAY_ALPHA = 0.45


def part_path(output: Path | str, case: str) -> Path:
    return Path(output) / PARTS_DIR / f"{case}.png"


@dataclass
class Panel:
    """One slice as displayed: rows top->bottom, columns left->right."""

    title: str
    image: np.ndarray | None
    labels: np.ndarray
    letters: tuple[str, str, str, str]
    """Letters at the (left, right, top, bottom) edges."""
    extent_mm: tuple[float, float]
    """(width, height) of the panel in mm."""


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (X, Y, Z) with axes permuted/flipped so that index grows towards R, A, S; its spacing."""
    ornt = nib.orientations.io_orientation(np.asarray(affine, float))
    ras = nib.orientations.apply_orientation(array, ornt)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return ras, np.array([spacing[int(np.flatnonzero(ornt[:, 0] == k)[0])] for k in range(3)])


def panels(labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray) -> list[Panel]:
    """The three display panels through the foreground's centre (RAS-reoriented, radiological view)."""
    lab, spacing = to_ras(labels, affine)
    img = to_ras(image, affine)[0] if image is not None else None
    from scipy import ndimage

    mask = lab != 0
    centre = ([round(float(c)) for c in ndimage.center_of_mass(mask)] if mask.any()
              else [n // 2 for n in lab.shape])
    del mask
    x, y, z = centre
    sx, sy, sz = spacing

    def view(a: np.ndarray | None, plane: str) -> np.ndarray | None:
        if a is None:
            return None
        if plane == "axial":  # columns: R..L (x decreasing), rows: A..P (y decreasing)
            return a[::-1, ::-1, z].T
        if plane == "coronal":  # columns: R..L, rows: S..I
            return a[::-1, y, ::-1].T
        return a[x, ::-1, ::-1].T  # sagittal: columns A..P, rows S..I

    nx, ny, nz = lab.shape
    specs = (
        ("axial", ("R", "L", "A", "P"), (nx * sx, ny * sy)),
        ("coronal", ("R", "L", "S", "I"), (nx * sx, nz * sz)),
        ("sagittal", ("A", "P", "S", "I"), (ny * sy, nz * sz)),
    )
    out = []
    for plane, letters, extent in specs:
        index = {"axial": z, "coronal": y, "sagittal": x}[plane]
        out.append(Panel(f"{plane} {index}", view(img, plane), view(lab, plane), letters,  # type: ignore[arg-type]
                         (float(extent[0]), float(extent[1]))))
    return out


def overlay_rgba(labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(rows, cols, 4) float RGBA of a label slice in the palette's colours; background transparent."""
    ids = np.unique(labels)
    lut = np.zeros((int(ids.max(initial=0)) + 1, 4), dtype=np.float32)
    for i in ids:
        if i:
            lut[int(i)] = (*label_rgb_float(int(i)), alpha)
    return lut[labels]


def render(panel_list: list[Panel], label_map: Mapping[str, int], title: str = "") -> bytes:
    """PNG bytes of the panels side by side with a legend of the structures present."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    present: set[int] = set()
    for p in panel_list:
        present.update(int(v) for v in np.unique(p.labels) if v)
    names = {int(v): k for k, v in label_map.items()}
    ncol = 6
    legend_rows = -(-len(present) // ncol) if present else 1
    legend_in = 0.2 + 0.19 * legend_rows  # inches below the panels (whole-body models list 100+ names)
    height = 4.1 + legend_in
    fig = Figure(figsize=(12, height), dpi=80, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, p in zip(axes, panel_list, strict=True):
        w, h = p.extent_mm
        extent = (0.0, w, 0.0, h)
        if p.image is not None:
            shown = np.concatenate([q.image.ravel() for q in panel_list if q.image is not None])
            lo, hi = np.percentile(shown, [1, 99]) if shown.size else (0.0, 1.0)
            ax.imshow(p.image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=extent,
                      interpolation="nearest")
        else:
            ax.imshow(np.zeros_like(p.labels, dtype=float), cmap="gray", extent=extent)
        ax.imshow(overlay_rgba(p.labels), extent=extent, interpolation="nearest")
        ax.set_title(p.title, color="white", fontsize=10)
        ax.set_axis_off()
        style = {"color": "yellow", "fontsize": 13, "fontweight": "bold", "transform": ax.transAxes}
        left, right, top, bottom = p.letters
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    all_present = sorted(present)
    handles = [Patch(color=label_rgb_float(i), label=names.get(i, f"label {i}")) for i in all_present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), ncol), fontsize=9, frameon=False,
                   labelcolor="white", handlelength=1.2, columnspacing=1.0, borderaxespad=0.2)
    else:
        fig.text(0.5, 0.04, "no structure predicted", ha="center", color="white", fontsize=10)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.55 / height, bottom=legend_in / height, wspace=0.04)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    return buf.getvalue()


def write_preview(
    path: Path | str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray, label_map: Mapping[str, int]
) -> Path:
    """Render and write ``path`` (PNG, atomic) for one case."""
    path = Path(path)
    data = render(panels(labels, image, affine), label_map, title=path.stem)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
