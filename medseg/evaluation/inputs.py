"""Finding and matching the cases to evaluate: predictions, references, label names.

Predictions are ``PRED_DIR/<case>.nii.gz`` (any image extension). The reference is a folder
of ``<case>`` label maps, or a manifest whose cases' ``label`` files are the references
(training and test lists; the first image channel is shown under the overlays). Cases are
matched by name; predictions without a reference and references without a prediction are
listed, never silently dropped. With a manifest, a split none of whose cases has a
prediction (the training cases, when the held-out test cases were predicted) is counted
as not evaluated rather than as missing predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medseg.config import suggest
from medseg.data.io import is_image_path
from medseg.data.manifest import Manifest, ManifestError, load_manifest
from medseg.utils import case_name


class EvaluationInputError(ValueError):
    """The evaluation's inputs cannot be used at all (missing folder, bad manifest, no match)."""


@dataclass
class CaseInput:
    """One matched case: prediction and reference label maps, optional scan and metadata."""

    name: str
    pred: Path
    ref: Path
    image: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class EvaluationInputs:
    """What :func:`resolve_inputs` found: matched cases, the unmatched ones, label names."""

    cases: list[CaseInput]
    unmatched_pred: list[str]
    """Predictions with no reference (not in the reference folder or manifest)."""
    missing_pred: list[str]
    """References with no prediction (a problem)."""
    structures: dict[int, str] | None
    """Label id -> structure name (no background); None: named ``label_<id>`` from the data."""
    problems: list[str] = field(default_factory=list)
    metadata_columns: list[str] = field(default_factory=list)
    unpredicted_splits: dict[str, int] = field(default_factory=dict)
    """Manifest split -> number of cases, for the splits with no prediction at all (e.g. the
    training cases when the held-out test cases were predicted): not evaluated, not a problem."""


def _image_files(folder: Path, what: str) -> tuple[dict[str, Path], list[str]]:
    """Case name -> file for the image files in ``folder`` (hidden/temporary files skipped)."""
    if not folder.exists():
        raise EvaluationInputError(f"{folder}: {what} folder not found; pass an existing folder")
    if not folder.is_dir():
        raise EvaluationInputError(f"{folder}: {what} must be a folder of <case>.nii.gz files")
    files: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not is_image_path(path):
            continue
        name = case_name(path)
        if name in files:
            problems.append(f"{path}: duplicate case {name!r} (also {files[name].name}); using {files[name].name}")
            continue
        files[name] = path
    if not files:
        raise EvaluationInputError(
            f"{folder}: no {what} files (.nii.gz, .nii, .nrrd, .mha) found; expected <case>.nii.gz"
        )
    return files, problems


def _load_manifest(path: Path, role: str) -> Manifest:
    try:
        return load_manifest(path)
    except ManifestError as err:
        raise EvaluationInputError(f"{role}: {err}") from err


def structures_of(manifest: Manifest) -> dict[int, str]:
    """Label id -> name for the manifest's foreground labels."""
    return {i: n for n, i in manifest.foreground_labels.items()}


