"""Task execution inside a worker process: task records, the function cache, executor threads.

The worker's main thread handles the broker's messages; the threads here run tasks::

    main thread ── Executor.submit(task) ──▶ SimpleQueue ──▶ executor thread i
                                                                  │ execute(task)
         ┌─ hand_over(): the executor thread itself collects ◀────┤ (when the worker's
         │  the results and sends DONE                            │  socket lock is free)
         └─ else wake(): the main thread collects them ◀──────────┘

Each executor thread also writes the key it is running into its *running slot*, a small
shared-memory buffer the pool manager reads after the process died (see :func:`write_slot`);
the last slot is the worker's main thread's, for the quick tasks it runs itself.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
import pickletools
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import CoroutineType
from typing import Any

from zmqdask import serialize
from zmqdask.batches import BatchCall, BatchResult, result_type_name, run_batch, without_unpicklable
from zmqdask.config import (
    INLINE_AFTER_QUICK_CALLS,
    INLINE_RESULT_MAX_BYTES,
    INLINE_TASK_MAX_S,
    MAX_KEY_LENGTH,
    SMALL_RESULT_MAX_BYTES,
)
from zmqdask.errors import ProtocolError, RemoteTaskFailure, SerializationError
from zmqdask.protocol import ERRED, FINISHED, FLAG_PUSH_RESULT

# --- running slots -------------------------------------------------------------------------
#
# One slot per executor thread, then one for the main thread: a little-endian u16 length,
# then the key's UTF-8 bytes.
# Length 0 means idle.  The protocol bounds a key to MAX_KEY_LENGTH characters, which is at
# most four bytes each in UTF-8.

_SLOT_HEADER = struct.Struct("<H")
SLOT_KEY_BYTES = 4 * MAX_KEY_LENGTH
"""Room for one key in a running slot, in bytes."""
SLOT_BYTES = _SLOT_HEADER.size + SLOT_KEY_BYTES
"""Size of one running slot, in bytes."""


def slots_nbytes(nthreads: int) -> int:
    """Size in bytes of the running-slots buffer of a worker with ``nthreads`` threads: one
    slot per executor thread, and the last for the main thread (which runs quick tasks)."""
    return (nthreads + 1) * SLOT_BYTES


def write_slot(slots: memoryview, index: int, key: bytes) -> None:
    """Record that executor thread ``index`` is running the task whose UTF-8 key is ``key``."""
    offset = index * SLOT_BYTES
    size = min(len(key), SLOT_KEY_BYTES)
    # The bytes go in before the length: a process killed between the two writes leaves a
    # slot that reads as idle, never a length that covers half-written bytes.
    slots[offset + _SLOT_HEADER.size : offset + _SLOT_HEADER.size + size] = key[:size]
    _SLOT_HEADER.pack_into(slots, offset, size)


def clear_slot(slots: memoryview, index: int) -> None:
    """Mark executor thread ``index`` as idle."""
    _SLOT_HEADER.pack_into(slots, index * SLOT_BYTES, 0)


def clear_slots(slots: memoryview) -> None:
    """Mark every thread of a running-slots buffer as idle."""
    for offset in range(0, len(slots) - SLOT_BYTES + 1, SLOT_BYTES):
        _SLOT_HEADER.pack_into(slots, offset, 0)


def read_slots(slots: memoryview) -> list[str]:
    """The keys recorded as running in a running-slots buffer; damaged slots are skipped."""
    keys: list[str] = []
    for offset in range(0, len(slots) - SLOT_BYTES + 1, SLOT_BYTES):
        (size,) = _SLOT_HEADER.unpack_from(slots, offset)
        if not 0 < size <= SLOT_KEY_BYTES:
            continue
        start = offset + _SLOT_HEADER.size
        try:
            key = bytes(slots[start : start + size]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(key) <= MAX_KEY_LENGTH:
            keys.append(key)
    return keys


def slots_view(buffer: Any) -> memoryview:
    """A writable byte view of a running-slots buffer (``multiprocessing.RawArray``, bytearray...)."""
    return memoryview(buffer).cast("B")


# --- functions -----------------------------------------------------------------------------


def describe_pickled_function(payload: Any) -> str:
    """Best-effort name of a pickled function, without loading it (for error messages)."""
    strings: list[str] = []
    try:
        for opcode, argument, _ in pickletools.genops(bytes(_buffer(payload))):
            if opcode.name == "GLOBAL":  # protocols 0-3 carry "module name" in one argument
                module, _, name = str(argument).partition(" ")
                return _global_name(module, name)
            if opcode.name == "STACK_GLOBAL":
                if len(strings) >= 2:
                    return _global_name(strings[-2], strings[-1])
                break
            if isinstance(argument, str):
                strings.append(argument)
    except Exception:  # a damaged pickle still gets a generic description
        pass
    return "a function sent by value"


def _global_name(module: str, name: str) -> str:
    # A function pickled by value starts with a call into cloudpickle's own helpers.
    if module.startswith("cloudpickle"):
        return "a function sent by value"
    return f"{module}.{name}"


def _buffer(frame: Any) -> Any:
    """The buffer behind a payload frame (``zmq.Frame`` or any bytes-like object)."""
    buffer = getattr(frame, "buffer", None)
    return buffer if buffer is not None else frame


class FunctionCache:
    """Callables by hash, each unpickled once; remembers why a function could not be loaded."""

    def __init__(self, worker_name: str = "") -> None:
        self._worker_name = worker_name
        self._functions: dict[bytes, Callable[..., Any]] = {}
        self._failures: dict[bytes, SerializationError] = {}

    def __len__(self) -> int:
        return len(self._functions)

    def __contains__(self, fn_hash: object) -> bool:
        return fn_hash in self._functions

    def add(self, fn_hash: bytes, payload: Any) -> None:
        """Unpickle a function sent by the broker unless it is already loaded."""
        if fn_hash in self._functions:
            return
        try:
            fn = pickle.loads(_buffer(payload))
        except BaseException as exc:  # unpickling runs arbitrary code: any failure is the function's
            self._failures[fn_hash] = self._failure(fn_hash, payload, f"{type(exc).__name__}: {exc}", exc)
            return
        if not callable(fn):
            self._failures[fn_hash] = self._failure(fn_hash, payload, f"a {type(fn).__name__} is not callable")
            return
        self._functions[fn_hash] = fn
        self._failures.pop(fn_hash, None)

    def forget(self, hashes: list[bytes]) -> list[Callable[..., Any]]:
        """Drop these functions (the broker will send them again if a task needs them);
        returns the callables dropped."""
        dropped = []
        for fn_hash in hashes:
            fn = self._functions.pop(fn_hash, None)
            if fn is not None:
                dropped.append(fn)
            self._failures.pop(fn_hash, None)
        return dropped

    def lookup(self, fn_hash: bytes) -> tuple[Callable[..., Any] | None, BaseException | None]:
        """``(function, None)``, or ``(None, error)`` explaining why there is no function."""
        fn = self._functions.get(fn_hash)
        if fn is not None:
            return fn, None
        failure = self._failures.get(fn_hash)
        if failure is not None:
            return None, failure
        return None, ProtocolError(f"function {fn_hash.hex()} was never sent to this worker")

    def _failure(
        self, fn_hash: bytes, payload: Any, problem: str, cause: BaseException | None = None
    ) -> SerializationError:
        name = describe_pickled_function(payload)
        where = f" on worker {self._worker_name}" if self._worker_name else ""
        error = SerializationError(f"cannot load function {name} (hash {fn_hash.hex()[:12]}){where}: {problem}", name)
        error.__cause__ = cause
        return error


# --- tasks ---------------------------------------------------------------------------------

STATE_WAITING = 0
"""Task state: waiting for inputs fetched from other workers."""
STATE_QUEUED = 1
"""Task state: handed to the executor threads, not started."""
STATE_RUNNING = 2
"""Task state: an executor thread claimed it."""
STATE_CANCELLED = 3
"""Task state: dropped before it started."""


class Task:
    """One task on its way through the worker; execution fills in the outcome fields."""

    __slots__ = (
        "code",
        "deps",
        "detail",
        "flags",
        "fn",
        "fn_error",
        "frames",
        "generation",
        "key",
        "missing",
        "out_frames",
        "pending",
        "seconds",
        "state",
        "value",
    )

    def __init__(
        self,
        key: str,
        fn: Callable[..., Any] | None,
        frames: list[Any],
        flags: int = 0,
        *,
        fn_error: BaseException | None = None,
        deps: dict[str, Any] | None = None,
        generation: int = 0,
    ) -> None:
        self.key = key
        self.fn = fn
        self.fn_error = fn_error
        self.frames = frames
        self.flags = flags
        self.deps = deps
        """Input values by key, for TaskRef substitution; None when the task has no inputs."""
        self.generation = generation
        self.state = STATE_WAITING
        self.pending: set[str] = set()
        """Inputs still being fetched."""
        self.missing: list[str] = []
        """Inputs that could not be fetched."""
        self.code = -1
        self.detail: Any = None
        self.out_frames: list[Any] = []
        self.value: Any = None
        self.seconds = 0.0
        """How long the function call took (0 if it was never called)."""

    def __repr__(self) -> str:
        return f"<Task {self.key!r} state={self.state} code={self.code}>"


_SCALAR_TYPES = frozenset({int, float, bool, str, bytes, complex, type(None)})


def measure(value: Any) -> list[Any]:
    """``[type_name, nbytes]`` of a value, as a FINISHED entry's detail."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        # What serialize.sizeof and serialize.type_name give for these, without the lookups.
        return [kind.__name__, sys.getsizeof(value)]
    try:
        nbytes = serialize.sizeof(value)
    except Exception:  # a broken nbytes property must not fail a finished task
        nbytes = sys.getsizeof(value, 0)
    return [serialize.type_name(value), int(nbytes)]


