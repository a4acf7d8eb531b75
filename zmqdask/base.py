"""Top-level ``compute`` and ``persist`` for lazy collections, with or without a client.

With a current client (see ``zmqdask.client.default_client``) work goes to the cluster;
without one, the optimized graph runs in this process with :func:`zmqdask.graph.execute_local`.
The two paths share the optimizer and the lowering, and differ only in the executor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from zmqdask.errors import UsageError
from zmqdask.graph import execute_local, is_collection, references

logger = logging.getLogger(__name__)


def get_client() -> Any:
    """The current client, or ``None`` when there is none (or no client module yet)."""
    try:
        from zmqdask.client import default_client
    except ImportError:
        return None
    return default_client()


def ensure_blocking_allowed(client: Any, alternative: str) -> None:
    """Refuse a blocking call inside a running event loop on an asynchronous client."""
    from zmqdask.client import check_blocking_allowed

    check_blocking_allowed(client, alternative)


def graphs_of(collections: list[Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """Each collection's ``(graph, output keys)``.  DataFrame collections computed together
    are optimized together, so the work they share keeps one key and is done once."""
    # By module name: importing the DataFrame layer (pandas) to ask isinstance would cost
    # every client that has none.
    frames = [i for i, c in enumerate(collections) if type(c).__module__.startswith("zmqdask.dataframe")]
    pairs: dict[int, tuple[dict[str, Any], list[str]]] = {}
    if len(frames) > 1:
        from zmqdask.dataframe.collection_base import graphs_together

        for index, (graph, keys) in zip(frames, graphs_together([collections[i] for i in frames]), strict=True):
            pairs[index] = (dict(graph), list(keys))
    return [pairs[i] if i in pairs else c.__zmqdask_graph__() for i, c in enumerate(collections)]


def compute_locally(*collections: Any) -> list[Any]:
    """Run the collections' graphs in this process, as one merged graph; returns results."""
    graph: dict[str, Any] = {}
    outputs: list[list[str]] = []
    for sub, keys in graphs_of(list(collections)):
        graph.update(sub)
        outputs.append(keys)
    _refuse_futures(graph)
    flat = [key for keys in outputs for key in keys]
    values = execute_local(graph, list(dict.fromkeys(flat)))
    by_key = dict(zip(dict.fromkeys(flat), values, strict=False))
    return [
        collection.__zmqdask_finalize__()([by_key[key] for key in keys])
        for collection, keys in zip(collections, outputs, strict=False)
    ]


LOCAL_SCHEDULERS = frozenset({"sync", "synchronous", "single-threaded", "threads", "threading", "processes"})
"""``scheduler=`` names that run the graph in this process, as with no client."""


def _uses_client(scheduler: Any) -> bool:
    """Whether ``scheduler=`` (Dask's keyword; unset: ``zmqdask.config.get("scheduler")``)
    sends work to the current client."""
    if scheduler is None:
        from zmqdask import config

        scheduler = config.get("scheduler")
    if scheduler is None or scheduler == "distributed":
        return True
    if scheduler in LOCAL_SCHEDULERS:
        return False
    if hasattr(scheduler, "compute") and hasattr(scheduler, "submit"):
        return True  # a Client passed as the scheduler, as Dask allows
    raise UsageError(
        f"unknown scheduler {scheduler!r}: use 'distributed' (the current client, the default) or "
        f"one of {sorted(LOCAL_SCHEDULERS)} to compute in this process"
    )


def _find_collections(obj: Any, found: list[Any]) -> None:
    """Append the lazy collections inside ``obj`` (nested lists, tuples, sets, dicts) to ``found``."""
    if is_collection(obj):
        found.append(obj)
    elif type(obj) in _TRAVERSED:
        for item in obj:
            _find_collections(item, found)
    elif type(obj) is dict:
        for item in obj.values():
            _find_collections(item, found)


def _substitute(obj: Any, results: Iterator[Any]) -> Any:
    """``obj`` with each collection replaced by the next of ``results`` (same order as found)."""
    if is_collection(obj):
        return next(results)
    if type(obj) in _TRAVERSED:
        return type(obj)(_substitute(item, results) for item in obj)
    if type(obj) is dict:
        return {key: _substitute(value, results) for key, value in obj.items()}
    return obj


_TRAVERSED = (list, tuple, set, frozenset)


