"""Learning curves from Lightning CSV logs (resumed parts merged; pretraining's loss)."""

from __future__ import annotations

from pathlib import Path

from medseg.training.curves import plot_learning_curve, read_epoch_metrics


def _csv(path: Path, rows: list[str], header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_later_parts_win_and_every_metric_is_read(tmp_path):
    import os
    import time

    _csv(tmp_path / "metrics.csv", ["0,9,0.9,", "1,19,0.8,0.5", "2,29,0.7,"], "epoch,step,train/loss_epoch,val/mean_dice")
    time.sleep(0.01)
    _csv(tmp_path / "resume_1" / "metrics.csv", ["2,29,0.6,0.6"], "epoch,step,train/loss_epoch,val/mean_dice")
    os.utime(tmp_path / "resume_1" / "metrics.csv")
    m = read_epoch_metrics(tmp_path)
    assert m["train/loss_epoch"] == {0: 0.9, 1: 0.8, 2: 0.6} and m["val/mean_dice"] == {1: 0.5, 2: 0.6}


def test_pretraining_curve_is_drawn_and_nothing_without_loss(tmp_path):
    _csv(tmp_path / "logs" / "metrics.csv", ["0,9,0.9,0.95", "1,19,0.5,0.55"], "epoch,step,train/loss_epoch,val/recon_loss")
    assert plot_learning_curve(tmp_path / "logs", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    _csv(tmp_path / "empty" / "metrics.csv", ["0,9,0.5"], "epoch,step,val/mean_dice")
    assert not plot_learning_curve(tmp_path / "empty", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
