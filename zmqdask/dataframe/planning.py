"""Expression builders behind collection methods: alignment, repartitioning, label and edge selections.

These work on expressions only (never on collection objects), so they are easy to test
and to reuse from other modules of ``zmqdask.dataframe``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe import core_ops as ops
from zmqdask.dataframe.expr import (
    Expr,
    MapPartitions,
    Partitions,
    Reduction,
    emulate,
    make_meta,
    partition_info,
    partitioning_roots,
)
from zmqdask.errors import UsageError

REPR_EDGE_ROWS = 2
"""Division rows shown at each end of a structure repr before eliding the middle."""


def repartition_expr(expr: Expr, npartitions: int) -> Expr:
    """``expr`` in ``npartitions`` partitions: neighbours concatenated, or partitions split."""
    current = expr.npartitions
    if npartitions == current:
        return expr
    if npartitions < current:
        cuts = np.linspace(0, current, npartitions + 1).round().astype(int)
        groups = tuple(tuple(range(cuts[j], cuts[j + 1])) for j in range(npartitions))
        return ops.Repartition(expr, groups)
    base, extra = divmod(npartitions, current)
    pieces = tuple(base + (1 if i < extra else 0) for i in range(current))
    divisions = expr.divisions
    bounds: tuple[tuple[Any, ...], ...] | None = None
    if expr.known_divisions and _interpolatable(divisions):
        inner: list[tuple[Any, ...]] = []
        for i, count in enumerate(pieces):
            inner.append(tuple(_interpolate(divisions[i], divisions[i + 1], count)))
        flat = [divisions[0]]
        for i, points in enumerate(inner):
            flat.extend(points)
            flat.append(divisions[i + 1])
        if all(a < b for a, b in itertools.pairwise(flat)):
            bounds = tuple(inner)
    return ops.SplitPartitions(expr, pieces, bounds)


def _interpolatable(divisions: tuple[Any, ...]) -> bool:
    sample = divisions[0]
    return isinstance(sample, (pd.Timestamp, int, float, np.integer, np.floating)) and not isinstance(sample, bool)


def _interpolate(lo: Any, hi: Any, count: int) -> list[Any]:
    if isinstance(lo, pd.Timestamp):
        span = hi - lo
        return [lo + span * k / count for k in range(1, count)]
    if isinstance(lo, (int, np.integer)):
        return [int(lo + (hi - lo) * k // count) for k in range(1, count)]
    return [lo + (hi - lo) * k / count for k in range(1, count)]


def edge_expr(expr: Expr, n: int, picked: list[int], func: Callable[..., Any], label: str) -> Expr:
    """The first (``head_part``) or last (``tail_part``) ``n`` rows of some partitions."""
    selected = Partitions(expr, tuple(picked))
    per_part = ops.RowSelect(selected, func, (n,), label)
    if len(picked) == 1:
        return per_part
    together = ops.Repartition(per_part, (tuple(range(len(picked))),))
    return ops.RowSelect(together, func, (n,), label)


def sorted_edge_expr(expr: Expr, n: int, last: bool) -> Expr | None:
    """The first (or last) ``n`` rows of a sort, without the shuffle, when ``expr`` is a sort."""
    from zmqdask.dataframe.shuffle import SortValues, sorted_edge_reduction

    if not isinstance(expr, SortValues) or expr.frame.npartitions < 2:
        return None
    return sorted_edge_reduction(expr, n, last)


def align(*exprs: Expr) -> list[Expr]:
    """Inputs for a partition-wise operation on several collections.

    Scalars broadcast.  Frames must have equal partitioning: equal known divisions, or
    the same number of partitions when some are unknown; frames with different known
    divisions are repartitioned to the union of their divisions.
    """
    frames = [e for e in exprs if not ops.is_scalar_meta(e._meta)]
    if len(frames) < 2:
        return list(exprs)
    first = frames[0]
    if first.known_divisions and all(f.divisions == first.divisions for f in frames):
        return list(exprs)
    if all(f.known_divisions for f in frames):
        try:
            union = ops.union_divisions(*(f.divisions for f in frames))
        except TypeError as exc:
            raise UsageError(f"cannot align partitions with incomparable divisions: {exc}") from None
        return [
            ops.RepartitionDivisions(e, union) if not ops.is_scalar_meta(e._meta) and e.divisions != union else e
            for e in exprs
        ]
    # Unknown divisions: partition i of each holds the same labels only when all come from
    # the same nodes through steps that keep partitions (filters, column arithmetic, scans),
    # not through a shuffle, a sort or a reading of their own.
    if all(f.npartitions == 1 for f in frames):
        return list(exprs)  # every label is in the one partition
    roots = partitioning_roots(first)
    if all(f.npartitions == first.npartitions and partitioning_roots(f) == roots for f in frames):
        return list(exprs)
    raise UsageError(
        "cannot line these collections up row by row: their divisions are not all known and their rows "
        "were partitioned differently (by a shuffle, a sort, a groupby apply or separate reads), so "
        "equal index labels may sit in different partitions. Give both known divisions "
        "(set_index(column, sorted=True) if sorted, else set_index(column)), or compute the smaller one first"
    )


def is_full_slice(key: Any) -> bool:
    """Whether ``key`` is ``:`` (every row)."""
    return isinstance(key, slice) and key.start is None and key.stop is None and key.step is None


def _bounds(label: Any, divisions: tuple[Any, ...], upper: bool) -> Any:
    """A comparable bound for a loc label: date strings cover their whole period."""
    if label is None:
        return None
    sample = divisions[0]
    if isinstance(label, str) and isinstance(sample, pd.Timestamp):
        try:
            period = pd.Period(label)
        except (ValueError, TypeError):
            return pd.Timestamp(label)
        if upper:
            return (period + 1).start_time - pd.Timedelta(1, "ns")
        return period.start_time
    return label


def partitions_for(divisions: tuple[Any, ...], start: Any, stop: Any, is_slice: bool) -> list[int]:
    """Partitions that may hold labels in ``[start, stop]`` (conservative on errors)."""
    n = len(divisions) - 1
    try:
        lower = _bounds(start, divisions, upper=False)
        upper = _bounds(stop, divisions, upper=True)
        keep = []
        for i in range(n):
            last = i == n - 1
            if upper is not None and divisions[i] > upper:
                continue
            if lower is not None and (divisions[i + 1] < lower or (divisions[i + 1] == lower and not last)):
                continue
            keep.append(i)
        return keep
    except TypeError:
        return list(range(n))


def loc_expr(expr: Expr, start: Any, stop: Any, is_slice: bool) -> Expr:
    """Rows labelled ``start`` (or in ``[start, stop]`` for a slice), reading only partitions that may hold them."""
    if expr.known_divisions:
        keep = partitions_for(expr.divisions, start, stop, is_slice)
        expr = Partitions(expr, tuple(keep or [0]))
    if is_slice:
        return ops.RowSelect(expr, ops.loc_part, (start, stop), "loc")
    if not expr.known_divisions:
        return ops.RowSelect(expr, ops.loc_label, (start,), "loc")
    return ops.RowSelect(expr, ops.loc_part, (start, stop), "loc")


def reset_index_expr(expr: Expr, drop: bool) -> Expr:
    """``reset_index`` numbering rows 0..n-1 across partitions (partition lengths come first)."""
    lengths = Reduction(
        expr,
        ops.length_chunk,
        ops.concat_lists,
        ops.concat_lists,
        [],
        label="partition-lengths",
        columns_needed=(),
    )
    return ops.ResetIndex(expr, lengths, drop)


def division_labels(divisions: tuple[Any, ...]) -> list[str]:
    """The division rows of a structure repr (the middle elided for many partitions)."""
    if divisions and divisions[0] is not None and all(isinstance(d, pd.Timestamp) for d in divisions):
        # Dates without a time of day print as plain dates, as pandas prints such an index.
        shown = [str(label) for label in pd.DatetimeIndex(divisions).astype(str)]
    else:
        shown = ["" if d is None else str(d) for d in divisions]
    if len(shown) > 2 * REPR_EDGE_ROWS + 1:
        shown = [*shown[:REPR_EDGE_ROWS], "...", *shown[-REPR_EDGE_ROWS:]]
    return shown


def meta_from(meta: Any, name: Any = None) -> Any:
    """An empty pandas object (or scalar sample) from a ``meta=`` argument."""
    if isinstance(meta, (pd.DataFrame, pd.Series, pd.Index)):
        return make_meta(meta)
    if isinstance(meta, dict):
        return pd.DataFrame({k: pd.Series(dtype=v) for k, v in meta.items()})
    if isinstance(meta, (list, tuple)) and meta and all(isinstance(p, tuple) and len(p) == 2 for p in meta):
        return pd.DataFrame({k: pd.Series(dtype=v) for k, v in meta})
    if isinstance(meta, tuple) and len(meta) == 2:
        return pd.Series(dtype=meta[1], name=meta[0])
    try:
        return pd.Series(dtype=np.dtype(meta) if not isinstance(meta, str) else meta, name=name)
    except TypeError:
        return meta


def map_partitions_expr(
    func: Callable[..., Any], exprs: list[Any], kw: dict[str, Any], meta: Any, clear_divisions: bool
) -> Expr:
    """The expression of ``map_partitions``: ``exprs``/``kw`` hold expressions or plain values."""
    frames = [e for e in exprs if isinstance(e, Expr) and not ops.is_scalar_meta(e._meta)]
    if not frames:
        raise UsageError("map_partitions needs at least one DataFrame or Series argument")
    all_exprs = [e for e in (*exprs, *kw.values()) if isinstance(e, Expr)]
    aligned = align(*all_exprs)
    mapping = {e._token: a for e, a in zip(all_exprs, aligned, strict=False)}
    exprs = [mapping[e._token] if isinstance(e, Expr) else e for e in exprs]
    kw = {k: (mapping[v._token] if isinstance(v, Expr) else v) for k, v in kw.items()}
    first_index = next(i for i, e in enumerate(exprs) if isinstance(e, Expr) and not ops.is_scalar_meta(e._meta))
    frame = exprs[first_index]
    rest = tuple(exprs[:first_index] + exprs[first_index + 1 :])
    wants_info = "partition_info" not in kw and takes_keyword(func, "partition_info")
    if first_index != 0:
        func = _Reorder(func, first_index)
    metas = [e._meta if isinstance(e, Expr) else e for e in rest]
    kw_metas = {k: (v._meta if isinstance(v, Expr) else v) for k, v in kw.items()}
    if wants_info and meta is None:
        kw_metas["partition_info"] = partition_info(frame.divisions, 0)
    meta, func = result_meta(func, frame._meta, metas, kw_metas, meta)
    if ops.is_scalar_meta(meta):
        # One value per partition: gathered as a Series indexed by partition number.
        return ops.MapPartitionsScalar(frame, func, rest, kw, pd.Series([meta]).iloc[:0], partition_info=wants_info)
    keeps_index = isinstance(meta, (pd.DataFrame, pd.Series)) and isinstance(frame._meta, (pd.DataFrame, pd.Series))
    return MapPartitions(frame, func, rest, kw, meta, keeps_index and not clear_divisions, partition_info=wants_info)


def result_meta(
    func: Callable[..., Any], frame_meta: Any, metas: list[Any], kw_metas: dict[str, Any], meta: Any
) -> tuple[Any, Callable[..., Any]]:
    """The schema of ``func``'s result per partition and the function to run: ``meta`` as
    given (each partition's result then held to it), or inferred by running ``func`` on
    sample data of ``frame_meta`` and the other arguments' metas."""
    if meta is not None:
        meta = meta_from(meta)
        if isinstance(meta, (pd.DataFrame, pd.Series)):
            # Told, not inferred: hold each partition's result to it.
            func = _ConformToMeta(func, meta)
        return meta, func
    try:
        return emulate(func, frame_meta, *metas, **kw_metas), func
    except Exception as exc:
        raise UsageError(
            f"could not infer the result of {getattr(func, '__name__', func)!r} on sample data "
            f"({type(exc).__name__}: {exc}); pass meta= (an empty DataFrame/Series, a dtype, "
            "or a {column: dtype} dict)"
        ) from exc


def takes_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` has a parameter ``name`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(func).parameters.get(name)
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


class _ConformToMeta:
    """Calls ``func`` and holds its result to the ``meta`` the user gave map_partitions.

    A scalar where a Series was declared becomes a one-value Series (labelled with the
    partition's first index label), as Dask lets it; a frame with the declared columns in
    another order is put in that order; other columns are a clear error, not a KeyError later.
    """

    def __init__(self, func: Callable[..., Any], meta: Any) -> None:
        self.func = func
        self.meta = meta

    def __call__(self, part: Any, *rest: Any, **kwargs: Any) -> Any:
        result = self.func(part, *rest, **kwargs)
        meta = self.meta
        if isinstance(meta, pd.Series) and not isinstance(result, (pd.Series, pd.DataFrame, pd.Index)):
            if np.ndim(result) == 0:
                index = part.index[:1] if hasattr(part, "index") and len(part) else None
                values = [result] if index is None or len(index) else []
                return pd.Series(values, index=index, name=meta.name, dtype=meta.dtype)
        elif isinstance(meta, pd.DataFrame) and isinstance(result, pd.DataFrame):
            declared, found = list(meta.columns), list(result.columns)
            if found != declared:
                if sorted(map(str, found)) != sorted(map(str, declared)) or len(found) != len(declared):
                    raise ValueError(
                        f"the columns of the result of {getattr(self.func, '__name__', self.func)!r} "
                        f"({found}) do not match the columns of the meta= given ({declared})"
                    )
                return result[declared]
        return result

    def __zmqdask_tokenize__(self) -> tuple[Any, ...]:
        return ("conform", self.func, self.meta)


class _Reorder:
    """Calls ``func`` with the partition moved back to position ``index`` of the arguments."""

    def __init__(self, func: Callable[..., Any], index: int) -> None:
        self.func = func
        self.index = index

    def __call__(self, part: Any, *rest: Any, **kwargs: Any) -> Any:
        args = list(rest)
        args.insert(self.index, part)
        return self.func(*args, **kwargs)

    def __zmqdask_tokenize__(self) -> tuple[Any, ...]:
        return ("reorder", self.func, self.index)
