"""In-memory sources: pandas objects split into partitions, and persisted partitions.

``FromPandas`` slices a pandas object at construction-independent row bounds;
``FromPartitions`` holds partitions computed in this process (a local ``persist``);
``FromFutures`` refers to partitions that live on the cluster (a client ``persist``).
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import Expr, Source, make_meta, node, tokenize, unknown_divisions
from zmqdask.graph import TaskSpec


def _identity(value: Any) -> Any:
    return value


def _select_columns(part: Any, columns: tuple[Any, ...] | None) -> Any:
    if columns is None or not isinstance(part, pd.DataFrame):
        return part
    return part[list(columns)]


def sorted_split(data: pd.DataFrame | pd.Series, npartitions: int) -> tuple[tuple[int, ...], tuple[Any, ...]]:
    """Row bounds of about ``npartitions`` pieces of sorted ``data`` and their divisions.

    Equal index values never straddle two pieces, so there may be fewer pieces than asked.
    """
    n = len(data)
    if n == 0:
        return (0, 0), (None, None)
    npartitions = max(1, min(npartitions, n))
    raw = np.linspace(0, n, npartitions + 1).round().astype(int)
    index = data.index
    bounds = [0]
    for position in raw[1:-1]:
        # Move each cut to the first row of its index value, so duplicates stay together.
        cut = int(index.searchsorted(index[position], side="left"))
        if cut > bounds[-1]:
            bounds.append(cut)
    bounds.append(n)
    divisions = [index[b] for b in bounds[:-1]] + [index[n - 1]]
    return tuple(bounds), tuple(divisions)


def even_split(n: int, npartitions: int) -> tuple[int, ...]:
    """Row bounds of ``npartitions`` pieces of ``n`` rows whose sizes differ by at most one."""
    npartitions = max(1, npartitions)
    return tuple(int(b) for b in np.linspace(0, n, npartitions + 1).round().astype(int))


@node
class FromPandas(Source):
    """A pandas DataFrame or Series cut into row ranges; ``columns`` projects a DataFrame."""

    data: Any
    data_token: Any
    bounds: tuple[int, ...]
    division_values: tuple[Any, ...]
    columns_selected: tuple[Any, ...] | None = None

    def _prefix(self) -> str:
        return "from-pandas"

    @cached_property
    def _token(self) -> str:
        # ``data_token`` stands for the data, which is hashed once, not at every rewrite.  For a
        # DataFrame it holds one digest per column, so a projection's token depends only on the
        # columns it reads.
        content = self.data_token
        if isinstance(content, dict):
            wanted = content["columns"] if self.columns_selected is None else self.columns_selected
            content = (content["frame"], [content["per_column"][c] for c in wanted])
        return tokenize("from-pandas", content, self.bounds, self.division_values, self.columns_selected)

    @cached_property
    def _meta(self) -> Any:
        return _select_columns(make_meta(self.data), self.columns_selected)

    @property
    def npartitions(self) -> int:
        return len(self.bounds) - 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _task(self, i: int) -> TaskSpec:
        piece = self.data.iloc[self.bounds[i] : self.bounds[i + 1]]
        piece = _select_columns(piece, self.columns_selected)
        return (_identity, (piece,), {})

    def _with_columns(self, columns: list[Any]) -> FromPandas:
        return self._replace(columns_selected=tuple(columns))

    def _describe(self) -> str:
        data = self.data
        shape = "x".join(str(s) for s in data.shape)
        cols = "" if self.columns_selected is None else f", columns={list(self.columns_selected)}"
        return f"{type(data).__name__} {shape}{cols}"


class ColumnSelectingSource(Source):
    """A source of partitions with the schema ``meta``, narrowed to ``columns_selected``.

    ``columns_selected`` None means every column; column pruning sets it.  Subclasses are
    :func:`node` classes declaring the fields ``meta`` and ``columns_selected``.
    """

    meta: Any
    columns_selected: tuple[Hashable, ...] | None

    @cached_property
    def _meta(self) -> Any:
        return _select_columns(self.meta, self.columns_selected)

    def _with_columns(self, columns: list[Any]) -> Expr | None:
        return self._replace(columns_selected=tuple(columns))

    def _partitioning_identity(self) -> frozenset[str]:
        # Which columns are read does not change which rows each partition holds.
        if self.columns_selected is None:
            return frozenset({self._token})
        return self._replace(columns_selected=None)._partitioning_identity()


@node
class FromPartitions(ColumnSelectingSource):
    """Partitions already computed in this process; ``name`` is the token of what made them."""

    parts: tuple[Any, ...]
    meta: Any
    division_values: tuple[Any, ...]
    name: str
    columns_selected: tuple[Any, ...] | None = None
    origin: frozenset[str] = frozenset()
    """The partitioning roots of the expression computed into these partitions."""

    def _prefix(self) -> str:
        return "persisted"

    def _partitioning_identity(self) -> frozenset[str]:
        return self.origin or super()._partitioning_identity()

    @cached_property
    def _token(self) -> str:
        # Hashing the data again would be slow; it is what ``name`` computed, by definition.
        cols = "" if self.columns_selected is None else repr(list(self.columns_selected))
        return tokenize("persisted", self.name, cols)

    @property
    def npartitions(self) -> int:
        return len(self.parts)

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _task(self, i: int) -> TaskSpec:
        return (_identity, (_select_columns(self.parts[i], self.columns_selected),), {})

    def _describe(self) -> str:
        return f"{len(self.parts)} in-memory partitions of {self.name}"


@node
class FromFutures(ColumnSelectingSource):
    """Partitions that live on the cluster, one future per partition."""

    futures: tuple[Any, ...]
    meta: Any
    division_values: tuple[Any, ...]
    columns_selected: tuple[Any, ...] | None = None
    origin: frozenset[str] = frozenset()
    """The partitioning roots of the expression persisted into these partitions."""

    def _prefix(self) -> str:
        return "persisted"

    def _partitioning_identity(self) -> frozenset[str]:
        # The partitions of what was persisted, row for row: it lines up with that.
        return self.origin or super()._partitioning_identity()

    @cached_property
    def _token(self) -> str:
        cols = "" if self.columns_selected is None else repr(list(self.columns_selected))
        return tokenize("futures", [f.key for f in self.futures], cols)

    @property
    def npartitions(self) -> int:
        return len(self.futures)

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _task(self, i: int) -> TaskSpec:
        # Selecting columns first makes the rest of the fused task touch only those.
        if self.columns_selected is None:
            return (_identity, (self.futures[i],), {})
        return (_select_columns, (self.futures[i], self.columns_selected), {})

    def _describe(self) -> str:
        cols = "" if self.columns_selected is None else f", columns={list(self.columns_selected)}"
        return f"{len(self.futures)} partitions held by the cluster{cols}"


def from_pandas_expr(
    data: Any, npartitions: int | None = None, chunksize: int | None = None, sort: bool = True
) -> FromPandas:
    """The source node for :func:`zmqdask.dataframe.from_pandas`."""
    if not isinstance(data, (pd.DataFrame, pd.Series)):
        raise TypeError(f"from_pandas needs a pandas DataFrame or Series, not {type(data).__name__}")
    n = len(data)
    if npartitions is None:
        if chunksize is None:
            npartitions = 1
        else:
            npartitions = max(1, -(-n // max(1, chunksize)))
    if npartitions < 1:
        raise ValueError("npartitions must be at least 1")
    if sort and not data.index.is_monotonic_increasing:
        data = data.sort_index(kind="stable")
    if sort and n > 0:
        bounds, divisions = sorted_split(data, npartitions)
    else:
        bounds = even_split(n, min(npartitions, max(n, 1)))
        divisions = unknown_divisions(len(bounds) - 1)
    return FromPandas(data, data_token(data), bounds, divisions)


def data_token(data: pd.DataFrame | pd.Series) -> Any:
    """A content digest of a Series, or of each column of a DataFrame plus its index."""
    if not isinstance(data, pd.DataFrame) or not data.columns.is_unique:
        return tokenize(data)
    frame = tokenize(data.index, type(data.columns).__name__)
    per_column = {c: tokenize(data[c].reset_index(drop=True)) for c in data.columns}
    return {"frame": frame, "columns": tuple(data.columns), "per_column": per_column}


def make_partitions_source(
    parts: list[Any], meta: Any, divisions: tuple[Any, ...], name: str, origin: frozenset[str] = frozenset()
) -> FromPartitions:
    """A source over partitions computed in this process (from an expression whose
    partitioning roots are ``origin``)."""
    return FromPartitions(tuple(parts), make_meta(meta), tuple(divisions), name, None, origin)


def make_futures_source(
    futures: list[Any], meta: Any, divisions: tuple[Any, ...], origin: frozenset[str] = frozenset()
) -> FromFutures:
    """A source over partitions held by the cluster (from an expression whose partitioning
    roots are ``origin``)."""
    return FromFutures(tuple(futures), make_meta(meta), tuple(divisions), None, origin)


def from_delayed_collection(dfs: Any, *, meta: Any, divisions: Any, verify_meta: bool) -> Any:
    """The collection :func:`zmqdask.dataframe.from_delayed` returns (see there)."""
    from zmqdask.base import get_client
    from zmqdask.dataframe.collection import new_collection
    from zmqdask.dataframe.planning import meta_from
    from zmqdask.delayed import Delayed
    from zmqdask.errors import UsageError
    from zmqdask.future import Future

    parts = [dfs] if isinstance(dfs, (Delayed, Future)) else list(dfs)
    if not parts or not all(isinstance(part, (Delayed, Future)) for part in parts):
        raise UsageError("from_delayed needs a non-empty list of delayed values (or futures) of pandas objects")
    if divisions is None:
        divisions = (None,) * (len(parts) + 1)
    elif len(divisions) != len(parts) + 1:
        raise UsageError(f"divisions need {len(parts) + 1} values for {len(parts)} partitions, got {len(divisions)}")
    client = get_client()
    if client is None:
        from zmqdask.base import compute

        values = list(compute(*parts))
        first = values[0]
        meta = first.iloc[:0] if meta is None else meta_from(meta)
        name = f"from-delayed-{uuid.uuid4().hex}"
        return new_collection(make_partitions_source(values, meta, tuple(divisions), name))
    futures = [part if isinstance(part, Future) else client.compute(part) for part in parts]
    if meta is None:
        from zmqdask.base import ensure_blocking_allowed

        ensure_blocking_allowed(client, "dd.from_delayed(parts, meta=...)")
        meta = futures[0].result().iloc[:0]
    else:
        meta = meta_from(meta)
    return new_collection(make_futures_source(futures, meta, tuple(divisions)))
