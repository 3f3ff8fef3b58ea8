"""Batch extras and Dask benchmark (issue #18): what ``--statistics --preview`` cost per case, and a
2-worker local Dask cluster against ``--workers 2``.

Extras overhead, in one process per volume kind (a fresh ``python`` running this file with
``--child``): the predictor is loaded once, then every case is predicted twice through
``medseg.inference.batch.predict_case`` (the code path of ``medseg predict``), once plain and
once with ``--statistics --preview`` extras, the order alternating from case to case, so the
load of a shared machine falls on both alike. The extras run also times its
``BatchExtras.case_done`` (statistics, QA, preview of the case) and the end-of-batch
``finish`` (statistics.csv, qa.csv, index.html), so the overhead is also read as extras
seconds / plain seconds within the same prediction:

1. Hippocampus batch: the first ``--cases`` (default 52) images of Task04_Hippocampus/imagesTr
   (symlinked into the work folder), the model of ``--model`` (a run directory, e.g. trained
   3 minutes with ``pipelines/hippocampus_3d.yaml``), the CLI's default threads.
2. CT: the 512x512x300 volume and random 3-class UNet of ``bench_inference.py`` (case b, made by
   its ``setup``); then ``case_done`` alone on realistic label maps of that grid (the phantom's
   organs; TotalSegmentator's abdominal map of ``ct_abdomen_sample`` where ``--data``'s parent
   holds it), since a random network's fragments are the worst case for the extras.

Throughput, each configuration one fresh ``python -m medseg`` process timed from start to exit
(imports, model loading or cluster start, the batch), interleaved ``--rounds`` times; median:

3. Predict on the hippocampus batch: ``--workers 2`` vs ``--scheduler local:2`` (no extras).
4. Evaluate those predictions against their reference labels: ``--workers 2`` vs
   ``--scheduler local:2``.

    nice -n 5 .venv/bin/python benchmarks/bench_batch_extras.py --model RUN_DIR [--rounds 2]
        [--skip hippocampus,ct,dask,evaluate] [--ct-repeats 3] [--code-root DIR] [--write-results]

``--code-root`` runs the medseg package found there (e.g. an older commit unpacked with
``git archive``) for a before/after comparison; the default is this checkout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
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
CPU_SECONDS: list[float] = []
"""user + system seconds of each ``run`` (the process and the worker processes it waited for)."""


def run(args: list[str], code_root: Path, env_extra: dict[str, str] | None = None) -> float:
    """Wall seconds of ``python -m medseg ARGS`` in a fresh process (raises on failure)."""
    env = {**os.environ, "PYTHONPATH": str(code_root), **(env_extra or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # -P: neither the working directory nor this script's folder goes before PYTHONPATH
    proc = subprocess.run([sys.executable, "-P", "-m", "medseg", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
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
    cpus: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for label, argv in configs.items():
            out = work / f"{name}_{label.replace(' ', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            wall = run([*argv, "--output", str(out)], code_root)
            walls[label].append(wall)
            cpus[label].append(CPU_SECONDS[-1])
            if per_case:
                means[label].append(statistics.fmean(case_seconds(out)))
            if outputs is not None:
                outputs[label] = out
            print(f"  {name} round {r + 1} {label}: wall {wall:.2f} s, cpu {cpus[label][-1]:.1f} s"
                  + (f", mean case {means[label][-1]:.3f} s" if per_case else ""), flush=True)
    return {k: {"wall": statistics.median(walls[k]), "case": statistics.median(means[k]) if per_case else 0.0,
                "cpu": statistics.median(cpus[k]),
                "walls": walls[k], "cases": means[k]} for k in configs}  # type: ignore[dict-item]


def child_extras(model: str, inputs: list[str], output: Path, warmup: str,
                 masks: list[tuple[str, str, dict[str, int]]] | None = None) -> dict:
    """In this process: each case plain and with extras, alternating; returns the timings.

    ``masks``: (name, label map path, structure -> label) of other label maps on the first
    case's grid, whose ``case_done`` is timed on that case's image (median of 3): what the
    extras cost for another model's output, whose prediction time does not depend on it."""
    from medseg.inference import batch
    from medseg.inference.batch_extras import BatchExtras, for_models
    from medseg.inference.inputs import InputCase
    from medseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoints([model], device="cpu")
    extras = for_models(predictor.labels, [model], statistics=True, preview=True)
    spent: list[float] = []

    class Timed(BatchExtras):
        def case_done(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return super().case_done(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

    timed = Timed(**{f: getattr(extras, f) for f in extras.__dataclass_fields__})
    cases = [InputCase(Path(p).name.split(".")[0], [Path(p)]) for p in inputs]
    warm_case = InputCase("warmup", [Path(warmup)])
    warm = batch.predict_case(predictor, warm_case, output / "warmup", resume=False)  # first-call costs
    if warm.status != "ok":
        raise RuntimeError(f"warm-up case failed: {warm.error}")
    plain, with_extras, results = [], [], {}
    for i, case in enumerate(cases):
        order = (None, timed) if i % 2 == 0 else (timed, None)
        for ex in order:
            r = batch.predict_case(predictor, case, output / ("extras" if ex else "plain"), resume=False, extras=ex)
            if r.status != "ok":
                raise RuntimeError(f"{case.name}: {r.error}")
            (with_extras if ex else plain).append(r.seconds)
            if ex:
                results[case.name] = r
    start = time.perf_counter()
    timed.finish(output / "extras", [c.name for c in cases], results)
    finish = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the predictions', not the masks'
    mask_seconds = {}
    if masks:
        from medseg.data.io import read_label
        from medseg.inference.inputs import read_case

        image = read_case(cases[0], len(predictor.channel_names)).array[0]
        for name, path, label_map in masks:
            mask = read_label(path)
            other = BatchExtras(label_map, statistics=True, preview=True)
            other.case_done(output / "masks", "warmup", mask.array[:64, :64, :32].copy(),
                            image[:64, :64, :32].copy(), mask.affine)
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                err = other.case_done(output / "masks", name, mask.array, image, mask.affine)
                runs.append(time.perf_counter() - start)
                if err:
                    raise RuntimeError(f"{name}: {err}")
            mask_seconds[name] = statistics.median(runs)
    import medseg

    return {"medseg": str(Path(medseg.__file__).parent), "plain": plain, "extras": with_extras, "case_done": spent,
            "finish": finish, "mask_case_done": mask_seconds,
            "max_rss_mb": peak_mb}


def extras_in_child(name: str, model: str, inputs: list[str], warmup: str, work: Path, code_root: Path,
                    masks: list[tuple[str, str, dict[str, int]]] | None = None) -> dict:
    out = work / f"{name}_extras"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    proc = subprocess.run([sys.executable, "-P", __file__, "--child",
                           json.dumps([model, inputs, str(out), warmup, str(code_root), masks or []])], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} child exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


MASK_TITLES = {
    "organs": "the phantom's two organs (what a model trained on it predicts: compact structures)",
    "totalseg": "TotalSegmentator's 31 abdominal structures of ct_abdomen_sample (512x512x20, each slice "
                "repeated 15x), 117 structure names",
}


def ct_masks(folder: Path, image: Path, data: Path) -> list[tuple[str, str, dict[str, int]]]:
    """Realistic label maps on the CT's grid (written once): the phantom's organs, and where
    ``data`` holds ct_abdomen_sample, TotalSegmentator's multi-organ map stretched to 300 slices."""
    import bench_inference
    import nibabel as nib
    import numpy as np

    ref = nib.load(str(image))
    masks = []
    organs = folder / "organs_mask.nii.gz"
    if not organs.exists():
        nib.save(nib.Nifti1Image(bench_inference.ct_organ_labels(ref.shape), ref.affine), str(organs))
    masks.append(("organs", str(organs), {"background": 0, "structure_a": 1, "structure_b": 2}))
    sample = data / "ct_abdomen_sample"
    if (sample / "dicom_seg_totalsegmentator.nii.gz").is_file():
        total = folder / "totalseg_mask.nii.gz"
        if not total.exists():
            seg = np.asarray(nib.load(str(sample / "dicom_seg_totalsegmentator.nii.gz")).dataobj).astype(np.uint8)
            reps = -(-ref.shape[2] // seg.shape[2])
            seg = np.repeat(seg, reps, axis=2)[:, :, : ref.shape[2]]
            if seg.shape != ref.shape:
                raise RuntimeError(f"{sample}: map {seg.shape} does not fit the CT grid {ref.shape}")
            nib.save(nib.Nifti1Image(seg, ref.affine), str(total))
        names = json.loads((sample / "labels.json").read_text())["total"]
        masks.append(("totalseg", str(total), {"background": 0, **{v: int(k) for k, v in names.items()}}))
    return masks


def ratio(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f} %"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="hippocampus run directory (or checkpoint); required")
    p.add_argument("--data", default=os.path.join(os.environ.get("MEDSEG_DATA", "../shared/data"),
                                                  "Task04_Hippocampus"))
    p.add_argument("--cases", type=int, default=52)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ct-repeats", type=int, default=3,
                   help="the CT predicted this many times (as as many cases), plain and with extras alternating")
    p.add_argument("--workdir", default="/tmp/medseg_bench_batch_extras")
    p.add_argument("--skip", default="", help="comma list of: hippocampus, ct, dask, evaluate")
    p.add_argument("--code-root", default=str(ROOT), help="folder holding the medseg package to run")
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        model, inputs, out, warmup, code, masks = json.loads(a.child)
        sys.path.insert(0, code)  # before this checkout (ROOT), for --code-root
        print(json.dumps(child_extras(model, inputs, Path(out), warmup, [tuple(m) for m in masks])))
        return
    if not a.model:
        p.error("--model RUN_DIR is required (a hippocampus run, e.g. trained 3 minutes with "
                "pipelines/hippocampus_3d.yaml)")
    skip = set(filter(None, a.skip.split(",")))
    work, code_root = Path(a.workdir), Path(a.code_root).resolve()
    work.mkdir(parents=True, exist_ok=True)
    images, refs = hippocampus_inputs(Path(a.data), work, a.cases)
    hippo = ["predict", "--model", a.model, "--input", str(images), "--quiet", "--device", "cpu"]
    lines: list[str] = []
    load = os.getloadavg()[0]

    def extras_table(title: str, res: dict, n: int) -> None:
        plain, extra = statistics.fmean(res["plain"]), statistics.fmean(res["extras"])
        done = statistics.fmean(res["case_done"])
        lines.extend([
            f"**{title}** ({n} case{'s' if n > 1 else ''}, each predicted plain and with extras in one process, "
            "alternating)", "",
            "| predict_case | mean seconds per case | overhead |", "|---|---:|---:|",
            f"| plain | {plain:.3f} | – |",
            f"| `--statistics --preview` | {extra:.3f} | **{ratio(extra, plain)}** |",
            f"| of which statistics + QA + preview (`case_done`) | {done:.4f} | {done / plain * 100:.1f} % of plain |",
            f"| end of batch: statistics.csv, qa.csv, index.html (`finish`), per case | {res['finish'] / n:.4f} | "
            f"{res['finish'] / n / plain * 100:.1f} % of plain |", "",
        ])

    if "hippocampus" not in skip:
        print("hippocampus: plain vs --statistics --preview (one process, alternating per case)", flush=True)
        inputs = [str(p) for p in sorted(images.glob("*.nii.gz"))]
        res = extras_in_child("hippo", a.model, inputs, inputs[0], work, code_root)
        print(json.dumps({k: v for k, v in res.items() if not isinstance(v, list)}), flush=True)
        extras_table("Hippocampus batch, serial", res, a.cases)
    if "ct" not in skip:
        import bench_inference

        files = bench_inference.setup(work / "ct", "b")
        masks = ct_masks(work / "ct", Path(files["image"]), Path(a.data).parent)
        print("CT 512x512x300: plain vs --statistics --preview (one process)", flush=True)
        repeats = work / "ct" / "repeats"
        shutil.rmtree(repeats, ignore_errors=True)
        repeats.mkdir()
        for i in range(a.ct_repeats):  # the same volume as several cases: plain and extras alternate over them
            (repeats / f"ct{i}.nii.gz").symlink_to(Path(files["image"]).resolve())
        inputs = [str(p) for p in sorted(repeats.glob("*.nii.gz"))]
        res = extras_in_child("ct", files["ckpt"], inputs, files["warmup"], work, code_root, masks)
        print(json.dumps(res), flush=True)
        extras_table("CT 512x512x300 (bench_inference case b, random 3-class UNet)", res, a.ct_repeats)
        plain = statistics.fmean(res["plain"])
        lines.extend([
            "`case_done` on other label maps of this CT grid and image (median of 3, same process; the prediction "
            "time does not depend on the mask, so the share is of the plain prediction above):", "",
            "| label map | `case_done` s | share of plain |", "|---|---:|---:|",
            "| the random network's (the prediction above: 3 labels in fragments everywhere) | "
            f"{statistics.fmean(res['case_done']):.2f} | {statistics.fmean(res['case_done']) / plain * 100:.1f} % |",
            *(f"| {MASK_TITLES[k]} | {v:.2f} | **{v / plain * 100:.1f} %** |" for k, v in res["mask_case_done"].items()),
            "", f"Peak RSS of the process that predicted the CT plain and with extras: {res['max_rss_mb']:.0f} MiB.", "",
        ])
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
            "| predict | process wall seconds | cases per minute | CPU seconds (all processes) "
            "| seconds per case (log, per worker) |",
            "|---|---:|---:|---:|---:|",
            *(f"| `{k}` | {v['wall']:.2f} | {60 * a.cases / v['wall']:.1f} | {v['cpu']:.1f} | {v['case']:.3f} |"
              for k, v in res.items()),
            f"| Dask vs pool | {ratio(d['wall'], w['wall'])} | | {ratio(d['cpu'], w['cpu'])} | "
            f"{ratio(d['case'], w['case'])} |", "",
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
                "| evaluate | process wall seconds | cases per minute | CPU seconds (all processes) |",
                "|---|---:|---:|---:|",
                *(f"| `{k}` | {v['wall']:.2f} | {60 * a.cases / v['wall']:.1f} | {v['cpu']:.1f} |"
                  for k, v in res.items()),
                f"| Dask vs pool | {ratio(d['wall'], w['wall'])} | | {ratio(d['cpu'], w['cpu'])} |", "",
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
