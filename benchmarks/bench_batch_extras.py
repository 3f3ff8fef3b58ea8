"""Batch extras and Dask benchmark (issue #18): what ``--statistics --preview`` cost per case, and a
2-worker local Dask cluster against ``--workers 2``.

Every configuration is one fresh ``python -m medseg predict`` process timed from start to exit
(imports, model loading, the batch, the end-of-batch files: statistics.csv, qa.csv,
index.html); its ``predict_log.csv`` gives the seconds of each case (read -> written mask,
and with the extras the case's statistics/QA/preview files). Configurations run interleaved,
``--rounds`` times (A B A B ...), so the load of a shared machine falls on both alike; the
table shows the median over rounds.

1. Hippocampus batch: the first ``--cases`` (default 52) images of Task04_Hippocampus/imagesTr
   (symlinked into the work folder), the model of ``--model`` (a run directory, e.g. trained
   3 minutes with ``pipelines/hippocampus_3d.yaml``), serial: plain vs ``--statistics --preview``.
2. CT: the 512x512x300 volume and random 3-class UNet of ``bench_inference.py`` (case b, made by
   its ``setup``), plain vs ``--statistics --preview``.
3. Throughput on the hippocampus batch: ``--workers 2`` vs ``--scheduler local:2`` (no extras).
4. Evaluate on the hippocampus predictions of 3. against their reference labels:
   ``--workers 2`` vs ``--scheduler local:2``.

    nice -n 5 .venv/bin/python benchmarks/bench_batch_extras.py --model RUN_DIR [--rounds 2]
        [--skip ct,dask,evaluate] [--code-root DIR] [--write-results]

``--code-root`` runs the medseg package found there (e.g. an older commit unpacked with
``git archive``) for a before/after comparison; the default is this checkout.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, update_section  # noqa: E402

SECTION = "Batch extras and Dask (issue #18)"
EXTRAS = ["--statistics", "--preview"]


def run(args: list[str], code_root: Path, env_extra: dict[str, str] | None = None) -> float:
    """Wall seconds of ``python -m medseg ARGS`` in a fresh process (raises on failure)."""
    env = {**os.environ, "PYTHONPATH": str(code_root), **(env_extra or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medseg", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"medseg {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall


def case_seconds(output: Path) -> list[float]:
    """Per-case seconds of the ``ok`` cases in OUTPUT/predict_log.csv."""
    with open(output / "predict_log.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"{output}: {len(bad)} cases not ok, e.g. {bad[0]}")
    return [float(r["seconds"]) for r in rows]


def hippocampus_inputs(data: Path, work: Path, n: int) -> tuple[Path, Path]:
    """Folders of symlinks to the first ``n`` training images and their labels."""
    images = sorted((data / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]
    if len(images) < n:
        raise SystemExit(f"{data}/imagesTr has {len(images)} images; --cases {n} needs at least that many")
    folders = (work / "hippo_in", work / "hippo_ref")
    for folder, sub in zip(folders, ("imagesTr", "labelsTr"), strict=True):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for img in images:
            (folder / img.name).symlink_to(data / sub / img.name)
    return folders


def compare(name: str, configs: dict[str, list[str]], rounds: int, work: Path, code_root: Path,
            outputs: dict[str, Path] | None = None, per_case: bool = True) -> dict[str, dict[str, float]]:
    """Run each config ``rounds`` times, interleaved; median wall and per-case seconds per config."""
    walls: dict[str, list[float]] = {k: [] for k in configs}
    means: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for label, argv in configs.items():
            out = work / f"{name}_{label.replace(' ', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            wall = run([*argv, "--output", str(out)], code_root)
            walls[label].append(wall)
            if per_case:
                means[label].append(statistics.fmean(case_seconds(out)))
            if outputs is not None:
                outputs[label] = out
            print(f"  {name} round {r + 1} {label}: wall {wall:.2f} s"
                  + (f", mean case {means[label][-1]:.3f} s" if per_case else ""), flush=True)
    return {k: {"wall": statistics.median(walls[k]), "case": statistics.median(means[k]) if per_case else 0.0,
                "walls": walls[k], "cases": means[k]} for k in configs}  # type: ignore[dict-item]


def ratio(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f} %"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hippocampus run directory (or checkpoint)")
    p.add_argument("--data", default=os.path.join(os.environ.get("MEDSEG_DATA", "../shared/data"),
                                                  "Task04_Hippocampus"))
    p.add_argument("--cases", type=int, default=52)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/medseg_bench_batch_extras")
    p.add_argument("--skip", default="", help="comma list of: hippocampus, ct, dask, evaluate")
    p.add_argument("--code-root", default=str(ROOT), help="folder holding the medseg package to run")
    p.add_argument("--write-results", action="store_true")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    work, code_root = Path(a.workdir), Path(a.code_root).resolve()
    work.mkdir(parents=True, exist_ok=True)
    images, refs = hippocampus_inputs(Path(a.data), work, a.cases)
    hippo = ["predict", "--model", a.model, "--input", str(images), "--quiet", "--device", "cpu"]
    lines: list[str] = []
    load = os.getloadavg()[0]

    def extras_table(title: str, res: dict[str, dict[str, float]], n: int) -> None:
        plain, extra = res["plain"], res["statistics + preview"]
        lines.extend([
            f"**{title}** ({n} case{'s' if n > 1 else ''}; median of {a.rounds} interleaved runs)", "",
            "| predict | seconds per case (log) | process wall seconds | overhead per case | overhead wall |",
            "|---|---:|---:|---:|---:|",
            f"| plain | {plain['case']:.3f} | {plain['wall']:.2f} | – | – |",
            f"| `--statistics --preview` | {extra['case']:.3f} | {extra['wall']:.2f} | "
            f"**{ratio(extra['case'], plain['case'])}** | {ratio(extra['wall'], plain['wall'])} |", "",
        ])

    if "hippocampus" not in skip:
        print("hippocampus: plain vs --statistics --preview (serial)", flush=True)
        res = compare("hippo", {"plain": hippo, "statistics + preview": [*hippo, *EXTRAS]}, a.rounds, work,
                      code_root)
        extras_table("Hippocampus batch, serial", res, a.cases)
    if "ct" not in skip:
        import bench_inference

        files = bench_inference.setup(work / "ct", "b")
        ct = ["predict", "--model", files["ckpt"], "--input", files["image"], "--quiet", "--device", "cpu"]
        print("CT 512x512x300: plain vs --statistics --preview", flush=True)
        res = compare("ct", {"plain": ct, "statistics + preview": [*ct, *EXTRAS]}, a.rounds, work, code_root)
        extras_table("CT 512x512x300 (bench_inference case b, random 3-class UNet)", res, 1)
    if "dask" not in skip:
        print("hippocampus predict: --workers 2 vs --scheduler local:2", flush=True)
        outs: dict[str, Path] = {}
        res = compare("dask", {"--workers 2": [*hippo, "--workers", "2"],
                               "--scheduler local:2": [*hippo, "--scheduler", "local:2"]}, a.rounds, work,
                      code_root, outs)
        w, d = res["--workers 2"], res["--scheduler local:2"]
        lines.extend([
            f"**Predict throughput**, hippocampus batch ({a.cases} cases, no extras; median of {a.rounds} "
            "interleaved runs)", "",
            "| predict | process wall seconds | cases per minute | seconds per case (log, per worker) |",
            "|---|---:|---:|---:|",
            *(f"| `{k}` | {v['wall']:.2f} | {60 * a.cases / v['wall']:.1f} | {v['case']:.3f} |"
              for k, v in res.items()),
            f"| Dask vs pool | {ratio(d['wall'], w['wall'])} wall | | |", "",
        ])
        if "evaluate" not in skip:
            print("hippocampus evaluate: --workers 2 vs --scheduler local:2", flush=True)
            pred = outs["--workers 2"]
            ev = ["evaluate", "--pred", str(pred), "--ref", str(refs), "--quiet"]
            res = compare("eval", {"--workers 2": [*ev, "--workers", "2"],
                                   "--scheduler local:2": [*ev, "--scheduler", "local:2"]}, a.rounds, work,
                          code_root, per_case=False)
            w, d = res["--workers 2"], res["--scheduler local:2"]
            lines.extend([
                f"**Evaluate throughput**, the {a.cases} predictions above against their labels "
                f"(median of {a.rounds} interleaved runs)", "",
                "| evaluate | process wall seconds | cases per minute |", "|---|---:|---:|",
                *(f"| `{k}` | {v['wall']:.2f} | {60 * a.cases / v['wall']:.1f} |" for k, v in res.items()),
                f"| Dask vs pool | {ratio(d['wall'], w['wall'])} wall | |", "",
            ])
    lines.append(f"Machine: {machine_line()}; load average {load:.2f} at the start (shared machine: compare "
                 "rows within a table, not across runs).")
    text = "\n".join(lines)
    print()
    print(text)
    if a.write_results:
        update_section(SECTION, text)


if __name__ == "__main__":
    main()
