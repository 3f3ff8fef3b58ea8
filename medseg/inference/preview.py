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

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.grid import canonical_spacing, canonical_transform, reorient
from medseg.palette import label_rgb, label_rgb_float
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
    ras = reorient(array, affine, canonical_transform(affine), contiguous=False)[0]
    return ras, np.array(canonical_spacing(affine))


def panels(labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray) -> list[Panel]:
    """The three display panels through the foreground's centre (RAS-reoriented, radiological view)."""
    lab, spacing = to_ras(labels, affine)
    img = to_ras(image, affine)[0] if image is not None else None
    from medseg.inference.statistics import centroid_index

    mask = lab != 0  # centre of mass from the mask's axis projections (no full-volume float arrays)
    centre = [round(float(c)) for c in centroid_index(mask)] if mask.any() else [n // 2 for n in lab.shape]
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


PANEL_HEIGHT_PX = 300
MAX_WIDTH_PX = 1140
_GAP, _MARGIN, _TOP = 12, 10, 44


def _resample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2D array to ``shape`` (pixel centres)."""
    rows = np.minimum((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0], a.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1], a.shape[1] - 1).astype(int)
    return np.take(np.take(a, rows, axis=0), cols, axis=1)


def compose(panel_list: list[Panel], alpha: float = OVERLAY_ALPHA, as_uint8: bool = False
            ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """One RGB canvas row of the panels at a common mm-per-pixel scale; each panel's (x0, width, height).

    Grey image windowed to the 1st-99th percentile of the shown slices, labels blended with
    ``alpha`` in the palette's colours, at the slices' own resolution; then each panel is
    resized (nearest neighbour) to its display size. The canvas is float32 in [0, 1], or with
    ``as_uint8`` uint8 0-255 (converted before the resize: a quarter of the bytes to resize).
    """
    scale = min(PANEL_HEIGHT_PX / max(p.extent_mm[1] for p in panel_list),
                (MAX_WIDTH_PX - _GAP * (len(panel_list) - 1)) / sum(p.extent_mm[0] for p in panel_list))
    sizes = [(max(1, round(p.extent_mm[1] * scale)), max(1, round(p.extent_mm[0] * scale))) for p in panel_list]
    shown = [q.image.ravel() for q in panel_list if q.image is not None and q.image.size]
    lo, hi = np.percentile(np.concatenate(shown), [1, 99]) if shown else (0.0, 1.0)
    width = sum(w for _, w in sizes) + _GAP * (len(sizes) - 1)
    canvas = np.zeros((max(h for h, _ in sizes), width, 3), dtype=np.uint8 if as_uint8 else np.float32)
    boxes, x0 = [], 0
    for p, (h, w) in zip(panel_list, sizes, strict=True):
        grey = (np.zeros(p.labels.shape, np.float32) if p.image is None
                else np.clip((p.image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        over = overlay_rgba(p.labels, alpha)
        rgb = rgb * (1.0 - over[..., 3:]) + over[..., :3] * over[..., 3:]
        if as_uint8:
            rgb = np.rint(rgb * 255.0).astype(np.uint8)
        canvas[:h, x0:x0 + w] = _resample(rgb, (h, w))
        boxes.append((x0, w, h))
        x0 += w + _GAP
    return canvas, boxes


_DPI = 80
"""Font sizes are given in points at this many pixels per inch (as the former matplotlib figure)."""
_LEGEND_COLUMNS = 6


def _px(points: float) -> int:
    return max(1, round(points * _DPI / 72))


@functools.lru_cache(maxsize=8)
def _font(points: float) -> Any:
    """Pillow's bundled scalable font at ``points`` (its fixed bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=_px(points))


def _text(draw: Any, x: float, y: float, s: str, points: float, fill: tuple[int, int, int],
          ha: str = "left", va: str = "top", bold: bool = False) -> None:
    """Draw ``s`` with its box aligned at pixel (x, y): ``ha`` left|center|right, ``va`` top|center|bottom."""
    font, stroke = _font(points), 1 if bold else 0
    left, top, right, bottom = draw.textbbox((0, 0), s, font=font, stroke_width=stroke)
    w, h = right - left, bottom - top
    x0 = x - {"left": 0.0, "center": w / 2, "right": w}[ha] - left
    y0 = y - {"top": 0.0, "center": h / 2, "bottom": h}[va] - top
    draw.text((round(x0), round(y0)), s, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)


def _legend_rows(draw: Any, entries: list[tuple[int, str]]) -> list[tuple[int, list[tuple[int, str, int]]]]:
    """Entries in rows of at most ``_LEGEND_COLUMNS``: (row width, [(label, name, entry width)])."""
    font = _font(9)
    rows = []
    for i in range(0, len(entries), _LEGEND_COLUMNS):
        row = [(lid, name, _SWATCH + 4 + int(draw.textlength(name, font=font))) for lid, name in
               entries[i:i + _LEGEND_COLUMNS]]
        rows.append((sum(w for *_, w in row) + _COLUMN_GAP * (len(row) - 1), row))
    return rows


_SWATCH, _COLUMN_GAP, _LEGEND_ROW = 11, 14, 15
_WHITE, _YELLOW = (255, 255, 255), (255, 255, 0)


def render(panel_list: list[Panel], label_map: Mapping[str, int], title: str = "") -> bytes:
    """PNG bytes of the panels side by side with orientation letters and a legend of the structures shown.

    The panels are composed as one pixel array (numpy, :func:`compose`); Pillow draws the text
    and the legend swatches and encodes the PNG: 15-40 ms per hippocampus-sized case on a busy
    2-core machine and 0.04 s on first use, against 0.2-0.27 s and ~0.5 s more on first use with
    a matplotlib figure, whose text layout and Agg rendering dominated (benchmarks/RESULTS.md,
    "Batch extras and Dask").
    """
    import io

    from PIL import Image, ImageDraw

    present: set[int] = set()
    for p in panel_list:
        present.update(int(v) for v in np.unique(p.labels) if v)
    names = {int(v): k for k, v in label_map.items()}
    panels_rgb, boxes = compose(panel_list, as_uint8=True)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend = _legend_rows(measure, [(i, names.get(i, f"label {i}")) for i in sorted(present)])
    legend_px = 16 + _LEGEND_ROW * max(1, len(legend))  # whole-body models list 100+ names
    widest_legend = max((w for w, _ in legend), default=0)
    width_px = max(panels_rgb.shape[1] + 2 * _MARGIN, 480, widest_legend + 2 * _MARGIN)
    height_px = _TOP + panels_rgb.shape[0] + legend_px + 8
    canvas = np.zeros((height_px, width_px, 3), dtype=np.uint8)
    left = (width_px - panels_rgb.shape[1]) // 2
    canvas[_TOP:_TOP + panels_rgb.shape[0], left:left + panels_rgb.shape[1]] = panels_rgb
    im = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(im)
    for p, (x0, w, h) in zip(panel_list, boxes, strict=True):
        x0 += left
        _text(draw, x0 + w / 2, _TOP - 4, p.title, 10, _WHITE, "center", "bottom")
        l_, r_, t_, b_ = p.letters
        _text(draw, x0 + 3, _TOP + h / 2, l_, 13, _YELLOW, "left", "center", bold=True)
        _text(draw, x0 + w - 3, _TOP + h / 2, r_, 13, _YELLOW, "right", "center", bold=True)
        _text(draw, x0 + w / 2, _TOP + 2, t_, 13, _YELLOW, "center", "top", bold=True)
        _text(draw, x0 + w / 2, _TOP + h - 2, b_, 13, _YELLOW, "center", "bottom", bold=True)
    if title:
        _text(draw, width_px / 2, 4, title, 11, _WHITE, "center", "top")
    y = _TOP + panels_rgb.shape[0] + 12
    for row_width, row in legend:
        x = (width_px - row_width) / 2
        for label_id, name, entry_width in row:
            draw.rectangle([round(x), y, round(x) + _SWATCH - 1, y + _SWATCH - 1], fill=label_rgb(label_id))
            _text(draw, x + _SWATCH + 4, y + _SWATCH / 2, name, 9, _WHITE, "left", "center")
            x += entry_width + _COLUMN_GAP
        y += _LEGEND_ROW
    if not legend:
        _text(draw, width_px / 2, height_px - 6, "no structure predicted", 10, _WHITE, "center", "bottom")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


_PNG_LEVEL = 3
"""zlib level of the PNG: 3 encodes a preview in about 2/3 of the time of level 6 for ~15 % more bytes."""


def write_preview(
    path: Path | str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray, label_map: Mapping[str, int]
) -> Path:
    """Render and write ``path`` (PNG, atomic) for one case."""
    path = Path(path)
    data = render(panels(labels, image, affine), label_map, title=path.stem)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
