"""fp32 vs bf16 vs int8 on the 512x512x300 CT of the inference benchmark (issue: deployment).

The CT phantom and its randomly initialised 3-class UNet are ``bench_inference.py``'s case (b)
(its ``setup``, imported). The checkpoint is exported with ``medseg export --quantize int8``,
calibrated on the CT itself (a Decathlon manifest listing it as a test image: 4 windows), and
``medseg predict`` runs the checkpoint (torch fp32, and with ``--precision bf16``) and the int8
export (OpenVINO, medseg's int8 runtime) in alternating child processes under ``/usr/bin/time -v`` (``--repeats`` pairs, so
both see the same machine load): peak RSS, the case's seconds, the process's wall seconds, and
the agreement of the two masks (Dice per label; a random network's logits are near ties almost
everywhere, so low agreement here says nothing about a trained model's).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_deploy_ct.py [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crf_ct import predict_process  # noqa: E402
from bench_inference import setup  # noqa: E402


def export_int8(files: dict[str, str], folder: Path) -> Path:
    """The int8 export of the case's checkpoint, calibrated on the CT (written once)."""
    out = folder / "int8"
    if (out / "export.json").exists() or any(out.glob("*.xml")) or any(out.glob("*.onnx")):
        return out
    manifest = folder / "calibration.json"
    manifest.write_text(json.dumps({"name": "ct", "modality": {"0": "CT"}, "labels": {"0": "background"},
                                    "training": [], "test": [str(Path(files["image"]).resolve())]}), encoding="utf-8")
    cmd = [sys.executable, "-m", "medseg", "export", "--model", files["ckpt"], "--output", str(out),
           "--quantize", "int8", "--calibration", str(manifest), "--calibration-cases", "1"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def agreement(a: Path, b: Path) -> dict[str, float]:
    import nibabel as nib
    import numpy as np

    x = np.asarray(nib.load(str(a)).dataobj)
    y = np.asarray(nib.load(str(b)).dataobj)
    out = {"identical_voxels": float((x == y).mean())}
    for k in (1, 2):
        xa, ya = x == k, y == k
        out[f"dice_label_{k}"] = float(2 * (xa & ya).sum() / max(1, int(xa.sum()) + int(ya.sum())))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (fp32, int8)")
    ap.add_argument("--workdir", default=str(ROOT / "bench_output" / "inference"),
                    help="where bench_inference.py's CT case is (or is built)")
    args = ap.parse_args()
    files = setup(Path(args.workdir), "b")
    folder = Path(args.workdir) / "b"
    int8 = export_int8(files, folder)
    models = {"fp32 (torch)": (files["ckpt"], [], "fp32"), "bf16 (torch autocast)": (files["ckpt"], ["--precision", "bf16"], "bf16"),
              "int8 (OpenVINO)": (str(int8), [], "int8")}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    outs = {k: folder / f"deploy_bench_{tag}" for k, (_, _, tag) in models.items()}
    for i in range(args.repeats):
        for name, (model, extra, _) in models.items():
            r = predict_process(model, files["image"], outs[name], extra)
            runs[name].append(r)
            print(f"run {i + 1} {name}: {r}", file=sys.stderr, flush=True)
    print("| CT 512x512x300, 3 classes | peak RSS MB (runs) | case seconds (runs) | process wall s (runs) |")
    print("|---|---|---|---|")
    for name, rs in runs.items():
        peak = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in rs)
        secs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        wall = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"| {name} | {max(r['peak_rss_mb'] for r in rs):.0f} ({peak}) | {min(r['seconds'] for r in rs):.1f} "
              f"({secs}) | {min(r['wall_s'] for r in rs):.1f} ({wall}) |")
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    fp32 = best["fp32 (torch)"]
    name = Path(files["image"]).name
    for other in list(models)[1:]:
        print(f"\n{other}: case seconds x{best[other] / fp32:.2f} of fp32 ({fp32 / best[other]:.2f}x faster); masks vs fp32:",
              json.dumps(agreement(outs["fp32 (torch)"] / name, outs[other] / name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
