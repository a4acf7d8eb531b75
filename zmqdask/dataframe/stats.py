"""Summary statistics of partitioned frames: ``describe``, ``value_counts`` and ``nunique``.

``describe`` is exact: each described column is gathered (that column only) into one task
which runs pandas' own ``describe``, and a last task puts the columns side by side.
``value_counts`` and ``nunique`` are tree reductions over per-partition counts and distinct
values.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Hashable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.core_ops import concat_parts
from zmqdask.dataframe.expr import (
    DEFAULT_SPLIT_EVERY,
    Expr,
    Projection,
    Reduction,
    SinglePartition,
    column_label,
    emulate,
    node,
)
from zmqdask.dataframe.meta import meta_nonempty
from zmqdask.dataframe.wrapping import expr_of, new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def describe_gathered(pieces: Sequence[pd.Series], percentiles: Any = None) -> pd.Series:
    """``describe`` of one column from its pieces (in partition order)."""
    return concat_parts(list(pieces)).describe(percentiles=percentiles)


def describe_assemble(
    descriptions: Sequence[pd.Series], columns: pd.Index, rows: list[Hashable] | None = None
) -> pd.DataFrame:
    """Put per-column descriptions side by side, as ``DataFrame.describe`` does; ``rows``
    orders the statistics as pandas does when columns of several kinds have different ones
    (each column's own statistics are missing in the others)."""
    frame = pd.concat(list(descriptions), axis=1)
    frame.columns = columns
    return frame if rows is None else frame.reindex(rows)


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
    joined = concat_parts(list(counts))
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


def mode_aggregate(counts: Sequence[pd.Series], name: Hashable) -> pd.Series:
    """The most frequent values, sorted, as ``Series.mode`` gives them."""
    merged = value_counts_combine(counts)
    # A categorical's counts include its categories without values, which are no modes.
    merged = merged[merged.to_numpy() > 0]
    if len(merged) == 0:
        return pd.Series(merged.index[:0], name=name)
    top = merged.index[merged.to_numpy() == merged.max()]
    return pd.Series(top.sort_values(), name=name)


def frame_counts_chunk(frame: pd.DataFrame, dropna: bool = True) -> list[pd.Series]:
    """Counts of each value of each column (by position) in one partition."""
    return [value_counts_chunk(frame.iloc[:, position], dropna) for position in range(frame.shape[1])]


def frame_counts_combine(chunks: Sequence[list[pd.Series]]) -> list[pd.Series]:
    """Add up the partial counts of each column."""
    return [value_counts_combine([chunk[position] for chunk in chunks]) for position in range(len(chunks[0]))]


def frame_mode_aggregate(chunks: Sequence[list[pd.Series]], columns: pd.Index) -> pd.DataFrame:
    """The modes of each column side by side, as ``DataFrame.mode`` gives them: numbered
    0..n-1, a column with fewer modes than another padded with missing values."""
    counts = frame_counts_combine(chunks)
    modes = {position: mode_aggregate([column], None) for position, column in enumerate(counts)}
    frame = pd.DataFrame(modes, index=pd.RangeIndex(max((len(m) for m in modes.values()), default=0)))
    frame.columns = columns
    return frame


def mode(obj: Any, dropna: bool = True, split_every: int | None = None, numeric_only: bool = False) -> Any:
    """The most frequent value(s), sorted (several on ties), like pandas' ``mode``: of a
    Series, or of each column of a DataFrame (``numeric_only``: its numeric columns)."""
    expr = expr_of(obj)
    meta = expr._meta
    if isinstance(meta, pd.DataFrame):
        # pandas picks the columns (numeric_only) and gives the padded dtypes: asked on the meta.
        result_meta = emulate(lambda m: m.mode(dropna=dropna, numeric_only=numeric_only), meta)
        frame = expr if not numeric_only else Projection(expr, tuple(result_meta.columns))
        node_ = Reduction(
            frame,
            frame_counts_chunk,
            frame_counts_combine,
            frame_mode_aggregate,
            result_meta,
            {"dropna": dropna},
            {},
            {"columns": result_meta.columns},
            split_every or DEFAULT_SPLIT_EVERY,
            "mode",
        )
        return new_collection(node_)
    if not isinstance(meta, pd.Series):
        raise UsageError("mode needs a Series or a DataFrame")
    node_ = Reduction(
        expr,
        value_counts_chunk,
        value_counts_combine,
        mode_aggregate,
        emulate(lambda m: m.mode(dropna=dropna), meta),
        {"dropna": dropna},
        {},
        {"name": meta.name},
        split_every or DEFAULT_SPLIT_EVERY,
        "mode",
    )
    return new_collection(node_)


# --------------------------------------------------------------------------------------------
# nunique
# --------------------------------------------------------------------------------------------


def unique_chunk(obj: pd.DataFrame | pd.Series | pd.Index, dropna: bool = True) -> dict[Hashable, pd.Series]:
    """Distinct values of each column (a Series counts as one column named ``None``)."""
    columns: dict[Hashable, pd.Series]
    if isinstance(obj, pd.Index):
        columns = {None: pd.Series(obj, copy=False)}
    elif isinstance(obj, pd.Series):
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
        column: concat_parts([chunk[column] for chunk in chunks]).drop_duplicates().reset_index(drop=True)
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
    return concat_parts(list(pieces))


def _pandas_describe(obj: Any, percentiles: Any = None, include: Any = None, exclude: Any = None) -> Any:
    if isinstance(obj, pd.Series):
        return obj.describe(percentiles=percentiles)
    return obj.describe(percentiles=percentiles, include=include, exclude=exclude)


def _value_counts_whole(series: pd.Series, sort: bool, ascending: bool, normalize: bool, dropna: bool) -> pd.Series:
    counts: Any = series.value_counts
    return counts(sort=sort, ascending=ascending, normalize=normalize, dropna=dropna)


class ColumnsAssemble(SinglePartition):
    """One task putting together per-column results ``parts`` into a result shaped like ``meta``.

    Subclasses are :func:`node` classes declaring the fields ``parts`` (single-partition
    expressions, one per column) and ``meta``.
    """

    parts: tuple[Expr, ...]
    meta: Any

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    def _part_refs(self) -> list[TaskRef]:
        """References to the per-column results, in column order."""
        return [TaskRef(part._key(0)) for part in self.parts]


@node
class DescribeAssemble(ColumnsAssemble):
    """One task placing the per-column descriptions side by side."""

    parts: tuple[Expr, ...]
    labels: tuple[Hashable, ...]
    meta: Any
    rows: tuple[Hashable, ...]

    def _prefix(self) -> str:
        return "describe"

    def _layer(self) -> dict[str, TaskSpec]:
        return {self._key(0): (describe_assemble, (self._part_refs(), self.meta.columns, list(self.rows)), {})}


def _gathered_column(
    expr: Expr, finish: Callable[..., Any], meta: Any, finish_kwargs: dict[str, Any], label: str
) -> Reduction:
    """``finish(pieces, **finish_kwargs)`` over all partitions of a column, in one task.

    Exact quantiles (describe's quartiles among them) need all of the column's values at
    once, so the reduction is a single gather.
    """
    return Reduction(
        expr,
        _identity,
        _concat_pieces,
        finish,
        meta,
        {},
        {},
        finish_kwargs,
        split_every=max(2, expr.npartitions),
        label=label,
    )


def _column_description(expr: Expr, percentiles: Any = None) -> Reduction:
    percentiles = None if percentiles is None else list(percentiles)
    meta = emulate(_pandas_describe, expr._meta, percentiles)
    return _gathered_column(expr, describe_gathered, meta, {"percentiles": percentiles}, "describe-column")


def describe(frame: Any, percentiles: Any = None, include: Any = None, exclude: Any = None) -> Any:
    """Summary statistics of each column, exactly as pandas computes them: count, mean, std,
    min, the ``percentiles`` (default quartiles) and max of numbers; with ``include``/
    ``exclude`` (``"all"``, dtypes) other columns too (count, unique, top, freq for text)."""
    expr = expr_of(frame)
    meta = expr._meta
    if isinstance(meta, pd.Series):
        return new_collection(_column_description(expr, percentiles))
    if not isinstance(meta, pd.DataFrame):
        raise UsageError("describe needs a DataFrame or Series")
    percentiles = None if percentiles is None else list(percentiles)
    full_meta = emulate(_pandas_describe, meta, percentiles, include, exclude)
    # The statistics' order, which the (empty) meta does not keep: from fake data.
    rows = tuple(_pandas_describe(meta_nonempty(meta), percentiles, include, exclude).index)
    labels = list(full_meta.columns)
    parts = tuple(_column_description(Projection(expr, column_label(label)), percentiles) for label in labels)
    return new_collection(DescribeAssemble(parts, tuple(labels), full_meta, rows))


def value_counts(
    series: Any, sort: bool = True, ascending: bool = False, normalize: bool = False, dropna: bool = True
) -> Any:
    """Counts (or proportions) of each distinct value of a Series, most frequent first."""
    expr = expr_of(series)
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
    return new_collection(node_)


def nunique(obj: Any, dropna: bool = True) -> Any:
    """Number of distinct values: a scalar for a Series, a Series by column for a DataFrame."""
    expr = expr_of(obj)
    meta = expr._meta
    if isinstance(meta, (pd.Series, pd.Index)):
        columns = None
        result_meta: Any = 0
    elif isinstance(meta, pd.DataFrame):
        columns = meta.columns
        result_meta = pd.Series([], index=columns[:0], dtype="int64")
    else:
        raise UsageError("nunique needs a DataFrame, Series or Index")
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
    return new_collection(node_)


# --------------------------------------------------------------------------------------------
# drop_duplicates, nlargest/nsmallest, idxmax/idxmin, quantile
# --------------------------------------------------------------------------------------------


def distinct_rows(pieces: Sequence[Any], subset: list[Hashable] | None, keep: str) -> Any:
    """Rows of ``pieces`` (in order) without later (``keep="first"``) or earlier repeats."""
    which: Any = keep
    if pieces and isinstance(pieces[0], pd.Index):
        labels = pieces[0].append(list(pieces[1:])) if len(pieces) > 1 else pieces[0]
        return labels.drop_duplicates(keep=which)
    # Pieces may categorize their own values: their categories are unified, or concat
    # would give strings.
    joined: Any = concat_parts(list(pieces))
    if isinstance(joined, pd.Series):
        return joined.drop_duplicates(keep=which)
    return joined.drop_duplicates(subset=subset, keep=which)


def distinct_chunk(part: Any, subset: list[Hashable] | None, keep: str) -> Any:
    """One partition without repeated rows."""
    return distinct_rows([part], subset, keep)


def _duplicated(rows: Any, subset: list[Hashable] | None, keep: Any) -> np.ndarray:
    """pandas' ``duplicated`` of a DataFrame (on ``subset``), Series or Index, as an array."""
    if isinstance(rows, pd.DataFrame):
        return rows.duplicated(subset=subset, keep=keep).to_numpy()
    return np.asarray(rows.duplicated(keep=keep))


def _take(rows: Any, mask: np.ndarray) -> Any:
    return rows[mask] if isinstance(rows, pd.Index) else rows.iloc[mask]


def once_rows(pieces: Sequence[tuple[Any, np.ndarray]], subset: list[Hashable] | None) -> tuple[Any, np.ndarray]:
    """The first row of each distinct value of ``pieces`` (in order), each flagged when the
    value was seen more than once: in another piece, or earlier within its own (the flags)."""
    full = [(rows, flags) for rows, flags in pieces if len(rows)]
    if not full:
        return pieces[0]
    if len(full) == 1:
        rows, flags = full[0]
    elif isinstance(full[0][0], pd.Index):
        rows = full[0][0].append([piece for piece, _ in full[1:]])
        flags = np.concatenate([flags for _, flags in full])
    else:
        rows = concat_parts([piece for piece, _ in full])
        flags = np.concatenate([flags for _, flags in full])
    repeated = flags | _duplicated(rows, subset, False)
    first = ~_duplicated(rows, subset, "first")
    return _take(rows, first), repeated[first]


def once_chunk(part: Any, subset: list[Hashable] | None) -> tuple[Any, np.ndarray]:
    """:func:`once_rows` of one partition."""
    return once_rows([(part, np.zeros(len(part), dtype=bool))], subset)


def once_aggregate(pieces: Sequence[tuple[Any, np.ndarray]], subset: list[Hashable] | None) -> Any:
    """The rows whose value occurs once in all of ``pieces``, in their original order."""
    rows, repeated = once_rows(pieces, subset)
    return _take(rows, ~repeated)


def drop_duplicates(obj: Any, subset: Any = None, keep: Any = "first", split_every: int | None = None) -> Any:
    """Rows without repeats, in their original order, keeping the first (or last) of each;
    ``keep=False`` keeps only the rows whose value no other row has, in any partition."""
    if keep not in ("first", "last", False):
        raise UsageError(f"drop_duplicates takes keep='first', 'last' or False, got {keep!r}")
    expr = expr_of(obj)
    meta_columns = expr._meta.columns if isinstance(expr._meta, pd.DataFrame) else pd.Index([])
    # As pandas: a tuple that is a column label (of MultiIndex columns) is that one column.
    one = not isinstance(subset, (list, tuple)) or (isinstance(subset, tuple) and subset in meta_columns)
    columns = None if subset is None else ([subset] if one else list(subset))
    if keep is False:
        # Whether a value repeats can depend on rows of other partitions: each distinct
        # value travels up the tree with a flag saying it was seen twice.
        kwargs: dict[str, Any] = {"subset": columns}
        steps: tuple[Any, Any, Any] = (once_chunk, once_rows, once_aggregate)
    else:
        kwargs = {"subset": columns, "keep": keep}
        steps = (distinct_chunk, distinct_rows, distinct_rows)
    node_ = Reduction(
        expr,
        *steps,
        expr._meta,
        kwargs,
        kwargs,
        kwargs,
        split_every or DEFAULT_SPLIT_EVERY,
        "drop-duplicates",
    )
    return new_collection(node_)


def largest_rows(pieces: Sequence[Any], n: int, columns: Any, largest: bool) -> Any:
    """The ``n`` largest (or smallest) rows of ``pieces``; ties keep the earliest, as pandas."""
    joined = concat_parts(list(pieces))
    method = "nlargest" if largest else "nsmallest"
    if isinstance(joined, pd.Series):
        return getattr(joined, method)(n)
    return getattr(joined, method)(n, columns)


def largest_chunk(part: Any, n: int, columns: Any, largest: bool) -> Any:
    """The ``n`` largest (or smallest) rows of one partition."""
    return largest_rows([part], n, columns, largest)


def nlargest(obj: Any, n: int, columns: Any = None, largest: bool = True, split_every: int | None = None) -> Any:
    """The ``n`` rows with the largest (``largest=False``: smallest) values, as pandas orders them."""
    expr = expr_of(obj)
    if isinstance(expr._meta, pd.DataFrame) and columns is None:
        raise UsageError("DataFrame.nlargest/nsmallest need columns=")
    kwargs = {"n": int(n), "columns": columns, "largest": largest}
    node_ = Reduction(
        expr,
        largest_chunk,
        largest_rows,
        largest_rows,
        expr._meta,
        kwargs,
        kwargs,
        kwargs,
        split_every or DEFAULT_SPLIT_EVERY,
        "nlargest" if largest else "nsmallest",
    )
    return new_collection(node_)


def extreme_chunk(part: Any, largest: bool, skipna: bool) -> pd.DataFrame:
    """Per column: the extreme value and its label (no row for a column without values)."""
    frame = part.to_frame(name=0) if isinstance(part, pd.Series) else part
    values, labels, names = [], [], []
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position].reset_index(drop=True)
        if column.isna().all() or (not skipna and column.isna().any()):
            if not skipna and len(column):
                values.append(float("nan"))
                labels.append(float("nan"))
                names.append(position)
            continue
        found: Any = column.idxmax() if largest else column.idxmin()
        at = int(found)
        values.append(column.iloc[at])
        labels.append(frame.index[at])
        names.append(position)
    return pd.DataFrame({"column": names, "value": values, "label": labels})


