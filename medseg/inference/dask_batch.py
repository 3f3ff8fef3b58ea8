"""``medseg predict --scheduler ADDRESS``: one Dask task per case (see :mod:`medseg.cluster`).

Each task runs :func:`medseg.inference.batch.predict_case` on a worker, with the predictor
loaded once per worker process from the picklable :class:`PredictorSpec` (checkpoint paths:
the workers must see the same files, e.g. a shared file system on SLURM). Outputs are
written by the workers exactly as in the serial path (atomic writes, verified headers,
resume checks); this process records each result in ``predict_log.csv`` as it arrives.
A case whose workers died is logged failed with Dask's ``KilledWorker`` reason.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseg.cluster import parse_scheduler, run_tasks
from medseg.inference.batch_extras import BatchExtras
from medseg.inference.inputs import InputCase
from medseg.inference.predictor import Predictor, PredictorSpec

_PREDICTORS: dict[bytes, Predictor] = {}
"""Per worker process: predictors by pickled spec, loaded on first use."""


def dask_predict_case(case: InputCase, spec: PredictorSpec, output: Path, fmt: str, resume: bool,
                      extras: BatchExtras | None) -> object:
    """The task: predict one case on a Dask worker (returns a ``CaseResult``)."""
    from medseg.inference.batch import predict_case

    key = pickle.dumps(spec)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor.from_spec(spec)
    return predict_case(_PREDICTORS[key], case, output, fmt, resume, extras)


def run_dask(predictor: Predictor, cases: Sequence[InputCase], output: Path, fmt: str, resume: bool,
             scheduler: str, record: Callable[[Any], None], extras: BatchExtras | None = None) -> None:
    """Predict ``cases`` on the cluster at ``scheduler``, calling ``record(CaseResult)`` per case."""
    from medseg.inference.batch import CaseResult, one_line

    if predictor.spec is None:
        raise ValueError("--scheduler needs a Predictor built with Predictor.from_spec/from_checkpoints")
    spec = predictor.spec
    target = parse_scheduler(scheduler)
    if isinstance(target, int):  # local workers share this machine's cores
        spec = dataclasses.replace(spec, threads=max(1, (os.cpu_count() or 1) // target))

    def failed(index: int, err: BaseException) -> None:
        record(CaseResult(cases[index].name, "failed", 0.0, one_line(err)))

    run_tasks(scheduler, dask_predict_case, cases, (spec, output, fmt, resume, extras),
              lambda _i, result: record(result), failed)
