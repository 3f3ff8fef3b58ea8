"""Start a training command, kill it once it has written a checkpoint (shared by resume tests)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import torch


def kill_after_first_checkpoint(args: list[str], run: Path, timeout: float = 120.0) -> int:
    """Run ``args``; kill the process a second after ``run/checkpoints/last.ckpt`` appears;
    return the epoch recorded in that checkpoint (the test fails if none was written)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert last.exists(), "no checkpoint was written before the kill"
    return int(torch.load(last, map_location="cpu", weights_only=False)["epoch"])
