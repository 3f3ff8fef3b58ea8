"""Training benchmark on the real Decathlon hippocampus data (issue: training).

Three parts, each recorded in benchmarks/RESULTS.md, in the section of this machine's CPU
model ("## Training on <CPU>, <n> cores"; other machines' sections are kept):

1. ``--main``: ``medseg train pipelines/hippocampus_3d.yaml`` for a wall-time budget
   (default 30 min), then ``medseg predict`` on the held-out validation split in the
   original geometry and ``medseg evaluate``: per-structure held-out Dice, wall time, peak
   resident memory of the training process. A ``commentary`` string in the machine's
   results file (what the runs show, written by whoever ran them) is printed under the table.
2. ``--families``: the same for each network family (3D U-Net, attention, residual, 2D)
   at ``--family-minutes`` each (``family_commentary`` in the results file is printed under it).
3. ``--ensemble NAME=RUN,RUN,...``: the ensemble of recorded runs' best checkpoints
   (``medseg predict --model RUN --model RUN``) scored on their shared held-out split, to
   show what more training compute buys; listed apart from the 30-minute runs.
4. ``--throughput``: steady-state training steps/s of medseg's loop (Lightning, cached
   preprocessing, patch sampler, augmentation) against a plain MONAI loop (CacheDataset +
   LoadImaged/Orientationd/Spacingd/NormalizeIntensityd/RandCropByPosNegLabeld + the same
   flips/affine, plain PyTorch optimiser loop) with the same network, batch and patch,
   measured in the same run.

    python benchmarks/bench_training.py --data ../shared/data/Task04_Hippocampus --main --families --throughput

Each machine kind's results accumulate in a tracked file, ``benchmarks/results/training-<cpu>.json``
(one per RESULTS.md section), so a later run from a fresh clone adds to that machine's table
instead of replacing it; ``--no-record`` keeps them in ``<output>/results.json`` instead.
Without an action flag the script re-renders the section from that file.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _results import cpu_model, machine_line, update_section  # noqa: E402

from medseg.utils import atomic_write_text  # noqa: E402

PIPELINE = REPO / "pipelines" / "hippocampus_3d.yaml"
# Each family differs from the shipped pipeline only in its network (set in full, so the
# families stay what their names say whatever network the pipeline ships); everything else
# (data, split, augmentation, precision, schedule, budget) is shared. Each has an 8-channel
# full-resolution level (AttentionUnet's first level is always at full resolution).
_FULL_RES = ["model.deep_supervision=false", "model.channels=[8,32,64,128,256]", "model.strides=[1,2,2,2]"]
FAMILIES = {
    "unet_3d": ["model.name=unet", "model.num_res_units=0", *_FULL_RES],
    "attention_unet_3d": ["model.name=attention_unet", "model.deep_supervision=false",
                          "model.channels=[8,32,64,128]", "model.strides=[2,2,2]"],
    "residual_unet_3d": ["model.name=residual_unet", "model.num_res_units=2", *_FULL_RES],
    "residual_unet_2d": ["model.name=residual_unet", "model.num_res_units=2", *_FULL_RES, "model.spatial_dims=2",
                         "data.patch_size=[56,40]", "data.slice_axis=0", "data.batch_size=16"],
}


def measured(cmd: list[str]) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit status, seconds, peak RSS in MB of the child)."""
    probe = (
        "import resource, subprocess, sys, json;"
        "rc = subprocess.call(sys.argv[1:]);"
        "print(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", probe, *cmd], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    seconds = time.time() - start
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return int(info["rc"]), seconds, info["maxrss_kb"] / 1024.0


def held_out_manifest(run: Path, data: Path) -> Path:
    """A CSV manifest of the run's validation cases (never seen in training)."""
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    path = run / "heldout.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "case", "split"])
        for name in split["val"]:
            w.writerow([data / "imagesTr" / f"{name}.nii.gz", data / "labelsTr" / f"{name}.nii.gz", name, "test"])
    labels = json.loads((data / "dataset.json").read_text(encoding="utf-8"))["labels"]
    (run / "heldout.labels.json").write_text(json.dumps({"labels": labels, "channel_names": ["MRI"]}), encoding="utf-8")
    return path


