"""Task graphs: the format collections lower to, plus ordering and in-process execution.

A graph maps a key to a :data:`TaskSpec` ``(function, args, kwargs)``.  Inside ``args`` and
``kwargs`` (nested in lists, tuples, dicts and sets) a :class:`~zmqdask.serialize.TaskRef`
names another key of the same graph, and a :class:`~zmqdask.future.Future` names a value that
already lives on the cluster.  ``Client.submit_graph`` sends a whole graph as one batch;
:func:`execute_local` runs one in this process when no client exists.

Collections (such as ``zmqdask.dataframe.DataFrame``) take part through three methods::

    __zmqdask_graph__()          -> (graph, output_keys)   optimized, ready to submit
    __zmqdask_finalize__()       -> callable(list_of_output_values) -> result (picklable)
    __zmqdask_persisted__(futs)  -> an equivalent collection backed by these futures
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from zmqdask.serialize import TaskRef, substitute_refs

TaskSpec = tuple[Callable[..., Any], tuple[Any, ...] | list[Any], Mapping[str, Any]]
"""One task: ``(function, args, kwargs)``."""

Graph = Mapping[str, TaskSpec]
"""Key -> task."""


@runtime_checkable
class Collection(Protocol):
    """A lazy collection that can be computed or persisted by a client."""

    def __zmqdask_graph__(self) -> tuple[dict[str, TaskSpec], list[str]]:
        """The optimized graph and the keys of its outputs, in order."""

    def __zmqdask_finalize__(self) -> Callable[[list[Any]], Any]:
        """A picklable function combining the output values into the final result."""

    def __zmqdask_persisted__(self, futures: list[Any]) -> Any:
        """The same collection, backed by futures for its outputs (in order)."""


def is_collection(obj: Any) -> bool:
    """Whether ``obj`` implements the collection protocol."""
    return hasattr(type(obj), "__zmqdask_graph__")


def references(obj: Any, found: set[str], is_future: Callable[[Any], bool] | None = None) -> set[str]:
    """Collect the keys of TaskRefs (and futures, if ``is_future`` is given) inside ``obj``."""
    kind = type(obj)
    if kind is TaskRef:
        found.add(obj.key)
    elif kind is tuple or kind is list or kind is set or kind is frozenset:
        for item in obj:
            references(item, found, is_future)
    elif kind is dict:
        for item in obj.values():
            references(item, found, is_future)
    elif is_future is not None and is_future(obj):
        found.add(obj.key)
    return found


def dependencies(spec: TaskSpec, is_future: Callable[[Any], bool] | None = None) -> set[str]:
    """Keys a task needs: TaskRefs in its arguments (and futures, if ``is_future`` is given)."""
    found: set[str] = set()
    references(spec[1], found, is_future)
    references(spec[2], found, is_future)
    return found


def topological_order(graph: Graph) -> list[str]:
    """Keys of ``graph`` ordered so that every key comes after the graph keys it needs.

    Raises ``ValueError`` on a cycle.  References to keys outside the graph are ignored.
    """
    deps = {key: dependencies(spec) & graph.keys() for key, spec in graph.items()}
    dependents: dict[str, list[str]] = {key: [] for key in graph}
    for key, needed in deps.items():
        for dep in needed:
            dependents[dep].append(key)
    remaining = {key: len(needed) for key, needed in deps.items()}
    ready = [key for key, count in remaining.items() if count == 0]
    order: list[str] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for dependent in dependents[key]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0:
                ready.append(dependent)
    if len(order) != len(graph):
        stuck = sorted(key for key, count in remaining.items() if count > 0)[:5]
        raise ValueError(f"task graph has a cycle through {stuck}")
    return order


def execute_local(graph: Graph, outputs: Sequence[str], values: Mapping[str, Any] | None = None) -> list[Any]:
    """Run ``graph`` in this process, in dependency order; returns the outputs' values.

    ``values`` supplies keys that are referenced but not computed here.  Intermediate values
    are dropped as soon as nothing left needs them, so memory stays near the working set.
    """
    store: dict[str, Any] = dict(values or {})
    order = topological_order(graph)
    remaining_uses: dict[str, int] = {}
    needs = {key: dependencies(graph[key]) for key in order}
    for needed in needs.values():
        for dep in needed:
            remaining_uses[dep] = remaining_uses.get(dep, 0) + 1
    keep = set(outputs)
    for key in order:
        fn, args, kwargs = graph[key]
        if needs[key]:
            args = substitute_refs(args, store)
            kwargs = substitute_refs(dict(kwargs), store)
        store[key] = fn(*args, **kwargs)
        for dep in needs[key]:
            remaining_uses[dep] -= 1
            if remaining_uses[dep] == 0 and dep not in keep and dep in graph:
                del store[dep]
    return [store[key] for key in outputs]


def cull(graph: Graph, outputs: Iterable[str]) -> dict[str, TaskSpec]:
    """The part of ``graph`` that the given outputs depend on."""
    keep: dict[str, TaskSpec] = {}
    stack = list(outputs)
    while stack:
        key = stack.pop()
        if key in keep or key not in graph:
            continue
        keep[key] = graph[key]
        stack.extend(dependencies(graph[key]))
    return keep
