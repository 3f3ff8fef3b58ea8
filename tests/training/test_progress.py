"""Log-friendly training progress: plain lines with a fake clock, and a piped ``medseg train`` run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medseg.data.synthetic import generate_dataset
from medseg.training.progress import LogProgress, format_duration, progress_callbacks

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(steps_per_epoch: int = 10, max_epochs: int = 4) -> SimpleNamespace:
    return SimpleNamespace(global_step=0, current_epoch=0, num_training_batches=steps_per_epoch,
                           max_epochs=max_epochs, is_global_zero=True)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 60, 312, 3600, 11220, -3)] == [
        "0s", "42s", "1m00s", "5m12s", "1h00m", "3h07m", "0s"]


def test_lines_at_most_every_interval_and_one_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    clock, trainer = Clock(), fake_trainer()
    cb = LogProgress(interval_s=10.0, clock=clock)
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        for epoch in range(2):
            trainer.current_epoch = epoch
            cb.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
            for i in range(10):
                clock.now += 3.0  # 3 s per step: a line after 4 steps (12 s >= 10 s), then every 4th
                trainer.global_step += 1
                cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(float(i))}, None, i)  # type: ignore[arg-type]
            cb.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    # epoch 0: steps 4, 8 (interval) and 10 (end of epoch); epoch 1: 12 s after step 10 -> 14, 18, 20
    assert [line.split("  ")[1] for line in lines] == ["step 4/10", "step 8/10", "step 10/10"] * 2
    assert lines[2] == "epoch 0 (of 4)  step 10/10  0.33 steps/s  loss 4.5000  elapsed 30s  ETA 1m30s"
    # 30 remaining steps at 1/3 step/s -> 90 s; loss: mean of 0..9 this epoch
    assert lines[5].endswith("loss 4.5000  elapsed 1m00s  ETA 1m00s")
    assert lines[3].startswith("epoch 1 (of 4)  step 4/10") and "loss 1.5000" in lines[3]


def test_epoch_cut_short_still_reports_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, trainer = Clock(), fake_trainer()
    cb = LogProgress(interval_s=1000.0, clock=clock)
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    cb.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        for i in range(3):  # a time budget stops the epoch after 3 of 10 steps
            clock.now += 1.0
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, torch.tensor(2.0), None, i)  # type: ignore[arg-type]
        cb.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
        cb.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert [r.getMessage().split("  ")[1] for r in caplog.records] == ["step 3/10"]


def test_only_global_zero_writes_and_bad_interval(caplog: pytest.LogCaptureFixture) -> None:
    trainer = fake_trainer(steps_per_epoch=1)
    trainer.is_global_zero = False
    cb = LogProgress(clock=Clock())
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="medseg.progress"):
        cb.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 0)  # type: ignore[arg-type]
    assert not caplog.records
    with pytest.raises(ValueError, match="interval_s=0"):
        LogProgress(interval_s=0)


def test_callbacks_choice_follows_terminal_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg import logs

    monkeypatch.setattr(logging.getLogger("medseg"), "level", logging.NOTSET)
    monkeypatch.setattr(logs, "interactive", lambda: True)
    assert progress_callbacks(True) == (True, [])  # a terminal: Lightning's bar
    assert progress_callbacks(False) == (False, [])
    monkeypatch.setattr(logs, "interactive", lambda: False)
    bar, cbs = progress_callbacks(True, 5.0)
    assert not bar and [type(c) for c in cbs] == [LogProgress] and cbs[0].interval_s == 5.0
    monkeypatch.setattr(logging.getLogger("medseg"), "level", logging.WARNING)  # --quiet
    assert progress_callbacks(True) == (False, [])


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    if not data.exists():
        generate_dataset(data, cases=4, seed=2)
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(
        "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n  batch_size: 1\n"
        "model:\n  channels: [4, 8]\n"
        "trainer:\n  max_epochs: 3\n  steps_per_epoch: 12\n  val_every_n_epochs: 1\n  accelerator: cpu\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    cmd = [sys.executable, "-m", "medseg", "train", str(pipeline), "--data", str(data / "dataset.json"),
           "--output", str(run), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.slow
def test_piped_training_writes_a_few_plain_lines_per_epoch(tmp_path: Path) -> None:
    proc = _train(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout  # no carriage-return refreshes
    err = proc.stderr.splitlines()
    progress = [line for line in err if line.startswith("epoch ") and "mean_dice=" not in line]
    assert [line.split("  ")[:2] for line in progress] == [
        [f"epoch {e} (of 3)", "step 12/12"] for e in range(3)]  # 12 steps in < 30 s: one line each
    assert all(" steps/s  loss " in line and " ETA " in line for line in progress)
    assert len(err) <= 3 * 3 + 5, proc.stderr  # a handful per epoch, a few per run (GPU/TPU, stopped)
    for noise in ("litlogger", "weights_only", "LeafSpec", "limit_val_batches"):
        assert noise not in proc.stderr, noise
    assert len([line for line in err if line.startswith("epoch ") and "mean_dice=" in line]) == 3  # validation lines
    assert "mean_dice=" not in proc.stdout  # logged (rank 0), not printed

    quiet = _train(tmp_path, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # warnings only, and there are none
