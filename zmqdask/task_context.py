"""What a running task may call about its own situation, with Dask's names.

``get_worker()`` is the worker process running the task; ``secede()`` tells it the task is
about to wait for other tasks; ``worker_client()`` gives a client for submitting them (see
:func:`zmqdask.client.get_client`, which secedes by itself).  Outside a task, ``secede`` and
``rejoin`` do nothing and ``get_worker`` raises ValueError, as in Dask.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zmqdask.client import Client
    from zmqdask.worker import Worker


def get_worker() -> Worker:
    """The worker running the calling task (its ``name``, ``address``, ``nthreads``...).

    Attributes set on it stay for the life of the worker process, which is how Dask code
    keeps one expensive object (a connection, a model) per worker.  Raises ValueError
    outside a task.
    """
    worker_module = sys.modules.get("zmqdask.worker")
    worker = getattr(worker_module, "_worker_for_tasks", None) if worker_module is not None else None
    if worker is None:
        raise ValueError("get_worker() works only inside a task running on a zmqdask worker")
    return worker


def secede() -> None:
    """The calling task is about to wait for other tasks: its thread leaves the worker's pool.

    A new thread takes its place and the broker stops counting the task against the worker,
    so the tasks it waits for can run there.  Nothing happens outside a task or when the
    task has seceded already (``get_client`` in a task secedes by itself).
    """
    worker_module = sys.modules.get("zmqdask.worker")
    if worker_module is not None:
        worker_module.secede_current_task()


def rejoin() -> None:
    """Accepted for Dask code: a seceded task keeps its own thread until it ends.

    Dask's ``rejoin`` waits for a free slot in the pool; here the pool got its replacement
    thread when the task seceded, and the seceded thread simply ends with its task.
    """


@contextmanager
def worker_client(timeout: float | None = None, separate_thread: bool = True) -> Iterator[Client]:
    """``with worker_client() as client:`` inside a task: a client of the worker's broker.

    The task secedes first (see :func:`secede`), so the tasks it submits and waits for find
    a thread.  ``timeout`` and ``separate_thread`` are Dask's and change nothing here.
    """
    from zmqdask.client import get_client

    secede()
    yield get_client()

