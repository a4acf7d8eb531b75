"""zmqdask: a Dask-compatible compute framework on a ZeroMQ message broker.

Port Dask code by changing imports: ``from zmqdask import Client``, ``import zmqdask``,
``zmqdask.datasets.timeseries()``.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any

from zmqdask.delayed import Delayed, delayed
from zmqdask.errors import (
    CancelledError,
    ClosedClientError,
    CommunicationError,
    ConnectTimeoutError,
    FutureCancelledError,
    KilledWorker,
    LostDataError,
    SerializationError,
    SyncInAsyncError,
    TimeoutError,
    UsageError,
    ZmqdaskError,
)

if typing.TYPE_CHECKING:
    from zmqdask.base import compute, is_dask_collection, persist, visualize
    from zmqdask.client import Client, ClientStatus, default_client, get_client
    from zmqdask.coordination import Event, Lock, Queue, Semaphore, Variable
    from zmqdask.future import Future, as_completed, fire_and_forget, wait
    from zmqdask.local import LocalCluster
    from zmqdask.progressbar import futures_of, progress
    from zmqdask.security import Security
    from zmqdask.task_context import get_worker, rejoin, secede, worker_client

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"dataframe", "datasets"})
_LAZY_NAMES = {
    "Client": "zmqdask.client",
    "ClientStatus": "zmqdask.client",
    "default_client": "zmqdask.client",
    "get_client": "zmqdask.client",
    "Event": "zmqdask.coordination",
    "Lock": "zmqdask.coordination",
    "Queue": "zmqdask.coordination",
    "Semaphore": "zmqdask.coordination",
    "Variable": "zmqdask.coordination",
    "Future": "zmqdask.future",
    "as_completed": "zmqdask.future",
    "fire_and_forget": "zmqdask.future",
    "wait": "zmqdask.future",
    "LocalCluster": "zmqdask.local",
    "futures_of": "zmqdask.progressbar",
    "progress": "zmqdask.progressbar",
    "Security": "zmqdask.security",
    "get_worker": "zmqdask.task_context",
    "rejoin": "zmqdask.task_context",
    "secede": "zmqdask.task_context",
    "worker_client": "zmqdask.task_context",
    "compute": "zmqdask.base",
    "is_dask_collection": "zmqdask.base",
    "persist": "zmqdask.base",
    "visualize": "zmqdask.base",
}
"""Public names and the modules that define them, imported when first used: the broker, the
pool manager and the workers import parts of this package and start faster without the
client's modules (asyncio among them), and the DataFrame layer's pandas.  No module of the
package may share its name with one of these: importing it would replace the name here
(``delayed`` is imported at once for that reason)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"zmqdask.{name}")
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # once: later uses are plain lookups
        return value
    raise AttributeError(f"module 'zmqdask' has no attribute {name!r}")


__all__ = [
    "CancelledError",
    "Client",
    "ClientStatus",
    "ClosedClientError",
    "CommunicationError",
    "ConnectTimeoutError",
    "Delayed",
    "Event",
    "Future",
    "FutureCancelledError",
    "KilledWorker",
    "LocalCluster",
    "Lock",
    "LostDataError",
    "Queue",
    "Security",
    "Semaphore",
    "SerializationError",
    "SyncInAsyncError",
    "TimeoutError",
    "UsageError",
    "Variable",
    "ZmqdaskError",
    "__version__",
    "as_completed",
    "compute",
    "dataframe",
    "datasets",
    "default_client",
    "delayed",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_worker",
    "is_dask_collection",
    "persist",
    "progress",
    "rejoin",
    "secede",
    "visualize",
    "wait",
    "worker_client",
]
