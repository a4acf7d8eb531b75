"""Summary statistics of partitioned frames: ``describe``, ``value_counts`` and ``nunique``.

``describe`` is exact: each described column is gathered (that column only) into one task
which runs pandas' own ``describe``, and a last task puts the columns side by side.
``value_counts`` and ``nunique`` are tree reductions over per-partition counts and distinct
values.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from functools import cached_property
from typing import Any

import pandas as pd

from zmqdask.dataframe.expr import Expr, Projection, Reduction, emulate, node
from zmqdask.dataframe.groupby import concat_nonempty
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def describe_gathered(pieces: Sequence[pd.Series]) -> pd.Series:
    """``describe`` of one column from its pieces (in partition order)."""
    return concat_nonempty(list(pieces)).describe()


def describe_assemble(descriptions: Sequence[pd.Series], columns: pd.Index) -> pd.DataFrame:
    """Put per-column descriptions side by side, as ``DataFrame.describe`` does."""
    frame = pd.concat(list(descriptions), axis=1)
    frame.columns = columns
    return frame


def describe_columns(meta: pd.DataFrame | pd.Series) -> list[Hashable]:
    """The columns ``describe`` reports on, chosen by pandas from the schema."""
    if isinstance(meta, pd.Series):
        return [meta.name]
    return list(meta.describe().columns)


# --------------------------------------------------------------------------------------------
# value_counts
# --------------------------------------------------------------------------------------------


def value_counts_chunk(series: pd.Series, dropna: bool = True) -> pd.Series:
    """Counts of each value in one partition, in order of first appearance."""
    return series.value_counts(sort=False, dropna=dropna)


def value_counts_combine(counts: Sequence[pd.Series]) -> pd.Series:
    """Add up partial counts, keeping the first-appearance order of the values."""
    joined = concat_nonempty(list(counts))
    if len(counts) == 1:
        return joined
    summed = joined.groupby(level=0, sort=False, dropna=False).sum()
    summed.name = joined.name
    return summed


def value_counts_aggregate(
    counts: Sequence[pd.Series], sort: bool = True, ascending: bool = False, normalize: bool = False
) -> pd.Series:
    """Final counts (or proportions), sorted like ``Series.value_counts``."""
    result = value_counts_combine(counts)
    if normalize:
        total = result.sum()
        result = result / total if total else result.astype("float64")
        result.name = "proportion"
    else:
        result.name = "count"
    if sort:
        # Stable, so equal counts keep first-appearance order, as pandas orders them.
        result = result.sort_values(ascending=ascending, kind="stable")
    return result


# --------------------------------------------------------------------------------------------
# nunique
# --------------------------------------------------------------------------------------------


def unique_chunk(obj: pd.DataFrame | pd.Series, dropna: bool = True) -> dict[Hashable, pd.Series]:
    """Distinct values of each column (a Series counts as one column named ``None``)."""
    columns: dict[Hashable, pd.Series]
    if isinstance(obj, pd.Series):
        columns = {None: obj}
    else:
        columns = {column: obj[column] for column in obj.columns}
    out: dict[Hashable, pd.Series] = {}
    for column, values in columns.items():
        if dropna:
            values = values.dropna()
        out[column] = values.drop_duplicates().reset_index(drop=True)
    return out


def unique_combine(chunks: Sequence[dict[Hashable, pd.Series]]) -> dict[Hashable, pd.Series]:
    """Distinct values of each column over several chunks."""
    if len(chunks) == 1:
        return chunks[0]
    return {
        column: concat_nonempty([chunk[column] for chunk in chunks]).drop_duplicates().reset_index(drop=True)
        for column in chunks[0]
    }


def nunique_aggregate(chunks: Sequence[dict[Hashable, pd.Series]], columns: pd.Index | None) -> Any:
    """The number of distinct values: an int for a Series, a Series by column for a frame."""
    merged = unique_combine(chunks)
    if columns is None:
        return len(merged[None])
    return pd.Series([len(merged[column]) for column in columns], index=columns, dtype="int64")


# --------------------------------------------------------------------------------------------
# Expression nodes and entry points
# --------------------------------------------------------------------------------------------


def _identity(value: Any) -> Any:
    return value


def _concat_pieces(pieces: Sequence[Any]) -> Any:
    return concat_nonempty(list(pieces))


def _pandas_describe(obj: Any) -> Any:
    return obj.describe()


def _value_counts_whole(series: pd.Series, sort: bool, ascending: bool, normalize: bool, dropna: bool) -> pd.Series:
    counts: Any = series.value_counts
    return counts(sort=sort, ascending=ascending, normalize=normalize, dropna=dropna)


@node
class DescribeAssemble(Expr):
    """One task placing the per-column descriptions side by side."""

    parts: tuple[Expr, ...]
    labels: tuple[Hashable, ...]
    meta: Any

    def _prefix(self) -> str:
        return "describe"

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    @property
    def npartitions(self) -> int:
        return 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return (None, None)

    def _layer(self) -> dict[str, TaskSpec]:
        pieces = [TaskRef(part._key(0)) for part in self.parts]
        return {self._key(0): (describe_assemble, (pieces, self.meta.columns), {})}


def _expr_of(obj: Any) -> Expr:
    expr = getattr(obj, "expr", None)
    if not isinstance(expr, Expr):
        raise UsageError(f"expected a zmqdask DataFrame or Series, got {type(obj).__name__}")
    return expr


def _new_collection(expr: Expr) -> Any:
    from zmqdask.dataframe.collection import new_collection

    return new_collection(expr)


def _column_description(expr: Expr) -> Reduction:
    meta = emulate(_pandas_describe, expr._meta)
    return Reduction(
        expr,
        _identity,
        _concat_pieces,
        describe_gathered,
        meta,
        # One gather per column: the exact quantiles need all of the column's values.
        split_every=max(2, expr.npartitions),
        label="describe-column",
    )


def describe(frame: Any) -> Any:
    """Count, mean, std, min, quartiles and max of each numeric column, exactly as pandas."""
    expr = _expr_of(frame)
    meta = expr._meta
    if isinstance(meta, pd.Series):
        return _new_collection(_column_description(expr))
    if not isinstance(meta, pd.DataFrame):
        raise UsageError("describe needs a DataFrame or Series")
    full_meta = emulate(_pandas_describe, meta)
    labels = list(full_meta.columns)
    parts = tuple(_column_description(Projection(expr, label)) for label in labels)
    return _new_collection(DescribeAssemble(parts, tuple(labels), full_meta))


def value_counts(
    series: Any, sort: bool = True, ascending: bool = False, normalize: bool = False, dropna: bool = True
) -> Any:
    """Counts (or proportions) of each distinct value of a Series, most frequent first."""
    expr = _expr_of(series)
    if not isinstance(expr._meta, pd.Series):
        raise UsageError("value_counts needs a Series")
    meta = emulate(_value_counts_whole, expr._meta, sort, ascending, normalize, dropna)
    node_ = Reduction(
        expr,
        value_counts_chunk,
        value_counts_combine,
        value_counts_aggregate,
        meta,
        {"dropna": dropna},
        {},
        {"sort": sort, "ascending": ascending, "normalize": normalize},
        label="value-counts",
    )
    return _new_collection(node_)


def nunique(obj: Any, dropna: bool = True) -> Any:
    """Number of distinct values: a scalar for a Series, a Series by column for a DataFrame."""
    expr = _expr_of(obj)
    meta = expr._meta
    if isinstance(meta, pd.Series):
        columns = None
        result_meta: Any = 0
    elif isinstance(meta, pd.DataFrame):
        columns = meta.columns
        result_meta = pd.Series([], index=columns[:0], dtype="int64")
    else:
        raise UsageError("nunique needs a DataFrame or Series")
    node_ = Reduction(
        expr,
        unique_chunk,
        unique_combine,
        nunique_aggregate,
        result_meta,
        {"dropna": dropna},
        {},
        {"columns": columns},
        label="nunique",
    )
    return _new_collection(node_)
