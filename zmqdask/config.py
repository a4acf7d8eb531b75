"""Shared constants: timings, limits and defaults used by the client, broker and workers.

Also Dask's ``config.set``/``config.get`` for user settings (``with zmqdask.config.set(
scheduler="sync"):``); of those, ``scheduler`` is what zmqdask reads (the default of
``compute``'s ``scheduler=``), and the others are kept for code that reads them back.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

PROTOCOL_VERSION = 4
"""Version byte carried in every message's first frame."""

HEARTBEAT_INTERVAL_S = 1.0
"""A peer that has sent nothing for this long sends a heartbeat."""

LIVENESS_INTERVALS = 5
"""A peer silent for this many heartbeat intervals is considered dead."""

DEFAULT_PORT = 8786
"""Port the standalone broker listens on when none is given."""

CONNECT_TIMEOUT_S = 10.0
"""How long a client waits for the broker's welcome by default."""

RECONNECT_TIMEOUT_S = 30.0
"""How long a client keeps pending futures alive while the broker is unreachable."""

MAX_KILLED_ATTEMPTS = 3
"""A task that was running on this many workers when they died fails with KilledWorker."""

MAX_KEY_LENGTH = 256
"""Longest task key, in UTF-8 bytes."""

MAX_MESSAGE_BYTES = 2 * 1024**3
"""Default upper bound on one message's total size; larger messages are refused."""

ZERO_COPY_THRESHOLD_BYTES = 64 * 1024
"""Frames at least this large are sent and received without copying."""

DEFAULT_PREFETCH_PER_THREAD = 16
"""Extra task slots a worker grants per executor thread beyond the one it is running."""

BATCH_MAX_DELAY_S = 0.001
"""Longest a submission waits for companions before the client flushes its batch."""

BATCH_MAX_BYTES = 1024 * 1024
"""A pending batch larger than this is flushed at once."""

INLINE_RESULT_MAX_BYTES = 1024 * 1024
"""Results up to this size travel with their completion notice when a client awaits them."""

DIRECT_MIN_BYTES = 1024 * 1024
"""Values at least this large move between a client and a worker with a data address
directly, in one hop, rather than through the broker (two hops, each a full copy through the
kernel): gathered values, and scattered ones."""

DIRECT_TIMEOUT_S = 3.0
"""How long a peer waits for a worker's data socket to answer, beyond the time the bytes
themselves take (see :data:`DIRECT_MIN_BYTES_PER_S`), before it falls back to the broker.
A live worker's main thread answers within milliseconds; this is mostly the time a peer
loses to a worker that died while it was asking."""

DIRECT_MIN_BYTES_PER_S = 50 * 1024 * 1024
"""The slowest transfer rate a direct transfer's deadline allows for its bytes."""

IPC_BUFFER_BYTES = 4 * 1024 * 1024
"""Socket buffer size asked for on Unix socket (``ipc://``) connections.  The default (about
200 KiB) would make a large value cross in hundreds of wake-ups of the receiver; TCP on
loopback grows its buffers by itself, Unix sockets do not."""

INLINE_TASK_MAX_S = 0.001
"""A function whose calls have all taken less than this may run on a worker's main thread
when the worker is otherwise idle, sparing the hand-over to an executor thread (a round
trip is about 0.08 ms shorter).  One slower call and it never does again."""

INLINE_AFTER_QUICK_CALLS = 3
"""How many quick calls a function needs before it may run on a worker's main thread."""

SMALL_RESULT_MAX_BYTES = 256
"""Scalar results (numbers, short strings) up to this size in memory travel with their
completion notice, and on to the clients holding their futures, even before anyone awaits
them: cheaper than asking for them later."""

FUNCTIONS_KEPT_MAX = 1000
"""A client names at most this many of the functions it sent by hash alone; past that it tells
the broker to forget the oldest half (FORGET_FUNCTIONS) and sends them again when it next
uses them.  The broker keeps a function while a client names it or a task runs it."""

FUNCTION_BYTES_KEPT_MAX = 256 * 1024**2
"""The same bound on the total size of those pickled functions (closures can carry data)."""

LIVENESS_TIMEOUT_S = HEARTBEAT_INTERVAL_S * LIVENESS_INTERVALS
"""Silence after which a peer is treated as dead."""


_settings: dict[str, Any] = {}
_settings_lock = threading.Lock()
_MISSING = object()


# Dask's name, zmqdask.config.set(...): it shadows the builtin inside this module only.
class set:
    """Set user settings now; as a context manager, restore the previous ones on exit.

    ``set({"scheduler": "sync"})`` or ``set(scheduler="sync")``; dotted or nested keys are
    kept as given (``"dataframe.shuffle.method"``).
    """

    def __init__(self, arg: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        updates = {**(dict(arg) if arg is not None else {}), **kwargs}
        with _settings_lock:
            self._previous = {key: _settings.get(key, _MISSING) for key in updates}
            _settings.update(updates)

    def __enter__(self) -> set:
        return self

    def __exit__(self, *exc: object) -> None:
        with _settings_lock:
            for key, value in self._previous.items():
                if value is _MISSING:
                    _settings.pop(key, None)
                else:
                    _settings[key] = value


def get(key: str, default: Any = None) -> Any:
    """A user setting made with :class:`set`, or ``default``."""
    with _settings_lock:
        return _settings.get(key, default)

PYTHON_VERSION = "{}.{}".format(*__import__("sys").version_info[:2])
"""This interpreter's version, as clients and workers announce it: a function pickled by
value (bytecode) only runs on the Python version that pickled it."""


_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|sec|seconds?|m|min|minutes?|h|hours?)?\s*")

_UNIT_SECONDS = {"ms": 0.001, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hour": 3600.0}


def seconds(value: Any, name: str) -> float:
    """A duration in seconds from a number or a string such as "2s", "500ms" or "1min"
    (as Dask's timeouts take them); a UsageError for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match:
            return float(match.group(1)) * _UNIT_SECONDS.get(match.group(2) or "s", 1.0)
    from zmqdask.errors import UsageError

    raise UsageError(f"{name} must be a number of seconds or a duration such as '2s' or '500ms', not {value!r}")


def optional_seconds(value: Any, name: str = "timeout") -> float | None:
    """:func:`seconds` of a timeout that may be None (no limit)."""
    return None if value is None else seconds(value, name)


def broker_address_problem(address: str) -> str | None:
    """What is wrong with a ``tcp://HOST:PORT`` broker address given to connect to (a port
    out of range, or none), or None.  Other schemes are left to ZeroMQ."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://") :].rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} names no port (expected tcp://HOST:PORT)"
    if not 0 < int(port) < 65536:
        return f"{address!r}: port {port} is out of range (1-65535)"
    return None
