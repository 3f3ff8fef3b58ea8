"""Training progress that reads well both in a terminal and in a log file.

In a terminal (or a notebook) Lightning's tqdm bar is the right tool. Piped to a file or run
as a SLURM job, the same bar writes one carriage-return refresh per step (about 50 lines per
epoch of 50 steps, thousands per run). :func:`progress_callbacks` chooses: the bar when a
person watches, else :class:`LogProgress`, which writes one plain line at most every
``interval_s`` seconds and one at the end of every epoch::

    epoch 3 (of 50)  step 50/50  4.12 steps/s  loss 0.4123  elapsed 2m31s  ETA 9m40s

(steps/s over the whole run, validation included, so that the ETA is honest; loss: mean of
this epoch's steps so far). Lines go to the ``medseg.progress`` logger at INFO, so
``--quiet`` silences them. Validation Dice keeps its own line (``medseg.training.run``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from medseg.logs import ensure_handler, progress_bars, progress_lines

log = logging.getLogger("medseg.progress")


def format_duration(seconds: float) -> str:
    """``42s``, ``5m12s`` or ``3h07m`` (seconds rounded; no days: ``50h00m``)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogProgress(Callback):
    """Plain progress lines for logs: at most one per ``interval_s`` seconds, plus one per epoch.

    Only the global-zero rank writes. The loss is summed on its device and read (one
    synchronisation) only when a line is written.
    """

    def __init__(self, interval_s: float = 30.0, clock: Any = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s}: expected a positive number of seconds between lines, e.g. 30")
        self.interval_s = float(interval_s)
        self.clock = clock
        self.started = 0.0
        self.first_step = 0
        self.last_line = 0.0
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0
        self.epoch_reported = False

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self.last_line = self.clock()
        self.first_step = trainer.global_step  # a resumed run: rate over this session's steps

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.loss_sum, self.loss_count, self.epoch_reported = None, 0, False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
            self.loss_count += 1
        now = self.clock()
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if last_of_epoch or now - self.last_line >= self.interval_s:
            self._line(trainer, batch_idx + 1, now)
            self.epoch_reported = last_of_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.epoch_reported and self.loss_count:  # an epoch cut short (time budget, early stop)
            self._line(trainer, self.loss_count, self.clock())
            self.epoch_reported = True

    # ------------------------------------------------------------------ the line

    def _line(self, trainer: pl.Trainer, step_in_epoch: int, now: float) -> None:
        self.last_line = now
        if not trainer.is_global_zero:
            return
        log.info(self.describe(trainer, step_in_epoch, now))

    def describe(self, trainer: pl.Trainer, step_in_epoch: int, now: float) -> str:
        """The progress line for the trainer's current state (see the module docstring)."""
        elapsed = max(now - self.started, 1e-9)
        done = trainer.global_step - self.first_step
        rate = done / elapsed
        per_epoch = trainer.num_training_batches
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        parts = [f"epoch {trainer.current_epoch}" + (f" (of {max_epochs})" if max_epochs else "")]  # 0-based, as Lightning
        parts.append(f"step {step_in_epoch}" + (f"/{per_epoch}" if math.isfinite(per_epoch) else ""))
        parts.append(f"{rate:.2f} steps/s")
        if self.loss_sum is not None and self.loss_count:
            parts.append(f"loss {float(self.loss_sum) / self.loss_count:.4f}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if max_epochs and math.isfinite(per_epoch) and rate > 0:
            remaining = max_epochs * int(per_epoch) - (trainer.current_epoch * int(per_epoch) + step_in_epoch)
            parts.append(f"ETA {format_duration(remaining / rate)}")
        return "  ".join(parts)


def progress_callbacks(progress: bool, interval_s: float = 30.0) -> tuple[bool, list[Callback]]:
    """``(enable_progress_bar, callbacks)`` for a Trainer.

    ``progress``: the config's ``trainer.progress_bar`` (False: neither bar nor lines).
    A tqdm bar when a person watches (stderr a terminal, or a notebook) and ``--quiet`` is
    off; plain :class:`LogProgress` lines otherwise; nothing under ``--quiet``.
    """
    if not progress or not progress_lines():
        return False, []
    if progress_bars():
        return True, []
    ensure_handler()
    return False, [LogProgress(interval_s)]
