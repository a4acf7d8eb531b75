"""zmqdask: a Dask-compatible compute framework on a ZeroMQ message broker.

Port Dask code by changing imports: ``from zmqdask import Client``, ``import zmqdask``,
``zmqdask.datasets.timeseries()``.
"""

from __future__ import annotations

import importlib
from typing import Any

from zmqdask.client import Client, ClientStatus, default_client, get_client
from zmqdask.coordination import Event, Lock, Queue, Semaphore, Variable
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
from zmqdask.future import Future, as_completed, fire_and_forget, wait
from zmqdask.local import LocalCluster
from zmqdask.progress import futures_of, progress
from zmqdask.security import Security
from zmqdask.task_context import get_worker, rejoin, secede, worker_client

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"dataframe", "datasets"})
_LAZY_FUNCTIONS = {
    "compute": "zmqdask.base",
    "is_dask_collection": "zmqdask.base",
    "persist": "zmqdask.base",
    "visualize": "zmqdask.base",
}


def __getattr__(name: str) -> Any:
    # The DataFrame layer imports pandas; load it only when it is used, so the client,
    # worker and broker start quickly.
    if name in _LAZY_MODULES:
        return importlib.import_module(f"zmqdask.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
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
