"""Map batches: many quick calls of one function travel and run as one task each.

A task costs the same bookkeeping in the client, the broker and the worker however little
it computes, so ``client.map`` of many calls with plain arguments (numbers, strings, None...)
groups them: each *batch task* carries a :class:`BatchCall` of up to a few hundred argument
tuples, and its worker runs them one after the other (:func:`run_batch`) and returns a
:class:`BatchResult` with one value, or one :class:`ElementError`, per call.

Every call keeps its own Future, key and status in the client (``session.py`` gives each
its share of the batch's result as it arrives); the broker and the workers only ever see
the batch.  A call's Future used as an input of another task becomes a task of its own
there, :func:`pick_element` of the batch's result, so dependencies, errors and lineage work
as for any task.

How many calls go in one batch is learned per function (see ``Client.map``): a function
not seen before gets small batches, then batches of about :data:`BATCH_TARGET_SECONDS` of
work; a function slower than that is not batched at all.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from zmqdask.config import SMALL_RESULT_MAX_BYTES
from zmqdask.errors import SerializationError
from zmqdask.serialize import dumps, dumps_error, loads_error, sizeof, type_name

BATCH_MIN_CALLS = 32
"""``map`` batches only when it makes at least this many calls."""

BATCH_MIN_BATCHES = 16
"""A map makes at least this many batches, so that every worker thread gets several."""

BATCH_MAX_CALLS = 256
"""The most calls in one batch."""

BATCH_PROBE_CALLS = 4
"""Calls per batch for a function whose run time is not known yet."""

BATCH_TARGET_SECONDS = 0.005
"""The work one batch aims at, from the function's measured time per call."""

BATCH_MAX_BYTES = 1024 * 1024
"""The arguments, and the results measured so far, of one batch stay under this size, so
that no batch grows into a message much larger than its calls' own would be."""


class BatchCall:
    """The single argument of a batch task: the argument tuples of its calls."""

    __slots__ = ("calls", "retries")

    def __init__(self, calls: list[tuple[Any, ...]], retries: int) -> None:
        self.calls = calls
        self.retries = retries

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchCall, (self.calls, self.retries))


class ElementError:
    """A call's exception inside a :class:`BatchResult`, serialized as a task error is."""

    __slots__ = ("detail", "frame")

    def __init__(self, detail: list[Any], frame: Any) -> None:
        self.detail = detail
        self.frame = frame

    def __reduce__(self) -> tuple[Any, ...]:
        return (ElementError, (self.detail, self.frame))

    def load(self) -> tuple[BaseException, str | None]:
        """The exception and its remote traceback text."""
        return loads_error(self.detail, [self.frame])


