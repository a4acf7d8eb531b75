"""Top-level ``compute`` and ``persist`` for lazy collections, with or without a client.

With a current client (see ``zmqdask.client.default_client``) work goes to the cluster;
without one, the optimized graph runs in this process with :func:`zmqdask.graph.execute_local`.
The two paths share the optimizer and the lowering, and differ only in the executor.
"""

from __future__ import annotations

import logging
from typing import Any

from zmqdask.graph import execute_local, is_collection

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


def compute_locally(*collections: Any) -> list[Any]:
    """Run the collections' graphs in this process, as one merged graph; returns results."""
    graph: dict[str, Any] = {}
    outputs: list[list[str]] = []
    for collection in collections:
        sub, keys = collection.__zmqdask_graph__()
        graph.update(sub)
        outputs.append(keys)
    flat = [key for keys in outputs for key in keys]
    values = execute_local(graph, list(dict.fromkeys(flat)))
    by_key = dict(zip(dict.fromkeys(flat), values, strict=False))
    return [
        collection.__zmqdask_finalize__()([by_key[key] for key in keys])
        for collection, keys in zip(collections, outputs, strict=False)
    ]


def compute(*collections: Any, alternative: str = "await client.compute(collection)") -> tuple[Any, ...]:
    """Compute several collections at once; non-collections are returned unchanged.

    ``alternative`` names the awaitable form for the error raised when this would block
    an event loop.
    """
    lazy = [c for c in collections if is_collection(c)]
    client = get_client() if lazy else None
    if client is not None:
        ensure_blocking_allowed(client, alternative)
        # Submit everything before waiting, so the cluster works on all of it at once.
        futures = [client.compute(c) for c in lazy]
        results = iter([f.result() for f in futures])
    else:
        results = iter(compute_locally(*lazy))
    return tuple(next(results) if is_collection(c) else c for c in collections)


def persist(*collections: Any) -> tuple[Any, ...]:
    """Persist several collections; returns equivalent collections backed by results.

    With a client this returns at once (the results are futures, computing on the
    cluster), also inside a running event loop.  Without one it computes in this process.
    """
    client = get_client()
    out: list[Any] = []
    for collection in collections:
        if not is_collection(collection):
            out.append(collection)
        elif client is not None:
            out.append(client.persist(collection))
        else:
            out.append(collection._persist_locally())
    return tuple(out)