def train_and_score(name: str, data: Path, out: Path, minutes: float, overrides: list[str], tta: bool = True) -> dict:
    run = out / name
    cmd = [sys.executable, "-m", "medseg", "train", str(PIPELINE),
           "--data", str(data / "dataset.json"), "--output", str(run),
           "--set", f"trainer.max_time_minutes={minutes}", "--set", "trainer.progress_bar=false"]
    for o in overrides:
        cmd += ["--set", o]
    if (run / "train_summary.json").exists():
        rc, seconds, peak = 0, json.loads((run / "train_summary.json").read_text(encoding="utf-8"))["seconds"], float("nan")
    else:
        rc, seconds, peak = measured(cmd)
    if rc != 0:
        return {"name": name, "error": f"training exited {rc}"}
    dice, cases = score([run], held_out_manifest(run, data), run, tta)
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    return {"name": name, "dice": dice, "mean": sum(dice.values()) / len(dice), "cases": cases,
            "train_minutes": seconds / 60, "peak_mb": peak, "steps": summary.get("steps"), "overrides": overrides, "tta": tta,
            "minutes": minutes, "precision": summary.get("precision", "?"), "best_val": summary.get("best_val_mean_dice")}


def score(models: list[Path], manifest: Path, where: Path, tta: bool) -> tuple[dict[str, float], int]:
    """``medseg predict`` (several models: their ensemble) + ``medseg evaluate`` on ``manifest``:
    mean Dice per structure over the cases, and the number of cases."""
    suffix = "_tta" if tta else ""
    pred, ev = where / f"heldout_pred{suffix}", where / f"heldout_eval{suffix}"
    subprocess.run([sys.executable, "-m", "medseg", "predict", *[a for m in models for a in ("--model", str(m))],
                    "--input", str(manifest), "--output", str(pred), "--quiet", *(["--tta"] if tta else [])], check=True)
    subprocess.run([sys.executable, "-m", "medseg", "evaluate", "--pred", str(pred),
                    "--ref", str(manifest), "--output", str(ev)], check=False)
    rows = list(csv.DictReader((ev / "metrics.csv").open(encoding="utf-8")))
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["dice"] not in ("", "nan"):
            per.setdefault(r["structure"], []).append(float(r["dice"]))
    dice = {k: sum(v) / len(v) for k, v in per.items()}
    return dice, len(rows) // max(1, len(dice))


def ensemble_score(spec: str, results: dict, data: Path, out: Path, tta: bool) -> dict:
    """``NAME=RUN,RUN,...``: the runs' best checkpoints averaged by ``medseg predict`` on their
    (shared) held-out split. Members are runs recorded in ``results`` (main or family)."""
    name, _, members = spec.partition("=")
    runs = [m.strip() for m in members.split(",") if m.strip()]
    known = {**results.get("main_runs", {}), **results.get("families", {})}
    if not name or len(runs) < 2:
        raise SystemExit(f"--ensemble {spec!r}: expected NAME=RUN,RUN[,...] with at least two runs")
    for r in runs:
        if r not in known or not (out / r / "split.json").exists():
            raise SystemExit(f"--ensemble {spec!r}: {r!r} is not a recorded run with a run directory in {out}")
    vals = {r: json.loads((out / r / "split.json").read_text(encoding="utf-8"))["val"] for r in runs}
    if any(v != vals[runs[0]] for v in vals.values()):
        raise SystemExit(f"--ensemble {spec!r}: the runs hold out different cases; an ensemble needs one held-out split")
    where = out / "ensembles" / name
    shutil.rmtree(where, ignore_errors=True)  # predict resumes: never reuse another member set's predictions
    where.mkdir(parents=True)
    dice, cases = score([out / r for r in runs], held_out_manifest(out / runs[0], data), where, tta)
    return {"name": name, "members": runs, "dice": dice, "mean": sum(dice.values()) / len(dice), "cases": cases,
            "train_minutes": sum(known[r]["train_minutes"] for r in runs), "tta": tta}


def same_as_main(results: dict, overrides: list[str], minutes: float, tta: bool) -> dict | None:
    """A main run with exactly this family's settings and budget (it is not trained twice)."""
    for name, r in results.get("main_runs", {}).items():
        if r.get("overrides") == overrides and r.get("tta") == tta and r.get("minutes") == minutes:
            return {**r, "name": f"{name} (the main run)"}
    return None


