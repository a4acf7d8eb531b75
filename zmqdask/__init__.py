"""zmqdask: a Dask-compatible compute framework on a ZeroMQ message broker.

Port Dask code by changing imports: ``from zmqdask import Client``, ``import zmqdask``,
``zmqdask.datasets.timeseries()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# delayed and progress are imported now because each shares its name with its module:
# importing that module later (as the client does) would set the package's attribute to
# the module, hiding the function.
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
from zmqdask.progress import futures_of, progress

if TYPE_CHECKING:
    from zmqdask import dataframe, datasets
    from zmqdask.base import compute, is_dask_collection, persist, visualize
    from zmqdask.client import Client, ClientStatus, default_client, get_client
    from zmqdask.future import Future, as_completed, fire_and_forget, wait
    from zmqdask.local import LocalCluster
    from zmqdask.security import Security
    from zmqdask.task_context import get_worker, rejoin, secede, worker_client

__version__ = "0.1.0"

_LAZY_MODULES = frozenset({"dataframe", "datasets"})
_LAZY_NAMES = {
    "Client": "zmqdask.client",
    "ClientStatus": "zmqdask.client",
    "default_client": "zmqdask.client",
    "get_client": "zmqdask.client",
    "Future": "zmqdask.future",
    "as_completed": "zmqdask.future",
    "fire_and_forget": "zmqdask.future",
    "wait": "zmqdask.future",
    "LocalCluster": "zmqdask.local",
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


def __getattr__(name: str) -> Any:
    # Loaded on first use: the broker and the workers import parts of this package (the
    # protocol, the worker loop) and start faster without the client, asyncio and the
    # DataFrame layer (pandas).  ``from zmqdask import Client`` works as usual.
    if name in _LAZY_MODULES:
        return importlib.import_module(f"zmqdask.{name}")
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'zmqdask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    # The public names, loaded or not, and the module's own dunders; not its helpers.
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})


__all__ = [
    "CancelledError",
    "Client",
    "ClientStatus",
    "ClosedClientError",
    "CommunicationError",
    "ConnectTimeoutError",
    "Delayed",
    "Future",
    "FutureCancelledError",
    "KilledWorker",
    "LocalCluster",
    "LostDataError",
    "Security",
    "SerializationError",
    "SyncInAsyncError",
    "TimeoutError",
    "UsageError",
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
