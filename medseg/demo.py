"""``make demo``: the main job end to end on the synthetic phantoms.

synth -> check -> train (small 3D U-Net, CPU) -> predict the held-out cases -> evaluate,
then print the per-structure Dice/IoU and where the report is. Each step goes through the
same CLI entry point users call, so the demo exercises the command-line contract. The demo
is idempotent: a finished step is not redone when ``make demo`` runs again, and an
interrupted training resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.resources import files
from pathlib import Path

from medseg.cli import main as medseg

DEMO_MIN_DICE = 0.80


def default_pipeline() -> Path:
    """``pipelines/demo.yaml`` as installed with the package (``medseg/pipelines`` is a link to the
    repository's ``pipelines/`` folder, copied into wheels), so the demo runs from any working
    directory and from a non-editable install."""
    return Path(str(files("medseg") / "pipelines" / "demo.yaml"))


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def run_demo(output: Path, pipeline: Path, cases: int, seed: int, extra: list[str]) -> int:
    start = time.time()
    data, run, preds, report = output / "data", output / "run", output / "predictions", output / "evaluation"
    manifest = data / "dataset.json"

    t = _step(f"1/5 synthetic phantoms -> {data}")
    if manifest.exists():
        print(f"reusing {manifest}")
    elif medseg(["synth", "--output", str(data), "--cases", str(cases), "--seed", str(seed)]):
        return 1
    print(f"({time.time() - t:.0f} s)")

    t = _step("2/5 validate the dataset")
    if medseg(["check", str(manifest)]):
        print("medseg demo: the dataset check failed", file=sys.stderr)
        return 1

    t = _step(f"3/5 train {pipeline} -> {run}")
    if (run / "train_summary.json").exists():
        print(f"reusing the finished run in {run}")
    else:
        resume = ["--resume"] if (run / "checkpoints" / "last.ckpt").exists() else []
        args = ["train", str(pipeline), "--data", str(manifest), "--output", str(run), *resume]
        for item in extra:
            args += ["--set", item]
        if medseg(args):
            return 1
    print(f"({(time.time() - t) / 60:.1f} min)")

    t = _step(f"4/5 predict the held-out cases -> {preds}")
    if medseg(["predict", "--model", str(run), "--input", str(data / "imagesTs"), "--output", str(preds)]):
        return 1

    t = _step(f"5/5 evaluate -> {report}")
    status = medseg(["evaluate", "--pred", str(preds), "--ref", str(manifest), "--output", str(report)])
    summary_path = report / "summary.json"
    if not summary_path.exists():
        return 1
    return _print_summary(summary_path, report, time.time() - start) or status


def _print_summary(summary_path: Path, report: Path, seconds: float) -> int:
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    print(f"\n{'structure':<12} {'mean Dice':>10} {'mean IoU':>10}")
    worst = 1.0
    for name, stats in summary["structures"].items():
        dice, iou = stats["dice"]["mean"], stats["iou"]["mean"]
        worst = min(worst, float(dice))
        print(f"{name:<12} {dice:>10.3f} {iou:>10.3f}")
    html = report / "report.html"
    print(f"\nreport: {html.resolve() if html.exists() else (report / 'report.md').resolve()}")
    print(f"metrics: {(report / 'metrics.csv').resolve()}")
    print(f"demo finished in {seconds / 60:.1f} min")
    if worst < DEMO_MIN_DICE:
        print(f"medseg demo: lowest structure mean Dice {worst:.3f} is below {DEMO_MIN_DICE}", file=sys.stderr)
        return 1
    print(f"every structure reached mean Dice >= {DEMO_MIN_DICE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medseg.demo", description=__doc__)
    p.add_argument("--output", default="demo_output", help="folder for data, run, predictions and report")
    p.add_argument("--pipeline", default=str(default_pipeline()))
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    return run_demo(Path(args.output), Path(args.pipeline), args.cases, args.seed, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