def extreme_combine(chunks: Sequence[pd.DataFrame], largest: bool, skipna: bool) -> pd.DataFrame:
    """Merge per-column extremes, the earliest winning ties (chunks are in partition order)."""
    joined = concat_parts(list(chunks)).reset_index(drop=True)
    if len(joined) == 0:
        return joined
    winners = []
    for _, rows in joined.groupby("column", sort=True):
        if rows["value"].isna().any():
            winners.append(rows.index[rows["value"].isna()][0])
            continue
        values = rows["value"].reset_index(drop=True)
        best: Any = values.idxmax() if largest else values.idxmin()
        winners.append(rows.index[int(best)])
    return joined.loc[winners]


def extreme_aggregate(chunks: Sequence[pd.DataFrame], largest: bool, skipna: bool, columns: Any) -> Any:
    """The label of the extreme value: a scalar for a Series, a Series by column for a frame."""
    merged = extreme_combine(chunks, largest, skipna)
    if not skipna and len(merged) and merged["value"].isna().any():
        # As pandas 3: there is no label to give.
        raise ValueError("Encountered an NA value with skipna=False")
    count = 1 if columns is None else len(columns)
    found = dict(zip(merged["column"].tolist(), merged["label"].tolist(), strict=False)) if len(merged) else {}
    if len(found) < count:
        name = "idxmax" if largest else "idxmin"
        raise ValueError(f"attempt to get {name} of an empty sequence (or of a column with only missing values)")
    if columns is None:
        return found[0]
    return pd.Series([found[position] for position in range(count)], index=columns)


