"""Helpers for the evaluation tests: the surface-distance import shim and random masks."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from scipy import ndimage


def import_surface_distance() -> ModuleType:
    """DeepMind's ``surface_distance`` (v0.1), made importable and usable under NumPy 2.

    Its release uses ``np.NaN`` and ``np.Inf``, which NumPy 2 removed; put them back.
    """
    import warnings

    for name, value in (("NaN", np.nan), ("Inf", np.inf)):
        if not hasattr(np, name):
            setattr(np, name, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="surface_distance")
    import surface_distance

    return surface_distance


def random_labels(shape: tuple[int, int, int], n_labels: int, seed: int, specks: bool = True) -> np.ndarray:
    """A uint8 label map of ``n_labels`` smooth random blobs (some touch the border), plus
    a few isolated one-voxel specks far from their blob when ``specks``."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.5, 3.0))
        labels[noise > np.quantile(noise, rng.uniform(0.8, 0.95))] = label
        if specks:
            for _ in range(int(rng.integers(0, 3))):
                labels[tuple(int(rng.integers(0, s)) for s in shape)] = label
    return labels


def perturb(labels: np.ndarray, seed: int) -> np.ndarray:
    """A prediction-like copy: per label a random dilation, erosion or shift, plus noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for label in np.unique(labels[labels > 0]):
        mask = labels == label
        op = rng.integers(0, 3)
        if op == 0:
            mask = ndimage.binary_dilation(mask)
        elif op == 1:
            mask = ndimage.binary_erosion(mask)
        else:
            mask = np.roll(mask, tuple(int(v) for v in rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        out[mask] = label
    flip = rng.random(labels.shape) < 0.002
    out[flip] = rng.integers(0, int(labels.max()) + 1, int(flip.sum()))
    return out
