"""The shared label palette: fixed, distinct, valid colours."""

from __future__ import annotations

import itertools

import pytest

from medseg.palette import label_hex, label_rgb, label_rgb_float


def test_background_is_black_and_first_ids_fixed() -> None:
    assert label_rgb(0) == (0, 0, 0)
    assert label_rgb(1) == (31, 119, 180)  # tab10 blue: the colour users see for label 1
    assert label_hex(2) == "#ff7f0e"


def test_many_labels_are_distinct_and_in_range() -> None:
    colours = [label_rgb(i) for i in range(1, 130)]
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    # neighbouring ids never share a colour, and 118 structures get 118 colours
    assert len(set(colours[:118])) == 118
    assert all(a != b for a, b in itertools.pairwise(colours))


def test_float_matches_int_and_negative_rejected() -> None:
    assert label_rgb_float(3) == pytest.approx(tuple(c / 255 for c in label_rgb(3)))
    with pytest.raises(ValueError, match="negative"):
        label_rgb(-1)
