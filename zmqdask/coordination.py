"""Coordination primitives shared by clients and tasks, as Dask's: Variable, Queue, Event,
Lock and Semaphore.

Each object is a name on the broker (see ``broker.coordination``); objects of the same
kind and name, in any client or task of the cluster, are the same object.  Values are
pickled with the futures in them replaced by their keys (as published datasets are), so a
Future put in a queue or set in a variable keeps its value on the cluster, and whoever gets
it holds a future of its own.

On a synchronous client every method blocks and returns its result; on an asynchronous one
it returns an awaitable (``await lock.acquire()``, ``async with lock:``).  A wait without a
timeout is bounded by the broker's liveness: a client that leaves stops waiting and gives
up its locks, and a broker that stays away fails the wait after the client's reconnect
timeout.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

from zmqdask import publish
from zmqdask.config import MAX_KEY_LENGTH, optional_seconds
from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError
from zmqdask.errors import UsageError

if TYPE_CHECKING:
    from zmqdask.client import Client


_NOTHING: Any = object()


class _Named:
    """What every coordination object shares: its name on the broker, and its client."""

    _kind = ""

    def __init__(self, name: str | None, client: Client | None) -> None:
        if name is None:
            name = f"{type(self).__name__.lower()}-{uuid.uuid4().hex}"
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_KEY_LENGTH - 16:
            raise UsageError(f"a {type(self).__name__}'s name must be a non-empty string of at most 240 bytes")
        self.name = name
        self._client = client

    @property
    def client(self) -> Client:
        """The client this object speaks through: the one given, else the current client
        when first used (in a task, the task's own)."""
        if self._client is None:
            from zmqdask.client import get_client

            self._client = get_client()  # raises ValueError, as Dask does, when there is none
        return self._client

    @property
    def _broker_name(self) -> str:
        return self.name

    def _call(self, coro: Any, alternative: str) -> Any:
        self.client._check_open()
        return self.client._run_or_await(coro, alternative)

    async def _ask(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        value: Any = _NOTHING,
        timeout: Any = None,
        on_abandon: Any = None,
    ) -> dict[str, Any]:
        client = self.client
        seconds = optional_seconds(timeout)
        if seconds is not None and not 0 <= seconds < math.inf:
            raise UsageError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        pickled: bytes | None = None
        args = dict(args or {})
        if value is not _NOTHING:
            pickled, futures = publish.dumps_dataset(value)
            args["keys"] = publish.prepare(client, futures)
        answer = await client._coordinate(self._kind, op, self._broker_name, args, pickled, seconds, on_abandon)
        if not answer.get("ok") and not answer.get("timed_out"):
            raise RuntimeError(f"{type(self).__name__} {self.name!r}: {answer.get('error', 'refused')}")
        return answer

    def _value(self, value: Any, keys: Any) -> Any:
        if type(value) is not bytes or not isinstance(keys, list):
            raise RuntimeError(f"{type(self).__name__} {self.name!r}: the broker's answer is malformed")
        return publish.loads_dataset(value, keys, self.client)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"

    def __reduce__(self) -> Any:
        # In a task, the same object through the task's own client.
        return (_rebuild, (type(self), self._rebuild_args()))

    def _rebuild_args(self) -> dict[str, Any]:
        return {"name": self.name}


def _rebuild(cls: type[_Named], kwargs: dict[str, Any]) -> _Named:
    return cls(**kwargs)


def _nothing_to_undo(_answer: dict[str, Any]) -> None:
    """A late answer that gave nothing (an event's wait)."""


class Variable(_Named):
    """A named value any client or task can set and get, as Dask's ``Variable``.

    ``get`` waits until the variable is set (up to ``timeout``); a Future set here keeps its
    value on the cluster until the variable is set again or deleted.
    """

    _kind = "variable"

    def __init__(self, name: str | None = None, client: Client | None = None) -> None:
        super().__init__(name, client)

    def set(self, value: Any, timeout: Any = None) -> Any:
        """Set the value (any picklable object: futures in it are held)."""
        return self._call(self._set(value), "await variable.set(value)")

    async def _set(self, value: Any) -> None:
        await self._ask("set", value=value)

    def get(self, timeout: Any = None) -> Any:
        """The value, once set; TimeoutError if it is not set within ``timeout`` seconds."""
        return self._call(self._get(timeout), "await variable.get()")

    async def _get(self, timeout: Any) -> Any:
        client = self.client

        def let_go(answer: dict[str, Any]) -> None:
            # The value reached us after we stopped waiting: drop the futures it gave us.
            if answer.get("ok") and not answer.get("timed_out"):
                client._coordinate_release(answer.get("keys") or [])

        answer = await self._ask("get", timeout=timeout, on_abandon=let_go)
        if answer.get("timed_out"):
            raise ZmqdaskTimeoutError(f"Variable {self.name!r} was not set within {timeout} s")
        return self._value(answer.get("value"), answer.get("keys"))

    def delete(self) -> Any:
        """Unset the variable; the futures it held are released once nothing else holds them."""
        return self._call(self._ask("delete"), "await variable.delete()")


class Queue(_Named):
    """A named first-in first-out queue shared by clients and tasks, as Dask's ``Queue``.

    Unbounded: ``maxsize`` other than 0 is refused.  ``get`` waits for an item (up to
    ``timeout``); ``get(batch=True)`` takes every item waiting now, ``get(batch=n)`` waits
    for ``n`` items and takes them.
    """

    _kind = "queue"

    def __init__(self, name: str | None = None, client: Client | None = None, maxsize: int = 0) -> None:
        if maxsize:
            raise UsageError("bounded queues are not supported: create the Queue with maxsize=0")
        super().__init__(name, client)

    def put(self, value: Any, timeout: Any = None) -> Any:
        """Append ``value`` (any picklable object: futures in it are held while it waits)."""
        return self._call(self._ask("put", value=value), "await queue.put(value)")

    def get(self, timeout: Any = None, batch: bool | int = False) -> Any:
        """The oldest item (or a list of items with ``batch``); waits up to ``timeout``
        seconds for it, then raises TimeoutError."""
        if batch is not False and batch is not True and (not isinstance(batch, int) or batch < 1):
            raise UsageError(f"batch must be False, True or a positive number of items, got {batch!r}")
        return self._call(self._get(timeout, batch), "await queue.get()")

    async def _get(self, timeout: Any, batch: bool | int) -> Any:
        count = 1 if batch is False else batch
        client = self.client

        def give_back(answer: dict[str, Any]) -> None:
            # The items reached us after we stopped waiting: back to the queue, then let go of
            # the futures the broker handed us with them.
            if not answer.get("ok") or answer.get("timed_out"):
                return
            values: list[Any] = answer["values"] if "values" in answer else [answer.get("value")]
            keys: list[list[str]] = answer["keys"] if "values" in answer else [answer.get("keys") or []]
            for value, held in zip(values, keys, strict=True):
                client._coordinate_forget(self._kind, "put", self._broker_name, {"keys": held}, value)
            client._coordinate_release([key for held in keys for key in held])

        answer = await self._ask("get", {"batch": count}, timeout=timeout, on_abandon=give_back)
        if answer.get("timed_out"):
            raise ZmqdaskTimeoutError(f"Queue {self.name!r} had no item within {timeout} s")
        if "values" in answer:
            return [self._value(value, keys) for value, keys in zip(answer["values"], answer["keys"], strict=True)]
        return self._value(answer.get("value"), answer.get("keys"))

    def qsize(self) -> Any:
        """How many items wait in the queue."""
        return self._call(self._qsize(), "await queue.qsize()")

    async def _qsize(self) -> int:
        return int((await self._ask("qsize"))["size"])


class Event(_Named):
    """A named flag clients and tasks can set, clear and wait for, as Dask's ``Event``."""

    _kind = "event"

    def __init__(self, name: str | None = None, client: Client | None = None) -> None:
        super().__init__(name, client)

    def set(self) -> Any:
        """Set the flag: every wait ends, and later waits return at once."""
        return self._call(self._ask("set"), "await event.set()")

    def clear(self) -> Any:
        """Clear the flag."""
        return self._call(self._ask("clear"), "await event.clear()")

    def is_set(self) -> Any:
        """Whether the flag is set."""
        return self._call(self._flag("is_set", None), "await event.is_set()")

    def wait(self, timeout: Any = None) -> Any:
        """Wait until the flag is set: True; False if ``timeout`` seconds pass first."""
        return self._call(self._flag("wait", timeout), "await event.wait()")

    async def _flag(self, op: str, timeout: Any) -> bool:
        # A wait given up is dropped by the broker (nothing to undo if its answer came).
        on_abandon = _nothing_to_undo if op == "wait" else None
        return bool((await self._ask(op, timeout=timeout, on_abandon=on_abandon)).get("set"))


class Semaphore(_Named):
    """At most ``max_leases`` holders at once, across clients and tasks, as Dask's
    ``Semaphore``.

    A lease is held until released, or until its client leaves.  Semaphores of one name
    must agree on ``max_leases``.
    """

    _kind = "semaphore"

    def __init__(self, max_leases: int = 1, name: str | None = None, client: Client | None = None, **_: Any) -> None:
        if not isinstance(max_leases, int) or isinstance(max_leases, bool) or max_leases < 1:
            raise UsageError(f"max_leases must be a positive int, got {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        self._leases: list[str] = []

    @property
    def _broker_name(self) -> str:
        return f"semaphore/{self.name}"

    def _rebuild_args(self) -> dict[str, Any]:
        return {"name": self.name, "max_leases": self.max_leases}

    def acquire(self, timeout: Any = None) -> Any:
        """Take a lease, waiting up to ``timeout`` seconds (None: until one is free): True if
        taken, False if the time ran out."""
        return self._call(self._acquire(timeout), "await semaphore.acquire()")

    async def _acquire(self, timeout: Any) -> bool:
        lease = uuid.uuid4().hex
        client = self.client

        def give_back(answer: dict[str, Any]) -> None:
            if answer.get("acquired"):
                client._coordinate_forget(self._kind, "release", self._broker_name, {"lease": lease}, None)

        args = {"lease": lease, "max_leases": self.max_leases}
        answer = await self._ask("acquire", args, timeout=timeout, on_abandon=give_back)
        if answer.get("acquired"):
            self._leases.append(lease)
            return True
        return False

    def release(self) -> Any:
        """Give back a lease this object took (ValueError if it holds none)."""
        if not self._leases:
            raise ValueError(f"{type(self).__name__} {self.name!r} is not acquired")
        lease = self._leases.pop()
        return self._call(self._ask("release", {"lease": lease}), f"await {type(self).__name__.lower()}.release()")

    def get_value(self) -> Any:
        """How many leases are held now, by anyone."""
        return self._call(self._held(), "await semaphore.get_value()")

    async def _held(self) -> int:
        return int((await self._ask("get_value"))["value"])

    def __enter__(self) -> Semaphore:
        self._blocking_only("with")
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    async def __aenter__(self) -> Semaphore:
        await self._acquire(None)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if not self._leases:
            raise ValueError(f"{type(self).__name__} {self.name!r} is not acquired")
        await self._ask("release", {"lease": self._leases.pop()})

    def _blocking_only(self, statement: str) -> None:
        client = self.client
        if client.asynchronous and not client._loop_runs_in_another_thread():
            raise UsageError(f"'{statement}' would block an asynchronous client's loop: use 'async {statement}'")


class Lock(Semaphore):
    """A named lock across clients and tasks, as Dask's ``Lock``: a semaphore of one lease."""

    _kind = "semaphore"

    def __init__(self, name: str | None = None, client: Client | None = None, **_: Any) -> None:
        super().__init__(1, name, client)

    @property
    def _broker_name(self) -> str:
        return f"lock/{self.name}"

    def _rebuild_args(self) -> dict[str, Any]:
        return {"name": self.name}

    def acquire(self, blocking: bool = True, timeout: Any = None) -> Any:  # type: ignore[override]
        """Take the lock: waits until it is free (up to ``timeout`` seconds), or not at all
        with ``blocking=False``; True if taken."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        return self._call(self._acquire(timeout), "await lock.acquire()")

    def locked(self) -> Any:
        """Whether anyone holds the lock."""
        return self._call(self._locked(), "await lock.locked()")

    async def _locked(self) -> bool:
        return await self._held() > 0
