"""The one exception tree of zmqdask, split by who is at fault.

::

    ZmqdaskError
    ├── UsageError                  you used the API wrongly
    │   ├── ClosedClientError       the client was closed
    │   ├── SyncInAsyncError        a blocking call inside a running event loop
    │   └── SerializationError      an object could not be pickled (names it)
    ├── TaskError                   a task did not produce a value
    │   ├── KilledWorker            the task's attempts killed too many workers
    │   ├── FutureCancelledError    the future was cancelled
    │   └── LostDataError           the data is gone and cannot be recomputed
    ├── CommunicationError          the peer or the network broke
    │   ├── ConnectTimeoutError     the broker could not be reached in time
    │   └── BrokerLostError         the broker went away and did not come back
    └── ProtocolError               a malformed message (see zmqdask.protocol)

``TimeoutError`` (raised by ``Future.result(timeout=...)`` and friends) also subclasses
the builtin :class:`TimeoutError`, so ``except TimeoutError`` works as in asyncio.

Exceptions raised by user code inside a task are re-raised unchanged (same type, with the
remote traceback attached); only failures of zmqdask itself use this tree.
"""

from __future__ import annotations

import builtins
import concurrent.futures


class ZmqdaskError(Exception):
    """Base class of every error raised by zmqdask itself."""


class UsageError(ZmqdaskError):
    """The API was used in a way it does not support; the message says what to do instead."""


class ClosedClientError(UsageError):
    """The client was closed; create a new ``Client`` to go on."""


class SyncInAsyncError(UsageError):
    """A blocking call was made inside a running event loop; use the awaitable form."""


class SerializationError(UsageError):
    """An object could not be serialized; ``obj_repr`` names it."""

    def __init__(self, message: str, obj_repr: str = "") -> None:
        super().__init__(message)
        self.obj_repr = obj_repr


class TaskError(ZmqdaskError):
    """A task did not produce a value for a reason other than its own exception."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class KilledWorker(TaskError):
    """The task was running on ``attempts`` workers that died; it is not tried again."""

    def __init__(self, message: str, key: str = "", attempts: int = 0) -> None:
        super().__init__(message, key)
        self.attempts = attempts


class FutureCancelledError(TaskError, concurrent.futures.CancelledError):
    """The future's task was cancelled before it produced a value.

    Also a ``concurrent.futures.CancelledError`` (exported as ``zmqdask.CancelledError``, as
    Dask exports it), so ``except CancelledError`` catches it.
    """


class LostDataError(TaskError):
    """The data of a key is gone and cannot be recomputed (for example scattered data)."""


class CommunicationError(ZmqdaskError):
    """The broker or the network failed."""


class ConnectTimeoutError(CommunicationError, builtins.TimeoutError):
    """The broker did not answer within the connect timeout."""


class BrokerLostError(CommunicationError):
    """The broker stopped answering and did not come back within the client's timeout."""


class TimeoutError(ZmqdaskError, builtins.TimeoutError):
    """A bounded wait ran out of time."""


class ProtocolError(ZmqdaskError):
    """A message does not follow the wire protocol; it is dropped and counted."""


class RemoteTaskFailure(ZmqdaskError):
    """Stands in for a task's exception whose type could not be transferred.

    ``type_name`` and ``remote_traceback`` describe the original exception.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


CancelledError = concurrent.futures.CancelledError
"""What ``dask.distributed.CancelledError`` is: the base of :class:`FutureCancelledError`."""
