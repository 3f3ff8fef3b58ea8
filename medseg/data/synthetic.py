"""Synthetic MR-like phantoms: medseg's embedded default dataset (``medseg synth``, ``make demo``).

Every case is an analytic phantom defined in world coordinates (RAS+, mm) and sampled at the
voxel centres of its own grid (spacing, orientation, optional small oblique tilt), so labels
and images agree exactly with the affine and shapes are the same in mm whatever the grid:

- body: an ellipsoid (semi-axes 46-52 x 38-46 x 65-80 mm) filling most of the 110 x 110 x
  100 mm field of view; air (0) outside;
- label 1 "organ": a smooth deformed ellipsoid, semi-axes 20-26 x 16-21 x 18-24 mm, radius
  modulated by random degree-2/3 harmonics of the direction (at most 10-20 %);
- label 2 "lesion": an ellipsoid with semi-axes 5.5-8 mm, >= 3 mm inside the organ;
- label 3 "vessel": a tube of radius 3-4 mm around a smooth bent curve (~90 mm long) that
  crosses the organ, >= 1.5 mm from the lesion, and leaves it at both ends (clipped to
  the body).

Image = global scale (x0.5-x3) * Rician(bias * texture * mean): bias is the exp of a quadratic
in world coordinates (bounded to [0.74, 1.35], ~0.8-1.25 in the body), texture ~3-6 % waves,
per-structure means +-15 % per case, noise sigma 6-10 % of tissue; float32 (X, Y, Z).
Random sampling (:func:`sample_phantom`, :func:`sample_grid`) is kept apart from the
deterministic rendering (:func:`render`), as in TorchIO.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from medseg.data.io import write_volume
from medseg.utils import atomic_write_text

GENERATOR_VERSION = "1.0"
FOV_MM = np.array([110.0, 110.0, 100.0])
"""Field of view along world R, A, S (mm); every case covers it whatever its grid."""
ORIENTATIONS = ("RAS", "LPS", "LAS", "RPI", "PIR", "ASL")
LABELS = {"0": "background", "1": "organ", "2": "lesion", "3": "vessel"}
BASE_MEANS = {"tissue": 100.0, "organ": 160.0, "lesion": 240.0, "vessel": 50.0}
_CURVE_POINTS = 400  # vessel centre-line samples (~0.25 mm apart)


@dataclass(frozen=True)
class Phantom:
    """The random parameters of one phantom; positions in world RAS mm, lengths in mm."""

    center: np.ndarray  # (3,) centre of the field of view
    body_axes: np.ndarray  # (3,) body ellipsoid semi-axes along R, A, S
    organ_center: np.ndarray  # (3,)
    organ_axes: np.ndarray  # (3,) semi-axes in the organ's own frame
    organ_rot: np.ndarray  # (3, 3) organ frame -> world rotation
    organ_coef: np.ndarray  # (16,) radial deformation coefficients (see _harmonics)
    lesion_center: np.ndarray  # (3,)
    lesion_axes: np.ndarray  # (3,)
    lesion_rot: np.ndarray  # (3, 3)
    vessel_curve: np.ndarray  # (K, 3) centre-line points
    vessel_radius: float
    means: dict[str, float]  # mean intensity of tissue, organ, lesion, vessel (a.u.)
    waves: np.ndarray  # (W, 3) texture wave vectors (rad/mm)
    phases: np.ndarray  # (W,) radians
    texture_amp: float  # relative standard deviation of the texture
    bias_lin: np.ndarray  # (3,) log-bias linear coefficients on FOV-normalised coordinates
    bias_quad: np.ndarray  # (3, 3) log-bias quadratic form (symmetric)
    noise_sigma: float  # Rician noise sigma as a fraction of the tissue mean
    scale: float  # global intensity scale


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z) voxels, ``spacing`` mm, ``affine`` voxel -> RAS mm."""

    orientation: str
    spacing: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


