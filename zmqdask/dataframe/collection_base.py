"""What every lazy collection shares (compute, persist, explain, graphs), and the Scalar collection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from zmqdask.dataframe import core_ops as ops
from zmqdask.dataframe import indexing as idx
from zmqdask.dataframe import planning as plan
from zmqdask.dataframe.expr import Expr, Partitions
from zmqdask.dataframe.lower import build_graph, finalizer
from zmqdask.dataframe.optimize import optimize, optimize_together
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec

logger = logging.getLogger(__name__)


def map_partitions(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """See :func:`zmqdask.dataframe.collection.map_partitions`."""
    from zmqdask.dataframe.collection import map_partitions as apply

    return apply(func, *args, **kwargs)


def _expr_of(value: Any) -> Any:
    """An operand for an expression: a collection's expression, or the value itself."""
    return value.expr if isinstance(value, Collection) else value


# ---------------------------------------------------------------------------------------
# Shared behaviour
# ---------------------------------------------------------------------------------------


class Collection:
    """Behaviour shared by every lazy collection: compute, persist, explain, graphs."""

    def __init__(self, expr: Expr) -> None:
        if not isinstance(expr, Expr):
            raise TypeError(f"a collection wraps an Expr, not {type(expr).__name__}")
        self._expr = expr

    @property
    def expr(self) -> Expr:
        """The expression this collection stands for."""
        return self._expr

    @property
    def _meta(self) -> Any:
        return self._expr._meta

    @property
    def _name(self) -> str:
        return self._expr._name

    @property
    def npartitions(self) -> int:
        """Number of partitions."""
        return self._expr.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        """Index boundaries of the partitions (``None`` values when unknown)."""
        return self._expr.divisions

    @property
    def known_divisions(self) -> bool:
        """Whether the divisions are known."""
        return self._expr.known_divisions

    # -- optimization and lowering ----------------------------------------------------

    @cached_property
    def _optimized(self) -> Expr:
        return optimize(self._expr)

    @cached_property
    def _graph(self) -> tuple[dict[str, TaskSpec], list[str]]:
        return build_graph(self._optimized)

    def optimize(self) -> Any:
        """The same collection with its expression optimized (not yet fused)."""
        return new_collection(optimize(self._expr, fuse=False))

    def visualize(self, *args: Any, **kwargs: Any) -> Any:
        """Dask's ``visualize``: not available here; raises UsageError pointing to ``explain``."""
        from zmqdask.base import visualize

        return visualize(self, *args, **kwargs)

    def explain(self, optimized: bool = True) -> None:
        """Print the plan as an indented tree: the optimized, fused plan by default."""
        print(self.plan(optimized))

    def plan(self, optimized: bool = True) -> str:
        """The text ``explain()`` prints."""
        return (self._optimized if optimized else self._expr).tree_repr()

    def __zmqdask_graph__(self) -> tuple[dict[str, TaskSpec], list[str]]:
        graph, keys = self._graph
        return dict(graph), list(keys)

    def __zmqdask_finalize__(self) -> Callable[[list[Any]], Any]:
        return finalizer(self._meta)

    def __zmqdask_persisted__(self, futures: list[Any]) -> Any:
        from zmqdask.dataframe.expr import partitioning_roots
        from zmqdask.dataframe.sources import make_futures_source

        origin = partitioning_roots(self._expr)
        return new_collection(make_futures_source(list(futures), self._meta, self.divisions, origin))

    def __dask_graph__(self) -> dict[str, TaskSpec]:
        """The optimized task graph (introspection; the protocol uses ``__zmqdask_graph__``)."""
        return dict(self._graph[0])

    def __dask_keys__(self) -> list[str]:
        """The output keys of the optimized graph, one per partition."""
        return list(self._graph[1])

    @property
    def dask(self) -> dict[str, TaskSpec]:
        """The optimized task graph, as a dict of tasks (introspection, as Dask's ``.dask``)."""
        return self.__dask_graph__()

    @property
    def ntasks(self) -> int:
        """Number of tasks of the optimized graph."""
        return len(self._graph[0])

    # -- execution --------------------------------------------------------------------

    def compute(self, scheduler: Any = None, optimize_graph: bool = True, retries: int = 0) -> Any:
        """The concrete result (blocking): a pandas object or a scalar.

        ``scheduler='sync'`` computes in this process even when a client exists; on a
        client every task is tried ``retries`` more times if it fails.
        """
        from zmqdask.base import compute

        (result,) = compute(
            self,
            scheduler=scheduler,
            optimize_graph=optimize_graph,
            retries=retries,
            alternative=self._awaitable("await client.compute({})"),
        )
        return result

    def __await__(self) -> Any:
        """``await client.persist(df)``: the collection, once its partitions are computed."""
        from zmqdask.base import settled

        return settled(self)

    def persist(self, scheduler: Any = None, optimize_graph: bool = True, retries: int = 0) -> Any:
        """An equivalent collection backed by computed partitions.

        With a client this returns at once (futures), also in asynchronous mode.
        """
        from zmqdask.base import persist

        (result,) = persist(self, scheduler=scheduler, optimize_graph=optimize_graph, retries=retries)
        return result

    def to_delayed(self, optimize_graph: bool = True) -> list[Any]:
        """One delayed value per partition (each computes to that pandas partition)."""
        from zmqdask.delayed import Delayed
        from zmqdask.graph import cull

        graph, keys = self.__zmqdask_graph__()
        return [Delayed(key, None, (), cull(graph, [key])) for key in keys]

    def _persist_locally(self) -> Any:
        from zmqdask.dataframe.sources import make_partitions_source
        from zmqdask.graph import execute_local

        graph, keys = self._graph
        parts = execute_local(graph, keys)
        from zmqdask.dataframe.expr import partitioning_roots

        origin = partitioning_roots(self._expr)
        return new_collection(make_partitions_source(parts, self._meta, self.divisions, self._expr._token, origin))

    def _awaitable(self, template: str) -> str:
        kind = type(self).__name__.lower()
        return template.format(
            {"dataframe": "df", "series": "series", "scalar": "scalar", "index": "index"}.get(kind, "obj")
        )

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of a lazy {type(self).__name__} is ambiguous; compute it first")

    # -- partition-wise ---------------------------------------------------------------

    def map_partitions(self, func: Callable[..., Any], *args: Any, meta: Any = None, **kwargs: Any) -> Any:
        """Apply ``func(partition, *args, **kwargs)`` to every partition.

        Collections among ``args``/``kwargs`` are aligned partition by partition (scalars
        are broadcast).  ``meta`` (an empty pandas object, a dtype or a ``{column: dtype}``
        dict) describes the result; without it, ``func`` is run on fake data to infer it.
        """
        return map_partitions(func, self, *args, meta=meta, **kwargs)

    def map_overlap(
        self, func: Callable[..., Any], before: Any, after: Any, *args: Any, meta: Any = None, **kwargs: Any
    ) -> Any:
        """Apply ``func`` to every partition with ``before`` rows of the partitions before
        it and ``after`` rows of those after it (see ``zmqdask.dataframe.map_overlap``)."""
        from zmqdask.dataframe.scans import map_overlap

        return map_overlap(func, self, before, after, *args, meta=meta, **kwargs)

    def clear_divisions(self) -> Any:
        """The same partitions with unknown divisions (Dask's ``clear_divisions``)."""
        from zmqdask.dataframe.core_ops import ClearDivisions

        return new_collection(ClearDivisions(self.expr))

    def repartition(
        self,
        npartitions: int | None = None,
        divisions: Any = None,
        partition_size: int | str | None = None,
        freq: Any = None,
        force: bool = False,
    ) -> Any:
        """The same data in ``npartitions`` partitions, at new ``divisions``, in partitions
        of about ``partition_size`` bytes (``"100MB"``: the frame's size is computed now), or
        split at every ``freq`` of a datetime index with known divisions (``"1D"``)."""
        given = [name for name, value in (("npartitions", npartitions), ("divisions", divisions),
                                          ("partition_size", partition_size), ("freq", freq)) if value is not None]
        if len(given) > 1:
            raise UsageError(f"repartition takes one of npartitions, divisions, partition_size and freq; got {given}")
        if freq is not None:
            divisions = self._divisions_every(freq)
        if partition_size is not None:
            npartitions = self._partitions_of_size(partition_size)
        if divisions is not None:
            if not self.known_divisions:
                raise UsageError("repartition(divisions=...) needs known divisions; use set_index first")
            divisions = tuple(divisions)
            old = self.divisions
            if len(divisions) < 2 or list(divisions) != sorted(divisions):
                raise UsageError(f"repartition(divisions=...) needs at least two sorted values, got {divisions!r}")
            if divisions[0] > old[0] or divisions[-1] < old[-1]:
                # Rows outside the new bounds would sit in partitions whose bounds deny them.
                raise UsageError(
                    f"repartition(divisions=...) must cover the data's index, from {old[0]!r} to {old[-1]!r}; "
                    f"got {divisions[0]!r} to {divisions[-1]!r}"
                )
            return new_collection(ops.RepartitionDivisions(self._expr, divisions))
        if npartitions is None:
            raise UsageError("repartition needs npartitions or divisions")
        if npartitions < 1:
            raise ValueError("npartitions must be at least 1")
        return new_collection(plan.repartition_expr(self._expr, npartitions))

    def _divisions_every(self, freq: Any) -> tuple[Any, ...]:
        """Divisions at every ``freq`` between this frame's first and last index values."""
        import pandas as pd

        if not self.known_divisions or not isinstance(self.divisions[0], pd.Timestamp):
            raise UsageError("repartition(freq=...) needs a datetime index with known divisions; use set_index first")
        start, end = self.divisions[0], self.divisions[-1]
        try:
            inner = pd.date_range(start=start, end=end, freq=freq)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"repartition(freq={freq!r}): {exc}") from None
        return tuple(sorted({start, *inner, end}))

    def _partitions_of_size(self, partition_size: int | str) -> int:
        """How many partitions of ``partition_size`` bytes hold this frame (computes its size)."""
        from zmqdask.base import compute
        from zmqdask.dataframe.shuffle import _may_block
        from zmqdask.local import parse_bytes

        try:
            size = parse_bytes(partition_size)
        except (TypeError, ValueError, UsageError):
            raise UsageError(
                f"repartition(partition_size=) takes a number of bytes or a size such as '100MB', "
                f"got {partition_size!r}"
            ) from None
        if size <= 0:
            raise UsageError(f"repartition(partition_size=) must be positive, got {partition_size!r}")
        if not _may_block():
            raise UsageError(
                "repartition(partition_size=...) computes the frame's size first, which cannot be waited for "
                "in the running event loop: compute it (await client.compute(df.memory_usage(deep=True).sum())) "
                "and pass npartitions="
            )
        usage: Any = self
        (total,) = compute(usage.memory_usage(deep=True).sum() if usage.ndim == 2 else usage.memory_usage(deep=True))
        return max(1, -(-int(total) // size))

    def get_partition(self, n: int) -> Any:
        """Partition ``n`` alone, as a one-partition collection."""
        if not 0 <= n < self.npartitions:
            raise IndexError(f"partition {n} out of range (npartitions={self.npartitions})")
        return new_collection(Partitions(self._expr, (n,)))

    @property
    def partitions(self) -> idx.PartitionsIndexer:
        """``obj.partitions[i]`` or ``[i:j]``: a subset of the partitions."""
        return idx.PartitionsIndexer(self)

    def copy(self, deep: bool = False) -> Any:
        """A new collection object for the same (immutable) expression."""
        return new_collection(self._expr)


# ---------------------------------------------------------------------------------------
# Scalar
# ---------------------------------------------------------------------------------------


def _scalar_binary(op: str, reflected: bool = False) -> Callable[[Any, Any], Any]:
    def method(self: Any, other: Any) -> Any:
        from zmqdask.dataframe.collection import _Frame

        if isinstance(other, _Frame):
            return other._binop(op, self, not reflected)
        right = _expr_of(other)
        left: Any = self._expr
        if reflected:
            left, right = right, left
        return new_collection(ops.Binop(op, left, right))

    method.__name__ = f"__{'r' if reflected else ''}{op.rstrip('_')}__"
    method.__doc__ = f"Lazy ``{op}``."
    return method


class Scalar(Collection):
    """A lazy single value, such as a reduction's result."""

    @property
    def dtype(self) -> Any:
        """The value's dtype (or its type name)."""
        meta = self._meta
        return getattr(meta, "dtype", type(meta).__name__)

    __add__ = _scalar_binary("add")
    __radd__ = _scalar_binary("add", True)
    __sub__ = _scalar_binary("sub")
    __rsub__ = _scalar_binary("sub", True)
    __mul__ = _scalar_binary("mul")
    __rmul__ = _scalar_binary("mul", True)
    __truediv__ = _scalar_binary("truediv")
    __rtruediv__ = _scalar_binary("truediv", True)
    __floordiv__ = _scalar_binary("floordiv")
    __rfloordiv__ = _scalar_binary("floordiv", True)
    __pow__ = _scalar_binary("pow")
    __rpow__ = _scalar_binary("pow", True)
    __mod__ = _scalar_binary("mod")
    __lt__ = _scalar_binary("lt")
    __le__ = _scalar_binary("le")
    __gt__ = _scalar_binary("gt")
    __ge__ = _scalar_binary("ge")
    __eq__ = _scalar_binary("eq")
    __ne__ = _scalar_binary("ne")
    __hash__ = Collection.__hash__

    def __neg__(self) -> Scalar:
        return Scalar(ops.Unary("neg", self._expr))

    def __abs__(self) -> Scalar:
        return Scalar(ops.Unary("abs", self._expr))

    def __repr__(self) -> str:
        return (
            f"zmqdask Scalar Structure:\ndtype: {self.dtype}\nzmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks"
        )

    def _repr_html_(self) -> str:
        return (
            "<div><strong>zmqdask Scalar Structure:</strong></div>\n"
            f"<div>dtype: {self.dtype}</div>\n<div>zmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks</div>"
        )


def graphs_together(collections: list[Collection]) -> list[tuple[dict[str, TaskSpec], list[str]]]:
    """Each collection's task graph and output keys, optimized together: the work they
    share has the same keys in every graph, so the cluster (or this process) does it once."""
    return [build_graph(expr) for expr in optimize_together([c.expr for c in collections])]
