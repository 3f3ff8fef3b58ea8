"""The experiment loggers of a training run: ``trainer.loggers`` names -> Lightning loggers.

- ``csv``: ``RUN_DIR/logs/metrics.csv`` (always on: the learning curve and resumed runs read it);
- ``tensorboard``: ``RUN_DIR/logs/tb/``;
- ``mlflow``: Lightning's ``MLFlowLogger`` (``pip install 'medseg[mlflow]'``): the resolved
  config and preprocessing plan as params, train loss and validation Dice as metrics. The
  tracking URI is ``$MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///...``), else a
  file store inside the run, ``file:RUN_DIR/mlruns`` (browse it with the full ``mlflow``
  package: ``mlflow ui --backend-store-uri RUN_DIR/mlruns``). MLflow 3 refuses file stores unless
  ``MLFLOW_ALLOW_FILE_STORE=true``; medseg sets that (when unset) for its own default store
  only. The experiment is the pipeline's name and the MLflow run is named after the run
  directory. A resumed part (``--resume``, which may change settings such as
  ``trainer.max_epochs``, and MLflow never changes a logged param) is a new MLflow run named
  ``<run>/resume_<n>`` like its ``logs/resume_<n>/`` folder, tagged ``medseg.resumed_from``
  with the previous part's id; its steps continue the previous ones. The ids of all parts
  are kept in ``RUN_DIR/mlflow_run.json``.

Importing this module loads neither Lightning nor MLflow (the config validates names with it).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOGGER_NAMES: tuple[str, ...] = ("csv", "tensorboard", "mlflow")
DEFAULT_LOGGERS: tuple[str, ...] = ("csv", "tensorboard")
MLFLOW_RUN_FILE = "mlflow_run.json"


def check_logger_names(names: Sequence[str]) -> None:
    """Raise ConfigError for an unknown, repeated or uninstalled logger, or a list without csv."""
    from medseg.config import ConfigError, suggest

    for name in names:
        if name not in LOGGER_NAMES:
            raise ConfigError(
                f"trainer.loggers: unknown logger {name!r} (known: {', '.join(LOGGER_NAMES)})."
                + suggest(name, LOGGER_NAMES)
            )
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"trainer.loggers: {repeated} listed more than once; list each logger once")
    if "csv" not in names:
        raise ConfigError(
            f"trainer.loggers: {list(names)} lacks 'csv', which the learning curve and --resume read; "
            f"add it, e.g. {['csv', *names]}"
        )
    if "mlflow" in names and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "trainer.loggers: 'mlflow' needs the mlflow package, which is not installed; "
            "pip install 'medseg[mlflow]' (or remove mlflow from trainer.loggers)"
        )


def mlflow_tracking_uri(run_dir: Path | str) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the file store ``file:RUN_DIR/mlruns`` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or f"file:{(Path(run_dir) / 'mlruns').resolve()}"


def build_loggers(names: Sequence[str], run_dir: Path, version: str, experiment: str) -> list[Any]:
    """The named Lightning loggers, in order, for a Trainer.

    ``version``: the log sub-folder of this part of the run ("" for a fresh run,
    ``resume_<n>`` for resumed parts); ``experiment``: the MLflow experiment name.
    """
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(run_dir / "logs", name="", version=version))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir / "logs", name="tb", version=version))
        elif name == "mlflow":
            loggers.append(_mlflow_logger(run_dir, experiment, version))
        else:  # config validation rejects these first
            raise ValueError(f"trainer.loggers: unknown logger {name!r}; known: {', '.join(LOGGER_NAMES)}")
    return loggers


def _mlflow_logger(run_dir: Path, experiment: str, version: str) -> Any:
    from pytorch_lightning.loggers import MLFlowLogger

    uri = mlflow_tracking_uri(run_dir)
    if uri.startswith("file:") and not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # our own per-run store (see the docstring)
    record = run_dir / MLFLOW_RUN_FILE
    parts: list[str] = []
    if version and record.is_file():  # a resumed part
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("tracking_uri") == uri:
            parts = list(saved.get("parts", []))
    tags = {"medseg.run_dir": str(run_dir.resolve())}
    if parts:
        tags["medseg.resumed_from"] = parts[-1]
    name = run_dir.resolve().name + (f"/{version}" if version else "")
    logger = MLFlowLogger(experiment_name=experiment, run_name=name, tracking_uri=uri, tags=tags)
    _record_run(logger, uri, parts, record)
    return logger


def _record_run(logger: Any, uri: str, parts: list[str], path: Path) -> None:
    """Write the tracking URI and run ids (creating the MLflow run now) on the global-zero rank."""
    from pytorch_lightning.utilities import rank_zero_only

    from medseg.utils import atomic_write_text

    @rank_zero_only  # type: ignore[misc]
    def write() -> None:
        info = {"tracking_uri": uri, "experiment_id": logger.experiment_id, "run_id": logger.run_id,
                "parts": [*parts, logger.run_id]}
        atomic_write_text(path, json.dumps(info, indent=2))

    write()
