"""One task per case on a Dask distributed cluster (``--scheduler ADDRESS``).

``ADDRESS`` is a running scheduler (``tcp://host:8786``, as printed by ``dask scheduler``
or a dask-jobqueue cluster) or ``local:N``: a LocalCluster of N single-threaded worker
processes on the loopback address 127.0.0.1 (no dashboard), shut down afterwards.

A worker that dies mid-case does not lose the batch: the scheduler reruns its task on
another worker, and after ``distributed.scheduler.allowed-failures`` deaths (Dask's
default 3) the task fails with ``KilledWorker``, which the caller logs as that case's
failure. Results come back in completion order through ``on_result``.

Local workers get the environment of a ``--workers N`` process: Dask's nannies normally set
``MALLOC_TRIM_THRESHOLD_=65536`` in their workers (``distributed.nanny.pre-spawn-environ``),
which fixes glibc's mmap threshold at 128 KiB, so every tensor buffer of a forward pass is
mapped and unmapped afresh: measured +25 % CPU seconds per hippocampus case (benchmarks/
RESULTS.md, "Batch extras and Dask"). :data:`LOCAL_WORKER_CONFIG` unsets it for ``local:N``.
On a cluster started elsewhere (``dask worker``, dask-jobqueue) set the same in the workers'
Dask configuration (``distributed: nanny: pre-spawn-environ: MALLOC_TRIM_THRESHOLD_: null``)
or environment.

``evaluate`` starts its local workers by forking itself (``dask_client(..., fork=True)``): a
spawned worker imports ``distributed`` and then the metrics (numpy, scipy, the readers) at its
first task, ~1 s of CPU each, a quarter of a 52-case hippocampus evaluation on 2 cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

LOCAL_PREFIX = "local:"
LOCAL_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
"""Dask configuration while a ``local:N`` cluster starts (None unsets a worker environment variable).
Also off: the workers' statistical profiler (a stack sample every 10 ms, for the dashboard,
which ``local:N`` does not start)."""


def parse_scheduler(address: str) -> int | str:
    """``local:N`` -> N (workers of a local cluster); any other address unchanged."""
    if address.startswith(LOCAL_PREFIX):
        value = address[len(LOCAL_PREFIX):]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--scheduler {address!r}: expected local:N with N >= 1 workers (e.g. local:2), "
                             "or a scheduler address such as tcp://10.0.0.5:8786")
        return int(value)
    if not address.strip():
        raise ValueError("--scheduler: empty address; expected local:N or tcp://HOST:PORT")
    return address


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise RuntimeError("--scheduler needs Dask distributed: pip install 'medseg[dask]'") from err
    return distributed


def _forks_safely() -> bool:
    """Whether this process may start local workers with ``fork``: where the start method
    exists, no thread but this one runs and torch is not loaded (a lock held by another
    thread, or torch's thread pools, would be copied into the child held and never released)."""
    import multiprocessing
    import sys
    import threading

    return ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and "torch" not in sys.modules)


@contextlib.contextmanager
def dask_client(address: str, fork: bool = False) -> Iterator[Any]:
    """A ``distributed.Client`` connected to ``address`` (starting a local cluster for ``local:N``).

    ``fork`` (``local:N`` only): start the workers by forking this process, so that they begin
    with its imports (for ``evaluate``: numpy, scipy, the metrics) instead of each spawning a
    fresh interpreter that imports ``distributed`` and, at its first task, the task's modules
    (~1 s of CPU per worker here). Only where :func:`_forks_safely` (else spawned as usual), and
    only for the first start: a worker restarted after it died is spawned, since by then this
    process runs the batch in other threads.
    """
    distributed = _import_distributed()
    target = parse_scheduler(address)
    if isinstance(target, int):
        import dask

        config = dict(LOCAL_WORKER_CONFIG)
        if fork and _forks_safely():
            config["distributed.worker.multiprocessing-method"] = "fork"  # read as each nanny starts
        with dask.config.set(config):  # pre-spawn-environ is read when the nannies are made (also for restarts)
            cluster = distributed.LocalCluster(n_workers=target, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address=None)
        try:
            with distributed.Client(cluster) as client:
                try:
                    yield client
                finally:
                    with contextlib.suppress(Exception):  # a worker may be dead or restarting
                        client.run(_exit_without_teardown)
        finally:
            cluster.close()
    else:
        with distributed.Client(target) as client:
            yield client


@contextlib.contextmanager
def dask_executor(address: str, fork: bool = False) -> Iterator[Executor]:
    """A ``concurrent.futures.Executor`` whose calls run as Dask tasks on the cluster at
    ``address`` (as :func:`dask_client`), each submit a new task (``pure=False``), for code
    written against a process pool (``evaluate``'s cases).

    A task whose workers kept dying ends with ``KilledWorker`` from its future's ``result()``.
    Tasks still queued when the block is left are cancelled.
    """
    with dask_client(address, fork) as client:
        executor = client.get_executor(pure=False)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)


def _exit_without_teardown() -> None:
    """In a local worker at the end of the batch: once the worker has closed, leave the process
    with ``os._exit(0)`` instead of tearing the interpreter down.

    Spawned worker processes end with ``sys.exit``: a full interpreter finalisation, ~2 s with
    torch and MONAI loaded on a busy 2-core machine, and the nanny kills a worker that is not
    gone after 4 s, so each ``local:N`` batch ended with 4 s of waiting. Registered last, this
    handler runs first among the exit handlers, after the worker's threads have been joined and
    every output of the batch has been written (atomically) and reported.
    """
    import atexit
    import os

    atexit.register(os._exit, 0)


def run_tasks(
    address: str,
    fn: Callable[..., Any],
    items: Sequence[Any],
    args: tuple[Any, ...],
    on_result: Callable[[int, Any], None],
    on_error: Callable[[int, BaseException], None],
) -> None:
    """``fn(item, *args)`` for every item, one task each, on the cluster at ``address``.

    ``on_result(index, value)`` or ``on_error(index, exception)`` is called in this process
    as each task finishes (a task whose workers kept dying ends with ``KilledWorker``).
    """
    distributed = _import_distributed()
    with dask_client(address) as client:
        futures = {client.submit(fn, item, *args, pure=False): i for i, item in enumerate(items)}
        for future in distributed.as_completed(list(futures)):
            index = futures[future]
            try:
                value = future.result()
            except Exception as err:  # the case's own error, or KilledWorker
                on_error(index, err)
            else:
                on_result(index, value)
