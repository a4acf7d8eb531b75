"""Futures: handles to remote results, plus ``as_completed`` and ``wait``.

Every key a client knows has one :class:`FutureState`, shared by all :class:`Future` objects
for that key.  States are mutated only on the client's event loop thread; other threads read
``status`` (a single attribute store, so reads are atomic) and block through the client's
event loop.  When the last ``Future`` of a key is garbage-collected the client tells the
broker, which releases the data on the workers.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import html
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from zmqdask.config import MAX_KEY_LENGTH, optional_seconds
from zmqdask.errors import FutureCancelledError, UsageError
from zmqdask.serialize import FIELDS_OUTSIDE_ARGS, rebuild_exception, traceback_from_text

if TYPE_CHECKING:
    from zmqdask.client import Client

PENDING = "pending"
FINISHED = "finished"
ERROR = "error"
CANCELLED = "cancelled"
LOST = "lost"
TERMINAL_FAILURES = frozenset({ERROR, CANCELLED, LOST})


class CancelClock:
    """Counts the cancellations queued by every client of this process.

    Each :class:`FutureState` notes the count when it is created (``born``), and each client
    notes it for every cancellation it queues: a state born at or after a cancellation was
    submitted after it, so the broker's answers to that cancellation are not about it (see
    ``BrokerSession._on_report``).  One count for the process keeps a state's note
    meaningful whichever client made it.
    """

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def tick(self) -> int:
        """Count one more cancellation; returns the new count."""
        # Clients in several threads tick: the increment must not lose one.
        with self._lock:
            self.value += 1
            return self.value


CANCEL_CLOCK = CancelClock()
"""The process's :class:`CancelClock`."""


