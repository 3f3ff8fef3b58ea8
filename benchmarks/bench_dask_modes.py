"""``--workers 2`` vs ``--scheduler local:2`` for ``medseg evaluate`` or ``medseg predict``, each run a
fresh ``python -P -m medseg`` process timed from start to exit, the modes (and ``--code-root`` copies,
e.g. an older commit from ``git archive``) interleaved ``--rounds`` times; medians of wall and CPU
seconds. CPU: user + system of the process and every process under it, forkserver and orphaned
workers included (this process is made their subreaper and reaps them before reading the usage).

    nice -n 5 .venv/bin/python benchmarks/bench_dask_modes.py evaluate --pred PRED_DIR --ref REF_DIR \\
        --code-root OLD_CHECKOUT --code-root . --rounds 7 --workdir /tmp/dask_modes
    nice -n 5 .venv/bin/python benchmarks/bench_dask_modes.py predict --model RUN_DIR --input IMAGES \\
        --rounds 3 --workdir /tmp/dask_modes

(Linux only: ``prctl(PR_SET_CHILD_SUBREAPER)``.)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {"--workers 2": ["--workers", "2"], "--scheduler local:2": ["--scheduler", "local:2"]}
PR_SET_CHILD_SUBREAPER = 36


def _reap_orphans() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def timed(args: list[str], code_root: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -P -m medseg ARGS`` with ``code_root`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-P", "-m", "medseg", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    _reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"medseg {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("evaluate", "predict"))
    p.add_argument("--pred", help="evaluate: predictions folder")
    p.add_argument("--ref", help="evaluate: reference labels folder or manifest")
    p.add_argument("--model", help="predict: run directory or checkpoint")
    p.add_argument("--input", help="predict: images folder")
    p.add_argument("--code-root", action="append", type=Path, help="folder holding the medseg package "
                   "(repeat to compare checkouts; default: this checkout)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", type=Path, required=True, help="outputs (overwritten every run)")
    a = p.parse_args()
    if a.command == "evaluate" and not (a.pred and a.ref):
        p.error("evaluate needs --pred and --ref")
    if a.command == "predict" and not (a.model and a.input):
        p.error("predict needs --model and --input")
    base = (["evaluate", "--pred", a.pred, "--ref", a.ref] if a.command == "evaluate"
            else ["predict", "--model", a.model, "--input", a.input])
    roots = [r.resolve() for r in (a.code_root or [Path(__file__).resolve().parents[1]])]
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for r in range(a.rounds):
        for i, root in enumerate(roots):
            order = list(MODES.items()) if r % 2 == 0 else list(reversed(MODES.items()))
            for mode, extra in order:
                out = a.workdir / f"{a.command}_{i}_{extra[-1].replace(':', '')}"
                shutil.rmtree(out, ignore_errors=True)
                wall, cpu = timed([*base, "--output", str(out), "--quiet", *extra], root)
                runs.setdefault((i, mode), []).append((wall, cpu))
                print(f"round {r} {root} {mode}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n| code root | {a.command} | wall s (median) | CPU s (median) | wall s, each run |\n|---|---|---:|---:|---|")
    for (i, mode), values in runs.items():
        walls = [w for w, _ in values]
        print(f"| {roots[i]} | `{mode}` | {statistics.median(walls):.2f} | "
              f"{statistics.median(c for _, c in values):.2f} | {', '.join(f'{w:.2f}' for w in walls)} |")


if __name__ == "__main__":
    main()