def _refuse_futures(graph: dict[str, Any]) -> None:
    """Refuse to run locally a graph over values that live on a cluster (persisted parts)."""
    from zmqdask.future import Future

    for spec in graph.values():
        found: set[str] = set()
        for part in (spec[1], spec[2]):
            references(part, found, lambda obj: isinstance(obj, Future))
        futures = [key for key in found if key not in graph]
        if futures:
            raise UsageError(
                f"this computation needs data persisted on a cluster ({futures[0]!r}), and no client "
                "connected to that cluster is running: its data went with its client.  Create a "
                "client and persist or compute the collection again from its source"
            )


def compute(
    *args: Any,
    traverse: bool = True,
    scheduler: Any = None,
    optimize_graph: bool = True,
    retries: int = 0,
    alternative: str = "await client.compute(collection)",
) -> tuple[Any, ...]:
    """Compute the lazy collections among ``args`` at once; returns a tuple like ``args``.

    As in Dask, collections inside lists, tuples, sets and dicts are computed too (unless
    ``traverse=False``), and anything else is returned unchanged.  ``scheduler='sync'`` (or
    'threads', 'processes') computes in this process even when a client exists.
    ``optimize_graph`` is accepted for compatibility: graphs are always optimized.  On a
    client every task is tried ``retries`` more times if it fails.  ``alternative`` names
    the awaitable form for the error raised when this would block an event loop.
    """
    lazy: list[Any] = []
    for arg in args:
        if traverse:
            _find_collections(arg, lazy)
        elif is_collection(arg):
            lazy.append(arg)
    client = get_client() if lazy and _uses_client(scheduler) else None
    if client is not None:
        ensure_blocking_allowed(client, alternative)
        # Submit everything before waiting, so the cluster works on all of it at once.
        futures = client.compute(lazy, retries=retries)
        results = iter([f.result() for f in futures])
    else:
        results = iter(compute_locally(*lazy))
    if not traverse:
        return tuple(next(results) if is_collection(arg) else arg for arg in args)
    return tuple(_substitute(arg, results) for arg in args)


def persist(
    *args: Any, traverse: bool = True, scheduler: Any = None, optimize_graph: bool = True, retries: int = 0
) -> tuple[Any, ...]:
    """Persist the lazy collections among ``args``; returns a tuple like ``args``.

    With a client this returns at once (the results are futures, computing on the
    cluster), also inside a running event loop.  Without one (or with ``scheduler='sync'``)
    it computes in this process.  Collections inside lists, tuples, sets and dicts are
    persisted too, unless ``traverse=False``.
    """
    client = get_client() if _uses_client(scheduler) else None

    def persist_one(collection: Any) -> Any:
        if not is_collection(collection):
            return collection
        if client is not None:
            return client.persist(collection, retries=retries)
        return collection._persist_locally()

    if not traverse:
        return tuple(persist_one(arg) for arg in args)
    found: list[Any] = []
    for arg in args:
        _find_collections(arg, found)
    persisted = iter([persist_one(collection) for collection in found])
    return tuple(_substitute(arg, persisted) for arg in args)


def is_dask_collection(obj: Any) -> bool:
    """Whether ``obj`` is a lazy collection (DataFrame, Series, Delayed...), as Dask's
    ``is_dask_collection``; futures and plain values are not."""
    return is_collection(obj)


VISUALIZE_ADVICE = (
    "zmqdask does not draw task graphs; inspect `obj.dask` (the tasks, as a dict) or, for a "
    "DataFrame, print `df.explain()`"
)


def visualize(*args: Any, **kwargs: Any) -> Any:
    """Dask's ``visualize``: not available here; raises :class:`UsageError` saying what is."""
    raise UsageError(VISUALIZE_ADVICE)


def settled(value: Any) -> Any:
    """The awaitable of ``await value`` for a collection or delayed value: done once the
    futures a persisted one holds are (``await client.persist(df)``, as in Dask), then
    the value itself; at once for one that holds none."""

    async def wait_then_return() -> Any:
        from zmqdask.future import wait
        from zmqdask.progressbar import futures_of

        futures = futures_of(value)
        if futures:
            if futures[0]._client.asynchronous:
                await wait(futures)
            else:  # a synchronous client's wait blocks: not on this loop
                await asyncio.to_thread(wait, futures)
        return value

    return wait_then_return().__await__()
