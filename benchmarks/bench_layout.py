"""Channels-last vs contiguous inference of a trained network, through medseg's own window runner.

    OMP_NUM_THREADS=2 python benchmarks/bench_layout.py RUN_DIR [--rounds 6] [--batches 8]

Loads the run's network twice (one per layout, so neither conversion disturbs the other), then in
``--rounds`` alternating rounds times ``--batches`` window batches (batch 2 of the pipeline's patch)
through ``medseg.inference.window.network_runner`` in fp32 and bf16, each layout forced with
``inference.memory_format``: what ``inference.memory_format: auto`` chooses between. Prints the
windows/s per round, their medians and the per-round ratios (a shared machine's load drifts).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medseg.inference.window import manage_layout, network_runner
from medseg.models.checkpoint import best_checkpoint, load_network

LAYOUTS = ("contiguous", "channels_last")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args()
    nets = {}
    for layout in LAYOUTS:
        net, cfg, plan = load_network(best_checkpoint(args.run))
        manage_layout(net)
        nets[layout] = (net, cfg)
    x = torch.randn(2, len(plan.channel_names), *cfg.data.patch_size)
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            for layout, (net, cfg) in nets.items():
                c = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, precision=precision,
                                                                           memory_format=layout))
                run = network_runner(net, c, tuple(x.shape))
                with torch.no_grad():
                    run(x)  # warm-up
                    start = time.perf_counter()
                    for _ in range(args.batches):
                        run(x)
                rates.setdefault(f"{precision} {layout}", []).append(
                    args.batches * len(x) / (time.perf_counter() - start))
    for key, values in rates.items():
        print(f"{key:22s} median {statistics.median(values):6.1f} windows/s  rounds {[round(v, 1) for v in values]}")
    for precision in ("fp32", "bf16"):
        ratios = [a / b for a, b in zip(rates[f"{precision} channels_last"], rates[f"{precision} contiguous"], strict=True)]
        print(f"{precision}: channels-last / contiguous per round {[round(r, 2) for r in ratios]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