def throughput(data: Path, steps: int) -> dict:
    """Steady-state steps/s of medseg's loop vs a plain MONAI loop: same UNet, batch 4, patch 40x56x40."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    code = REPO / "benchmarks" / "_throughput.py"
    res = {}
    for which in ("medseg", "monai"):
        out = subprocess.run([sys.executable, str(code), which, str(data), str(steps)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace", check=True)
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    res["ratio"] = res["medseg"]["steps_per_s"] / res["monai"]["steps_per_s"]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "Task04_Hippocampus"))
    p.add_argument("--output", default=str(REPO / "bench_output" / "training"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--family-minutes", type=float, default=10.0)
    p.add_argument("--throughput-steps", type=int, default=60)
    p.add_argument("--main", action="store_true")
    p.add_argument("--main-set", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline overrides for the main run (recorded with the result)")
    p.add_argument("--main-name", default="main_3d")
    p.add_argument("--no-tta", action="store_true", help="score held-out cases without mirroring TTA")
    p.add_argument("--families", action="store_true")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--ensemble", action="append", default=[], metavar="NAME=RUN,RUN,...",
                   help="score the ensemble of recorded runs (their best checkpoints) on their held-out split")
    p.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md (smoke runs)")
    args = p.parse_args()
    data, out = Path(args.data).resolve(), Path(args.output).resolve()
    if not (data / "dataset.json").exists():
        print(f"{data}: no dataset.json; pass --data PATH/Task04_Hippocampus")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json" if args.no_record else machine_results_file()
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    if "main" in results and "main_runs" not in results:  # results of an earlier version of this script
        results["main_runs"] = {results["main"]["name"]: results["main"]}
    if args.main:
        previous = results.setdefault("main_runs", {}).get(args.main_name, {})
        fresh = train_and_score(args.main_name, data, out, args.minutes, args.main_set, not args.no_tta)
        if fresh.get("peak_mb") != fresh.get("peak_mb") and "peak_mb" in previous:  # NaN: training was reused
            fresh["peak_mb"], fresh["train_minutes"] = previous["peak_mb"], previous["train_minutes"]
        results["main_runs"][args.main_name] = fresh
        results["main"] = max(results["main_runs"].values(), key=lambda r: r.get("mean", 0.0))
    if args.families:
        results["families"] = {
            k: same_as_main(results, v, args.family_minutes, not args.no_tta)
            or train_and_score(k, data, out, args.family_minutes, v, not args.no_tta)
            for k, v in FAMILIES.items()
        }
        results["family_minutes"] = args.family_minutes
    if args.throughput:
        results["throughput"] = throughput(data, args.throughput_steps)
    for spec in args.ensemble:
        e = ensemble_score(spec, results, data, out, not args.no_tta)
        results.setdefault("ensembles", {})[e["name"]] = e
    atomic_write_text(results_path, json.dumps(results, indent=2))
    if not args.no_record:
        update_section(section_title(), render(results, args))
    print(render(results, args))
    return 0


def section_title() -> str:
    """One RESULTS.md section per CPU model: a run on another machine kind keeps the others."""
    return f"Training on {cpu_model()}, {os.cpu_count()} cores"


def machine_results_file() -> Path:
    """The tracked results of this machine kind (the data behind its RESULTS.md section)."""
    slug = re.sub(r"[^a-z0-9]+", "-", section_title().removeprefix("Training on ").lower()).strip("-")
    return REPO / "benchmarks" / "results" / f"training-{slug}.json"


def shipped_pipeline() -> str:
    """The shipped hippocampus pipeline's settings, read from the YAML (never restated by hand)."""
    import yaml

    raw = yaml.safe_load(PIPELINE.read_text(encoding="utf-8"))
    parts = [f"`{section}.{key}={json.dumps(value, separators=(',', ':'))}`" for section in ("model", "data", "loss", "optim", "trainer", "inference")
             for key, value in (raw.get(section) or {}).items() if key not in ("max_epochs", "steps_per_epoch")]
    return " ".join(parts)


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | {r['error']} | | | | | | |"
    d = " / ".join(f"{v:.3f}" for v in r["dice"].values())
    tta = " +TTA" if r.get("tta") else ""
    val = r.get("best_val")
    return (f"| {r['name']}{tta} | **{r['mean']:.3f}** ({d}) | {'n/a' if val is None else format(val, '.3f')} | "
            f"{r['cases']} | {r['train_minutes']:.1f} | {r['steps']} | {r.get('precision', '?')} | "
            f"{'n/a' if math.isnan(r['peak_mb']) else format(r['peak_mb'], '.0f')} |")


