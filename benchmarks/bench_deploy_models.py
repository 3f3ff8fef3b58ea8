"""Held-out Dice, network throughput, predict time, peak RSS and size of deployed models.

    OMP_NUM_THREADS=2 python benchmarks/bench_deploy_models.py REFERENCE_RUN OUT.json NAME=MODEL[@bf16] ...
        [--data DIR]

MODEL: a run directory (``medseg train``, ``prune``, ``distill``) or an export folder
(``medseg export``, e.g. ``--quantize int8``); ``@bf16`` runs a torch network under bf16
autocast (``medseg predict --precision bf16``). Networks run as ``medseg predict`` runs them, in
the memory format ``inference.memory_format: auto`` chooses (recorded in OUT.json). Every model predicts the validation cases of
REFERENCE_RUN's split.json (runs made from it with the same data and seed share that split;
checked) with TTA: ``medseg predict --tta`` then ``medseg evaluate`` in child processes (wall
time and peak RSS of the predict). Network throughput: windows/s of the network as predict
loads it (torch for a run, OpenVINO for an int8 export where installed), batch 2 of the
pipeline's patch, 1 warm-up then 5 timed runs (``--rounds N``: then N rounds over all models,
interleaved, the median kept: a shared machine's load drifts). Size: the export's model file, or the run's
network weights in fp32 (what an fp32 ONNX export of it holds, within a few kB). Results are
appended to OUT.json as they come (a rerun skips the models already there); the table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_limited_labels import per_case
from bench_training import held_out_manifest, measured

from medseg.inference.export import METADATA, is_export_dir, load_exported
from medseg.inference.window import _LAYOUTS, network_runner
from medseg.models.checkpoint import best_checkpoint, load_network

REPEATS = 5


def load(model: Path) -> tuple[torch.nn.Module, object, int]:
    """(network as predict runs it, config, model bytes)."""
    if is_export_dir(model):
        net, cfg, _ = load_exported(model)
        meta = json.loads((model / METADATA).read_text(encoding="utf-8"))
        return net, cfg, sum((model / f).stat().st_size for f in meta["files"].values())
    net, cfg, _ = load_network(best_checkpoint(model))
    # parameters, not state_dict(): DynUNet registers its blocks twice (skip_layers.* repeats them)
    return net, cfg, sum(p.numel() * 4 for p in net.parameters())


def throughput(net: torch.nn.Module, cfg: Any, precision: str = "fp32") -> float:
    """Windows/s of ``net`` as medseg predict runs it: its precision and memory format
    (``inference.memory_format``, auto by default: the layout decided once per network)."""
    cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, precision=precision))
    x = torch.randn(2, 1, *cfg.data.patch_size)
    run = network_runner(net, cfg, tuple(x.shape))
    with torch.no_grad():
        run(x)  # warm-up
        start = time.perf_counter()
        for _ in range(REPEATS):
            run(x)
    return REPEATS * len(x) / (time.perf_counter() - start)


def split_spec(item: str) -> tuple[str, Path, str]:
    """NAME=MODEL[@PRECISION] -> (name, model, precision)."""
    name, rest = item.split("=", 1)
    model, _, precision = rest.partition("@")
    return name, Path(model), precision or "fp32"


def measure(name: str, model: Path, manifest: Path, work: Path, precision: str = "fp32") -> dict[str, object]:
    net, cfg, size = load(model)
    rate = throughput(net, cfg, precision)
    layout = _LAYOUTS.get(net, ("", None))[1]
    params = sum(p.numel() for p in net.parameters()) if not is_export_dir(model) else None
    del net
    pred, ev = work / f"{name}_pred", work / f"{name}_eval"
    rc, seconds, peak_mb = measured([sys.executable, "-m", "medseg", "predict", "--model", str(model), "--input",
                                     str(manifest), "--output", str(pred), "--tta",
                                     *(["--precision", precision] if precision != "fp32" else [])])
    if rc != 0:
        return {"error": f"predict exited {rc}"}
    subprocess.run([sys.executable, "-m", "medseg", "evaluate", "--pred", str(pred), "--ref", str(manifest),
                    "--output", str(ev)], check=False, stdout=subprocess.DEVNULL)
    dice = sorted(per_case(ev).values())
    return {"model": str(model), "mean_dice": statistics.fmean(dice), "cases": len(dice), "min_dice": dice[0],
            "windows_per_s": rate, "predict_s": seconds, "predict_peak_rss_mb": peak_mb, "size_mb": size / 1e6,
            "parameters": params, "channels": list(cfg.model.channels),  # type: ignore[attr-defined]
            "precision": precision, "memory_format": str(layout) if layout is not None else "contiguous"}


def render(results: dict[str, dict]) -> str:
    ref = next(iter(results.values()))
    lines = ["| model | held-out mean Dice (TTA, n) | windows/s | predict s (42 cases) | peak RSS MB | size MB |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['mean_dice']:.4f} ({r['cases']}) | {r['windows_per_s']:.1f} "
            f"({r['windows_per_s'] / ref['windows_per_s']:.2f}x) | {r['predict_s']:.0f} | {r['predict_peak_rss_mb']:.0f} "
            f"| {r['size_mb']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/Task04_Hippocampus"))
    ap.add_argument("--rounds", type=int, default=0, metavar="N",
                    help="then re-measure windows/s of every model in N interleaved rounds (median), against load drift")
    args = ap.parse_args()
    val = json.loads((args.reference / "split.json").read_text(encoding="utf-8"))["val"]
    work = args.out.parent / (args.out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    manifest = held_out_manifest(args.reference, args.data.resolve())
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    for item in args.models:
        name, model, precision = split_spec(item)
        split = model / "split.json"
        if split.is_file() and json.loads(split.read_text(encoding="utf-8"))["val"] != val:
            raise SystemExit(f"{model}: its validation cases differ from {args.reference}'s: not held out for it")
        if name not in results:
            results[name] = measure(name, model, manifest, work, precision)
            args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(name, json.dumps(results[name]), flush=True)
    if args.rounds:
        specs = [split_spec(item) for item in args.models]
        nets = {name: (*load(model)[:2], precision) for name, model, precision in specs}
        rates: dict[str, list[float]] = {name: [] for name in nets}
        for _ in range(args.rounds):
            for name, (net, cfg, precision) in nets.items():
                rates[name].append(throughput(net, cfg, precision))
        for name, values in rates.items():
            results[name].update(windows_per_s=statistics.median(values), windows_per_s_rounds=values)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
