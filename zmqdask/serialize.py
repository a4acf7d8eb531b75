"""Payload serialization shared by the client and the workers (the broker never uses it).

Values are pickled with protocol 5; buffers of at least ``ZERO_COPY_THRESHOLD_BYTES`` travel
out of band as frames of their own, so a large numpy array or pandas column is sent without
a copy in Python.  ``pickle`` is tried first for speed and ``cloudpickle`` handles what it
cannot (lambdas, closures, classes defined in ``__main__``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from zmqdask.config import ZERO_COPY_THRESHOLD_BYTES
from zmqdask.errors import RemoteTaskFailure, SerializationError

PICKLE_PROTOCOL = 5


class TaskRef:
    """Placeholder for a dependency's value inside pickled task arguments."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (self.key,))

    def __repr__(self) -> str:
        return f"TaskRef({self.key!r})"


def dumps(obj: Any) -> list[Any]:
    """Serialize ``obj`` to frames: the pickle first, then its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        # Returning False keeps a buffer out of band; small ones stay in the pickle.
        if buffer.raw().nbytes >= ZERO_COPY_THRESHOLD_BYTES:
            buffers.append(buffer)
            return False
        return True

    try:
        head = pickle.dumps(obj, protocol=PICKLE_PROTOCOL, buffer_callback=keep_large)
        # Functions and classes of __main__ (a script, a notebook) pickle by reference,
        # which a worker cannot resolve: its __main__ is not the client's.  Those, passed
        # as arguments (map_partitions(func), apply(func)), go by value like lambdas.
        if _refers_to_main(head):
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        buffers.clear()
        try:
            head = cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL, buffer_callback=keep_large)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {_describe(obj)}: {type(exc).__name__}: {exc}", _describe(obj)
            ) from exc
    if not buffers:
        return [head]
    return [head, *(buffer.raw() for buffer in buffers)]


def loads(frames: list[Any]) -> Any:
    """Inverse of :func:`dumps`; frames may be ``bytes``, ``memoryview`` or ``zmq.Frame``."""
    head = frames[0]
    if len(frames) == 1:
        return pickle.loads(_view(head))
    return pickle.loads(_view(head), buffers=[_view(f) for f in frames[1:]])


def _view(frame: Any) -> Any:
    buffer = getattr(frame, "buffer", None)
    return buffer if buffer is not None else frame


def frames_nbytes(frames: list[Any]) -> int:
    """Total size of serialized frames."""
    total = 0
    for frame in frames:
        total += memoryview(_view(frame)).nbytes
    return total


def _refers_to_main(pickled: bytes) -> bool:
    """Whether a pickle names something of ``__main__`` by reference (a worker's ``__main__``
    is not the client's script or notebook, so it could not load it)."""
    return b"__main__" in pickled or b"__mp_main__" in pickled


def dumps_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """Pickle a callable; returns ``(hash, pickled)`` where the hash identifies it."""
    fn_hash, payload, _ = pickle_function(fn)
    return fn_hash, payload


def pickle_function(fn: Callable[..., Any]) -> tuple[bytes, bytes, bool]:
    """Pickle a callable; returns ``(hash, pickled, by_value)``.

    ``by_value`` is False when the pickle only names an importable function or class: it
    stays valid as long as that exists.  Any other pickle (a function of ``__main__`` or a
    notebook, a lambda, a bound method, a partial, a callable object) holds the globals and
    state the callable reads, as they are now.
    """
    try:
        try:
            payload = pickle.dumps(fn, protocol=PICKLE_PROTOCOL)
            # A function pickled by reference must be importable by the worker; functions
            # defined in __main__ or a notebook are not, so those go by value.
            if getattr(fn, "__module__", None) in (None, "__main__", "__mp_main__"):
                raise pickle.PicklingError("defined in __main__")
            # Nor may anything it holds: a functools.partial (or a callable instance) of a
            # __main__ function pickles that function by reference too.
            if _refers_to_main(payload):
                raise pickle.PicklingError("refers to __main__")
            # Only a bare name stays valid: a bound method, a partial or a callable object
            # carries its state in the pickle, by value.
            by_value = not isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type))
        except Exception:
            payload = cloudpickle.dumps(fn, protocol=PICKLE_PROTOCOL)
            by_value = True
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize function {_describe(fn)}: {type(exc).__name__}: {exc}", _describe(fn)
        ) from exc
    return hashlib.blake2b(payload, digest_size=16).digest(), payload, by_value


FIELDS_OUTSIDE_ARGS = (SyntaxError, UnicodeError, OSError)
"""Built-in exceptions whose fields live outside ``args`` and ``__dict__``: copied by pickling."""


