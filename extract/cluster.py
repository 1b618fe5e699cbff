"""The one dask cluster factory: extraction, ablation, the demo's training runs and multi-start
search all run their tasks on clusters made here (or on a user's scheduler, via `connect`).

Workers are tuned for small torch tasks: no malloc trim threshold, no statistical profiler,
passive OpenMP waits (details in `local_cluster`).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

TRIM = "MALLOC_TRIM_THRESHOLD_"
_USER_TRIM = os.environ.get(TRIM)  # read before any dask nanny of this process sets it


def local_cluster(workers: int, threads_per_worker: int):
    """A LocalCluster whose workers keep glibc's default malloc tuning, skip dask's profiler and
    wait passively in OpenMP (as the CLI's own process does; a user's OMP_WAIT_POLICY is kept).

    The statistical profiler walks the task thread's stack every 10 ms in the worker's event loop
    (holding the GIL): 1-5 ms of CPU per sample on a busy machine, for a dashboard page this run
    never shows.

    dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 for their workers, and leave it in this
    process's environment for later spawns. Any fixed trim threshold also turns off glibc's
    dynamic mmap threshold, so every large tensor of a forward pass is mmap'ed and page-faulted
    afresh: the tiny backbones' forward takes 1.6-2x its CPU time in such a worker.
    The variable is put back as it was when this module was imported (a user's value is kept).
    """
    import dask
    from distributed import LocalCluster

    if _USER_TRIM is None:
        os.environ.pop(TRIM, None)
    else:
        os.environ[TRIM] = _USER_TRIM
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM}": _USER_TRIM,
                          "distributed.nanny.pre-spawn-environ.OMP_WAIT_POLICY": "PASSIVE",
                          "distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=":0", silence_logs=logging.CRITICAL)


@contextmanager
def connect(scheduler: str | None, workers: int, threads_per_worker: int = 1, timeout: float = 10.0) -> Iterator:
    """A dask Client on `scheduler` when given, else on a new `local_cluster` (closed afterwards).

    Raises ConnectionError naming the address when no scheduler answers; callers turn it into their
    package's error.
    """
    from distributed import Client

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"dask scheduler {scheduler} did not answer within {timeout:g}s ({exc})") from None
    else:
        cluster = local_cluster(workers, threads_per_worker)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def on_worker() -> Any | None:
    """The dask worker this code runs on, with torch given that worker's thread count (not the whole
    machine's); None elsewhere, where the caller's thread setting stays."""
    if "distributed" not in sys.modules:  # not on a dask worker: skip importing it (~0.3 s)
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # distributed is imported, but this is not a worker
        return None
    import torch

    torch.set_num_threads(max(1, worker.state.nthreads))
    return worker
