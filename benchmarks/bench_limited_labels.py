"""Limited-labels benchmark on the real Decathlon hippocampus data (issue: limited labels).

A learning curve: for each label budget (``--labels 10,20,40,all``), runs of the shipped
pipeline (``pipelines/hippocampus_3d.yaml``) with the same fine-tuning budget in optimiser
steps (``--steps``; steps, not minutes, so that a busy machine changes the wall time and not
the result) for each arm:

* ``scratch``: only the labelled cases (``data.labelled_cases=N``);
* ``semi``: the same plus the rest of the training split as unlabelled images
  (``semi_supervised.method=mean_teacher``);
* ``pre``: ``scratch`` started from a ``medseg pretrain`` run on all the images
  (``init_from``; pretrained once, ``--pretrain-steps``, its cost listed apart);
* ``both``: ``pre`` and ``semi`` together;
* ``wu``: ``pre`` with the decoder-only warm-up (``optim.decoder_warmup_epochs``, a sixth of
  the budget: the loaded encoder fixed, then its rate ramped back over as many epochs).

``--seed N`` (default 42, the pipeline's) repeats the curve with another ``trainer.seed``:
another validation split, another labelled subset, another initialisation and patch
order (run directories ``<arm>-<labels>-s<N>``): the spread between seeds is the noise
that a difference between arms must exceed.

Each run is scored on its validation split (never trained on, the same 42 cases for every
run: the split is seeded and made before the label budget) in the original geometry with
``medseg predict --tta`` + ``medseg evaluate``: mean foreground Dice and its per-case spread.

    python benchmarks/bench_limited_labels.py --data ../shared/data/Task04_Hippocampus \
        --labels 20,all --arms scratch,semi,pre --steps 1500 --pretrain-steps 1500

Results accumulate in ``benchmarks/results/limited-labels-<cpu>.json`` and are rendered in
RESULTS.md ("## Limited labels on <CPU>"); ``--tag T`` keeps another curve (e.g. a longer
``--steps``) in ``limited-labels-<cpu>-T.json`` and its own section.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _results import cpu_model, machine_line, update_section  # noqa: E402
from bench_training import PIPELINE, held_out_manifest, measured  # noqa: E402

from medseg.utils import atomic_write_text  # noqa: E402

ARMS = ("scratch", "semi", "pre", "both", "wu")


def results_file(tag: str = "") -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in cpu_model().lower()).strip("-")
    return REPO / "benchmarks" / "results" / f"limited-labels-{slug}{'-' + tag if tag else ''}.json"


def section(tag: str = "") -> str:
    return f"Limited labels on {cpu_model()}" + (f" ({tag})" if tag else "")


def budget(steps: int) -> list[str]:
    epochs = max(1, steps // 50)
    return [f"trainer.max_epochs={epochs}", "trainer.steps_per_epoch=50", "trainer.max_time_minutes=0",
            "trainer.val_every_n_epochs=5", "trainer.progress_bar=false"]


def pretrain(data: Path, out: Path, steps: int, pretext: str = "masked") -> dict:
    run = out / "pretrain"
    overrides = budget(steps) + ([] if pretext == "masked" else [f"pretrain.method={pretext}"])
    cmd = [sys.executable, "-m", "medseg", "pretrain", str(PIPELINE), "--data", str(data / "dataset.json"),
           "--output", str(run), *[a for s in overrides for a in ("--set", s)]]
    if not (run / "train_summary.json").exists():
        interrupted = (run / "checkpoints" / "last.ckpt").exists() or (run / "checkpoints" / "interrupted.ckpt").exists()
        rc, _, _ = measured([*cmd, "--resume"] if interrupted else cmd)  # a killed benchmark continues
        if rc != 0:
            raise SystemExit(f"pretraining exited {rc}: {' '.join(cmd)}")
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    return {"run": str(run), "steps": summary["steps"], "train_minutes": summary["seconds"] / 60,
            "best_val_recon_loss": summary.get("best_val_recon_loss"), "command": " ".join(cmd[1:])}


def per_case(eval_dir: Path) -> dict[str, float]:
    """Case -> mean foreground Dice over its structures (metrics.csv of medseg evaluate)."""
    cases: dict[str, list[float]] = {}
    with (eval_dir / "metrics.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["dice"] not in ("", "nan"):
                cases.setdefault(r["case"], []).append(float(r["dice"]))
    return {k: sum(v) / len(v) for k, v in cases.items()}


def run_name(name: str, labels: str, seed: int) -> str:
    return f"{name}-{labels}" + ("" if seed == 42 else f"-s{seed}")


def arm(name: str, labels: str, data: Path, out: Path, steps: int, pre_run: str | None, seed: int = 42) -> dict:
    overrides = budget(steps) + ([] if seed == 42 else [f"trainer.seed={seed}"])
    if labels != "all":
        overrides.append(f"data.labelled_cases={labels}")
    if name in ("semi", "both"):
        # The consistency weight ramps up over the first third of the budget (the default 20
        # epochs would still be ramping at the end of a short fixed-step run).
        overrides += ["semi_supervised.method=mean_teacher",
                      f"semi_supervised.rampup_epochs={max(1, steps // 50 // 3)}"]
    if name in ("pre", "both", "wu"):
        overrides.append(f"init_from={pre_run}")
    if name == "wu":
        overrides.append(f"optim.decoder_warmup_epochs={max(1, steps // 50 // 6)}")
    run = out / run_name(name, labels, seed)
    cmd = [sys.executable, "-m", "medseg", "train", str(PIPELINE), "--data", str(data / "dataset.json"),
           "--output", str(run), *[a for s in overrides for a in ("--set", s)]]
    if not (run / "train_summary.json").exists():
        rc, _, _ = measured(cmd)
        if rc != 0:
            return {"error": f"training exited {rc}", "command": " ".join(cmd[1:])}
    manifest = held_out_manifest(run, data)
    pred, ev = run / "heldout_pred_tta", run / "heldout_eval_tta"
    subprocess.run([sys.executable, "-m", "medseg", "predict", "--model", str(run), "--input", str(manifest),
                    "--output", str(pred), "--tta"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "medseg", "evaluate", "--pred", str(pred), "--ref", str(manifest),
                    "--output", str(ev)], check=False, stdout=subprocess.DEVNULL)
    dice = per_case(ev)
    values = sorted(dice.values())
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    quartiles = statistics.quantiles(values, n=4)
    return {"mean": statistics.fmean(values), "min": values[0], "q1": quartiles[0], "median": quartiles[1],
            "cases": len(values), "steps": summary["steps"], "train_minutes": summary["seconds"] / 60,
            "best_val": summary.get("best_val_mean_dice"), "command": " ".join(cmd[1:])}


def paired(out: Path, labels: list[str], seed: int = 0, run_seed: int = 42) -> str:
    """Markdown table: each arm minus scratch with the same labels, paired over the held-out
    cases (per-case mean foreground Dice), bootstrap 95 % CI, cases better."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = ["| labels | " + " | ".join(f"{a} - scratch" for a in ARMS[1:]) + " |", "|---" * len(ARMS) + "|"]
    for n in labels:
        base_dir = out / run_name("scratch", n, run_seed) / "heldout_eval_tta"
        if not (base_dir / "metrics.csv").exists():
            continue
        base, cells = per_case(base_dir), []
        for a in ARMS[1:]:
            ev = out / run_name(a, n, run_seed) / "heldout_eval_tta"
            if not (ev / "metrics.csv").exists():
                cells.append("")
                continue
            other = per_case(ev)
            d = np.array([other[c] - base[c] for c in sorted(base)])
            boot = [float(d[rng.integers(0, len(d), len(d))].mean()) for _ in range(5000)]
            lo, hi = np.percentile(boot, [2.5, 97.5])
            cells.append(f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], {int((d > 0).sum())}/{len(d)}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_closed(out: Path, labels: str, arm_name: str, seeds: list[int], draws: int = 5000) -> str:
    """The gap between scratch with ``labels`` and scratch with every label, and how much of
    it ``arm_name`` closes: per seed and pooled over the seeds (mean of the per-seed
    means), with a bootstrap over the held-out cases within each seed (the seeds' own
    spread shows in the per-seed lines, not in the interval)."""
    import numpy as np

    rng = np.random.default_rng(0)
    runs: dict[int, dict[str, np.ndarray]] = {}
    lines = []
    for seed in seeds:
        dirs = {"low": run_name("scratch", labels, seed), "arm": run_name(arm_name, labels, seed),
                "all": run_name("scratch", "all", seed)}
        scores = {k: per_case(out / d / "heldout_eval_tta") for k, d in dirs.items()}
        cases = sorted(scores["low"])
        runs[seed] = {k: np.array([v[c] for c in cases]) for k, v in scores.items()}
        m = {k: float(v.mean()) for k, v in runs[seed].items()}
        lines.append(f"seed {seed}: scratch-{labels} {m['low']:.4f}, {arm_name}-{labels} {m['arm']:.4f}, scratch-all "
                     f"{m['all']:.4f}: gap {m['all'] - m['low']:+.4f}, closed {m['arm'] - m['low']:+.4f}")

    def pooled(r: dict[int, dict[str, np.ndarray]]) -> tuple[float, float]:
        return (float(np.mean([v["all"].mean() - v["low"].mean() for v in r.values()])),
                float(np.mean([v["arm"].mean() - v["low"].mean() for v in r.values()])))

    gap, closed = pooled(runs)
    boots = []
    for _ in range(draws):
        sample = {}
        for seed, v in runs.items():
            idx = rng.integers(0, len(v["low"]), len(v["low"]))
            sample[seed] = {k: a[idx] for k, a in v.items()}
        boots.append(pooled(sample))
    b = np.array(boots)
    g_lo, g_hi = np.percentile(b[:, 0], [2.5, 97.5])
    c_lo, c_hi = np.percentile(b[:, 1], [2.5, 97.5])
    f_lo, f_hi = np.percentile(100 * b[:, 1] / b[:, 0], [2.5, 97.5])
    lines.append(f"pooled over {len(seeds)} seeds: gap {gap:+.4f} [{g_lo:+.4f}, {g_hi:+.4f}], {arm_name} closes "
                 f"{closed:+.4f} [{c_lo:+.4f}, {c_hi:+.4f}] = {100 * closed / gap:.0f} % [{f_lo:.0f} %, {f_hi:.0f} %]")
    return "\n".join(lines)


