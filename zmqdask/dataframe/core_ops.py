"""Expression nodes for the core DataFrame/Series operations, and their partition functions.

Every function a task runs is defined at module level here, so workers import it by name
and the client pickles a short reference.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import (
    Blockwise,
    Expr,
    Projection,
    Reduction,
    RowMover,
    SinglePartition,
    _identity,
    emulate,
    is_frame_like,
    node,
    partition_info,
    unknown_divisions,
)
from zmqdask.dataframe.lower import unify_categories
from zmqdask.dataframe.meta import RowValues, meta_nonempty
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

# ---------------------------------------------------------------------------------------
# Elementwise operators and methods
# ---------------------------------------------------------------------------------------

BINARY_OPERATORS = frozenset("add sub mul truediv floordiv mod pow eq ne lt le gt ge and_ or_ xor".split())
"""Names in :mod:`operator` that :class:`Binop` accepts."""

UNARY_OPERATORS = frozenset("neg pos invert abs".split())
"""Names in :mod:`operator` that :class:`Unary` accepts."""

COLUMNWISE_METHODS = frozenset(
    "abs round clip isna notna isnull notnull fillna astype copy where mask isin between replace map".split()
)
"""Methods that map each column independently when called without column-specific arguments."""


def apply_binop(left: Any, right: Any, op: str) -> Any:
    """``left <op> right`` with an :mod:`operator` function name."""
    return getattr(operator, op)(left, right)


def apply_unary(value: Any, op: str) -> Any:
    """``<op> value`` with an :mod:`operator` function name."""
    return getattr(operator, op)(value)


def call_method(part: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``part.method(*args, **kwargs)``; an index's per-label array (``isin``, ``isna``) as an Index."""
    result = getattr(part, method)(*args, **kwargs)
    if isinstance(result, np.ndarray) and isinstance(part, pd.Index):
        return pd.Index(result, name=part.name)
    return result


