"""CRF memory and time on the 512x512x300 CT of the inference benchmark.

The CT phantom (512x512x300 at 0.8x0.8x2.5 mm, network grid 1.6x1.6x2.5 mm: 256x256x300)
and its randomly initialised 3-class UNet are the ones ``bench_inference.py`` builds
(its ``setup``, imported, not copied). Each run is a separate ``medseg predict`` process
under ``/usr/bin/time -v``: peak RSS is its "Maximum resident set size", seconds are the
case's ``predict_log.csv`` entry (read -> mask written) and the process's wall time. The
runs alternate without and with ``--crf`` (``--repeats`` pairs), so both see the same
machine load. A random network's class map is fragmented all over the body, so each
structure's bounding box is the whole grid: the CRF's worst case for memory.

``--in-process``: the CRF alone (``refine_probabilities``) on that network grid (3 x 256 x
256 x 300 probabilities, softmax of white noise: every box is the whole grid; a white-noise
image), its peak RSS over holding the probabilities and the image (VmHWM - VmRSS before).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_crf_ct.py [--repeats 2] [--workdir DIR]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_crf_ct.py --in-process
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import setup  # noqa: E402


def run_predict(files: dict[str, str], out: Path, crf: bool) -> dict[str, float]:
    """One ``medseg predict`` process on the CT; its peak RSS (MB), case seconds and wall seconds."""
    return predict_process(files["ckpt"], files["image"], out, ["--crf" if crf else "--no-crf"])


def predict_process(model: str, image: str, out: Path, extra: list[str]) -> dict[str, float]:
    """One ``medseg predict --model MODEL`` process on ``image`` under ``/usr/bin/time -v``: its
    peak RSS (MB), the case's seconds (``predict_log.csv``) and the process's wall seconds."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "medseg", "predict", "--model", model,
           "--input", image, "--output", str(out), "--device", "cpu", "--no-resume", "-q", *extra]
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


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def in_process() -> str:
    """Peak RSS of ``refine_probabilities`` alone on the CT's network grid, over what it is given."""
    import numpy as np
    import torch

    from medseg.config import CrfConfig
    from medseg.inference.crf import refine_probabilities

    gen = torch.Generator().manual_seed(0)
    shape = (256, 256, 300)
    probs = torch.empty(3, *shape)
    for x in range(0, shape[0], 16):
        probs[:, x:x + 16] = torch.softmax(2 * torch.randn(3, 16, *shape[1:], generator=gen), 0)
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    held = _status_mb("VmRSS")
    start = time.perf_counter()
    refine_probabilities(probs, image, (1.6, 1.6, 2.5), CrfConfig(enabled=True), {"background": 0, "a": 1, "b": 2})
    return (f"held {held:.0f} MB (probabilities 236 MB, image 79 MB, torch); the CRF's peak over that "
            f"+{_status_mb('VmHWM') - held:.0f} MB; {time.perf_counter() - start:.0f} s "
            f"(torch threads {torch.get_num_threads()})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs (without, with the CRF)")
    ap.add_argument("--workdir", default=str(ROOT / "bench_output" / "inference"),
                    help="where bench_inference.py's CT case is (or is built)")
    ap.add_argument("--in-process", action="store_true", help="the CRF alone, in this process (see above)")
    args = ap.parse_args()
    if args.in_process:
        print(in_process())
        return 0
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
