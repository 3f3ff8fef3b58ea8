"""Learning-curve plot from Lightning's CSV log (training loss and validation Dice per epoch)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from medseg.utils import atomic_path


def read_epoch_metrics(logs: Path) -> dict[str, dict[int, float]]:
    """metric name -> {epoch: last logged value} from Lightning ``metrics.csv`` files.

    ``logs``: one ``metrics.csv`` or a folder; every ``metrics.csv`` below it (the first
    run and each resumed part) is read in order of modification, later values winning.
    """
    out: dict[str, dict[int, float]] = defaultdict(dict)
    files = [logs] if logs.is_file() else sorted(logs.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    for metrics_csv in files:
        _read_one(metrics_csv, out)
    return out


def _read_one(metrics_csv: Path, out: dict[str, dict[int, float]]) -> None:
    with metrics_csv.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    out[key][int(float(epoch))] = float(value)


def plot_learning_curve(logs: Path, output: Path) -> bool:
    """Write a PNG with train loss (left axis) and validation Dice (right axis); False if no data."""
    metrics = read_epoch_metrics(logs)
    loss = metrics.get("train/loss_epoch", {})
    if not loss:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(list(loss), list(loss.values()), color="tab:blue", label="train loss")
    recon = metrics.get("val/recon_loss", {})
    if recon:  # `medseg pretrain`: a validation loss on the same axis as the training loss
        ax.plot(list(recon), list(recon.values()), "-", color="tab:orange", marker="o", ms=3,
                label="validation reconstruction loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    handles, labels = ax.get_legend_handles_labels()
    dice = {k: v for k, v in sorted(metrics.items()) if k.startswith("val/dice_") or k == "val/mean_dice"}
    if dice:
        ax2 = ax.twinx()
        for key, series in dice.items():
            style = "-" if key == "val/mean_dice" else "--"
            ax2.plot(list(series), list(series.values()), style, marker="o", ms=3, label=key.removeprefix("val/"))
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        handles += ax2.get_legend_handles_labels()[0]
        labels += ax2.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