def call_accessor(
    part: Any, accessor: str, attr: str, call: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``part.accessor.attr(*args, **kwargs)`` (or the attribute itself when ``call`` is false)."""
    value = getattr(getattr(part, accessor), attr)
    return value(*args, **kwargs) if call else value


def _has_expr_or_dict(values: Any) -> bool:
    for value in values:
        if isinstance(value, (Expr, dict, pd.Series, pd.DataFrame)):
            return True
        if type(value) in (tuple, list) and _has_expr_or_dict(value):
            return True
    return False


@node
class Binop(Blockwise):
    """``left <op> right``; each side is an input expression or a literal."""

    op: str
    left: Any
    right: Any

    def _prefix(self) -> str:
        return self.op.rstrip("_")

    def _function(self) -> Callable[..., Any]:
        return apply_binop

    def _task(self, i: int) -> TaskSpec:
        return (apply_binop, (self._part(self.left, i), self._part(self.right, i), self.op), {})

    def _same_rows(self) -> Expr | None:
        # Aligned operands have the same rows; a frame-like side stands for them.
        for side in (self.left, self.right):
            if isinstance(side, Expr) and is_frame_like(side._meta):
                return side
        return None

    @cached_property
    def _meta(self) -> Any:
        left = self.left._meta if isinstance(self.left, Expr) else self.left
        right = self.right._meta if isinstance(self.right, Expr) else self.right
        return emulate(apply_binop, left, right, self.op)

    def _is_columnwise(self) -> bool:
        for side in (self.left, self.right):
            if isinstance(side, Expr):
                if not isinstance(side._meta, pd.DataFrame):
                    return False
            elif np.ndim(side) != 0:
                return False
        return True


@node
class Unary(Blockwise):
    """``<op> frame`` for neg, pos, invert and abs."""

    op: str
    frame: Expr

    _columnwise = True

    def _prefix(self) -> str:
        return self.op

    def _function(self) -> Callable[..., Any]:
        return apply_unary

    def _task(self, i: int) -> TaskSpec:
        return (apply_unary, (self._part(self.frame, i), self.op), {})

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        return emulate(apply_unary, self.frame._meta, self.op)


@node
class ClearDivisions(Blockwise):
    """The same partitions, with their index bounds forgotten (Dask's ``clear_divisions``)."""

    frame: Expr

    _columnwise = True

    def _function(self) -> Callable[..., Any]:
        return _same

    def _same_rows(self) -> Expr | None:
        return self.frame

    @property
    def divisions(self) -> tuple[Any, ...]:
        return unknown_divisions(self.frame.npartitions)


def _same(part: Any) -> Any:
    return part


@node
class MapMethod(Blockwise):
    """``partition.method(*args, **kwargs)``, an operation that keeps the index."""

    frame: Expr
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def _prefix(self) -> str:
        return self.method.replace("_", "-")

    def _function(self) -> Callable[..., Any]:
        return call_method

    def _task(self, i: int) -> TaskSpec:
        return (
            call_method,
            (self._part(self.frame, i), self.method, self._part(self.args, i), self._part(self.kwargs, i)),
            {},
        )

    def _same_rows(self) -> Expr | None:
        return self.frame if self.method in COLUMNWISE_METHODS else None

    @cached_property
    def _meta(self) -> Any:
        # A row's values (df.mean()) go in as made-up values: emulate passes them on as they are.
        args = tuple(_operand_meta(a) for a in self.args)
        kwargs = {k: _operand_meta(v) for k, v in self.kwargs.items()}
        return emulate(call_method, self.frame._meta, self.method, args, kwargs)

    def _is_columnwise(self) -> bool:
        if self.method not in COLUMNWISE_METHODS:
            return False
        return not _has_expr_or_dict(self.args) and not _has_expr_or_dict(self.kwargs.values())

    def _describe(self) -> str:
        text = f"{self.method}"
        if self.args:
            text += f", args={tuple(a if not isinstance(a, Expr) else '<expr>' for a in self.args)!r}"
        if self.kwargs:
            text += f", kwargs={ {k: v for k, v in self.kwargs.items() if not isinstance(v, Expr)}!r}"
        return text


@node
class MapAccessor(Blockwise):
    """``partition.<accessor>.<attr>`` (called with ``args`` when ``call``), e.g. ``.str.upper()``."""

    frame: Expr
    accessor: str
    attr: str
    call: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def _prefix(self) -> str:
        return f"{self.accessor}-{self.attr}".replace("_", "-")

    def _function(self) -> Callable[..., Any]:
        return call_accessor

    def _task(self, i: int) -> TaskSpec:
        return (
            call_accessor,
            (self._part(self.frame, i), self.accessor, self.attr, self.call, self.args, self.kwargs),
            {},
        )

    @cached_property
    def _meta(self) -> Any:
        return emulate(call_accessor, self.frame._meta, self.accessor, self.attr, self.call, self.args, self.kwargs)


def assign_columns(part: pd.DataFrame, names: tuple[Any, ...], *values: Any) -> pd.DataFrame:
    """``part.assign`` for arbitrary column labels."""
    out = part.copy(deep=False)
    for name, value in zip(names, values, strict=False):
        out[name] = value
    return out


@node
class Assign(Blockwise):
    """New or replaced columns; values are aligned Series, broadcast scalars or literals."""

    frame: Expr
    names: tuple[Any, ...]
    values: tuple[Any, ...]

    def _function(self) -> Callable[..., Any]:
        return assign_columns

    def _task(self, i: int) -> TaskSpec:
        return (assign_columns, (self._part(self.frame, i), self.names, *self._part(self.values, i)), {})

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        values = [v._meta if isinstance(v, Expr) else v for v in self.values]
        return emulate(assign_columns, self.frame._meta, self.names, *values)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if dep == self.frame and needed is not None:
            return needed - set(self.names)
        return None

    def _pushdown_projection(self, columns: Any) -> Expr | None:
        wanted = set(columns) if type(columns) is tuple else {columns}
        if wanted & set(self.names):
            return None
        return Projection(self.frame, columns)


def scalar_partition(part: Any, i: int, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(part, *args, **kwargs)`` as a one-element Series labelled with the partition number."""
    return pd.Series([func(part, *args, **kwargs)], index=[i])


@node
class MapPartitionsScalar(Blockwise):
    """A function returning one value per partition; the values form a Series."""

    def _partitioning_parents(self) -> list[Expr] | None:
        return None  # one value per partition, labelled by partition number

    frame: Expr
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    meta: Any
    partition_info: bool = False

    def _prefix(self) -> str:
        return getattr(self.func, "__name__", "map-partitions").lower().strip("<>")

    def _task(self, i: int) -> TaskSpec:
        kwargs = self._part(self.kwargs, i)
        if self.partition_info:
            kwargs = {**kwargs, "partition_info": partition_info(self.frame.divisions, i)}
        refs = (self._part(self.frame, i), i, self.func, self._part(self.args, i), kwargs)
        return (scalar_partition, refs, {})

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    @property
    def divisions(self) -> tuple[Any, ...]:
        return (*range(self.npartitions), self.npartitions - 1)


def sample_part(part: Any, frac: float, replace: bool, seed: int, i: int) -> Any:
    """A random fraction of partition ``i``'s rows, from a stream of its own."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
    return part.sample(frac=frac, replace=replace, random_state=rng)


@node
class Sample(Blockwise):
    """A random fraction of every partition's rows."""

    frame: Expr
    frac: float
    replace: bool
    seed: int

    _columnwise = True

    def _task(self, i: int) -> TaskSpec:
        return (sample_part, (self._part(self.frame, i), self.frac, self.replace, self.seed, i), {})

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta


def random_split_part(part: Any, lower: float, upper: float, seed: int, i: int) -> Any:
    """The rows of partition ``i`` whose draw lies in ``[lower, upper)``: every piece of one
    split draws the same stream, so the pieces are disjoint and cover the partition."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
    draws = rng.random(len(part))
    return part[(draws >= lower) & (draws < upper)]


@node
class RandomSplitPiece(Blockwise):
    """One piece of ``random_split``: the rows whose random draw falls in ``[lower, upper)``."""

    frame: Expr
    lower: float
    upper: float
    seed: int

    _columnwise = True

    def _task(self, i: int) -> TaskSpec:
        return (random_split_part, (self._part(self.frame, i), self.lower, self.upper, self.seed, i), {})

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta


# ---------------------------------------------------------------------------------------
# Row selections: keep columns, drop rows (projections move below them)
# ---------------------------------------------------------------------------------------


def head_part(part: Any, n: int) -> Any:
    """The first ``n`` rows."""
    return part.iloc[:n]


def tail_part(part: Any, n: int) -> Any:
    """The last ``n`` rows."""
    return part.iloc[max(len(part) - n, 0) :] if n > 0 else part.iloc[:0]


def loc_part(part: Any, lower: Any, upper: Any) -> Any:
    """Rows whose label lies in ``[lower, upper]`` (``None``: open), for a sorted index."""
    return part.loc[lower:upper]


def loc_labels(part: Any, labels: list[Any]) -> Any:
    """Rows whose label is one of ``labels``."""
    return part[part.index.isin(labels)]


def loc_label(part: Any, label: Any) -> Any:
    """Rows labelled ``label``, in any order of the index; a string on a datetime index
    names a period (``"2000-01"``, ``"2000-01-03"``), as pandas' partial string indexing."""
    index = part.index
    if isinstance(index, pd.DatetimeIndex) and isinstance(label, str):
        bounds = _string_period(label, index.tz)
        if bounds is not None:
            return part[(index >= bounds[0]) & (index <= bounds[1])]
    return part[index.isin([label])]


def _string_period(text: str, tz: Any) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and last instant of the period a date string names (None if it names none)."""
    try:
        period = pd.Period(text)
    except (ValueError, TypeError):
        return None
    start, end = period.start_time, period.end_time
    if tz is not None:
        start, end = start.tz_localize(tz), end.tz_localize(tz)
    return start, end


def dropna_part(part: Any, kwargs: dict[str, Any]) -> Any:
    """``part.dropna(**kwargs)``."""
    return part.dropna(**kwargs)


@node
class RowSelect(Blockwise):
    """``func(partition, *args)`` where ``func`` keeps some rows and every column."""

    frame: Expr
    func: Callable[..., Any]
    args: tuple[Any, ...]
    label: str

    _columnwise = True

    def _prefix(self) -> str:
        return self.label

    def _task(self, i: int) -> TaskSpec:
        return (self.func, (self._part(self.frame, i), *self.args), {})

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta

    def _describe(self) -> str:
        return f"{self.label}{self.args!r}"


def concat_parts(parts: list[Any]) -> Any:
    """Concatenate partitions, ignoring empty ones (pandas warns about their dtypes)."""
    if len(parts) == 1:
        return parts[0]
    non_empty = [p for p in parts if len(p)]
    if not non_empty:
        return parts[0]
    if len(non_empty) == 1:
        return non_empty[0]
    return pd.concat(unify_categories(non_empty))


@node
class Repartition(RowMover):
    """Output partition ``j`` is the concatenation of input partitions ``groups[j]``."""

    frame: Expr
    groups: tuple[tuple[int, ...], ...]

    _columnwise = True

    @property
    def npartitions(self) -> int:
        return len(self.groups)

    @property
    def divisions(self) -> tuple[Any, ...]:
        old = self.frame.divisions
        if old[0] is None:
            return unknown_divisions(self.npartitions)
        return (*tuple(old[g[0]] for g in self.groups), old[self.groups[-1][-1] + 1])

    def _layer(self) -> dict[str, TaskSpec]:
        layer: dict[str, TaskSpec] = {}
        for j, group in enumerate(self.groups):
            refs = [TaskRef(self.frame._key(i)) for i in group]
            layer[self._key(j)] = (concat_parts, (refs,), {})
        return layer

    def _simplify_down(self) -> Expr | None:
        if all(len(g) == 1 for g in self.groups):
            from zmqdask.dataframe.expr import Partitions

            return Partitions(self.frame, tuple(g[0] for g in self.groups))
        return None

    def _describe(self) -> str:
        return f"{self.frame.npartitions} -> {self.npartitions} partitions"


def split_rows(part: Any, pieces: int, which: int) -> Any:
    """Piece ``which`` of ``pieces`` nearly equal row ranges of ``part``."""
    bounds = np.linspace(0, len(part), pieces + 1).round().astype(int)
    return part.iloc[bounds[which] : bounds[which + 1]]


def split_index(part: Any, lower: Any, upper: Any, last: bool) -> Any:
    """Rows with ``lower <= label < upper`` (``<= upper`` when ``last``)."""
    index = part.index
    start = 0 if lower is None else int(index.searchsorted(lower, side="left"))
    stop = len(index) if upper is None else int(index.searchsorted(upper, side="right" if last else "left"))
    return part.iloc[start:stop]


@node
class AsRow(SinglePartition):
    """Values per column of a frame (``df.mean()``, ``df.max() - df.min()``), as a row that
    each partition of another frame is combined with: ``(df - df.mean()) / df.std()``."""

    frame: Expr
    labels: tuple[Any, ...]
    """The values' column labels, taken when made (optimizing may replace the inputs)."""
    dtype: Any

    def _prefix(self) -> str:
        return "as-row"

    @cached_property
    def _meta(self) -> Any:
        return RowValues(pd.Index(self.labels), self.dtype)

    def _layer(self) -> dict[str, TaskSpec]:
        return {self._key(0): (_identity, (TaskRef(self.frame._key(0)),), {})}


def _operand_meta(operand: Any) -> Any:
    if not isinstance(operand, Expr):
        return operand
    meta = operand._meta
    return meta.sample() if isinstance(meta, RowValues) else meta


def as_row(expr: Expr) -> Expr | None:
    """``expr`` as the values of a row, when it is one value per column of a DataFrame:
    a reduction of one, or elementwise arithmetic of such reductions (and scalars)."""
    if not isinstance(expr._meta, pd.Series):
        return None
    labels = _row_labels(expr)
    if labels is None:
        return None
    return AsRow(expr, tuple(labels), expr._meta.dtype)


def _row_labels(expr: Expr) -> pd.Index | None:
    """The column labels a row-valued expression has, or None if it is not one."""
    if isinstance(expr, Reduction):
        frame_meta = expr.frame._meta
        if not isinstance(frame_meta, pd.DataFrame):
            return None
        try:
            # The reduction itself, on made-up rows: its result's index (numeric_only and
            # other options decide which columns remain).
            sample = meta_nonempty(frame_meta)
            value = expr.aggregate([expr.chunk(sample, **expr.chunk_kwargs)], **expr.aggregate_kwargs)
        except Exception:
            return frame_meta.columns
        return value.index if isinstance(value, pd.Series) else None
    if isinstance(expr, Blockwise) and expr.npartitions == 1:
        labels: pd.Index | None = None
        for dep in expr.dependencies():
            if not is_frame_like(dep._meta):
                continue
            found = _row_labels(dep)
            if found is None:
                return None
            labels = found if labels is None else labels.union(found, sort=False)
        return labels
    return None


@node
class SplitPartitions(RowMover):
    """Each input partition ``i`` cut into ``pieces[i]`` output partitions.

    With ``bounds`` (one tuple of inner index boundaries per input partition) pieces are cut
    by index value and divisions stay known; otherwise by row count.
    """

    frame: Expr
    pieces: tuple[int, ...]
    bounds: tuple[tuple[Any, ...], ...] | None

    _columnwise = True

    @property
    def npartitions(self) -> int:
        return sum(self.pieces)

    @property
    def divisions(self) -> tuple[Any, ...]:
        if self.bounds is None:
            return unknown_divisions(self.npartitions)
        old = self.frame.divisions
        out: list[Any] = []
        for i, inner in enumerate(self.bounds):
            out.append(old[i])
            out.extend(inner)
        out.append(old[-1])
        return tuple(out)

    def _layer(self) -> dict[str, TaskSpec]:
        layer: dict[str, TaskSpec] = {}
        j = 0
        divisions = self.divisions
        last_input = len(self.pieces) - 1
        for i, count in enumerate(self.pieces):
            ref = TaskRef(self.frame._key(i))
            for which in range(count):
                if self.bounds is None:
                    layer[self._key(j)] = (split_rows, (ref, count, which), {})
                else:
                    lower = None if which == 0 else divisions[j]
                    upper = None if which == count - 1 else divisions[j + 1]
                    last = i == last_input and which == count - 1
                    layer[self._key(j)] = (split_index, (ref, lower, upper, last), {})
                j += 1
        return layer


@node
class RepartitionDivisions(RowMover):
    """The rows of ``frame`` (known divisions) regrouped at ``new_divisions``.

    Rows below the first or above the last new division go to the first or last partition.
    """

    frame: Expr
    new_divisions: tuple[Any, ...]

    _columnwise = True

    @property
    def npartitions(self) -> int:
        return len(self.new_divisions) - 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.new_divisions

    def _layer(self) -> dict[str, TaskSpec]:
        old = self.frame.divisions
        new = self.new_divisions
        n_old = len(old) - 1
        n_new = len(new) - 1
        layer: dict[str, TaskSpec] = {}
        for j in range(n_new):
            lower = None if j == 0 else new[j]
            upper = None if j == n_new - 1 else new[j + 1]
            pieces = []
            for i in range(n_old):
                # Input i holds [old[i], old[i+1]) (the last one is closed); skip disjoint ones.
                if upper is not None and old[i] >= upper:
                    continue
                if lower is not None and (old[i + 1] < lower or (old[i + 1] == lower and i < n_old - 1)):
                    continue
                key = f"{self._name}-piece-{i}-{j}"
                layer[key] = (split_index, (TaskRef(self.frame._key(i)), lower, upper, False), {})
                pieces.append(TaskRef(key))
            if not pieces:
                # No input overlaps: the empty range [new[j], new[j]) of any input gives the
                # columns and dtypes (``lower`` is None for the first output: all rows).
                key = f"{self._name}-piece-0-{j}"
                layer[key] = (split_index, (TaskRef(self.frame._key(0)), new[j], new[j], False), {})
                pieces.append(TaskRef(key))
            layer[self._key(j)] = (concat_parts, (pieces,), {})
        return layer

    def _describe(self) -> str:
        return f"{self.frame.npartitions} -> {self.npartitions} partitions at new divisions"


def union_divisions(*all_divisions: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sorted distinct boundaries of several known division tuples."""
    values = sorted(set().union(*(set(d) for d in all_divisions)))
    return tuple(values)


# ---------------------------------------------------------------------------------------
# Index and global row numbers
# ---------------------------------------------------------------------------------------


def index_of(part: Any) -> pd.Index:
    """The partition's index."""
    return part.index


@node
class IndexOf(Blockwise):
    """The index of every partition (an Index collection)."""

    frame: Expr

    def _prefix(self) -> str:
        return "index"

    def _function(self) -> Callable[..., Any]:
        return index_of

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta.index

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        return frozenset()


def index_attribute(
    part: Any, attr: str, call: bool, args: tuple[Any, ...], kwargs: dict[str, Any], as_series: bool
) -> Any:
    """``part.index.<attr>`` (called when ``call``): an Index, or a Series indexed like ``part``."""
    value = getattr(part.index, attr)
    if call:
        value = value(*args, **kwargs)
    if isinstance(value, np.ndarray):
        value = pd.Index(value, name=part.index.name)  # one value per label (``date``, ``isin``)
    if as_series:
        name = value.name if isinstance(value, pd.Index) else part.index.name
        return pd.Series(np.asarray(value), index=part.index, name=name)
    return value


@node
class IndexAttribute(Blockwise):
    """An attribute (``hour``) or method result (``floor("h")``) of every partition's index.

    ``as_series`` gives the values as a Series indexed like the frame, which lines up with
    the frame's rows for filters, grouping and arithmetic.
    """

    frame: Expr
    attr: str
    call: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    as_series: bool = False

    def _prefix(self) -> str:
        return f"index-{self.attr}".replace("_", "-")

    def _task(self, i: int) -> TaskSpec:
        frame = self._part(self.frame, i)
        return (index_attribute, (frame, self.attr, self.call, self.args, self.kwargs, self.as_series), {})

    @cached_property
    def _meta(self) -> Any:
        return emulate(index_attribute, self.frame._meta, self.attr, self.call, self.args, self.kwargs, self.as_series)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        return frozenset()

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions if self.as_series else unknown_divisions(self.npartitions)


def length_chunk(part: Any) -> list[int]:
    """A partition's row count, as a one-element list."""
    return [len(part)]


def concat_lists(items: list[list[Any]]) -> list[Any]:
    """Concatenate lists in order."""
    out: list[Any] = []
    for item in items:
        out.extend(item)
    return out


def reset_index_part(part: Any, lengths: list[int], i: int, drop: bool) -> Any:
    """``reset_index`` of partition ``i`` numbering rows after the preceding partitions."""
    start = int(sum(lengths[:i]))
    out = part.reset_index(drop=drop)
    out.index = pd.RangeIndex(start, start + len(out))
    return out


@node
class ResetIndex(Blockwise):
    """``reset_index`` with one global row numbering, as pandas gives it."""

    def _partitioning_parents(self) -> list[Expr] | None:
        return None  # new labels: the input's do not tell where these rows are

    frame: Expr
    lengths: Expr
    drop: bool

    def _prefix(self) -> str:
        return "reset-index"

    def _task(self, i: int) -> TaskSpec:
        return (reset_index_part, (TaskRef(self.frame._key(i)), TaskRef(self.lengths._key(0)), i, self.drop), {})

    def _dep_partition(self, dep: Expr, i: int) -> int:
        return i if dep == self.frame else 0

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta.reset_index(drop=self.drop)

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return unknown_divisions(self.frame.npartitions)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if dep != self.frame:
            return frozenset()
        if needed is None or self.drop:
            return needed
        added = set(self._meta.columns) - set(self.frame._meta.columns)
        return needed - added


# ---------------------------------------------------------------------------------------
# Reductions: chunk / combine / aggregate functions
# ---------------------------------------------------------------------------------------


def _one_row(values: pd.Series) -> pd.DataFrame:
    """A one-row frame from a reduction result, each column keeping its own dtype."""
    frame = pd.DataFrame({k: [v] for k, v in enumerate(values.tolist())})
    frame.columns = values.index
    return frame


def reduce_chunk(part: Any, how: str, kwargs: dict[str, Any]) -> Any:
    """One partition's partial result: a one-row frame (DataFrame) or a 0/1-row Series."""
    if len(part) == 0 and how != "count":
        # Left out of the merge; a count is merged by summing, so an empty part counts 0
        # (were every part empty, the sum of no rows would be 0.0 or "" by dtype).
        return part.iloc[:0]
    result = getattr(part, how)(**kwargs)
    if isinstance(part, pd.DataFrame):
        return _one_row(result)
    return pd.Series([result])


def reduce_combine(chunks: list[Any], how: str, kwargs: dict[str, Any]) -> Any:
    """Merge partial results into one of the same kind."""
    non_empty = [c for c in chunks if len(c)]
    if not non_empty:
        return chunks[0]
    joined = pd.concat(non_empty, ignore_index=True) if len(non_empty) > 1 else non_empty[0]
    result = getattr(joined, how)(**kwargs)
    if isinstance(joined, pd.DataFrame):
        return _one_row(result)
    return pd.Series([result])


def reduce_aggregate(chunks: list[Any], how: str, kwargs: dict[str, Any]) -> Any:
    """The final result from partial results (a Series for a DataFrame, else a scalar)."""
    non_empty = [c for c in chunks if len(c)]
    if not non_empty:
        return getattr(chunks[0], how)(**kwargs)
    joined = pd.concat(non_empty, ignore_index=True) if len(non_empty) > 1 else non_empty[0]
    return getattr(joined, how)(**kwargs)


def memory_usage_chunk(part: Any, index: bool, deep: bool) -> Any:
    """One partition's bytes: a one-row frame per column (DataFrame) or a one-row Series."""
    if isinstance(part, pd.DataFrame):
        return _one_row(part.memory_usage(index=index, deep=deep))
    if isinstance(part, pd.Index):
        return pd.Series([part.memory_usage(deep=deep)])
    return pd.Series([part.memory_usage(index=index, deep=deep)])


COMBINE_HOW = {"sum": "sum", "min": "min", "max": "max", "count": "sum", "prod": "prod", "any": "any", "all": "all"}
"""The reduction that merges partial results of each simple reduction."""


def mean_chunk(part: Any, skipna: bool, numeric_only: bool) -> tuple[Any, Any]:
    """Sum and count of one partition; integers are summed as floats, as pandas' mean does
    (large values would overflow an integer sum)."""
    if isinstance(part, pd.DataFrame):
        if numeric_only:
            part = part.select_dtypes(include=["number", "bool"])
        integers = {c: "float64" for c, t in part.dtypes.items() if isinstance(t, np.dtype) and t.kind in "iu"}
        if integers:
            part = part.astype(integers)
        return part.sum(skipna=skipna), part.count()
    if isinstance(part.dtype, np.dtype) and part.dtype.kind in "iu":
        part = part.astype("float64")
    return part.sum(skipna=skipna), part.count()


def mean_combine(chunks: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Add sums and counts."""
    total, count = chunks[0]
    for more, n in chunks[1:]:
        total = total + more
        count = count + n
    return total, count


def mean_aggregate(chunks: list[tuple[Any, Any]]) -> Any:
    """Sum over count; NaN where nothing was counted."""
    total, count = mean_combine(chunks)
    if isinstance(total, pd.Series):
        return (total / count.where(count > 0)).astype("float64")
    if count == 0:
        return np.float64("nan")
    return np.float64(total) / count


def time_mean_chunk(part: Any) -> tuple[int, int, bool, Any]:
    """Exact sum of one partition's dates or durations (as integers of their unit), how many
    values it has, whether one was missing, and the dtype."""
    valid = part.dropna()
    ticks = np.asarray(valid.array.asi8, dtype="i8")
    # Two halves, each summed in int64 without overflow, joined in Python's unbounded ints.
    high, low = np.divmod(ticks, 1 << 32)
    total = int(high.sum()) * (1 << 32) + int(low.sum())
    return total, len(valid), len(valid) < len(part), part.dtype


def time_mean_combine(chunks: list[tuple[int, int, bool, Any]]) -> tuple[int, int, bool, Any]:
    """Add sums and counts."""
    total, count, missing, dtype = chunks[0]
    for more, n, more_missing, _ in chunks[1:]:
        total += more
        count += n
        missing = missing or more_missing
    return total, count, missing, dtype


def time_mean_aggregate(chunks: list[tuple[int, int, bool, Any]], skipna: bool) -> Any:
    """The mean date or duration, rounded to its unit; NaT when there is none (or one is
    missing, without skipna)."""
    total, count, missing, dtype = time_mean_combine(chunks)
    if not count or (missing and not skipna):
        return pd.NaT
    mean = (2 * total + count) // (2 * count)  # the nearest integer
    return pd.Series(np.array([mean], dtype="i8")).astype(dtype).iloc[0]


def sum_min_count_aggregate(chunks: list[tuple[Any, Any]], min_count: int) -> Any:
    """Sum of partial sums; NaN where fewer than ``min_count`` values were counted."""
    total, count = mean_combine(chunks)
    if isinstance(total, pd.Series):
        return total.where(count >= min_count)
    return total if count >= min_count else np.float64("nan")


def _deviations(part: Any, numeric_only: bool) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a partition (a Series is one column, labels None): which values are
    there, how many, their mean, and each value's deviation from it (0 where missing)."""
    if isinstance(part, pd.DataFrame):
        if numeric_only:
            part = part.select_dtypes(include=["number", "bool"])
        labels: Any = part.columns
        values = part.to_numpy(dtype="float64", na_value=np.nan)
    else:
        labels = None
        values = part.to_numpy(dtype="float64", na_value=np.nan).reshape(-1, 1)
    valid = ~np.isnan(values)
    count = valid.sum(axis=0).astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(values, axis=0) / np.maximum(count, 1), 0.0)
        deviations = np.where(valid, values - mean, 0.0)
    return labels, valid, count, mean, deviations


def moments_chunk(part: Any, numeric_only: bool) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sum of squared deviations per column, for a mergeable variance."""
    labels, _, count, mean, deviations = _deviations(part, numeric_only)
    return labels, count, mean, (deviations**2).sum(axis=0)


def moments_combine(
    chunks: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Merge moments pairwise (Chan et al.'s parallel update)."""
    labels, count, mean, m2 = chunks[0]
    for _, n_b, mean_b, m2_b in chunks[1:]:
        total = count + n_b
        safe = np.maximum(total, 1)
        delta = mean_b - mean
        mean = np.where(total > 0, mean + delta * n_b / safe, 0.0)
        m2 = m2 + m2_b + delta**2 * count * n_b / safe
        count = total
    return labels, count, mean, m2


def moments_aggregate(chunks: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]], ddof: int, sqrt: bool) -> Any:
    """Variance (or standard deviation) from merged moments."""
    labels, count, _, m2 = moments_combine(chunks)
    denominator = count - ddof
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(denominator > 0, m2 / np.where(denominator > 0, denominator, 1), np.nan)
    result = np.sqrt(var) if sqrt else var
    if labels is None:
        return np.float64(result[0])
    return pd.Series(result, index=labels, dtype="float64")


def combine_first_meta(left: Any, right: Any) -> Any:
    """The schema of ``left.combine_first(right)`` over partitions: a column that only one
    side has is missing where the other side's rows are, so integers become floats and
    booleans objects there, as pandas gives them (a Series has a value at every label)."""
    meta = emulate(lambda a, b: a.combine_first(b), left, right)
    if isinstance(meta, pd.DataFrame):
        shared = set(left.columns) & set(right.columns) if isinstance(right, pd.DataFrame) else set()
        widened = {c: _nullable(meta[c].dtype) for c in meta.columns if c not in shared}
        return meta.astype({c: d for c, d in widened.items() if d != meta[c].dtype})
    return meta


def _nullable(dtype: Any) -> Any:
    if pd.api.types.is_bool_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return np.dtype(object)
    if pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return np.dtype("float64")
    return dtype


def combine_first_part(left: Any, right: Any, meta: Any) -> Any:
    """One partition of ``combine_first``, in the schema every partition shares (pandas
    treats an empty side differently, and may fail casting missing values back)."""
    if len(right) == 0:
        result = left
    elif len(left) == 0:
        result = right
    else:
        result = left.combine_first(right)
    from zmqdask.dataframe.categorical import conform_dtypes

    if isinstance(meta, pd.DataFrame):
        result = result.reindex(columns=meta.columns)
    return conform_dtypes(result, meta)


HigherMoments = tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Column labels (None for a Series), then per column: count of values, mean, and the sums
of the 2nd, 3rd and 4th powers of deviations from it, and whether a value was missing."""

_ROUNDING_ZERO = 1e-14
"""A sum of squared deviations below this is a constant column's rounding error (as pandas)."""


def higher_moments_chunk(part: Any, numeric_only: bool) -> HigherMoments:
    """Count, mean and central moment sums up to the 4th per column, missing values skipped."""
    labels, valid, count, mean, deviations = _deviations(part, numeric_only)
    squares = deviations**2
    return (
        labels,
        count,
        mean,
        squares.sum(axis=0),
        (squares * deviations).sum(axis=0),
        (squares**2).sum(axis=0),
        np.asarray(~valid.all(axis=0)),
    )


def higher_moments_combine(chunks: list[HigherMoments]) -> HigherMoments:
    """Merge moment sums pairwise (Pébay's formulas for the 3rd and 4th)."""
    labels, n_a, mean, m2, m3, m4, missing = chunks[0]
    for _, n_b, mean_b, m2_b, m3_b, m4_b, missing_b in chunks[1:]:
        n = n_a + n_b
        safe = np.maximum(n, 1)
        delta = mean_b - mean
        ratio = delta / safe
        m4 = (
            m4
            + m4_b
            + delta * ratio**3 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b)
            + 6 * ratio**2 * (n_a * n_a * m2_b + n_b * n_b * m2)
            + 4 * ratio * (n_a * m3_b - n_b * m3)
        )
        m3 = m3 + m3_b + delta * ratio**2 * n_a * n_b * (n_a - n_b) + 3 * ratio * (n_a * m2_b - n_b * m2)
        m2 = m2 + m2_b + delta * ratio * n_a * n_b
        mean = np.where(n > 0, mean + delta * n_b / safe, 0.0)
        missing = missing | missing_b
        n_a = n
    return labels, n_a, mean, m2, m3, m4, missing


def _moment_result(labels: Any, values: np.ndarray) -> Any:
    if labels is None:
        return np.float64(values[0])
    return pd.Series(values, index=labels, dtype="float64")


def skew_aggregate(chunks: list[HigherMoments], bias: bool, skipna: bool) -> Any:
    """Skewness from merged moments: biased (as Dask and scipy) or pandas' adjusted one."""
    labels, n, _, m2, m3, _, missing = higher_moments_combine(chunks)
    m2 = np.where(m2 < _ROUNDING_ZERO, 0.0, m2)
    with np.errstate(invalid="ignore", divide="ignore"):
        if bias:
            # Dask's and scipy's: a constant column has skewness 0.
            value = np.where(m2 > 0, (m3 / n) / (m2 / n) ** 1.5, 0.0)
            value = np.where(n > 0, value, np.nan)
        else:
            # pandas': undefined (NaN) for a constant column.
            adjusted = n * np.sqrt(n - 1) / (n - 2) * m3 / m2**1.5
            value = np.where((n < 3) | (m2 == 0), np.nan, adjusted)
    if not skipna:
        value = np.where(missing, np.nan, value)
    return _moment_result(labels, value)


def kurtosis_aggregate(chunks: list[HigherMoments], fisher: bool, bias: bool, skipna: bool) -> Any:
    """Kurtosis from merged moments: biased (as Dask and scipy) or pandas' adjusted one;
    excess kurtosis (``fisher``) or Pearson's."""
    labels, n, _, m2, _, m4, missing = higher_moments_combine(chunks)
    m2 = np.where(m2 < _ROUNDING_ZERO, 0.0, m2)
    with np.errstate(invalid="ignore", divide="ignore"):
        if bias:
            # Dask's: a constant column has kurtosis 0 before Fisher's shift.
            value = np.where(m2 > 0, (m4 / n) / (m2 / n) ** 2, 0.0)
            value = np.where(n > 0, value - 3 if fisher else value, np.nan)
        else:
            numerator = n * (n + 1) * (n - 1) * m4
            denominator = (n - 2) * (n - 3) * m2**2
            excess = numerator / denominator - 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))
            value = np.where((n < 4) | (m2 == 0), np.nan, excess if fisher else excess + 3)
    if not skipna:
        value = np.where(missing, np.nan, value)
    return _moment_result(labels, value)


def size_chunk(part: Any) -> int:
    """Number of elements of one partition."""
    return int(part.size)


def sum_values(items: list[Any]) -> Any:
    """Plain sum of partial results."""
    return sum(items)


def is_scalar_meta(meta: Any) -> bool:
    """Whether a meta stands for a scalar (not a partitioned object)."""
    return not is_frame_like(meta)
