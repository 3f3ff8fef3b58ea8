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