def idxextreme(obj: Any, largest: bool, skipna: bool = True, split_every: int | None = None) -> Any:
    """Label of the largest (or smallest) value: per column for a DataFrame."""
    expr = expr_of(obj)
    meta = expr._meta
    method = "idxmax" if largest else "idxmin"
    columns = meta.columns if isinstance(meta, pd.DataFrame) else None
    result_meta = emulate(lambda m: getattr(m, method)(), meta)
    node_ = Reduction(
        expr,
        extreme_chunk,
        extreme_combine,
        extreme_aggregate,
        result_meta,
        {"largest": largest, "skipna": skipna},
        {"largest": largest, "skipna": skipna},
        {"largest": largest, "skipna": skipna, "columns": columns},
        split_every or DEFAULT_SPLIT_EVERY,
        method,
    )
    return new_collection(node_)


def quantile_gathered(pieces: Sequence[Any], q: Any) -> Any:
    """``quantile(q)`` of one column (or Series) from its pieces, in partition order."""
    return concat_parts(list(pieces)).quantile(q)


def _quantile_column(expr: Expr, q: Any) -> Reduction:
    meta = emulate(lambda m: m.quantile(q), expr._meta)
    return _gathered_column(expr, quantile_gathered, meta, {"q": q}, "quantile")


def quantile(obj: Any, q: Any = 0.5, numeric_only: bool = False) -> Any:
    """Exact quantiles, as pandas computes them (each column is gathered into one task)."""
    expr = expr_of(obj)
    meta = expr._meta
    q = list(q) if isinstance(q, (list, tuple)) else q
    if isinstance(meta, pd.Series):
        return new_collection(_quantile_column(expr, q))
    if not isinstance(meta, pd.DataFrame):
        raise UsageError("quantile needs a DataFrame or Series")
    if numeric_only:
        meta = meta.select_dtypes(include=["number", "bool"])
    full_meta = emulate(lambda m: m.quantile(q), meta)
    labels = tuple(meta.columns)
    parts = tuple(_quantile_column(Projection(expr, column_label(label)), q) for label in labels)
    return new_collection(QuantileAssemble(parts, labels, q, full_meta))


