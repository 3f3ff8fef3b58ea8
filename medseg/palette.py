"""One fixed, distinguishable colour per label id, shared by every output that shows labels.

Viewer colour tables (3D Slicer, ITK-SNAP), batch previews and evaluation reports take their
colours from here, so a structure has the same colour wherever a user sees it. Label 0
(background) is transparent black. Ids 1..20 use a hand-picked qualitative palette (the
first ten are matplotlib's ``tab10``, the next ten ``tab20``'s light variants), chosen so
that neighbouring ids are easy to tell apart; higher ids (whole-body models have 100+
structures) cycle through hues spread by the golden angle with alternating lightness, so
no two nearby ids share a colour.
"""

from __future__ import annotations

import colorsys

_BASE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)
"""RGB 0-255 of label ids 1..20."""

_GOLDEN = 0.618033988749895


def label_rgb(label: int) -> tuple[int, int, int]:
    """RGB (0-255 each) of a label id; (0, 0, 0) for background (id 0)."""
    if label < 0:
        raise ValueError(f"label id {label} is negative; label ids are >= 0 (0 = background)")
    if label == 0:
        return (0, 0, 0)
    if label <= len(_BASE):
        return _BASE[label - 1]
    k = label - len(_BASE)
    hue = (k * _GOLDEN) % 1.0
    lightness = 0.45 if k % 2 else 0.62
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return (round(r * 255), round(g * 255), round(b * 255))


def label_rgb_float(label: int) -> tuple[float, float, float]:
    """RGB in [0, 1] (matplotlib's convention) of a label id."""
    r, g, b = label_rgb(label)
    return (r / 255.0, g / 255.0, b / 255.0)


def label_hex(label: int) -> str:
    """``#rrggbb`` of a label id (HTML reports)."""
    return "#{:02x}{:02x}{:02x}".format(*label_rgb(label))
