"""``make bench``: run every benchmark and update benchmarks/RESULTS.md.

    python benchmarks/run_all.py                 # evaluation, inference, training (30 min + families)
    python benchmarks/run_all.py --quick         # smoke run: small sizes, nothing recorded
    python benchmarks/run_all.py --only evaluation,inference

The training benchmark needs the Decathlon hippocampus data (``--data``, default
``../shared/data/Task04_Hippocampus``); it is skipped with a message when absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "Task04_Hippocampus"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and short budgets; RESULTS.md is not updated")
    p.add_argument("--only", default="evaluation,inference,training")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    args = p.parse_args()
    which = set(args.only.split(","))
    py = sys.executable
    jobs: list[list[str]] = []
    if "evaluation" in which:
        jobs.append([py, str(HERE / "bench_evaluation.py"), *(["--quick"] if args.quick else [])])
    if "inference" in which:
        jobs.append([py, str(HERE / "bench_inference.py"), *(["--cases", "a", "--repeats", "1"] if args.quick else ["--write-results"])])
    if "training" in which:
        if (Path(args.data) / "dataset.json").exists():
            budget = ["--minutes", "1", "--family-minutes", "0.5", "--throughput-steps", "10",
                      "--output", str(HERE.parent / "bench_output" / "training_quick"), "--no-record"] if args.quick else []
            jobs.append([py, str(HERE / "bench_training.py"), "--data", args.data, "--main", "--families", "--throughput", *budget])
        else:
            print(f"training benchmark skipped: no dataset.json in {args.data} (pass --data)")
    status = 0
    for job in jobs:
        print("\n$ " + " ".join(job), flush=True)
        status |= subprocess.call(job)
    return status


if __name__ == "__main__":
    sys.exit(main())