def quantile_assemble(pieces: Sequence[Any], labels: tuple[Hashable, ...], q: Any) -> Any:
    """Per-column quantiles side by side: a Series for one ``q``, a frame for a list of them."""
    if isinstance(q, list):
        frame = pd.concat(list(pieces), axis=1)
        frame.columns = pd.Index(labels)
        return frame
    return pd.Series(list(pieces), index=pd.Index(labels), name=q, dtype="float64")


@node
class QuantileAssemble(ColumnsAssemble):
    """One task placing per-column quantiles side by side."""

    parts: tuple[Expr, ...]
    labels: tuple[Hashable, ...]
    q: Any
    meta: Any

    def _prefix(self) -> str:
        return "quantile"

    def _layer(self) -> dict[str, TaskSpec]:
        return {self._key(0): (quantile_assemble, (self._part_refs(), self.labels, self.q), {})}


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def info(frame: Any, buf: Any = None, verbose: bool = False, memory_usage: bool = False) -> None:
    """Print a concise summary of a lazy DataFrame, as ``pandas.DataFrame.info`` does.

    Without ``verbose``, only what is known without computing (the columns and dtypes); with
    it, the number of rows, the index range and each column's non-missing count, computed
    in one go; ``memory_usage=True`` adds the bytes held (values of text columns included).
    Written to ``buf`` (a writable text stream) or standard output.
    """
    from zmqdask.base import compute

    meta = frame._meta
    lines = [f"<class '{type(frame).__module__.rsplit('.', 1)[0]}.{type(frame).__name__}'>"]
    columns = list(meta.columns)
    if not verbose:
        if columns:
            lines.append(f"Columns: {len(columns)} entries, {columns[0]} to {columns[-1]}")
        else:
            lines.append("Columns: 0 entries")
    lazy: list[Any] = [frame.count(), frame.index.size]
    if memory_usage:
        lazy.append(frame.memory_usage(deep=True).sum())
    if verbose or memory_usage:
        known = frame.known_divisions and frame.npartitions > 0
        if verbose and not known:
            lazy += [frame.head(1, compute=False).index, frame.tail(1, compute=False).index]
        values = compute(*lazy, alternative="await client.compute(df.count())")
        counts, length = values[0], int(values[1])
        usage = int(values[2]) if memory_usage else None
        if verbose:
            if known:
                first, last = frame.divisions[0], frame.divisions[-1]
            else:
                heads, tails = values[-2], values[-1]
                if length and not len(heads):
                    heads = frame.head(1).index  # the first partition is empty: read on
                if length and not len(tails):
                    tails = frame.tail(1).index
                first = heads[0] if len(heads) else None
                last = tails[-1] if len(tails) else None
            index_kind = type(meta.index).__name__
            span = f", {first} to {last}" if length and first is not None else ""
            lines.append(f"{index_kind}: {length} entries{span}")
            lines.append(f"Data columns (total {len(columns)} columns):")
            lines += _info_table(columns, [int(counts[c]) for c in columns], [str(meta[c].dtype) for c in columns])
    else:
        usage = None
    dtype_counts = meta.dtypes.astype(str).value_counts(sort=False)
    lines.append("dtypes: " + ", ".join(f"{name}({count})" for name, count in sorted(dtype_counts.items())))
    if usage is not None:
        lines.append(f"memory usage: {_format_usage(usage)}")
    out = buf if buf is not None else sys.stdout
    out.write("\n".join(lines) + "\n")


