"""Dask tasks per case on a local cluster bound to the loopback address; dying workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.cluster import parse_scheduler, run_tasks


def test_parse_scheduler() -> None:
    assert parse_scheduler("local:3") == 3
    assert parse_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local:x", " "):
        with pytest.raises(ValueError, match="local:N"):
            parse_scheduler(bad)


def _square(x: int, offset: int) -> int:
    return x * x + offset


def _die_once(marker: str) -> int:
    """Kill this worker process the first time (the marker file records it), then succeed."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


def _always_die(_: object) -> None:
    os._exit(1)


def test_local_cluster_runs_every_task() -> None:
    results: dict[int, int] = {}
    run_tasks("local:2", _square, [1, 2, 3, 4], (10,), results.__setitem__, lambda i, e: pytest.fail(str(e)))
    assert results == {0: 11, 1: 14, 2: 19, 3: 26}


def test_killed_worker_is_retried_or_reported(tmp_path: Path) -> None:
    import dask

    marker = tmp_path / "died"
    results: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        run_tasks("local:2", _die_once, [str(marker)], (), results.__setitem__, errors.__setitem__)
        assert not errors and results[0] != int(marker.read_text())  # rerun on a new worker process
        run_tasks("local:2", _always_die, ["case_a"], (), results.__setitem__, errors.__setitem__)
    assert type(errors[0]).__name__ == "KilledWorker"


def _environment(_: object) -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_local_workers_keep_glibcs_default_malloc_trimming() -> None:
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 costs ~25 % CPU per predicted case: not set locally."""
    results: dict[int, object] = {}
    run_tasks("local:1", _environment, [None], (), results.__setitem__, lambda i, e: pytest.fail(str(e)))
    assert results == {0: None}


def _profiling(_: object) -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def test_local_workers_do_not_sample_stacks_for_a_dashboard_that_is_not_there() -> None:
    results: dict[int, object] = {}
    run_tasks("local:1", _profiling, [None], (), results.__setitem__, lambda i, e: pytest.fail(str(e)))
    assert results == {0: False}


_FORK_SCRIPT = r"""
import json, os, sys, threading
from pathlib import Path

from medseg.cluster import _forks_safely, dask_executor


def loaded(_):
    return "colorsys" in sys.modules  # imported by the parent only (not by Dask)


def die_once(marker):
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return "colorsys" in sys.modules


def always_die(_):
    os._exit(1)


if __name__ == "__main__":  # (a spawned worker runs this file as __mp_main__ too, but not this block)
    import colorsys  # noqa: F401

    out = {"safe": _forks_safely()}
    for fork in (True, False):
        with dask_executor("local:2", fork=fork) as ex:
            out[f"fork={fork}"] = [f.result() for f in [ex.submit(loaded, i) for i in range(4)]]
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with dask_executor("local:1", fork=True) as ex:
            out["restarted"] = ex.submit(die_once, sys.argv[1]).result()  # the replacement worker
            try:
                ex.submit(always_die, None).result()
            except Exception as err:
                out["killed"] = type(err).__name__
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    out["safe_with_thread"] = _forks_safely()
    stop.set()
    thread.join()
    print(json.dumps(out))
"""


def test_forked_local_workers_start_with_the_parents_imports_and_restart_spawned(tmp_path: Path) -> None:
    """``fork=True``: the first workers are forks of this process (evaluate's imports are theirs);
    a worker that died is replaced by a spawned one and a task that keeps killing them fails with
    KilledWorker, as with spawned workers. Run in a fresh interpreter: pytest's process may hold
    other threads (Dask's own, from earlier tests), and then workers are not forked."""
    import json
    import subprocess
    import sys

    script = tmp_path / "fork_check.py"
    script.write_text(_FORK_SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "died")], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["safe"] is True and out["safe_with_thread"] is False
    assert out["fork=True"] == [True] * 4 and out["fork=False"] == [False] * 4
    assert out["restarted"] is False and out["killed"] == "KilledWorker"
