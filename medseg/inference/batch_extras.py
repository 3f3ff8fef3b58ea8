"""What ``medseg predict --statistics/--preview`` adds to a batch, per case and at the end.

Per case (in the process that predicted it, right after its masks are written, from the
label map written and the input image on the input grid): ``OUTPUT/statistics/<case>.csv``
(:mod:`medseg.inference.statistics`), ``OUTPUT/qa/<case>.csv`` (:mod:`medseg.inference.qa`)
and ``OUTPUT/previews/<case>.png`` (:mod:`medseg.inference.preview`), each written
atomically. A resumed case whose masks are valid is not predicted again; its missing parts
(e.g. the first run had no ``--statistics``) are computed from the written mask and the input.

At the end of the batch (also after an interruption): ``OUTPUT/statistics.csv`` and
``OUTPUT/qa.csv`` merged from the per-case files of this batch's cases, in case order (a
resumed batch never duplicates rows), and ``OUTPUT/index.html`` (:mod:`medseg.inference.batch_page`).
QA runs whenever statistics or previews are asked for. A QA flag never stops the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.inference import statistics as stats_mod


@dataclass
class BatchExtras:
    """Options and model facts the per-case outputs need (picklable: sent to worker processes)."""

    label_map: dict[str, int]
    statistics: bool = False
    preview: bool = False
    training: dict[str, Any] | None = None
    """Training label statistics (:func:`medseg.data.label_stats.load_for_models`), or None."""
    training_note: str = ""
    """Said once (on the page and in qa.csv) when the models carry no or partial training statistics."""
    qa_options: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.statistics or self.preview

    # ------------------------------------------------------------------ per case

    def part_paths(self, output: Path, case: str) -> dict[str, Path]:
        """The per-case files these extras write, by part name."""
        from medseg.inference import qa

        wanted = {"qa": qa.part_path(output, case)}
        if self.statistics:
            wanted["statistics"] = stats_mod.part_path(output, case)
        if self.preview:
            from medseg.inference import preview

            wanted["preview"] = preview.part_path(output, case)
        return wanted

    def missing_parts(self, output: Path, case: str) -> list[str]:
        return [name for name, path in self.part_paths(output, case).items() if not path.is_file()]

    def remove_parts(self, output: Path, case: str) -> None:
        """Forget the case's parts (its mask could not be written: the batch must not merge them)."""
        for path in self.part_paths(output, case).values():
            path.unlink(missing_ok=True)

    def case_done(
        self, output: Path, case: str, labels: np.ndarray, image: np.ndarray | None, affine: np.ndarray,
        parts: Sequence[str] | None = None,
    ) -> str:
        """Write the case's parts (all, or ``parts``); returns "" or a one-line error naming the part."""
        from medseg.inference import qa

        parts = list(parts) if parts is not None else ["statistics", "qa", "preview"]
        errors = []
        # one pass over the label map for statistics and QA's boxes
        rows, summary = stats_mod.analyse_case(case, labels, image, affine, self.label_map)
        if self.statistics and "statistics" in parts:
            try:
                stats_mod.write_case(output, rows, case)
            except Exception as err:
                errors.append(f"statistics: {type(err).__name__}: {err}")
        flags: list[dict[str, str]] = []
        try:
            flags = qa.case_flags(case, rows, labels, affine, self.training, self.qa_options, summary.boxes)
            if "qa" in parts:
                qa.write_case(output, case, flags)
        except Exception as err:
            errors.append(f"qa: {type(err).__name__}: {err}")
        if self.preview and "preview" in parts:
            errors.append(self.preview_done(output, case, labels, image, affine))
        return "; ".join(e for e in errors if e)

    def preview_done(self, output: Path, case: str, labels: np.ndarray, image: np.ndarray | None,
                     affine: np.ndarray) -> str:
        """Write the case's preview PNG; returns "" or a one-line error."""
        try:
            from medseg.inference import preview

            preview.write_preview(preview.part_path(output, case), labels, image, affine, self.label_map)
        except Exception as err:
            return f"preview: {type(err).__name__}: {err}"
        return ""

    def case_skipped(self, output: Path, case: Any, num_channels: int, mask_path: Path | None) -> str:
        """For a resumed case: compute the parts that are missing from its written mask and input."""
        missing = self.missing_parts(output, case.name)
        if not missing:
            return ""
        if mask_path is None:
            return f"{', '.join(missing)}: needs the NIfTI mask (use --format nifti or both)"
        from medseg.data.io import read_label
        from medseg.inference.inputs import read_case

        try:
            mask = read_label(mask_path)
            image = read_case(case, num_channels).array[0]
        except Exception as err:
            return f"{', '.join(missing)}: {type(err).__name__}: {err}"
        return self.case_done(output, case.name, mask.array, image, mask.affine, missing)

    # ------------------------------------------------------------------ end of batch

    def finish(self, output: Path, cases: Sequence[str], results: Mapping[str, Any]) -> None:
        """Merge the per-case files and write the batch page (atomic writes)."""
        from medseg.inference import qa

        if self.statistics:
            stats_mod.merge(output, cases)
        qa.merge(output, cases, self.training_note)
        if self.preview:
            from medseg.inference import batch_page

            batch_page.write_page(output, cases, results, self)


def for_models(
    label_map: Mapping[str, int], models: Sequence[str | Path], statistics: bool = False, preview: bool = False
) -> BatchExtras:
    """Extras for a predictor built from ``models`` (run dirs, checkpoints or export folders),
    with the training label statistics found beside them (see :mod:`medseg.data.label_stats`)."""
    from medseg.data.label_stats import load_for_models

    training, note = load_for_models(models)
    return BatchExtras(dict(label_map), statistics=statistics, preview=preview, training=training,
                       training_note=note)
