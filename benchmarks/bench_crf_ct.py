"""CRF memory and time on the 512x512x300 CT of the inference benchmark.

The CT phantom (512x512x300 at 0.8x0.8x2.5 mm, network grid 1.6x1.6x2.5 mm: 256x256x300)
and its randomly initialised 3-class UNet are the ones ``bench_inference.py`` builds
(its ``setup``, imported, not copied). Each run is a separate ``medseg predict`` process
under ``/usr/bin/time -v``: peak RSS is its "Maximum resident set size", seconds are the
case's ``predict_log.csv`` entry (read -> mask written) and the process's wall time. The
runs alternate without and with ``--crf`` (``--repeats`` pairs), so both see the same
machine load. A random network's class map is fragmented all over the body, so each
structure's bounding box is the whole grid: the CRF's worst case for memory.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_crf_ct.py [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import setup  # noqa: E402


def run_predict(files: dict[str, str], out: Path, crf: bool) -> dict[str, float]:
    """One ``medseg predict`` process on the CT; its peak RSS (MB), case seconds and wall seconds."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "medseg", "predict", "--model", files["ckpt"],
           "--input", files["image"], "--output", str(out), "--device", "cpu", "--no-resume", "-q",
           "--crf" if crf else "--no-crf"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", check=False, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no 'Maximum resident set size' in /usr/bin/time's output:\n{proc.stderr[-2000:]}")
    with (out / "predict_log.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seconds = float(rows[-1]["seconds"])
    return {"peak_rss_mb": int(found.group(1)) / 1024.0, "seconds": seconds, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (without, with the CRF)")
    ap.add_argument("--workdir", default=str(ROOT / "bench_output" / "inference"),
                    help="where bench_inference.py's CT case is (or is built)")
    args = ap.parse_args()
    files = setup(Path(args.workdir), "b")
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for i in range(args.repeats):
        for crf in (False, True):
            r = run_predict(files, Path(args.workdir) / "b" / f"crf_bench_{'crf' if crf else 'none'}", crf)
            runs[crf].append(r)
            print(f"run {i + 1} {'with' if crf else 'without'} CRF: {r}", file=sys.stderr, flush=True)
    print("| | peak RSS MB (runs) | case seconds (runs) | process wall s (runs) |\n|---|---|---|---|")
    for crf in (False, True):
        rs = runs[crf]
        peak = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in rs)
        secs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        wall = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"| {'with CRF' if crf else 'without CRF'} | {max(r['peak_rss_mb'] for r in rs):.0f} ({peak}) | "
              f"{min(r['seconds'] for r in rs):.1f} ({secs}) | {min(r['wall_s'] for r in rs):.1f} ({wall}) |")
    extra = max(r["peak_rss_mb"] for r in runs[True]) - max(r["peak_rss_mb"] for r in runs[False])
    ratio = min(r["seconds"] for r in runs[True]) / min(r["seconds"] for r in runs[False])
    print(f"\nwith - without: {extra:+.0f} MB peak RSS (target <= +512 MB); case seconds x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