def render(results: dict) -> str:
    lines = [machine_line(), ""]
    pre = results.get("pretrain")
    if pre:
        task = ("Models Genesis restoration" if "pretrain.method=genesis" in pre["command"]
                else "masked-volume reconstruction")
        lines += [f"Pretraining ({task}, all 208 images, labels unused): {pre['steps']} steps, "
                  f"{pre['train_minutes']:.1f} min, best held-out reconstruction loss {pre['best_val_recon_loss']:.4f}.",
                  f"`{pre['command']}`", ""]
    lines += ["| labelled cases | arm | held-out mean fg Dice (TTA) | per case: min / Q1 / median | best val Dice "
              "(no TTA) | steps | train min |", "|---|---|---|---|---|---|---|"]
    for key, r in sorted(results.get("runs", {}).items(), key=lambda kv: (kv[0].split("-")[1], kv[0])):
        name, labels = key.split("-", 1)  # labels may end in -s<seed>
        if "error" in r:
            lines.append(f"| {labels} | {name} | {r['error']} | | | | |")
            continue
        lines.append(f"| {labels} | {name} | {r['mean']:.3f} | {r['min']:.3f} / {r['q1']:.3f} / {r['median']:.3f} | "
                     f"{r['best_val'] or float('nan'):.3f} | {r['steps']} | {r['train_minutes']:.1f} |")
    lines += ["", "Commands (each run): " + "; ".join(f"`{r['command']}`" for r in results.get("runs", {}).values())]
    if results.get("commentary"):
        lines += ["", results["commentary"]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Task04_Hippocampus")
    ap.add_argument("--output", type=Path, default=REPO / "bench_output" / "limited_labels")
    ap.add_argument("--labels", default="20,all", help="comma-separated label budgets (numbers or 'all')")
    ap.add_argument("--arms", default="scratch,semi,pre", help=f"comma-separated arms among {', '.join(ARMS)}")
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning optimiser steps per run")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--pretext", choices=("masked", "genesis"), default="masked",
                    help="pretrain.method of the pretraining (with --tag and its own --output to compare pretexts)")
    ap.add_argument("--seed", type=int, default=42, help="trainer.seed of the fine-tuning runs (split, label subset, init)")
    ap.add_argument("--gap", metavar="ARM",
                    help="only print how much of the scratch-<labels> vs scratch-all gap ARM closes, over --seeds")
    ap.add_argument("--seeds", default="42", help="with --gap: comma-separated seeds whose runs to pool")
    ap.add_argument("--tag", default="", help="a curve of its own (e.g. another --steps): its own results file and "
                    "RESULTS.md section; use its own --output too")
    ap.add_argument("--render", action="store_true", help="only re-render RESULTS.md from the recorded results")
    ap.add_argument("--paired", action="store_true",
                    help="only print each arm minus scratch, paired over the held-out cases of --output's runs")
    args = ap.parse_args()
    if args.gap:
        print(gap_closed(args.output, args.labels.split(",")[0], args.gap, [int(x) for x in args.seeds.split(",")]))
        return 0
    if args.paired:
        print(paired(args.output, args.labels.split(","), run_seed=args.seed))
        return 0
    if args.render:
        update_section(section(args.tag), render(json.loads(results_file(args.tag).read_text(encoding="utf-8"))))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose among {', '.join(ARMS)}")
    path = results_file(args.tag)
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    args.output.mkdir(parents=True, exist_ok=True)
    pre_run = None
    if any(a in ("pre", "both", "wu") for a in arms):
        results["pretrain"] = pretrain(args.data, args.output, args.pretrain_steps, args.pretext)
        pre_run = results["pretrain"]["run"]
    for labels in args.labels.split(","):
        for name in arms:
            key = run_name(name, labels, args.seed)
            results.setdefault("runs", {})[key] = arm(name, labels, args.data, args.output, args.steps, pre_run,
                                                      args.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(results, indent=2))
            print(json.dumps({key: results["runs"][key]}), flush=True)
    update_section(section(args.tag), render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