def render(results: dict, args: argparse.Namespace) -> str:
    lines = [f"Machine: {machine_line()}. Python {platform.python_version()}.", ""]
    head = ("| run | held-out mean fg Dice (Anterior / Posterior) | best val Dice (no TTA) | cases | train min | steps "
            "| precision | peak RSS MB |\n|---|---|---|---|---|---|---|---|")
    if "main" in results:
        lines += ["### Hippocampus (Task04), `pipelines/hippocampus_3d.yaml`", "",
                  "Held-out = the pipeline's own seeded 20 % validation split (42 cases), predicted with "
                  "`medseg predict` in the original geometry and scored with `medseg evaluate`.", "", head,
                  *[_row(r) for r in results.get("main_runs", {"main": results["main"]}).values()], "",
                  "Overrides of the shipped pipeline per run:", "",
                  *[f"- {k}: `{' '.join(r.get('overrides', [])) or 'none'}`" + (f" ({r['note']})" if r.get("note") else "")
                    for k, r in results.get("main_runs", {}).items()], "",
                  f"Shipped pipeline (`pipelines/hippocampus_3d.yaml`): {shipped_pipeline()}; everything else "
                  "at the defaults (AdamW, Dice+CE, poly schedule following the budget); best checkpoint by "
                  "validation Dice, mirroring TTA at prediction.", "",
                  f"Target: 0.89 (nnU-Net's published level, GPU, ~1000 epochs). Best 30-minute run: "
                  f"**{results['main']['mean']:.3f}**"
                  + (" (target reached)." if results["main"]["mean"] >= 0.89 else " (**target not reached**)."),
                  "Reference points measured on this kind of machine (from the project brief, not re-run here): "
                  "nnU-Net v2, own plan, 28 min: 0.814; a plain MONAI UNet loop, whole volumes, 15 min: 0.867.", "",
                  "Command: `python benchmarks/bench_training.py --main --minutes 30 [--main-name N --main-set k=v ...]`", "",
                  *([results["commentary"], ""] if results.get("commentary") else [])]
    if results.get("ensembles"):
        lines += ["### Ensembles of the runs above (after the fact: not a 30-minute result)", "",
                  "The best checkpoints of several runs above, averaged by `medseg predict --model RUN --model RUN ...` "
                  "on the same held-out cases: how much Dice more training compute buys on this split.", "",
                  "| ensemble | held-out mean fg Dice (Anterior / Posterior) | cases | training min, all members | members |",
                  "|---|---|---|---|---|",
                  *[f"| {e['name']}{' +TTA' if e.get('tta') else ''} | **{e['mean']:.3f}** "
                    f"({' / '.join(f'{v:.3f}' for v in e['dice'].values())}) | {e['cases']} | {e['train_minutes']:.0f} | "
                    f"{', '.join(e['members'])} |" for e in results["ensembles"].values()], "",
                  "Command: `python benchmarks/bench_training.py --ensemble NAME=RUN,RUN[,...]`", ""]
    if "families" in results:
        lines += [f"### Network families, {results.get('family_minutes', '?')} min each (same data, split, schedule)", "",
                  "Each family is the shipped pipeline with only the network changed (same data, split, "
                  "augmentation, precision, schedule, budget); the 2D family is the residual U-Net on sagittal slices "
                  "(axis 0, batch 16), predicted slice by slice and stacked back.", "",
                  head, *[_row(r) for r in results["families"].values()], "",
                  "Network of each family (overrides of the shipped pipeline):", "",
                  *[f"- {k}: `{' '.join(r.get('overrides', FAMILIES.get(k, [])))}`" for k, r in results["families"].items()], "",
                  *([results["family_commentary"], ""] if results.get("family_commentary") else []),
                  f"Command: `python benchmarks/bench_training.py --families --family-minutes {results.get('family_minutes')}`", ""]
    if "throughput" in results:
        t = results["throughput"]
        lines += ["### Training throughput vs a plain MONAI loop (same UNet, batch 4, patch 40x56x40, same run)", "",
                  "| loop | steps/s | s/step |", "|---|---|---|",
                  f"| medseg (Lightning, cached preprocessing) | {t['medseg']['steps_per_s']:.2f} | {1 / t['medseg']['steps_per_s']:.3f} |",
                  f"| plain MONAI (CacheDataset + dict transforms + torch loop) | {t['monai']['steps_per_s']:.2f} | {1 / t['monai']['steps_per_s']:.3f} |",
                  "", f"Ratio: medseg **{t['ratio']:.2f}x** the MONAI loop's throughput.", "",
                  f"Command: `python benchmarks/bench_training.py --throughput --throughput-steps {args.throughput_steps}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
