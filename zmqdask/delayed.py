"""``delayed``: lazy calls of ordinary Python functions, computed by a client or locally.

As in Dask, ``delayed(fn)(*args)`` records a call instead of making it; the result is a
:class:`Delayed` that further calls, operators, indexing and attribute access build on, and
``compute()`` (or ``client.compute``, ``zmqdask.compute``, ``persist``) runs the whole graph
at once.  Delayed values, zmqdask collections and futures may appear anywhere in the
arguments, nested in lists, tuples, sets and dicts.

A :class:`Delayed` keeps its own task and its parents, not a copy of the graph behind it:
building a chain of n calls costs O(n), and the graph is assembled once, when computed.
"""

from __future__ import annotations

import hashlib
import operator
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from zmqdask.errors import SerializationError, UsageError
from zmqdask.graph import TaskSpec, is_collection
from zmqdask.serialize import TaskRef, dumps


class Delayed:
    """A value not computed yet: the result of a delayed call, or of an operation on one."""

    __slots__ = ("__weakref__", "_extra", "_key", "_length", "_parents", "_task")

    def __init__(
        self,
        key: str,
        task: TaskSpec | None,
        parents: tuple[Delayed, ...] = (),
        extra: dict[str, TaskSpec] | None = None,
        length: int | None = None,
    ) -> None:
        self._key = key
        self._task = task
        self._parents = parents
        self._extra = extra
        self._length = length

    @property
    def key(self) -> str:
        """The key of this value's task."""
        return self._key

    @property
    def dask(self) -> dict[str, TaskSpec]:
        """The task graph behind this value (introspection)."""
        return graph_of([self])

    def __dask_graph__(self) -> dict[str, TaskSpec]:
        """The task graph behind this value (introspection, as on DataFrames)."""
        return graph_of([self])

    def __dask_keys__(self) -> list[str]:
        """The key of this value, as a one-element list."""
        return [self._key]

    def __repr__(self) -> str:
        return f"Delayed({self._key!r})"

    def __hash__(self) -> int:
        return hash(self._key)

    # -- the collection protocol ---------------------------------------------------------

    def __zmqdask_graph__(self) -> tuple[dict[str, TaskSpec], list[str]]:
        return graph_of([self]), [self._key]

    def __zmqdask_finalize__(self) -> Callable[[list[Any]], Any]:
        return _single

    def __zmqdask_persisted__(self, futures: list[Any]) -> Delayed:
        (future,) = futures
        return Delayed(f"persisted-{self._key}", (_identity, (future,), {}))

    def compute(self, scheduler: Any = None, retries: int = 0, **options: Any) -> Any:
        """The value (blocking): computed by the current client (each task tried ``retries``
        more times if it fails), or in this process."""
        from zmqdask.base import compute

        (result,) = compute(
            self, scheduler=scheduler, retries=retries, alternative="await client.compute(delayed_value)"
        )
        return result

    def __await__(self) -> Any:
        """``await client.persist(value)``: the delayed value, once it is computed."""
        from zmqdask.base import settled

        return settled(self)

    def persist(self, scheduler: Any = None, retries: int = 0, **options: Any) -> Delayed:
        """The same value, computed on the cluster and kept there (returns at once)."""
        from zmqdask.base import persist

        (result,) = persist(self, scheduler=scheduler, retries=retries)
        return result

    def _persist_locally(self) -> Delayed:
        from zmqdask.graph import execute_local

        graph, keys = self.__zmqdask_graph__()
        (value,) = execute_local(graph, keys)
        return Delayed(f"persisted-{self._key}", (_identity, (value,), {}))

    def visualize(self, *args: Any, **kwargs: Any) -> Any:
        """Dask's ``visualize``: not available here; raises :class:`UsageError` saying what is."""
        from zmqdask.base import visualize

        return visualize(self, *args, **kwargs)

    # -- building on a delayed value -----------------------------------------------------

    def __getattr__(self, name: str) -> Delayed:
        if name.startswith("_"):
            raise AttributeError(name)  # keep pickle, copy and hasattr working
        return _call(getattr, (self, name), {}, name="getattr", pure=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Delayed:
        return _call(_apply, (self, args, kwargs), {}, name="call", pure=False)

    def __getitem__(self, index: Any) -> Delayed:
        return _call(operator.getitem, (self, index), {}, name="getitem", pure=True)

    def __iter__(self) -> Iterator[Delayed]:
        if self._length is None:
            raise TypeError("a Delayed of unknown length cannot be iterated; give nout= to delayed()")
        return iter([self[i] for i in range(self._length)])

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("a Delayed of unknown length has no len(); give nout= to delayed()")
        return self._length

    def __bool__(self) -> bool:
        raise TypeError("the truth of a Delayed is not known until it is computed; call .compute() first")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Delayed.__slots__:
            object.__setattr__(self, name, value)
            return
        raise TypeError("a Delayed is immutable; build a new one with delayed(setattr)(obj, name, value)")


def _single(parts: list[Any]) -> Any:
    return parts[0]


def _identity(value: Any) -> Any:
    return value


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def _bind_operator(op: Callable[..., Any]) -> Callable[..., Delayed]:
    name = op.__name__.strip("_")

    def method(self: Delayed, *others: Any) -> Delayed:
        return _call(op, (self, *others), {}, name=name, pure=True)

    return method


def _bind_reflected(op: Callable[..., Any]) -> Callable[..., Delayed]:
    name = op.__name__.strip("_")

    def method(self: Delayed, other: Any) -> Delayed:
        return _call(op, (other, self), {}, name=name, pure=True)

    return method


_BINARY: tuple[Callable[..., Any], ...] = (
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.matmul,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.lshift,
    operator.rshift,
)
_COMPARISONS: tuple[Callable[..., Any], ...] = (
    operator.lt,
    operator.le,
    operator.eq,
    operator.ne,
    operator.gt,
    operator.ge,
)
_UNARY: tuple[Callable[..., Any], ...] = (operator.neg, operator.pos, operator.abs, operator.invert)
for _op in _BINARY:
    setattr(Delayed, f"__{_op.__name__.strip('_')}__", _bind_operator(_op))
    setattr(Delayed, f"__r{_op.__name__.strip('_')}__", _bind_reflected(_op))
for _op in _COMPARISONS + _UNARY:
    setattr(Delayed, f"__{_op.__name__.strip('_')}__", _bind_operator(_op))


class DelayedFunction:
    """``delayed(fn)``: calling it records the call and returns a :class:`Delayed`."""

    __slots__ = ("_fn", "_name", "_nout", "_pure")

    def __init__(self, fn: Callable[..., Any], pure: bool, nout: int | None, name: str | None) -> None:
        self._fn = fn
        self._pure = pure
        self._nout = nout
        self._name = name

    def __call__(
        self, *args: Any, dask_key_name: str | None = None, pure: bool | None = None, **kwargs: Any
    ) -> Delayed:
        return _call(
            self._fn,
            args,
            kwargs,
            name=self._name or _funcname(self._fn),
            pure=self._pure if pure is None else pure,
            key=dask_key_name,
            nout=self._nout,
        )

    def __repr__(self) -> str:
        return f"delayed({_funcname(self._fn)})"


def delayed(
    obj: Any = None, *, pure: bool = False, nout: int | None = None, name: str | None = None, traverse: bool = True
) -> Any:
    """Wrap a function (or value) so that calling it builds a task instead of running it.

    ``delayed(fn)(*args, **kwargs)`` and the ``@delayed`` / ``@delayed(pure=True)``
    decorator forms return a :class:`Delayed`; ``delayed(value)`` wraps a value, with any
    delayed values inside it computed first.  ``pure=True`` gives equal calls one key;
    ``nout`` makes the result iterable (``a, b = delayed(divmod, nout=2)(7, 2)``).
    """
    if obj is None:
        return lambda fn: delayed(fn, pure=pure, nout=nout, name=name, traverse=traverse)
    if isinstance(obj, (Delayed, DelayedFunction)):
        return obj
    if callable(obj) and not is_collection(obj):
        if nout is not None and (not isinstance(nout, int) or nout < 0):
            raise UsageError(f"nout must be a non-negative int, got {nout!r}")
        return DelayedFunction(obj, pure, nout, name)
    # As in Dask, the name of a wrapped value is its key.
    wrapped = obj if traverse else _Opaque(obj)
    return _call(_identity, (wrapped,), {}, name=type(obj).__name__, pure=True, key=name)


class _Opaque:
    """A value ``delayed(..., traverse=False)`` does not look into."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name: str,
    pure: bool,
    key: str | None = None,
    nout: int | None = None,
) -> Delayed:
    parents: list[Delayed] = []
    extra: dict[str, TaskSpec] = {}
    packed_args = tuple(_pack(arg, parents, extra) for arg in args)
    packed_kwargs = {k: _pack(v, parents, extra) for k, v in kwargs.items()}
    if fn is _identity and packed_args and type(packed_args[0]) is _Opaque:
        packed_args = (packed_args[0].value,)
    if key is None:
        key = f"{name}-{_token(fn, packed_args, packed_kwargs) if pure else uuid.uuid4().hex}"
    elif not isinstance(key, str) or not key:
        raise UsageError(f"dask_key_name must be a non-empty string, got {key!r}")
    return Delayed(key, (fn, packed_args, packed_kwargs), tuple(parents), extra or None, nout)


def _pack(obj: Any, parents: list[Delayed], extra: dict[str, TaskSpec]) -> Any:
    """``obj`` with delayed values and collections inside replaced by references to their tasks."""
    kind = type(obj)
    if isinstance(obj, Delayed):
        parents.append(obj)
        return TaskRef(obj._key)
    if is_collection(obj):
        graph, outputs = obj.__zmqdask_graph__()
        extra.update(graph)
        key = f"finalize-{uuid.uuid4().hex}"
        extra[key] = (obj.__zmqdask_finalize__(), ([TaskRef(k) for k in outputs],), {})
        return TaskRef(key)
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return kind(_pack(item, parents, extra) for item in obj)
    if kind is dict:
        return {key: _pack(value, parents, extra) for key, value in obj.items()}
    return obj


def graph_of(roots: list[Delayed]) -> dict[str, TaskSpec]:
    """Every task the given delayed values need, each once."""
    graph: dict[str, TaskSpec] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if value._task is not None:
            graph[value._key] = value._task
        if value._extra:
            graph.update(value._extra)
        stack.extend(value._parents)
    return graph


def _token(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A deterministic token for a pure call; a random one when the call cannot be pickled."""
    try:
        frames = dumps((fn, args, sorted(kwargs.items())))
    except SerializationError:
        return uuid.uuid4().hex
    digest = hashlib.blake2b(digest_size=16)
    for frame in frames:
        digest.update(frame)
    return digest.hexdigest()


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else str(name)