_DIRECTIONS = _unit(np.random.default_rng(0).normal(size=(4000, 3)))  # fixed probe directions


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _harmonics(u: np.ndarray) -> np.ndarray:
    """(N, 3) unit directions -> (N, 16) degree-2 and degree-3 monomials (low-order harmonics)."""
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    return np.stack([x * x, y * y, z * z, x * y, x * z, y * z, x**3, y**3, z**3,
                     x * x * y, x * x * z, y * y * x, y * y * z, z * z * x, z * z * y, x * y * z], 1)


def _organ_radius(coef: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Organ boundary radius (in units of its semi-axes) along unit directions ``u`` (N, 3)."""
    return 1.0 + _harmonics(u) @ coef


def sample_phantom(rng: np.random.Generator) -> Phantom:
    """Draw one phantom's anatomy and intensity parameters (see the module docstring)."""
    center = rng.uniform([-20, -20, -30], [20, 20, 30])
    organ_axes = rng.uniform([20, 16, 18], [26, 21, 24])
    organ_rot = _rotation(rng)
    organ_center = center + rng.uniform(-6, 6, 3)
    coef = rng.normal(size=16)
    coef *= rng.uniform(0.10, 0.20) / np.abs(_harmonics(_DIRECTIONS) @ coef).max()
    min_radius = _organ_radius(coef, _DIRECTIONS).min() - 0.01  # margin for unsampled directions
    # Lesion: its centre lies deep enough that the whole lesion is >= 3 mm inside the organ.
    lesion_axes = rng.uniform(5.5, 8.0, 3)
    q_max = max(0.0, min_radius - (lesion_axes.max() + 3.0) / organ_axes.min())
    q = _unit(rng.normal(size=3)) * q_max * rng.uniform() ** (1 / 3)
    lesion_center = organ_center + organ_rot @ (organ_axes * q)
    # Vessel: a bent, wiggling curve through the organ. n1 (perpendicular to its axis d) points
    # away from the lesion, bend is along +n1, wiggle along d x n1: every curve point is then
    # >= offset + |o_perp| from the lesion centre.
    radius = float(rng.uniform(3.0, 4.0))
    o = lesion_center - organ_center
    for _ in range(100):
        d = _unit(rng.normal(size=3))
        o_perp = o - (o @ d) * d
        side = o_perp if np.linalg.norm(o_perp) > 1e-6 else np.cross(d, rng.normal(size=3))
        n1 = -_unit(side)
        v = (n1 @ organ_rot) / organ_axes  # organ-frame q of the world direction n1
        along = float(_organ_radius(coef, _unit(v)[None])[0] / np.linalg.norm(v))
        offset = rng.uniform(0.5, 0.75) * along
        needed = lesion_axes.max() + radius + 1.5 - np.linalg.norm(o_perp)
        if offset >= needed:
            break
    offset = max(offset, needed)
    t = np.linspace(-1.0, 1.0, _CURVE_POINTS)[:, None]
    curve = (organ_center + offset * n1 + t * rng.uniform(40, 50) * d
             + rng.uniform(6, 12) * t * t * n1
             + rng.uniform(2, 5) * np.sin(math.pi * t + rng.uniform(0, 2 * math.pi)) * np.cross(d, n1))
    quad = rng.normal(size=(3, 3))
    quad = quad + quad.T  # |log bias| <= 0.18 |x|_2 + 0.06 <= 0.3 in the body (|x|_2 <= 1.35)
    n_waves = 8
    wavelength = rng.uniform(6, 30, n_waves)  # mm
    return Phantom(
        center=center,
        body_axes=rng.uniform([46, 38, 65], [52, 46, 80]),
        organ_center=organ_center, organ_axes=organ_axes, organ_rot=organ_rot, organ_coef=coef,
        lesion_center=lesion_center, lesion_axes=lesion_axes, lesion_rot=_rotation(rng),
        vessel_curve=curve, vessel_radius=radius,
        means={k: float(v * rng.uniform(0.85, 1.15)) for k, v in BASE_MEANS.items()},
        waves=_unit(rng.normal(size=(n_waves, 3))) * (2 * math.pi / wavelength)[:, None],
        phases=rng.uniform(0, 2 * math.pi, n_waves),
        texture_amp=float(rng.uniform(0.03, 0.06)),
        bias_lin=_unit(rng.normal(size=3)) * rng.uniform(0.12, 0.18),
        bias_quad=quad * (rng.uniform(0.02, 0.06) / np.abs(quad).sum()),
        noise_sigma=float(rng.uniform(0.06, 0.10)),
        scale=float(math.exp(rng.uniform(math.log(0.5), math.log(3.0)))),
    )


def make_grid(orientation: str, spacing: np.ndarray | tuple[float, float, float],
              center: np.ndarray, rotation: np.ndarray | None = None) -> Grid:
    """The grid covering :data:`FOV_MM` around ``center`` (world mm) with the given axes.

    ``orientation``: nibabel axis codes of the array axes (e.g. "LPS", "PIR"); ``spacing``:
    mm along the array axes; ``rotation``: an optional small world rotation (oblique scan).
    The array shape per axis is round(FOV along that axis's world direction / spacing).
    """
    codes = tuple(orientation.upper())
    try:
        ornt = nib.orientations.axcodes2ornt(codes)
        valid = len(codes) == 3 and sorted(int(w) for w in ornt[:, 0]) == [0, 1, 2]
    except ValueError:  # a letter that is not an axis code
        valid = False
    if not valid:
        raise ValueError(f"orientation {orientation!r} is not three axis codes naming R/L, A/P "
                         f"and S/I once each; use e.g. one of {ORIENTATIONS}")
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.zeros((3, 3))
    for k, (w, flip) in enumerate(ornt):
        direction[int(w), k] = flip
    matrix = (np.eye(3) if rotation is None else rotation) @ direction * spacing[None, :]
    shape = tuple(max(1, round(FOV_MM[int(w)] / s)) for (w, _), s in zip(ornt, spacing, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = center - matrix @ ((np.asarray(shape) - 1) / 2)
    return Grid("".join(codes), spacing, shape, affine)  # type: ignore[arg-type]


def sample_grid(rng: np.random.Generator, center: np.ndarray, shape: tuple[int, int, int],
                orientation: str) -> Grid:
    """Draw a case's spacing and oblique tilt; ``shape`` is the nominal (in-plane, in-plane,
    slice) array shape: spacing = FOV / shape scaled by 0.88-1.18 in-plane and 0.85-1.4 across
    slices (1.34-1.80 mm and 1.52-2.50 mm for the default 72 x 72 x 56); one case in four is
    tilted by 3-8 degrees about a random axis."""
    nominal = FOV_MM / np.asarray(shape, dtype=np.float64)
    spacing = nominal * np.array([*[rng.uniform(0.88, 1.18)] * 2, rng.uniform(0.85, 1.4)])
    tilt = None  # one case in four is oblique
    if rng.uniform() < 0.25:
        rotvec = _unit(rng.normal(size=3)) * math.radians(rng.uniform(3, 8))
        tilt = Rotation.from_rotvec(rotvec).as_matrix()
    return make_grid(orientation, np.round(spacing, 4), center, tilt)


def voxel_centers(grid: Grid) -> np.ndarray:
    """World RAS coordinates (mm) of every voxel centre, (X*Y*Z, 3) in C order of (X, Y, Z);
    a transposed (3, N) array: the maths works on (3, N), ~10x faster than (N, 3) @ (3, 3)."""
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    return (grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:]).T


def _frame(p: np.ndarray, center: np.ndarray, axes: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World points (3, N) mm -> a shape's own frame in units of its semi-axes, (3, N);
    ``rot``: own frame -> world rotation."""
    return (rot.T @ (p - center[:, None])) / axes[:, None]


def world_masks(ph: Phantom, pts: np.ndarray) -> dict[str, np.ndarray]:
    """The raw shapes (body, organ, lesion, vessel) at world points ``pts`` (N, 3) mm, as
    boolean (N,) arrays, before label precedence and clipping."""
    p = np.ascontiguousarray(pts.T)  # (3, N); free for voxel_centers' output
    rho = np.sqrt(np.sum(_frame(p, ph.organ_center, ph.organ_axes, ph.organ_rot) ** 2, axis=0))
    near = np.flatnonzero(rho <= 1.0 + np.abs(ph.organ_coef).sum())  # only these can be organ
    q = _frame(p[:, near], ph.organ_center, ph.organ_axes, ph.organ_rot).T
    organ = np.zeros(len(pts), dtype=bool)
    organ[near] = rho[near] <= _organ_radius(ph.organ_coef, q / np.maximum(rho[near], 1e-12)[:, None])
    vessel = np.zeros(len(pts), dtype=bool)
    r = ph.vessel_radius
    lo, hi = ph.vessel_curve.min(0) - r, ph.vessel_curve.max(0) + r
    box = np.flatnonzero(np.all((p >= lo[:, None]) & (p <= hi[:, None]), axis=0))
    dist, _ = cKDTree(ph.vessel_curve).query(pts[box], distance_upper_bound=r + 1e-6)
    vessel[box] = dist <= r
    return {
        "body": np.sum(_frame(p, ph.center, ph.body_axes, np.eye(3)) ** 2, axis=0) <= 1.0,
        "organ": organ,
        "lesion": np.sum(_frame(p, ph.lesion_center, ph.lesion_axes, ph.lesion_rot) ** 2, axis=0) <= 1.0,
        "vessel": vessel,
    }


def label_points(masks: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 labels from :func:`world_masks`: organ 1, vessel 3 (inside the body), lesion 2
    (inside the organ) painted last, so the lesion is always whole and nested in the organ."""
    label = np.zeros(len(masks["body"]), dtype=np.uint8)
    label[masks["organ"]] = 1
    label[masks["vessel"] & masks["body"]] = 3
    label[masks["lesion"] & masks["organ"]] = 2
    return label


def render(ph: Phantom, grid: Grid, rng: np.random.Generator | None = None,
           noise: bool = True, bias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sample the phantom on ``grid``: (image float32 (X, Y, Z), label uint8 (X, Y, Z)).

    ``noise``/``bias`` switch off the Rician noise / bias field (for tests); ``rng`` draws
    the noise and is required when ``noise`` is true.
    """
    pts = voxel_centers(grid)
    masks = world_masks(ph, pts)
    p = pts.T  # (3, N)
    label = label_points(masks)
    means = np.array([ph.means[k] for k in ("tissue", "organ", "lesion", "vessel")])
    img = np.where(masks["body"] | (label > 0), means[label], 0.0)
    waves = ph.waves.astype(np.float32) @ p.astype(np.float32) + ph.phases[:, None].astype(np.float32)
    texture = np.cos(waves).sum(axis=0, dtype=np.float64)  # float32 cos: 2x faster
    img *= 1.0 + ph.texture_amp * math.sqrt(2 / len(ph.waves)) * texture
    if bias:
        x = (p - ph.center[:, None]) / (FOV_MM[:, None] / 2)
        img *= np.exp(ph.bias_lin @ x + np.sum(x * (ph.bias_quad @ x), axis=0))
    if noise:
        if rng is None:
            raise ValueError("render(noise=True) needs rng, a numpy Generator for the noise")
        sigma = ph.noise_sigma * ph.means["tissue"]
        img = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    img *= ph.scale
    return img.reshape(grid.shape).astype(np.float32), label.reshape(grid.shape)


def case_orientations(seed: int, cases: int) -> list[str]:
    """Orientation of each case: a seed-dependent permutation of :data:`ORIENTATIONS`, cycled,
    so any 4 consecutive cases have 4 distinct orientations (at most one RAS)."""
    order = np.random.default_rng(seed).permutation(len(ORIENTATIONS))
    return [ORIENTATIONS[order[i % len(ORIENTATIONS)]] for i in range(cases)]


def generate_case(seed: int, index: int, orientation: str, shape: tuple[int, int, int] = (72, 72, 56),
                  noise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case ``index`` of dataset ``seed``: (image float32, label uint8, 4x4 affine RAS mm).

    Anatomy, grid and noise come from independent streams ``default_rng([seed, index, k])``,
    so a case does not depend on the number of cases or (its anatomy) on ``shape``.
    """
    ph = sample_phantom(np.random.default_rng([seed, index, 0]))
    grid = sample_grid(np.random.default_rng([seed, index, 1]), ph.center, shape, orientation)
    image, label = render(ph, grid, np.random.default_rng([seed, index, 2]), noise=noise)
    return image, label, grid.affine


def _check_args(cases: int, seed: int, test_fraction: float, shape: tuple[int, ...]) -> None:
    if isinstance(cases, bool) or not isinstance(cases, int | np.integer) or cases < 1:
        raise ValueError(f"cases={cases!r}: expected an integer >= 1 (e.g. --cases 24)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer (e.g. --seed 0)")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r}: expected a fraction in [0, 1), e.g. 0.25")
    if len(shape) != 3 or any(not isinstance(s, int | np.integer) or s < 8 for s in shape):
        raise ValueError(f"shape={shape!r}: expected three integers >= 8 (voxels), e.g. (72, 72, 56)")


def split_sizes(cases: int, test_fraction: float) -> tuple[int, int]:
    """(training, test) case counts: round(cases * test_fraction) held out (half rounds up),
    at least 1 when cases >= 2 and test_fraction > 0, and always >= 1 training case."""
    n_test = math.floor(cases * test_fraction + 0.5)
    if test_fraction > 0 and cases >= 2:
        n_test = max(1, n_test)
    n_test = min(n_test, cases - 1)
    return cases - n_test, n_test


def generate_dataset(output: Path | str, cases: int = 24, seed: int = 0, test_fraction: float = 0.25,
                     shape: tuple[int, int, int] = (72, 72, 56)) -> Path:
    """Write a Decathlon-layout phantom dataset; return the path of its dataset.json.

    ``output/imagesTr``, ``labelsTr`` hold the training cases ``phantom_000`` ...;
    ``imagesTs``, ``labelsTs`` the last round(cases * test_fraction) cases (at least 1 when
    cases >= 2 and test_fraction > 0). ``shape``: nominal array shape (X, Y, Z) in voxels
    (see :func:`sample_grid`). Same seed -> identical arrays and affines.
    """
    _check_args(cases, seed, test_fraction, tuple(shape))
    output = Path(output)
    n_test = split_sizes(cases, test_fraction)[1]
    entries: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
    for i, orientation in enumerate(case_orientations(seed, cases)):
        image, label, affine = generate_case(seed, i, orientation, shape)
        split, suffix = ("test", "Ts") if i >= cases - n_test else ("training", "Tr")
        name = f"phantom_{i:03d}.nii.gz"
        write_volume(output / f"images{suffix}" / name, image, affine)
        write_volume(output / f"labels{suffix}" / name, label, affine)
        entries[split].append({"image": f"./images{suffix}/{name}", "label": f"./labels{suffix}/{name}"})
    manifest = {
        "name": "medseg-phantom",
        "description": "Synthetic MR-like phantoms (organ, nested lesion, vessel) with varied "
                       "spacing, orientation, bias field and noise; made by medseg synth",
        "reference": "medseg.data.synthetic", "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": dict(LABELS),
        "numTraining": len(entries["training"]),
        "numTest": len(entries["test"]),
        **entries,
        "medseg_synth": {"seed": seed, "version": GENERATOR_VERSION, "cases": cases,
                         "test_fraction": test_fraction, "shape": list(shape)},
    }
    path = output / "dataset.json"
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path
