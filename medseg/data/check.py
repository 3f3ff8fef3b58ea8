"""Dataset validation: find every problem in a dataset before a training run trips on it.

:func:`check_dataset` reads each case's files once (image channels, then the label map),
case by case so that memory stays at about one case, and returns *all* problems it finds as
:class:`Problem` records instead of stopping at the first. Each message is one line that
names the file, the bad value, what was expected and how to fix it.

Problem kinds (``Problem.kind``):

======================  ========  =========================================================
kind                    severity  meaning
======================  ========  =========================================================
no_cases                error     the manifest lists no training cases
duplicate_case          error     two or more cases share a name (outputs would collide)
duplicate_file          error     one image file is used by two or more cases (leakage)
missing_label           error     a training case has no label map
missing_file            error     an image channel or label file does not exist
unreadable              error     a file cannot be read (corrupt, truncated gzip, not 3D/4D)
bad_affine              error     the voxel -> world affine is singular or not finite
channel_geometry        error     the channel files of one case differ in shape or affine
wrong_channel_count     error     the images provide a different number of channels than
                                  the manifest's ``channel_names``
shape_mismatch          error     image and label spatial shapes (X, Y, Z) differ
affine_mismatch         error     image and label affines differ by more than grid.AFFINE_ATOL_MM (1e-3 mm)
label_dimensions        error     the label map is not a 3D volume
nan_values              error     NaN or infinite voxels in an image or a label map
non_integer_label       error     a float label map holds non-integer values
unknown_label           error     label values that are not ids in the manifest's labels
empty_label             error     the label map is all background
constant_image          warning   an image channel has one value everywhere
absent_structure        warning   a structure of the manifest appears in no label map
======================  ========  =========================================================
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medseg.data.grid import AFFINE_ATOL_MM, affine_difference
from medseg.data.io import ImageReadError, Volume, read_volume
from medseg.data.manifest import Case, Manifest, load_manifest

_SLAB_VOXELS = 1 << 24  # label maps are scanned in Z slabs of about this many voxels


@dataclass
class Problem:
    """One problem found in a dataset.

    ``case``: the case name, or ``""`` for manifest-level problems. ``kind``: a short
    machine-readable code (see the module docstring). ``message``: one line naming the file,
    the bad value, what was expected and the fix. ``severity``: ``"error"`` or ``"warning"``.
    """

    case: str
    kind: str
    message: str
    severity: str = "error"


@dataclass(frozen=True)
class _Spec:
    """What a case is checked against (picklable, sent to worker processes)."""

    manifest_path: Path
    labels: dict[str, int]
    channel_names: list[str]


@dataclass
class _LabelScan:
    values: set[int] = field(default_factory=set)
    n_nonfinite: int = 0
    non_integer_example: float | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _affine_diff(a: np.ndarray, b: np.ndarray) -> str | None:
    """None when two 4x4 affines agree within the tolerance, else "up to D mm (where)"."""
    if affine_difference(a, b) <= AFFINE_ATOL_MM:
        return None
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    where = "origin" if diff[:3, 3].max() >= diff[:3, :3].max() else "spacing/direction"
    return f"up to {_fmt(float(diff.max()))} mm ({where}; tolerance {AFFINE_ATOL_MM} mm)"


def _gzip_damage(path: Path) -> str | None:
    """Why a ``.gz`` file is damaged (truncated/corrupt stream), or None when it is intact.

    nibabel reports a gzip cut inside the header as "cannot work out file type"; this
    second look, made only for files that failed to read, names the real cause.
    """
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as err:
        return f"truncated or corrupt gzip stream ({type(err).__name__}: {err})"
    return None


def _scan_label(arr: np.ndarray) -> _LabelScan:
    """Label ids present in ``arr`` (X, Y, Z), scanning Z slabs to bound the memory used."""
    scan = _LabelScan()
    is_float = np.issubdtype(arr.dtype, np.floating)
    step = max(1, _SLAB_VOXELS // max(1, arr.shape[0] * arr.shape[1]))
    for z in range(0, arr.shape[2], step):
        slab = np.asarray(arr[:, :, z : z + step])
        if is_float:
            finite = np.isfinite(slab)
            if not finite.all():
                scan.n_nonfinite += int(slab.size - np.count_nonzero(finite))
                slab = slab[finite]
            fractional = slab != np.rint(slab)
            if fractional.any():
                if scan.non_integer_example is None:
                    scan.non_integer_example = float(slab[fractional].flat[0])
                slab = slab[~fractional]
        scan.values.update(int(v) for v in np.unique(slab))
    return scan


class _CaseCheck:
    """Checks one case; every file is read once and dropped before the next is read.

    After :meth:`run`, ``problems`` holds what was found and ``label_values`` the label ids
    present in the label map (``None`` when it could not be read).
    """

    def __init__(self, case: Case, spec: _Spec) -> None:
        self.case, self.spec = case, spec
        self.problems: list[Problem] = []
        self.label_values: set[int] | None = None

    def add(self, kind: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.case.name, kind, message, severity))

    def read(self, path: Path, role: str) -> Volume | None:
        """Read ``path`` with its stored dtype; record a problem and return None on failure."""
        name = self.case.name
        if not path.exists():
            self.add("missing_file", f"{path}: {role} of case {name!r} not found; expected the file "
                     f"listed in {self.spec.manifest_path}; restore it or fix its path in the manifest")
            return None
        try:
            return read_volume(path, dtype=None)
        except Exception as err:  # a checker reports, it never crashes on one bad file
            why = _gzip_damage(path) or (str(err).removeprefix(f"{path}: ")
                                         if isinstance(err, ImageReadError) else f"{type(err).__name__}: {err}")
            self.add("unreadable", f"{path}: {role} of case {name!r} is unreadable: {why}; expected "
                     "a readable 3D/4D image; re-export or re-download the file")
        return None

    def affine_ok(self, vol: Volume, path: Path, role: str) -> bool:
        a = vol.affine
        if np.all(np.isfinite(a)) and abs(float(np.linalg.det(a[:3, :3]))) > 1e-12:
            return True
        self.add("bad_affine", f"{path}: {role} of case {self.case.name!r} has a singular or "
                 f"non-finite affine {np.round(a, 4).tolist()}; expected an invertible voxel -> world "
                 "matrix (mm); fix the header (pixdim/qform/sform) of this file")
        return False

    def image_values(self, vol: Volume, path: Path, role: str) -> None:
        """NaN/inf and constant-channel checks on one image file, (X,Y,Z) or (C,X,Y,Z)."""
        arr, name = vol.array, self.case.name
        if np.issubdtype(arr.dtype, np.floating):
            lo, hi = float(np.min(arr)), float(np.max(arr))  # NaN propagates, inf shows up
            if not (np.isfinite(lo) and np.isfinite(hi)):
                n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                self.add("nan_values", f"{path}: {role} of case {name!r} holds {n_bad} NaN/inf voxels "
                         f"of {arr.size}; expected finite intensities; replace them (e.g. with the "
                         "background value)")
                return
        for c, chan in enumerate(arr[None] if arr.ndim == 3 else arr):
            lo, hi = float(np.min(chan)), float(np.max(chan))
            if lo == hi:
                which = f" (channel {c} of the 4D file)" if arr.ndim == 4 else ""
                self.add("constant_image", f"{path}: {role}{which} of case {name!r} has the value "
                         f"{_fmt(lo)} everywhere; expected an image with contrast; check its export",
                         "warning")

    def label_values_ok(self, vol: Volume, path: Path) -> set[int] | None:
        """Value checks on a label map; returns the label ids present (None if not 3D)."""
        arr, name, labels = vol.array, self.case.name, self.spec.labels
        if arr.ndim != 3:
            self.add("label_dimensions", f"{path}: label map of case {name!r} has shape {arr.shape} "
                     "(C, X, Y, Z); expected a 3D volume of integer ids; save one label map with "
                     "all structures")
            return None
        scan = _scan_label(arr)
        if scan.n_nonfinite:
            self.add("nan_values", f"{path}: label map of case {name!r} holds {scan.n_nonfinite} "
                     "NaN/inf voxels; expected integer label ids; re-export the label map")
        if scan.non_integer_example is not None:
            self.add("non_integer_label", f"{path}: label map of case {name!r} holds non-integer "
                     f"values (e.g. {_fmt(scan.non_integer_example)}); expected integer label ids; "
                     "it was probably resampled with linear interpolation: use nearest neighbour")
        unknown = sorted(scan.values - set(labels.values()))
        if unknown:
            known = ", ".join(f"{i} {n}" for n, i in sorted(labels.items(), key=lambda kv: kv[1]))
            self.add("unknown_label", f"{path}: label values {unknown} of case {name!r} are not in "
                     f"the manifest's labels ({known}); fix the label map or add the ids to "
                     f"'labels' in {self.spec.manifest_path}")
        if not scan.values - {0} and not scan.n_nonfinite and scan.non_integer_example is None:
            self.add("empty_label", f"{path}: label map of case {name!r} is all background (0); "
                     "expected at least one labelled structure; check the file, or leave the case "
                     "out of training")
        return scan.values

    def run(self, training: bool) -> _CaseCheck:
        case, name, chans = self.case, self.case.name, self.spec.channel_names
        first: tuple[Path, tuple[int, int, int], np.ndarray, bool] | None = None
        n_channels, all_read, counts = 0, True, []
        for i, path in enumerate(case.images):
            role = "image" if len(case.images) == 1 else f"image channel {i}" + (
                f" ({chans[i]!r})" if i < len(chans) else "")
            vol = self.read(path, role)
            if vol is None:
                all_read = False
                continue
            n_channels += vol.num_channels
            counts.append(f"{path.name}: {vol.num_channels}")
            self.image_values(vol, path, role)
            ok = self.affine_ok(vol, path, role)
            if first is None:
                first = (path, vol.spatial_shape, vol.affine, ok)
                continue
            ref, ref_shape, ref_affine, ref_ok = first
            diff = _affine_diff(vol.affine, ref_affine) if ok and ref_ok else None
            if vol.spatial_shape != ref_shape:
                diff = f"has shape {vol.spatial_shape}, but {ref.name} has {ref_shape}"
            elif diff:
                diff = f"has an affine that differs from {ref.name}'s by {diff}"
            if diff:
                self.add("channel_geometry", f"{path}: {role} of case {name!r} {diff}; expected all "
                         "channels on one grid; register/resample this channel onto the first one")
        if all_read and chans and n_channels != len(chans):
            self.add("wrong_channel_count", f"case {name!r}: the images provide {n_channels} "
                     f"channel(s) ({', '.join(counts)}), but the manifest {self.spec.manifest_path} "
                     f"lists {len(chans)} {chans}; expected one file per channel or one 4D file "
                     f"with {len(chans)} channels; fix the case's files or the manifest's channel list")
        if case.label is None:
            if training:
                self.add("missing_label", f"case {name!r} ({case.images[0] if case.images else '-'})"
                         f" is a training case without a label map in {self.spec.manifest_path}; "
                         "expected a 'label' path; add it, or move the case to the test split")
            return self
        label = self.read(case.label, "label map")
        if label is None:
            return self
        self.label_values = self.label_values_ok(label, case.label)
        ok = self.affine_ok(label, case.label, "label map")
        if first is None or label.array.ndim != 3:
            return self
        img, img_shape, img_affine, img_ok = first
        if label.spatial_shape != img_shape:
            self.add("shape_mismatch", f"{case.label}: label map of case {name!r} has shape "
                     f"{label.spatial_shape}, but its image {img.name} has {img_shape} (X, Y, Z "
                     "voxels); expected the image's grid; resample the label onto the image "
                     "(nearest neighbour) or fix the pairing in the manifest")
        elif ok and img_ok and (diff := _affine_diff(label.affine, img_affine)):
            self.add("affine_mismatch", f"{case.label}: label map of case {name!r} has an affine "
                     f"that differs from its image {img.name}'s by {diff}; expected the image's "
                     "geometry; copy the image's header onto the label if they are aligned, or "
                     "resample it")
        return self


def _check_case(item: tuple[Case, bool], spec: _Spec) -> tuple[list[Problem], set[int] | None]:
    """Worker entry point: (case, is_training) -> (problems, label ids present)."""
    done = _CaseCheck(item[0], spec).run(item[1])
    return done.problems, done.label_values


def _manifest_problems(manifest: Manifest) -> list[Problem]:
    """Problems visible from the manifest alone: no cases, duplicate names or files."""
    out: list[Problem] = []
    if not manifest.training:
        out.append(Problem("", "no_cases", f"{manifest.path}: the manifest lists no training cases "
                           f"(test: {len(manifest.test)}); expected at least one; add 'training' "
                           "entries or check the imagesTr/ folder and file_ending"))
    for name, n in Counter(c.name for c in manifest.all_cases).items():
        if n > 1:
            files = [str(c.images[0]) for c in manifest.all_cases if c.name == name and c.images]
            out.append(Problem(name, "duplicate_case", f"{manifest.path}: case name {name!r} is used "
                               f"{n} times ({', '.join(files)}); expected unique names (outputs are "
                               "written as <case>.nii.gz); rename the files or set a 'case' column"))
    users: dict[Path, list[str]] = {}
    for c in manifest.all_cases:
        for p in dict.fromkeys(c.images):
            users.setdefault(p, []).append(c.name)
    for path, cases in users.items():
        if len(cases) > 1:
            out.append(Problem(cases[0], "duplicate_file", f"{path}: image file is used by "
                               f"{len(cases)} cases {cases}; expected each image in one case only "
                               "(a file in both training and test leaks data); remove the duplicates"))
    return out


def _absent_structures(manifest: Manifest, seen: set[int], n_read: int) -> list[Problem]:
    return [
        Problem("", "absent_structure", f"{manifest.path}: structure {name!r} (label {lid}) appears "
                f"in none of the {n_read} label maps read; expected each listed structure in at "
                "least one case; check the label ids, or remove it from 'labels'", "warning")
        for name, lid in manifest.foreground_labels.items()
        if lid not in seen
    ]


def _results(
    cases: list[tuple[Case, bool]], spec: _Spec, workers: int
) -> Iterator[tuple[list[Problem], set[int] | None]]:
    """Per-case results in manifest order, in this process or in ``workers`` processes."""
    fn = partial(_check_case, spec=spec)
    if workers <= 1 or len(cases) <= 1:
        yield from map(fn, cases)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(cases))) as pool:
        yield from pool.map(fn, cases, chunksize=max(1, len(cases) // (8 * workers)))


def check_dataset(
    manifest: Manifest | str | Path, progress: bool = False, workers: int = 1
) -> list[Problem]:
    """Check every case of ``manifest`` and return all problems found (empty when clean).

    ``manifest``: a :class:`Manifest`, or the path of a ``dataset.json``/CSV manifest (a
    :class:`~medseg.data.manifest.ManifestError` is raised when it cannot be parsed).
    Training and test cases are checked; cases are read one at a time (or ``workers``
    at a time in worker processes). ``progress``: show a tqdm bar on stderr.
    Problems come in manifest order: manifest-level ones first, then per case, then the
    dataset-wide warnings.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: expected an integer >= 1 (1 = no worker processes)")
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    spec = _Spec(manifest.path, dict(manifest.labels), list(manifest.channel_names))
    problems = _manifest_problems(manifest)
    cases = [(c, True) for c in manifest.training] + [(c, False) for c in manifest.test]
    seen: set[int] = set()
    n_read = 0
    results = tqdm(_results(cases, spec, workers), total=len(cases), desc="check", unit="case",
                   file=sys.stderr, disable=not progress)
    for case_problems, values in results:
        problems.extend(case_problems)
        if values is not None:
            seen |= values
            n_read += 1
    if n_read:
        problems.extend(_absent_structures(manifest, seen, n_read))
    return problems


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_problems(problems: list[Problem], n_cases: int | None = None) -> str:
    """A readable listing grouped by case (manifest-level first) and a final count line.

    ``n_cases``: the number of cases checked, shown as "in 2 of 12 cases" when given; the
    count line otherwise says in how many cases problems were found.
    """
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.case, []).append(p)
    lines: list[str] = []
    for case in sorted(groups, key=lambda c: c != ""):  # stable: manifest first, then in order
        lines.append("manifest:" if case == "" else f"case {case}:")
        lines.extend(f"  {p.severity:<7} {p.kind:<19} {p.message}" for p in groups[case])
    n_err = sum(p.severity == "error" for p in problems)
    affected = len({p.case for p in problems if p.case})
    where = f"{affected} of {_plural(n_cases, 'case')}" if n_cases is not None else _plural(affected, "case")
    lines.append(f"{_plural(n_err, 'error')}, {_plural(len(problems) - n_err, 'warning')} in {where}")
    return "\n".join(lines)
