"""Graphs written by hand in Dask's format, for ``client.get(dsk, keys)``.

A Dask graph maps keys to tasks ``(callable, arg, ...)`` or to plain values.  Inside a
task, an argument equal to a key of the graph stands for that key's value, lists are
walked, and a tuple whose first item is callable is a task of its own.  :func:`convert`
turns such a graph into this project's task specs (see :mod:`zmqdask.graph`): keys become
strings, references become :class:`~zmqdask.serialize.TaskRef`, and each nested task gets
a key of its own, so the worker that runs a task receives ready values.  Every key gets the
same suffix, unique to the call: two graphs that both name a key ``"x"`` never share it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef


def key_name(key: Hashable, suffix: str) -> str:
    """The string key a Dask key (a string, or a tuple such as ``("x", 0)``) runs under."""
    return f"{key if isinstance(key, str) else repr(key)}-{suffix}"


def convert(dsk: Mapping[Hashable, Any], suffix: str) -> dict[str, TaskSpec]:
    """The task specs of a Dask graph (see the module docstring), keys ending in ``suffix``."""
    if not isinstance(dsk, Mapping):
        raise UsageError(f"a Dask graph is a dict of key -> task, got {type(dsk).__name__}")
    graph: dict[str, TaskSpec] = {}
    for key, value in dsk.items():
        name = key_name(key, suffix)
        if _is_task(value):
            graph[name] = _spec(name, value, dsk, graph, suffix)
        else:
            graph[name] = (_value, (_argument(name, value, dsk, graph, suffix, [0]),), {})
    return graph


def _is_task(value: Any) -> bool:
    return type(value) is tuple and bool(value) and callable(value[0])


def _spec(
    name: str, task: tuple[Any, ...], dsk: Mapping[Hashable, Any], graph: dict[str, TaskSpec], suffix: str
) -> TaskSpec:
    counter = [0]
    args = tuple(_argument(name, arg, dsk, graph, suffix, counter) for arg in task[1:])
    return (task[0], args, {})


def _argument(
    name: str, value: Any, dsk: Mapping[Hashable, Any], graph: dict[str, TaskSpec], suffix: str, counter: list[int]
) -> Any:
    if _is_task(value):
        # A nested task runs as a task of its own, under a key derived from its parent's.
        counter[0] += 1
        nested = f"{name}-arg-{counter[0]}"
        graph[nested] = _spec(nested, value, dsk, graph, suffix)
        return TaskRef(nested)
    if type(value) is list:
        return [_argument(name, item, dsk, graph, suffix, counter) for item in value]
    try:
        if value in dsk:
            return TaskRef(key_name(value, suffix))
    except TypeError:  # unhashable: a plain value
        pass
    return value


def _value(value: Any) -> Any:
    """A graph entry that is a value rather than a task."""
    return value
