"""Held-out Dice and HD95 of a trained model's predictions without and with the CRF and with
the tuned post-processing, pooled over folds (the four two-channel ``brats_sample`` cases).

The predictions and evaluations come from ``medseg`` commands (two folds of two cases each,
``pipelines/brats_small.yaml``; the exact commands are in benchmarks/RESULTS.md, "CRF");
this script only pools their ``medseg evaluate`` outputs: for each variant, the
``metrics.csv`` of every fold's evaluation folder ``<eval_prefix><fold>_eval_<variant>``.

    .venv/bin/python benchmarks/bench_crf_brats.py --root /work/bench_out/crf/brats \\
        --folds 0,1 --variants raw,crf,tuned,oof

``--joint RUN MANIFEST CHOICE``: network-grid Dice of every structure of ``MANIFEST``'s cases
predicted by ``RUN`` without and with the CRF of ``CHOICE`` (a ``postprocessing.json``),
its structures refined *together*, as ``medseg predict`` applies it: an independent check of
the ``dice_after_crf`` that ``tune-postprocess`` records (before commit 'tuning: score the CRF
jointly' it scored each structure's CRF with that structure refined alone, and the other
structures as unchanged).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's medseg


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def table(root: Path, folds: list[str], variants: list[str]) -> str:
    """Per structure: mean Dice / HD95 over every held-out case of every fold, per variant;
    then the mean over structures per fold and pooled."""
    per: dict[str, dict[str, dict[str, list[float]]]] = {}  # variant -> structure -> metric -> values
    fold_means: dict[str, dict[str, float]] = {}  # variant -> fold -> mean Dice over structures
    for v in variants:
        per[v] = {}
        fold_means[v] = {}
        for f in folds:
            rows = _read(root / f"f{f}_eval_{v}" / "metrics.csv")
            by_s: dict[str, list[float]] = {}
            for r in rows:
                s = per[v].setdefault(r["structure"], {"dice": [], "hd95": []})
                s["dice"].append(float(r["dice"] or "nan"))
                s["hd95"].append(float(r["hd95"] or "nan"))
                by_s.setdefault(r["structure"], []).append(float(r["dice"] or "nan"))
            fold_means[v][f] = _mean([_mean(x) for x in by_s.values()])
    structures = list(per[variants[0]])
    head = "| structure | " + " | ".join(f"{v}: Dice / HD95" for v in variants) + " |"
    lines = [head, "|---" * (len(variants) + 1) + "|"]
    for s in structures:
        cells = [f"{_mean(per[v][s]['dice']):.4f} / {_mean(per[v][s]['hd95']):.1f}" for v in variants]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    means = [_mean([_mean(per[v][s]["dice"]) for s in structures]) for v in variants]
    base = means[0]
    lines.append("| **mean Dice** | " + " | ".join(
        f"{m:.4f}" + ("" if i == 0 else f" ({m - base:+.4f})") for i, m in enumerate(means)) + " |")
    for f in folds:
        b = fold_means[variants[0]][f]
        lines.append(f"| fold {f} mean Dice | " + " | ".join(
            f"{fold_means[v][f]:.4f}" + ("" if i == 0 else f" ({fold_means[v][f] - b:+.4f})")
            for i, v in enumerate(variants)) + " |")
    return "\n".join(lines)


def joint(run: str, manifest: str, choice: str) -> str:
    """Dice per structure without and with the choice's CRF applied to its structures together."""
    import json

    from medseg.config import CrfConfig
    from medseg.inference.crf import refine_probabilities
    from medseg.inference.tuning import _argmax, _score, validation_cases

    tuned = json.loads(Path(choice).read_text(encoding="utf-8"))
    crf = tuned["inference"].get("crf")
    if not crf:
        return f"{choice}: no CRF chosen"
    cases, labels = validation_cases(run, manifest, device="cpu")
    structures = {n: i for n, i in labels.items() if i}
    cfg = CrfConfig(**crf)
    base = [_argmax(c.probs.float()) for c in cases]
    refined = [_argmax(refine_probabilities(c.probs.float(), c.image, c.spacing, cfg, labels)) for c in cases]
    lines = [f"{run} on {manifest}: CRF on {crf['structures']} together"]
    before, after = [], []
    for name, label in structures.items():
        b, a = _score(base, cases, label), _score(refined, cases, label)
        before.append(b)
        after.append(a)
        entry = tuned["structures"][name]
        reported = entry.get("dice_after_crf", entry["dice_after"])
        lines.append(f"  {name}: none {b:.4f}, joint {a:.4f} ({a - b:+.4f}); tune-postprocess reported {reported:.4f}")
    lines.append(f"  mean: none {_mean(before):.4f}, joint {_mean(after):.4f}; reported {tuned['mean_dice_after']:.4f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="folder holding f<fold>_eval_<variant>/metrics.csv")
    ap.add_argument("--joint", nargs=3, metavar=("RUN", "MANIFEST", "CHOICE"), help="re-score a choice (see above)")
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--variants", default="raw,crf,tuned", help="the first is the baseline of the differences")
    args = ap.parse_args()
    if args.joint:
        print(joint(*args.joint))
        return 0
    if args.root is None:
        ap.error("--root is needed (or --joint)")
    print(table(args.root, args.folds.split(","), args.variants.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