def dumps_error(exc: BaseException, origin_key: str) -> tuple[list[Any], list[Any]]:
    """Serialize a task's exception; returns ``(detail, frames)`` for an ERRED entry."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    frame = None
    # Rebuilt without calling __init__ first (its class, ``args`` and attributes): an
    # __init__ that reworks its arguments (``super().__init__(f"wrapped: {inner}")``) would
    # rework them again; then plainly, for a class with a __reduce__ of its own, which has
    # its say; only what cannot travel at all is replaced by a stand-in.
    forms: list[Any] = [exc]
    # Not for the built-in exceptions that keep their fields outside ``args`` and
    # ``__dict__`` (a SyntaxError's line, a UnicodeError's position): plain pickling does.
    if type(exc).__reduce__ is BaseException.__reduce__ and not isinstance(exc, FIELDS_OUTSIDE_ARGS):
        forms.insert(0, _RebuiltException(exc))
    for form in forms:
        try:
            candidate = cloudpickle.dumps((form, text), protocol=PICKLE_PROTOCOL)
            pickle.loads(candidate)  # an exception that pickles but cannot be rebuilt fails here
        except Exception:
            continue
        frame = candidate
        break
    if frame is None:
        stand_in = RemoteTaskFailure(type(exc).__name__, str(exc), text)
        frame = cloudpickle.dumps((stand_in, text), protocol=PICKLE_PROTOCOL)
    return [type(exc).__name__, _truncate(str(exc)), origin_key], [frame]


class _RebuiltException:
    """Pickles as its exception's class, ``args`` and attributes, rebuilt without ``__init__``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (rebuild_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def rebuild_exception(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An instance of ``cls`` with these ``args`` and attributes, made without calling its ``__init__``."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def loads_error(detail: list[Any], frames: list[Any]) -> tuple[BaseException, str]:
    """Rebuild ``(exception, remote_traceback)`` from an ERRED entry."""
    if frames:
        try:
            exc, text = pickle.loads(_view(frames[0]))
            if isinstance(exc, (SystemExit, KeyboardInterrupt)) and isinstance(text, str):
                # Raised here they would stop the client (its event loop lets them through)
                # rather than fail one future.
                failure = RemoteTaskFailure(
                    type(exc).__name__, f"the task raised {exc!r}, which stops a process; it failed instead", text
                )
                return failure, text
            if isinstance(exc, BaseException) and isinstance(text, str):
                return exc, text
        except Exception:
            pass
    type_name, message = detail[0], detail[1]
    return RemoteTaskFailure(type_name, message), ""


_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"]*)", line (?P<line>\d+), in (?P<name>.+)$')
_TRACEBACK_HEAD = "Traceback (most recent call last):\n"
_EXECUTOR_FILE = os.path.join("zmqdask", "executor.py")


class _RemoteFrames(Exception):
    """Raised at the bottom of the stand-in frames built by :func:`traceback_from_text`."""


def traceback_from_text(text: str | None) -> types.TracebackType | None:
    """A traceback object whose frames name the remote frames of a formatted traceback.

    ``text`` is what a worker's ``traceback.format_exception`` produced; the frames of the
    last exception in it (those of the task's own code: the worker's wrapper is left out)
    become real traceback entries with the remote file names, line numbers and function
    names, so the ``traceback`` module can print and walk them.  None if there are none.
    """
    if not text or _TRACEBACK_HEAD not in text:
        return None
    last = text.rsplit(_TRACEBACK_HEAD, 1)[1]
    frames = []
    for line in last.splitlines():
        match = _FRAME_LINE.match(line)
        if match is not None and not match["file"].endswith(_EXECUTOR_FILE):
            frames.append((match["file"], int(match["line"]), match["name"]))
    if not frames:
        return None

    def bottom() -> None:
        raise _RemoteFrames

    # Each stand-in runs at the remote line number, under the remote names, and calls the
    # next one; the innermost raises.  The traceback of that exception is the one wanted,
    # less this function's own entry at the top and the raising helper's at the bottom.
    call: Callable[[], None] = bottom
    for filename, lineno, name in reversed(frames):
        code = compile("\n" * (lineno - 1) + "__zmqdask_next__()", filename, "exec").replace(co_name=name)
        call = types.FunctionType(code, {"__zmqdask_next__": call})
    try:
        call()
    except _RemoteFrames as exc:
        head = exc.__traceback__
    else:  # pragma: no cover - the innermost call always raises
        return None
    assert head is not None
    first = head.tb_next
    entry = first
    while entry is not None and entry.tb_next is not None and entry.tb_next.tb_next is not None:
        entry = entry.tb_next
    if entry is not None:
        entry.tb_next = None
    return first


def _truncate(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return _truncate(text, 200)


def type_name(obj: Any) -> str:
    """The short type name shown in a finished Future's repr."""
    return type(obj).__name__


def substitute_refs(obj: Any, values: Any) -> Any:
    """Replace every :class:`TaskRef` inside lists, tuples, dicts and sets with ``values[key]``.

    Other objects are returned unchanged (not traversed), so a large array argument costs
    nothing here.
    """
    kind = type(obj)
    if kind is TaskRef:
        return values[obj.key]
    if kind is tuple or kind is list:
        return kind(substitute_refs(item, values) for item in obj)
    if kind is dict:
        return {k: substitute_refs(v, values) for k, v in obj.items()}
    if kind is set or kind is frozenset:
        return kind(substitute_refs(item, values) for item in obj)
    return obj


def sizeof(obj: Any) -> int:
    """Approximate in-memory size of a value, in bytes (cheap; never serializes)."""
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    manager = getattr(obj, "_mgr", None)
    if manager is not None and hasattr(obj, "index"):
        # A DataFrame: what memory_usage(deep=False).sum() says, a hundred times faster (it
        # builds a Series of per-column figures, about 0.5 ms: a tax on every small task).
        try:
            return int(sum(array.nbytes for array in manager.arrays) + obj.index.nbytes)
        except Exception:
            pass
    memory_usage = getattr(obj, "memory_usage", None)
    if memory_usage is not None and hasattr(obj, "index"):
        try:
            usage = memory_usage(deep=False)
            return int(usage.sum()) if hasattr(usage, "sum") else int(usage)
        except Exception:
            pass
    if isinstance(obj, (list, tuple)) and len(obj) < 1000:
        return sys.getsizeof(obj) + sum(sizeof(item) for item in obj)
    return sys.getsizeof(obj)