def _info_table(columns: list[Any], counts: list[int], dtypes: list[str]) -> list[str]:
    # pandas' layout: the first cell carries the line's leading space, under a "---" rule.
    header = (" #", "Column", "Non-Null Count", "Dtype")
    rows = [
        (f" {i}", str(name), f"{count} non-null", dtype)
        for i, (name, count, dtype) in enumerate(zip(columns, counts, dtypes, strict=True))
    ]
    widths = [max(3 if k == 0 else 0, len(header[k]), *(len(row[k]) for row in rows)) for k in range(4)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    rule = ["-" * max(3, len(cell.strip())) for cell in header]
    return [line(header), line(rule), *(line(row) for row in rows)]


def _format_usage(nbytes: float) -> str:
    """Bytes as pandas' ``info`` writes them: "330.0 bytes", "1.2 KB", ..."""
    unit = "bytes"
    for bigger in ("KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1024.0:
            break
        nbytes /= 1024.0
        unit = bigger
    return f"{nbytes:3.1f} {unit}"


# --------------------------------------------------------------------------------------------
# The format of dates written as text
# --------------------------------------------------------------------------------------------


def first_valid_chunk(part: Any) -> Any:
    """The first non-missing value of a partition, or None."""
    valid = part.dropna()
    if len(valid) == 0:
        return None
    return valid.iloc[0] if isinstance(valid, pd.Series) else valid[0]


def first_valid_combine(values: list[Any]) -> Any:
    """The first value that is not None, in partition order."""
    return next((value for value in values if value is not None), None)


def guess_format_aggregate(values: list[Any], dayfirst: bool) -> str:
    """pandas' guess of a date format from the Series' first value; "mixed" (each value
    read on its own, as pandas does when it cannot guess) otherwise."""
    from pandas.tseries.api import guess_datetime_format

    value = first_valid_combine(values)
    guessed = guess_datetime_format(value, dayfirst=dayfirst) if isinstance(value, str) else None
    return guessed or "mixed"


def datetime_format(series: Any, dayfirst: bool = False) -> Any:
    """A lazy value: the format pandas would read ``series``' dates in (see
    :func:`guess_format_aggregate`)."""
    expr = Reduction(
        expr_of(series),
        first_valid_chunk,
        first_valid_combine,
        guess_format_aggregate,
        "",
        {},
        {},
        {"dayfirst": dayfirst},
        DEFAULT_SPLIT_EVERY,
        "datetime-format",
    )
    return new_collection(expr)