def error_detail(exc: BaseException, key: str) -> tuple[list[Any], list[Any]]:
    """``(detail, frames)`` of an ERRED entry for ``exc``, even if the exception misbehaves."""
    try:
        return serialize.dumps_error(exc, key)
    except Exception:
        # str() or pickling of a hostile exception raised; describe it without calling it.
        stand_in = RemoteTaskFailure(type(exc).__name__, "the exception could not be converted to text")
        return serialize.dumps_error(stand_in, key)


class InlineLimit:
    """The largest result sent with its completion notice (set from the broker's limit)."""

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        self.nbytes = INLINE_RESULT_MAX_BYTES

    def follow(self, max_message_bytes: int) -> None:
        """Keep pushed results well inside the broker's message limit."""
        self.nbytes = min(INLINE_RESULT_MAX_BYTES, max_message_bytes // 8)


inline_limit = InlineLimit()
"""One per worker process: every executor thread reads it, the main thread sets it."""


def execute(task: Task) -> Task:
    """Run one task and fill in its outcome; never raises.

    On success ``code`` is FINISHED, ``value`` holds the result, ``detail`` is
    ``[type_name, nbytes]`` and ``out_frames`` the serialized value when the task asked for
    it to be pushed and it is small enough, or when it is a small scalar.  Otherwise ``code`` is ERRED with the error's
    detail and frame.
    """
    key = task.key
    fn = task.fn
    if fn is None:
        error = task.fn_error or ProtocolError(f"task {key!r} has no function")
        return _erred(task, error)
    try:
        if task.frames:
            args, kwargs = serialize.loads(task.frames)
        else:
            args, kwargs = (), {}
    except BaseException as exc:
        error = SerializationError(f"cannot load the arguments of task {key!r}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return _erred(task, error)
    task.frames = []
    try:
        deps = task.deps
        if deps is not None:
            args = serialize.substitute_refs(args, deps)
            kwargs = serialize.substitute_refs(kwargs, deps)
            task.deps = None
        started = time.perf_counter()
        try:
            if len(args) == 1 and type(args[0]) is BatchCall:
                value = run_batch(fn, args[0], kwargs)  # a map batch: each call in turn
            else:
                value = fn(*args, **kwargs)
                if type(value) is CoroutineType:  # an async def function: run it to its end
                    value = asyncio.run(value)
        finally:
            task.seconds = time.perf_counter() - started
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from a task are task errors too
        return _erred(task, exc)
    detail = measure(value)
    scalar = type(value) in _SCALAR_TYPES
    batch = type(value) is BatchResult
    if batch:
        detail[0] = result_type_name(value)
    if (
        (task.flags & FLAG_PUSH_RESULT and detail[1] <= inline_limit.nbytes)
        or (scalar and detail[1] <= SMALL_RESULT_MAX_BYTES)
        # A map batch travels inline as its calls would have: small scalars, and errors.
        or (batch and (value.small or value.failed) and detail[1] <= inline_limit.nbytes)
    ):
        # Values whose in-memory size already exceeds the inline limit are not pickled here
        # just to be thrown away: the client fetches them with GATHER.
        if scalar:
            # Nothing out of band and nothing pickle cannot do: the bytes serialize.dumps makes.
            frames: list[Any] = [pickle.dumps(value, protocol=serialize.PICKLE_PROTOCOL)]
            nbytes = len(frames[0])
        else:
            try:
                try:
                    frames = serialize.dumps(value)
                except Exception:
                    if not batch:
                        raise
                    # Only the calls whose values cannot travel fail, not their batch.
                    value = without_unpicklable(value)
                    detail = measure(value)
                    detail[0] = result_type_name(value)
                    frames = serialize.dumps(value)
            except Exception as exc:
                error = SerializationError(
                    f"the result of task {key!r} (a {detail[0]}) cannot be serialized: {exc}", detail[0]
                )
                return _erred(task, error)
            nbytes = serialize.frames_nbytes(frames)
        if nbytes <= inline_limit.nbytes:
            task.out_frames = frames
    task.value = value
    task.detail = detail
    task.code = FINISHED
    return task


def _erred(task: Task, exc: BaseException) -> Task:
    task.detail, task.out_frames = error_detail(exc, task.key)
    task.code = ERRED
    task.frames = []
    task.deps = None
    return task


# --- executor threads ----------------------------------------------------------------------

HANDOVER_INTERVAL_S = 0.002
"""A thread running a long series of queued tasks hands its results over at least this often."""


class QuickFunctions:
    """Which functions have proven quick enough to run on a worker's main thread.

    Every finished call is recorded; a function qualifies after
    :data:`~zmqdask.config.INLINE_AFTER_QUICK_CALLS` calls shorter than
    :data:`~zmqdask.config.INLINE_TASK_MAX_S`, and one longer call disqualifies it for good.
    """

    __slots__ = ("_calls",)

    MAX_FUNCTIONS = 10_000
    """More distinct functions than this and the record starts over (bounded memory)."""

    def __init__(self) -> None:
        self._calls: dict[Any, int] = {}
        """Function -> quick calls so far (capped), or -1 once a call was slow."""

    def record(self, fn: Any, seconds: float) -> None:
        """Note one finished call of ``fn`` that took ``seconds``."""
        calls = self._calls
        try:
            count = calls.get(fn, 0)
        except TypeError:  # an unhashable callable: never qualifies
            return
        if count < 0:
            return
        if seconds >= INLINE_TASK_MAX_S:
            calls[fn] = -1
        elif count < INLINE_AFTER_QUICK_CALLS:
            if not count and len(calls) >= self.MAX_FUNCTIONS:
                calls.clear()
            calls[fn] = count + 1

    def forget(self, fn: Any) -> None:
        """Drop what is known of ``fn`` (its worker let go of it)."""
        try:
            self._calls.pop(fn, None)
        except TypeError:
            pass

    def is_quick(self, fn: Any) -> bool:
        """Whether ``fn`` may run on the main thread."""
        try:
            return self._calls.get(fn, 0) >= INLINE_AFTER_QUICK_CALLS
        except TypeError:
            return False


class Executor:
    """``nthreads`` threads running submitted tasks; finished tasks are collected with :meth:`drain`.

    Only the main thread calls :meth:`submit`, :meth:`cancel` and :meth:`stop`; :meth:`drain`
    may be called by whoever hands results over (see below), one caller at a time.

    A thread that finished a task hands the results over when it is about to wait for more
    work, or at least every :data:`HANDOVER_INTERVAL_S` while it works through a queue of
    tiny tasks.  Handing over first calls ``hand_over`` (if given) in the executor thread:
    it may collect and send the results itself and return True.  Otherwise, or when it
    returns False, ``wake`` is called (at most once until the next :meth:`drain`) so that
    the main thread collects them.  Neither waits for a timer.
    """

    def __init__(
        self,
        nthreads: int,
        wake: Callable[[], None],
        running_slots: memoryview | None = None,
        name: str = "zmqdask-executor",
        hand_over: Callable[[], bool] | None = None,
    ) -> None:
        self._wake = wake
        self._hand_over = hand_over
        self._slots = running_slots
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._results: collections.deque[Task] = collections.deque()
        # State changes of a task (claim by a thread, cancellation by the main thread) happen
        # under this lock so a task is either run or reported cancelled, never both.
        self._lock = threading.Lock()
        self._wake_pending = False
        self._name = name
        # Which executor thread this is, for secede(); unset in any other thread.
        self._local = threading.local()
        self._threads = [
            threading.Thread(target=self._work, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(nthreads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def nthreads(self) -> int:
        """Number of executor threads."""
        return len(self._threads)

    @property
    def has_results(self) -> bool:
        """Whether finished tasks wait to be drained."""
        return bool(self._results)

    def add_finished(self, task: Task) -> None:
        """Add a task the caller ran itself to the finished ones (collected by :meth:`drain`)."""
        self._results.append(task)

    def submit(self, task: Task) -> None:
        """Queue a task for the next free thread."""
        task.state = STATE_QUEUED
        self._tasks.put(task)

    def cancel(self, task: Task) -> bool:
        """Drop a task that has not started; False if a thread already claimed it."""
        with self._lock:
            if task.state == STATE_WAITING or task.state == STATE_QUEUED:
                task.state = STATE_CANCELLED
                return True
            return False

    def drain(self) -> list[Task]:
        """Take every finished task (in completion order)."""
        # Clearing the flag before taking results means a result appended after this point
        # sends a fresh wake-up; one appended before it is taken here.
        self._wake_pending = False
        results = self._results
        finished: list[Task] = []
        while results:
            finished.append(results.popleft())
        return finished

    def stop(self, timeout: float) -> bool:
        """Ask the threads to exit after their current task; True if all did within ``timeout``."""
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def secede(self) -> str | None:
        """Called by a task that is about to wait for other tasks: its thread leaves the pool.

        A new thread takes its place at once, so the tasks it waits for (which the broker
        may well send here) find a thread to run on; the seceded thread ends once its task
        has.  Returns the task's key, or None when the caller is not an executor thread or
        has seceded already.
        """
        local = self._local
        if getattr(local, "seceded", True):
            return None
        local.seceded = True
        # The replacement has no running slot (index -1): the slots are the pool's, sized
        # for the threads the worker was started with.
        thread = threading.Thread(target=self._work, args=(-1,), name=f"{self._name}-replacement", daemon=True)
        thread.start()
        return str(local.key)

    def _work(self, index: int) -> None:
        tasks, results, lock = self._tasks, self._results, self._lock
        slots = self._slots if index >= 0 else None
        get, empty, monotonic = tasks.get, tasks.empty, time.monotonic
        local = self._local
        local.seceded = False
        handed_over = monotonic()
        while True:
            task = get()
            if task is None:
                return
            with lock:
                if task.state != STATE_QUEUED:
                    continue
                task.state = STATE_RUNNING
            if slots is not None:
                write_slot(slots, index, task.key.encode("utf-8"))
            local.key = task.key
            execute(task)
            if slots is not None:
                clear_slot(slots, index)
            results.append(task)
            # Results go out when this thread would wait for work anyway, and regularly
            # while it works through a long queue, so the broker can refill it meanwhile.
            if local.seceded or empty() or monotonic() - handed_over >= HANDOVER_INTERVAL_S:
                handed_over = monotonic()
                self._deliver()
            if local.seceded:
                return  # its replacement serves the queue from now on

    def _deliver(self) -> None:
        hand_over = self._hand_over
        if hand_over is not None and hand_over():
            return
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()