def resolve_inputs(pred_dir: Path | str, ref: Path | str, labels: Path | str | None = None) -> EvaluationInputs:
    """Match the predictions in ``pred_dir`` with the references in ``ref`` (folder or manifest).

    ``labels``: a manifest giving structure names when ``ref`` is a folder (a reference
    manifest's own labels are used otherwise). Raises :class:`EvaluationInputError` when
    nothing can be evaluated.
    """
    preds, problems = _image_files(Path(pred_dir), "prediction")
    ref = Path(ref)
    images: dict[str, Path | None] = {}
    metadata: dict[str, dict[str, str]] = {}
    split: dict[str, str] = {}
    structures: dict[int, str] | None = None
    no_label: list[str] = []
    if ref.is_dir() and not (ref / "dataset.json").exists():
        refs, ref_problems = _image_files(ref, "reference")
        problems += ref_problems
    elif ref.exists():
        manifest = _load_manifest(ref, "--ref")
        refs = {}
        for split_name, case in [("training", c) for c in manifest.training] + [("test", c) for c in manifest.test]:
            if case.label is None:
                no_label.append(case.name)
                continue
            refs[case.name] = case.label
            split[case.name] = split_name
            images[case.name] = case.images[0] if case.images else None
            metadata[case.name] = dict(case.metadata)
        structures = structures_of(manifest) or None  # a CSV without label names: from the data
    else:
        raise EvaluationInputError(f"{ref}: reference not found; pass a folder of label maps or a manifest")
    if labels is not None:
        label_manifest = _load_manifest(Path(labels), "--labels")
        structures = structures_of(label_manifest)
        if not structures:
            raise EvaluationInputError(
                f"{labels}: the --labels manifest names no foreground structure; give it a 'labels' "
                'mapping such as {"1": "liver"} (or a <name>.labels.json beside a CSV)'
            )
        for case in label_manifest.all_cases:
            metadata.setdefault(case.name, dict(case.metadata))
    matched = sorted(set(preds) & set(refs))
    unmatched = sorted(set(preds) - set(refs))
    predicted_splits = {split[n] for n in matched if n in split}
    unpredicted: dict[str, int] = {}
    for name in sorted(set(refs) - set(preds)):
        if name in split and split[name] not in predicted_splits:
            unpredicted[split[name]] = unpredicted.get(split[name], 0) + 1
    missing = sorted(n for n in set(refs) - set(preds) if n not in split or split[n] in predicted_splits)
    if not matched:
        raise EvaluationInputError(
            f"no case names match between predictions {pred_dir} ({_sample(preds)}) and "
            f"references {ref} ({_sample(refs)}); predictions must be named <case>.nii.gz "
            "after the reference cases"
        )
    for name in unmatched:
        hint = " (the manifest has no label for it)" if name in no_label else suggest(name, refs)
        problems.append(f"{name}: prediction {preds[name].name} has no reference{hint}")
    for name in missing:
        problems.append(f"{name}: reference has no prediction in {pred_dir}")
    cases = [
        CaseInput(n, preds[n], refs[n], images.get(n), metadata.get(n, {})) for n in matched
    ]
    columns = sorted({k for c in cases for k in c.metadata})
    return EvaluationInputs(cases, unmatched, missing, structures, problems, columns, unpredicted)


def _sample(names: Mapping[str, Path] | list[str], k: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(names[:k])
    return f"{len(names)} cases: {shown}{', ...' if len(names) > k else ''}"


def resolve_tolerances(
    spec: float | Mapping[str, float], structures: Mapping[int, str] | None
) -> float | dict[int, float]:
    """NSD tolerance(s) in mm: a number, or structure name (or id, or ``label_<id>``) -> mm with
    an optional ``default`` entry (1 mm when absent). Returns a number or id -> mm (key 0:
    the default)."""
    if not isinstance(spec, Mapping):
        tol = float(spec)
        if not tol > 0:
            raise EvaluationInputError(f"NSD tolerance {spec!r} mm: expected a positive number, e.g. 1.0")
        return tol
    by_name = {n: i for i, n in (structures or {}).items()}
    out: dict[int, float] = {0: 1.0}
    for key, value in spec.items():
        if not float(value) > 0:
            raise EvaluationInputError(f"NSD tolerance {key}={value!r}: expected a positive number of mm")
        key = str(key)
        if key == "default":
            out[0] = float(value)
        elif key in by_name:
            out[by_name[key]] = float(value)
        elif key.isdigit() or (key.startswith("label_") and key[6:].isdigit()):
            out[int(key.removeprefix("label_"))] = float(value)
        elif not by_name:
            raise EvaluationInputError(
                f"NSD tolerance for {key!r}: structure names are known only from a manifest "
                "(--ref MANIFEST or --labels MANIFEST); give a label id instead, e.g. 3=2.0"
            )
        else:
            raise EvaluationInputError(
                f"NSD tolerance for {key!r}: no structure of that name; expected one of "
                f"{sorted(by_name)}, a label id or 'default'.{suggest(key, by_name)}"
            )
    return out