class FutureState:
    """What the client knows about one key (internal; shared by its Futures)."""

    __slots__ = (
        "alive",
        "batch",
        "born",
        "callbacks",
        "data_requested",
        "deps",
        "entry",
        "exception",
        "fn_payload",
        "frames",
        "has_value",
        "index",
        "key",
        "members",
        "named",
        "owned",
        "refcount",
        "status",
        "traceback",
        "type_name",
        "unsent",
        "value",
        "waiters",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = PENDING
        self.born = CANCEL_CLOCK.value
        self.value: Any = None
        self.has_value = False
        self.exception: BaseException | None = None
        self.traceback: str | None = None
        self.type_name: str | None = None
        self.waiters: list[asyncio.Future[None]] | None = None
        self.callbacks: list[tuple[Future, Callable[[Future], Any]]] | None = None
        self.refcount = 0
        self.data_requested = False
        # The task spec (SUBMIT entry and payload frames) kept for re-submission after the
        # broker restarts; None for scattered data.  ``deps`` keeps the states of inputs
        # alive so their specs can be re-sent too (lineage).
        self.entry: list[Any] | None = None
        self.frames: list[Any] | None = None
        self.deps: list[FutureState] | None = None
        self.fn_payload: bytes | None = None
        # True while the SUBMIT entry sits in the client's unsent batch, so its flags can
        # still be changed in place (e.g. to ask for the result to be pushed).
        self.unsent = False
        # A call of a map batch (see zmqdask.batches): ``batch`` is the batch task's state
        # until the call is released or cancelled, ``index`` its place in the batch.  The
        # batch's state lists its calls in ``members``; ``alive`` counts those still attached.
        self.batch: FutureState | None = None
        self.index = 0
        self.members: list[FutureState] | None = None
        self.alive = 0
        # Futures of large arguments the task's call passed by value, sent to workers ahead
        # of it (see Client._place_argument): they live as long as this state does.
        self.owned: list[Future] | None = None
        # Made from its key alone (``Future(key)``, a dataset fetched): the task was submitted
        # elsewhere, and the broker tells this client its outcome when asked (WANT).
        self.named = False

    def done(self) -> bool:
        """Whether the key reached a final status."""
        return self.status != PENDING

    def notify(self) -> None:
        """Wake every coroutine waiting on this state (called on the loop thread)."""
        waiters = self.waiters
        if waiters:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def released_state(key: str) -> FutureState:
    """The state a Future holds once released: nothing the client tracks (its negative
    ``refcount`` marks it), failing with an error that says what happened."""
    state = FutureState(key)
    state.refcount = -1
    state.status = LOST
    state.exception = UsageError(
        f"{key} was released (Future.release()); keep another Future of it, or submit it again"
    )
    return state


def failure_of(state: FutureState) -> BaseException:
    """The exception to raise for a failed key: the task's own frames last (as in Dask).

    A copy is raised when the exception can be copied: raising adds the frames it passes
    through to its traceback, and those hold the caller's futures; on the object the state
    keeps, they would keep the futures (and their data) alive after the caller dropped them.
    """
    exc = state.exception
    assert exc is not None
    try:
        if type(exc).__reduce__ is BaseException.__reduce__ and not isinstance(exc, FIELDS_OUTSIDE_ARGS):
            # Without __init__, which may rework its arguments (or take others than args).
            raised = rebuild_exception(type(exc), exc.args, dict(getattr(exc, "__dict__", {})))
        else:
            raised = copy.copy(exc)
        if type(raised) is not type(exc):
            raise TypeError("not a copy")
        raised.__cause__ = exc.__cause__
        raised.__context__ = exc.__context__
        raised.__suppress_context__ = exc.__suppress_context__
    except Exception:
        raised = exc  # its class cannot be rebuilt from its arguments: raise the original
    return raised.with_traceback(traceback_from_text(state.traceback) if state.traceback else None)


class Future:
    """A remote computation's result, like ``dask.distributed.Future``.

    ``await future`` (asynchronous client) or ``future.result()`` (synchronous client)
    returns the value, or raises the task's original exception with its remote traceback.

    ``Future(key, client)`` makes a future of a key submitted by any client of the same
    broker (the current client when ``client`` is None): it keeps the value on the cluster
    while it lives, as the submitter's futures do.  A key the broker does not know yet (still
    on its way from another client: two clients' messages are not ordered) is waited for
    twice the broker's liveness timeout (10 s by default); a key that does not arrive by
    then (never submitted, released, a call of a batched map) ends up ``lost``, with an
    error that says so.
    """

    __slots__ = ("__weakref__", "_client", "_state", "key")

    def __init__(self, key: str, client: Client | None = None, state: FutureState | None = None) -> None:
        if client is None:
            from zmqdask.client import get_client

            client = get_client()  # raises ValueError, as Dask does, when there is no client
        if state is None:
            client._check_open()
            _check_future_key(key)
        self.key = key
        self._client = client
        self._state = state if state is not None else client._state_by_name(key)
        client._retain(self._state)

    @classmethod
    def _adopt(cls, key: str, client: Client, state: FutureState) -> Future:
        """A new Future for ``state``, for a caller that holds the client's lock already."""
        future = cls.__new__(cls)
        future.key = key
        future._client = client
        future._state = state
        state.refcount += 1
        return future

    @property
    def client(self) -> Client:
        """The client this future belongs to."""
        return self._client

    @property
    def status(self) -> str:
        """One of ``pending``, ``finished``, ``error``, ``cancelled``, ``lost``."""
        return self._state.status

    def done(self) -> bool:
        """Whether the computation finished, failed or was cancelled."""
        return self._state.status != PENDING

    def cancelled(self) -> bool:
        """Whether the future was cancelled."""
        return self._state.status == CANCELLED

    @property
    def type(self) -> str | None:
        """Type name of the result, once finished."""
        return self._state.type_name

    def result(self, timeout: Any = None) -> Any:
        """Wait for and return the value; raises the task's exception if it failed.

        On an asynchronous client this returns an awaitable, as in Dask:
        ``await future.result()`` (or simply ``await future``); called from another thread
        than the client's event loop (a done callback's), it blocks and returns the value.
        ``timeout`` is in seconds, or a duration such as "30s".
        """
        if timeout is not None:
            timeout = optional_seconds(timeout)
        state = self._state
        if self._client.asynchronous:
            what = f"result of {self.key}"
            if self._client._loop_runs_in_another_thread():
                return self._client._wait_from_another_thread(self._client._wait_value(state), timeout, what)
            # The awaitable holds this Future: in ``await client.submit(...).result()`` nothing
            # else does, and a dropped Future releases its task.
            return self._client._awaitable_within(self._result_async(), timeout, what)
        if state.has_value:
            return state.value
        if state.status in TERMINAL_FAILURES and state.exception is not None:
            raise failure_of(state)
        return self._client._blocking(
            self._client._wait_value(state), timeout, "await future", what=f"result of {self.key}"
        )

    def exception(self, timeout: Any = None) -> Any:
        """Wait for completion and return the exception, or None if it succeeded.

        On an asynchronous client this returns an awaitable: ``await future.exception()``
        (from another thread than the client's event loop, it blocks and returns it).
        """
        timeout = optional_seconds(timeout)
        if self._client.asynchronous:
            what = f"completion of {self.key}"
            if self._client._loop_runs_in_another_thread():
                return self._client._wait_from_another_thread(self._exception_async(), timeout, what)
            return self._client._awaitable_within(self._exception_async(), timeout, what)
        if not self.done():
            self._client._blocking(self._client._wait_done(self._state), timeout, "await wait([future])")
        return self._state.exception

    def traceback(self, timeout: Any = None) -> Any:
        """The traceback of a failed task, as an object the ``traceback`` module can print.

        Its entries name the frames where the task ran on its worker (file, line, function);
        None if the task succeeded.  The exception carries the same traceback as text too.
        On an asynchronous client this returns an awaitable: ``await future.traceback()``.
        """
        timeout = optional_seconds(timeout)
        if self._client.asynchronous:
            return self._client._awaitable_within(self._traceback_async(), timeout, f"completion of {self.key}")
        self.exception(timeout)
        return traceback_from_text(self._state.traceback)

    async def _result_async(self) -> Any:
        return await self._client._wait_value(self._state)

    async def _exception_async(self) -> BaseException | None:
        await self._client._wait_done(self._state)
        return self._state.exception

    async def _traceback_async(self) -> types.TracebackType | None:
        await self._client._wait_done(self._state)
        return traceback_from_text(self._state.traceback)

    def cancel(self) -> Any:
        """Cancel the computation (returns an awaitable on an asynchronous client)."""
        return self._client.cancel([self])

    def retry(self) -> Any:
        """Run this future's task again if it erred (returns an awaitable on an asynchronous client)."""
        return self._client.retry([self])

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once the future is done (at once if it already is).

        As in Dask, callbacks run in a thread of the client's, one at a time in the order
        the futures finish: one may block, on ``other.result()`` for instance.
        """
        self._client._add_user_callback(self, fn)

    def release(self) -> None:
        """Drop this handle now instead of waiting for garbage collection; the Future is
        then of no more use (its status is ``lost``, its result an error saying so)."""
        state = self._state
        if state is not None and state.refcount >= 0:
            self._state = released_state(self.key)
            self._client._release(state)

    def __await__(self) -> Any:
        return self._await_value().__await__()

    async def _await_value(self) -> Any:
        # The coroutine frame holds ``self``: in ``await client.submit(...)`` nothing else
        # references the Future, and collecting it would release the key mid-flight.
        client = self._client
        loop = client._loop
        if not client.asynchronous and loop is not None and not loop.is_closed():
            if asyncio.get_running_loop() is not loop:
                # A synchronous client's future awaited on another event loop (asyncio.run in
                # a script): wait on the client's own loop, which settles the future, and hand
                # the outcome over thread-safely.
                waiting = asyncio.run_coroutine_threadsafe(client._wait_value(self._state), loop)
                return await asyncio.wrap_future(waiting)
        return await client._wait_value(self._state)

    def __del__(self) -> None:
        try:
            state = self._state
        except AttributeError:  # __init__ failed before the state was set
            return
        if state is not None and state.refcount >= 0:
            try:
                self._client._release(state)
            except Exception:  # the interpreter may be shutting down
                pass

    def __reduce__(self) -> Any:
        raise UsageError(
            f"a Future ({self.key}) cannot be pickled; pass it directly as an argument to "
            "submit/map so the worker receives its value"
        )

    def __repr__(self) -> str:
        state = self._state
        if state.status == FINISHED and state.type_name:
            return f"<Future: finished, type: {state.type_name}, key: {self.key}>"
        if state.status == ERROR and state.exception is not None:
            return f"<Future: error, type: {type(state.exception).__name__}, key: {self.key}>"
        return f"<Future: {state.status}, key: {self.key}>"

    def _repr_html_(self) -> str:
        state = self._state
        colour = {FINISHED: "green", ERROR: "red", PENDING: "gray"}.get(state.status, "orange")
        extra = f", <b>type:</b> {html.escape(state.type_name)}" if state.type_name else ""
        return (
            f"<b>Future: {html.escape(self.key)}</b> "
            f'<b>status:</b> <span style="color: {colour}">{state.status}</span>{extra}'
        )


def _check_future_key(key: Any) -> None:
    if type(key) is not str or not 0 < len(key.encode()) <= MAX_KEY_LENGTH:
        raise UsageError(
            f"a Future's key must be a non-empty string of at most {MAX_KEY_LENGTH} bytes, got {key!r:.80}"
        )


def _futures_in(obj: Any, found: list[Future]) -> list[Future]:
    """Futures inside ``obj``: a Future, a persisted collection, or containers of those
    (each once, in the order first found)."""
    _collect(obj, found)
    return list(dict.fromkeys(found))


def _collect(obj: Any, found: list[Future]) -> None:
    from zmqdask.graph import is_collection

    if isinstance(obj, Future):
        found.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _collect(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, found)
    elif is_collection(obj):
        # A persisted collection's graph refers to the futures that back it.
        graph, _ = obj.__zmqdask_graph__()
        for _fn, args, kwargs in graph.values():
            _collect(args, found)
            _collect(kwargs, found)


def _client_of(futures: Iterable[Future]) -> Client | None:
    for future in futures:
        return future._client
    return None


class DoneAndNotDoneFutures(NamedTuple):
    """Result of :func:`wait`."""

    done: set[Future]
    not_done: set[Future]


FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


def wait(futures: Any, timeout: Any = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until futures are done, like ``concurrent.futures.wait``.

    ``futures`` may be a Future, a persisted collection, or lists/dicts of them.  Returns
    ``(done, not_done)``; on an asynchronous client returns an awaitable of it.  ``timeout``
    is in seconds, or a duration such as "30s".
    """
    timeout = optional_seconds(timeout)
    futures = _futures_in(futures, [])
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise UsageError(
            f"return_when must be one of ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION; got {return_when!r}"
        )
    client = _client_of(futures)
    if client is None:
        empty = DoneAndNotDoneFutures(set(), set())
        if _in_running_loop():
            return _completed(empty)
        return empty
    return client._run_or_await(client._wait_many(futures, timeout, return_when), "await wait(futures)")


async def _completed(value: Any) -> Any:
    return value


def fire_and_forget(obj: Any) -> None:
    """Let the tasks behind these futures run to the end even once no Future refers to them.

    ``obj`` is a future or any nesting of lists, tuples, sets and dicts of them.  Normally
    dropping the last Future of a pending task cancels it; here the client keeps each one
    until it finishes (or fails), and the broker runs it to the end even after the client
    has closed.
    """
    kind = type(obj)
    if isinstance(obj, Future):
        obj._client._keep(obj)
        obj._client._add_done_callback(obj, _forget)
    elif kind is list or kind is tuple or kind is set or kind is frozenset:
        for item in obj:
            fire_and_forget(item)
    elif kind is dict:
        for item in obj.values():
            fire_and_forget(item)


def _forget(_future: Future) -> None:
    """The done callback of :func:`fire_and_forget`: holding the future was its whole job."""


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class as_completed:
    """Iterate over futures in the order they finish, with ``for`` or ``async for``.

    ``with_results=True`` yields ``(future, result)`` pairs; with ``raise_errors=False`` too,
    a failed future comes as ``(future, (type, exception, traceback))``, as in Dask, and a
    cancelled one always as ``(future, CancelledError)``.  ``add(future)`` extends the set
    while iterating; ``count()`` is how many are not yet yielded; ``batches()`` yields lists of
    all the futures finished since the last one.  With ``timeout`` (seconds from creation), a
    wait past it raises ``zmqdask.TimeoutError``.
    """

    def __init__(
        self,
        futures: Iterable[Future] = (),
        with_results: bool = False,
        raise_errors: bool = True,
        *,
        timeout: Any = None,
    ) -> None:
        timeout = optional_seconds(timeout)
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._ready: collections.deque[Future] = collections.deque()
        # Future -> times added and not yet done: a future added twice is yielded twice.
        self._pending: dict[Future, int] = {}
        self._async_event: asyncio.Event | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        for future in futures:
            self.add(future)

    def add(self, future: Future) -> None:
        """Add a future to wait for."""
        if not isinstance(future, Future):
            raise UsageError(f"as_completed takes Futures, got {type(future).__name__}")
        with self._lock:
            self._client = self._client or future._client
            self._pending[future] = self._pending.get(future, 0) + 1
        # On the client's loop thread, not the thread of user callbacks: a callback that
        # blocks (or iterates an as_completed itself) must not hold this one up.
        future._client._add_done_callback(future, self._on_done)

    def update(self, futures: Iterable[Future]) -> None:
        """Add several futures."""
        for future in futures:
            self.add(future)

    def count(self) -> int:
        """Number of futures not yet yielded."""
        with self._lock:
            return sum(self._pending.values()) + len(self._ready)

    def is_empty(self) -> bool:
        """Whether every future has been yielded."""
        return self.count() == 0

    def has_ready(self) -> bool:
        """Whether a finished future waits to be yielded."""
        with self._lock:
            return bool(self._ready)

    def next_batch(self, block: bool = True) -> list[Any]:
        """The futures (or ``(future, result)`` pairs) finished so far, at least one if
        ``block`` (an empty list once every future was yielded)."""
        if block:
            try:
                first = [next(self)]
            except StopIteration:
                return []
        else:
            first = []
        batch = first
        while (future := self._pop()) is not None:
            batch.append(self._emit_sync(future))
        return batch

    def clear(self) -> None:
        """Stop waiting for the futures not yielded yet."""
        with self._lock:
            self._pending.clear()
            self._ready.clear()
            self._condition.notify_all()

    def _on_done(self, future: Future) -> None:
        # Runs on the client's event loop thread (or at once from add() if already done).
        with self._lock:
            times = self._pending.get(future)
            if not times:
                return
            if times == 1:
                del self._pending[future]
            else:
                self._pending[future] = times - 1
            self._ready.append(future)
            self._condition.notify_all()
        event, loop = self._async_event, self._async_loop
        if event is not None and loop is not None and not loop.is_closed():
            # The loop iterating this may be another than the future's client's.
            loop.call_soon_threadsafe(event.set)

    def _pop(self) -> Future | None:
        with self._lock:
            if self._ready:
                return self._ready.popleft()
            return None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            future = self._pop()
            if future is not None:
                return self._emit_sync(future)
            with self._lock:
                if not self._pending and not self._ready:
                    raise StopIteration
                if not self._ready:
                    if self._client is not None and self._client.asynchronous and _in_running_loop():
                        from zmqdask.errors import SyncInAsyncError

                        raise SyncInAsyncError("use `async for future in as_completed(...)` on an asynchronous client")
                    self._check_deadline()
                    # Wake up periodically so Ctrl-C stays responsive.
                    self._condition.wait(timeout=0.1)

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of the futures (or ``(future, result)`` pairs) finished since the last list."""
        while True:
            try:
                first = next(self)
            except StopIteration:
                return
            batch = [first]
            while (future := self._pop()) is not None:
                batch.append(self._emit_sync(future))
            yield batch

    def _check_deadline(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError

            raise ZmqdaskTimeoutError(
                f"as_completed: {sum(self._pending.values())} futures had not finished within {self._timeout} s"
            )

    def _emit_sync(self, future: Future) -> Any:
        if not self.with_results:
            return future
        state = future._state
        if future._client.asynchronous and not state.has_value and state.status not in TERMINAL_FAILURES:
            from zmqdask.errors import SyncInAsyncError

            raise SyncInAsyncError("use `async for future, value in as_completed(...)` on an asynchronous client")
        try:
            if future._client.asynchronous:
                if state.has_value:
                    return future, state.value
                assert state.exception is not None
                raise failure_of(state)
            return future, future.result()
        except FutureCancelledError as exc:
            return future, exc  # as Dask: a cancelled future comes with its error, not raised
        except Exception as exc:
            if self.raise_errors:
                raise
            return future, (type(exc), exc, exc.__traceback__)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._async_event is None:
            self._async_loop = asyncio.get_running_loop()
            self._async_event = asyncio.Event()
        while True:
            future = self._pop()
            if future is not None:
                if not self.with_results:
                    return future
                try:
                    return future, await future
                except FutureCancelledError as exc:
                    return future, exc
                except Exception as exc:
                    if self.raise_errors:
                        raise
                    return future, (type(exc), exc, exc.__traceback__)
            with self._lock:
                if not self._pending and not self._ready:
                    raise StopAsyncIteration
                self._async_event.clear()
                if self._ready:
                    continue
            if self._deadline is None:
                await self._async_event.wait()
                continue
            self._check_deadline()
            try:
                await asyncio.wait_for(self._async_event.wait(), max(0.0, self._deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self._check_deadline()