class BatchResult:
    """What a batch task returns: each call's value (or :class:`ElementError`), in order,
    the seconds the calls took together, the approximate bytes the values hold, and whether
    they are all small scalars (which travel with the completion notice, as a task's do)."""

    __slots__ = ("failed", "nbytes", "seconds", "small", "values")

    def __init__(self, values: list[Any], seconds: float, nbytes: int, small: bool, failed: int) -> None:
        self.values = values
        self.seconds = seconds
        self.nbytes = nbytes
        """Read by the worker's accounting, and by the client to size later batches."""
        self.small = small
        self.failed = failed
        """How many calls failed: a batch with failures travels with its completion notice
        (a task's error does), or its notice says so (see :func:`result_type_name`)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchResult, (self.values, self.seconds, self.nbytes, self.small, self.failed))

    def __repr__(self) -> str:
        return f"<BatchResult of {len(self.values)} calls>"


_SCALARS = frozenset({int, float, bool, type(None), str, bytes, complex})


def _sizes(values: list[Any]) -> tuple[int, bool]:
    """Bytes the values hold, and whether each is a scalar of at most SMALL_RESULT_MAX_BYTES."""
    getsizeof = sys.getsizeof
    total = 0
    small = True
    for value in values:
        if type(value) in _SCALARS:
            size = getsizeof(value)
            small = small and size <= SMALL_RESULT_MAX_BYTES
        else:
            size = sizeof(value)
            small = False
        total += size
    return total, small


def run_batch(fn: Callable[..., Any], batch: BatchCall, kwargs: dict[str, Any]) -> BatchResult:
    """Run each call of ``batch`` (on a worker); a failing call is tried ``retries`` more
    times, then its error takes its place, and the other calls go on."""
    values: list[Any] = []
    failed = 0
    started = time.perf_counter()
    retries = batch.retries
    for args in batch.calls:
        attempt = 0
        while True:
            try:
                value = fn(*args, **kwargs)
                if type(value) is types.CoroutineType:  # inline ``call``: this loop is hot
                    value = asyncio.run(value)
                break
            except BaseException as exc:  # as for a task: SystemExit in a call is its error
                if attempt < retries:
                    attempt += 1
                    continue
                # The traceback starts in the call, as a task's starts in its function.
                if exc.__traceback__ is not None:
                    exc.__traceback__ = exc.__traceback__.tb_next
                detail, frames = dumps_error(exc, "")
                value = ElementError(detail, frames[0] if frames else None)
                failed += 1
                break
        values.append(value)
    nbytes, small = _sizes(values)
    return BatchResult(values, time.perf_counter() - started, nbytes, small, failed)


def without_unpicklable(result: BatchResult) -> BatchResult:
    """``result`` with each value that cannot be serialized replaced by that call's error
    (a worker does this when the whole result would not serialize: only those calls fail)."""
    values = list(result.values)
    failed = result.failed
    for index, value in enumerate(values):
        if type(value) in _SCALARS or type(value) is ElementError:
            continue
        try:
            dumps(value)
        except Exception as exc:
            kind = type_name(value)
            error = SerializationError(f"the result of this call (a {kind}) cannot be serialized: {exc}", kind)
            detail, frames = dumps_error(error, "")
            values[index] = ElementError(detail, frames[0] if frames else None)
            failed += 1
    nbytes, small = _sizes(values)
    return BatchResult(values, result.seconds, nbytes, small, failed)


BATCH_TYPE_NAME = "BatchResult"
"""The start of the type name in the completion notice of a batch."""


def result_type_name(result: BatchResult) -> str:
    """The type name a batch's completion notice carries: it tells the client, even when
    the result stays on the worker, whether some calls failed, and else the type of the
    calls' values when they all have one (``BatchResult[ndarray]``; ``BatchResult[]``)."""
    if result.failed:
        return f"{BATCH_TYPE_NAME} ({result.failed} calls failed)"
    names = {type(value).__name__ for value in result.values}
    return f"{BATCH_TYPE_NAME}[{names.pop() if len(names) == 1 else ''}]"


def succeeded_type(type_name: str | None) -> tuple[bool, str | None]:
    """From a batch's completion notice: whether all its calls succeeded, and the type of
    their values if they share one."""
    if type_name is None or not type_name.startswith(f"{BATCH_TYPE_NAME}[") or not type_name.endswith("]"):
        return False, None
    return True, type_name[len(BATCH_TYPE_NAME) + 1 : -1] or None


Rerun = tuple[bytes, tuple[Any, ...], dict[str, Any]]
"""A call to make again: its pickled function, arguments and keywords."""


def pick_element(result: BatchResult, index: int, rerun: Rerun | None = None) -> Any:
    """Call ``index``'s value from a batch's result (a task standing for that call): its
    value, or its exception raised again.  ``rerun`` (the pickled function, the call's
    arguments and keywords) makes a failed call run again here instead, as ``retry`` asks."""
    value = result.values[index]
    if type(value) is ElementError:
        if rerun is not None:
            fn_payload, args, kwargs = rerun
            return pickle.loads(fn_payload)(*args, **kwargs)
        exc, text = value.load()
        if text and hasattr(exc, "add_note"):
            exc.add_note(f"Raised by the call in a map batch:\n{text.rstrip()}")
        raise exc
    return value


def batch_size(
    seconds_per_call: float | None, calls: int, requested: int | None, bytes_per_call: float = 0.0
) -> int:
    """Calls per batch for a map of ``calls`` calls (1: no batching).

    ``seconds_per_call`` is the function's measured run time (None: not known yet) and
    ``bytes_per_call`` the larger of its arguments' and its results' size per call.
    """
    if requested is not None:
        return max(1, min(requested, calls))
    if calls < BATCH_MIN_CALLS:
        return 1
    if seconds_per_call is None:
        size = BATCH_PROBE_CALLS
    else:
        size = int(BATCH_TARGET_SECONDS / max(seconds_per_call, 1e-7))
    if bytes_per_call > 0:
        size = min(size, int(BATCH_MAX_BYTES / bytes_per_call))
    return max(1, min(size, BATCH_MAX_CALLS, calls // BATCH_MIN_BATCHES))
