"""trainer.loggers: names validated before compute; MLflow logs params and val metrics to a file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.config import ConfigError, from_dict
from medseg.data.synthetic import generate_dataset
from medseg.training.loggers import LOGGER_NAMES, MLFLOW_RUN_FILE, mlflow_tracking_uri

TINY = [
    "data.patch_size=[16,16,16]", "data.target_spacing=[4.0,4.0,4.0]", "model.channels=[4,8]",
    "trainer.max_epochs=2", "trainer.steps_per_epoch=2", "trainer.val_every_n_epochs=1",
    "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.memory_format=contiguous",
]


def test_default_and_known_names() -> None:
    assert from_dict({}).trainer.loggers == ["csv", "tensorboard"]
    assert from_dict({}, ["trainer.loggers=[csv,tensorboard,mlflow]"]).trainer.loggers == list(LOGGER_NAMES)


@pytest.mark.parametrize(("value", "message"), [
    ("[csv,mlfow]", r"unknown logger 'mlfow'.*[Dd]id you mean 'mlflow'"),
    ("[csv,wandb]", r"unknown logger 'wandb' \(known: csv, tensorboard, mlflow\)"),
    ("[csv,csv]", r"\['csv'\] listed more than once"),
    ("[tensorboard]", r"lacks 'csv'.*\['csv', 'tensorboard'\]"),
])
def test_bad_names_rejected(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict({}, [f"trainer.loggers={value}"])


def test_missing_mlflow_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'medseg\[mlflow\]'"):
        from_dict({}, ["trainer.loggers=[csv,mlflow]"])


def test_tracking_uri_default_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(tmp_path / "run") == f"file:{(tmp_path / 'run' / 'mlruns').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert mlflow_tracking_uri(tmp_path / "run") == "http://tracking.example:5000"


@pytest.mark.slow
def test_mlflow_file_store_gets_params_and_val_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from medseg.training.run import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    manifest = generate_dataset(tmp_path / "data", cases=4, seed=1, shape=(32, 32, 24))
    cfg = from_dict({"name": "tiny"}, [f"data.manifest={manifest}", *TINY, "trainer.loggers=[csv,tensorboard,mlflow]"])
    run = tmp_path / "run"
    result = train(cfg, run)
    assert (run / "logs" / "metrics.csv").exists() and list((run / "logs" / "tb").glob("events.*"))
    record = json.loads((run / MLFLOW_RUN_FILE).read_text())
    assert record["tracking_uri"] == f"file:{(run / 'mlruns').resolve()}"  # inside the run directory
    client = MlflowClient(record["tracking_uri"])
    mlrun = client.get_run(record["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert client.get_experiment(mlrun.info.experiment_id).name == "tiny"  # the pipeline's name
    params = mlrun.data.params
    assert params["config/trainer/max_epochs"] == "2" and params["config/model/channels"] == "[4, 8]"
    assert "plan/target_spacing" in params
    dice = client.get_metric_history(record["run_id"], "val/mean_dice")
    assert len(dice) == 2  # one per validation (every epoch)
    assert max(m.value for m in dice) == pytest.approx(result.best_val_dice, abs=1e-6)
    assert client.get_metric_history(record["run_id"], "train/loss_epoch")

    # a resumed part, here with more epochs (a changed param), is a new MLflow run linked to the first
    train(from_dict(cfg.to_dict(), ["trainer.max_epochs=3"]), run, resume=True)
    again = json.loads((run / MLFLOW_RUN_FILE).read_text())
    assert again["parts"] == [record["run_id"], again["run_id"]] and again["run_id"] != record["run_id"]
    part = client.get_run(again["run_id"])
    assert part.info.run_name == "run/resume_1" and part.data.tags["medseg.resumed_from"] == record["run_id"]
    assert part.data.params["config/trainer/max_epochs"] == "3"
    [third] = client.get_metric_history(again["run_id"], "val/mean_dice")
    assert third.step > max(m.step for m in dice)  # steps continue the first part's


@pytest.mark.slow
def test_mlflow_tracking_uri_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from medseg.training.run import train

    store = f"file:{tmp_path / 'shared_store'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a user's own file store: their opt-in
    manifest = generate_dataset(tmp_path / "data", cases=3, seed=2, shape=(32, 32, 24))
    cfg = from_dict({"name": "envstore"}, [f"data.manifest={manifest}", *TINY, "trainer.max_epochs=1",
                                           "trainer.loggers=[csv,mlflow]"])
    train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "mlruns").exists()
    [exp] = [e for e in MlflowClient(store).search_experiments() if e.name == "envstore"]
    [mlrun] = MlflowClient(store).search_runs([exp.experiment_id])
    assert "val/mean_dice" in mlrun.data.metrics
