"""Scans across partitions: cumulative sums, products, minima and maxima, and forward/backward fill.

Each partition needs a summary of every partition before it (after it, for ``bfill``).  The
summary is a one-row piece of the same frame, so dtypes are kept: the last row of the scanned
partition (the last valid one where missing values are skipped).  A chain of small carry
tasks folds the summaries in order, and partition ``i`` is scanned again with the carry of
the partitions before it placed in front, which gives exactly pandas' result.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.core_ops import concat_parts
from zmqdask.dataframe.expr import Expr, emulate, node
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

SCANS: frozenset[str] = frozenset({"cumsum", "cumprod", "cummin", "cummax", "ffill", "bfill"})
"""Methods computed by :class:`Scan`."""


def _scan(obj: Any, method: str, skipna: bool) -> Any:
    if method in ("ffill", "bfill"):
        return getattr(obj, method)()
    return getattr(obj, method)(skipna=skipna)


def _joined(first: Any, second: Any) -> Any:
    # Both are pieces of the same frame, but each may have categorized its own values.
    return concat_parts([first, second])


def _in_scanned_dtypes(part: Any, method: str, skipna: bool) -> Any:
    """``part`` in the dtypes its scan has (a sum of booleans counts in integers), so that
    the carried row, already scanned, joins it without turning columns into objects."""
    wanted = _scan(part.iloc[:0], method, skipna)
    if isinstance(part, pd.DataFrame):
        changes = {c: t for c, t in wanted.dtypes.items() if part.dtypes[c] != t}
        return part.astype(changes) if changes else part
    return part if part.dtype == wanted.dtype else part.astype(wanted.dtype)


def scan_summary(part: Any, method: str, skipna: bool) -> Any:
    """What partition ``part`` passes on: its scanned edge row (None when it is empty)."""
    if len(part) == 0:
        return None
    scanned = _scan(part, method, skipna)
    if method == "bfill":
        return scanned.iloc[:1]
    if skipna or method == "ffill":
        # Missing values are skipped: the state to carry is the last valid one per column.
        return scanned.ffill().iloc[-1:]
    return scanned.iloc[-1:]


def scan_carry(carry: Any, summary: Any, method: str, skipna: bool) -> Any:
    """The summary of everything up to and including a partition, from the one before it."""
    if carry is None:
        return summary
    if summary is None:
        return carry
    if method == "bfill":
        return _joined(summary, carry).bfill().iloc[:1]
    return scan_summary(_joined(carry, summary), method, skipna)


def scan_apply(part: Any, carry: Any, method: str, skipna: bool) -> Any:
    """Partition ``part`` scanned as if the partitions summarized by ``carry`` came first."""
    if carry is None or len(part) == 0:
        return _scan(part, method, skipna)
    if method == "bfill":
        result = _joined(part, carry).bfill().iloc[:-1]
    else:
        result = _scan(_joined(carry, _in_scanned_dtypes(part, method, skipna)), method, skipna).iloc[1:]
    # The same labels, with the partition's own index (concatenating dropped its freq).
    result.index = part.index
    return result


def carried_layer(
    expr: Expr,
    frame: Expr,
    kernels: tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]],
    options: tuple[Any, ...],
    backwards: bool = False,
) -> dict[str, TaskSpec]:
    """The tasks of a scan of ``frame`` whose output partitions are ``expr``'s.

    ``kernels`` are ``(summary, carry, apply)``, module-level functions called as
    ``summary(part, *options)`` (what a partition passes on), ``carry(carry, summary,
    *options)`` (the summary of every partition up to this one, ``carry`` None at the
    start) and ``apply(part, carry, *options)`` (the partition's output).  Summaries are
    computed in parallel; only the small carry tasks form a chain.  ``backwards`` carries
    from the last partition towards the first.
    """
    summary, fold, apply = kernels
    name, n = expr._name, frame.npartitions
    layer: dict[str, TaskSpec] = {}
    order = range(n - 1, -1, -1) if backwards else range(n)
    carry: Any = None
    for position, i in enumerate(order):
        part = TaskRef(frame._key(i))
        layer[expr._key(i)] = (apply, (part, carry, *options), {})
        if position < n - 1:
            summary_key = f"{name}-summary-{i}"
            layer[summary_key] = (summary, (part, *options), {})
            carry_key = f"{name}-carry-{i}"
            layer[carry_key] = (fold, (carry, TaskRef(summary_key), *options), {})
            carry = TaskRef(carry_key)
    return layer


@node
class Scan(Expr):
    """``frame.<method>()`` across all partitions (see the module docstring)."""

    frame: Expr
    method: str
    skipna: bool = True

    _columnwise = True

    def _prefix(self) -> str:
        return self.method

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        return emulate(_scan, self.frame._meta, self.method, self.skipna)

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _layer(self) -> dict[str, TaskSpec]:
        # bfill carries from the last partition towards the first.
        return carried_layer(
            self, self.frame, (scan_summary, scan_carry, scan_apply), (self.method, self.skipna), self.method == "bfill"
        )

    def _describe(self) -> str:
        return f"{self.method}, skipna={self.skipna}"

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]


# --------------------------------------------------------------------------------------------
# shift, diff, pct_change: each partition reads a few rows of its neighbours
# --------------------------------------------------------------------------------------------

SHIFTS: frozenset[str] = frozenset({"shift", "diff", "pct_change", "ffill", "bfill"})
"""Methods computed by :class:`Shift` (ffill and bfill with a ``limit``: their reach)."""


def edge_rows(neighbour: Any, part: Any, n: int, before: bool) -> Any:
    """The ``n`` rows nearest to the next partition (``before``) or the previous one.

    ``neighbour`` holds such rows of the partitions further away (None at the ends), so
    a shift may reach across partitions shorter than ``n`` rows.
    """
    if neighbour is None:
        joined = part
    else:
        joined = _joined(neighbour, part) if before else _joined(part, neighbour)
    return joined.iloc[max(len(joined) - n, 0) :] if before else joined.iloc[:n]


def _shifted(obj: Any, method: str, periods: int, kwargs: dict[str, Any]) -> Any:
    if method == "ffill" or method == "bfill":
        # A fill with a limit reaches that many rows back (ffill) or ahead (bfill).
        return getattr(obj, method)(limit=abs(periods), **kwargs)
    return getattr(obj, method)(periods, **kwargs)


def shift_apply(part: Any, neighbour: Any, method: str, periods: int, kwargs: dict[str, Any]) -> Any:
    """``part.<method>(periods)`` as if the neighbouring rows were part of the same frame."""
    if neighbour is None or len(neighbour) == 0:
        return _shifted(part, method, periods, kwargs)
    if periods > 0:
        result = _shifted(_joined(neighbour, part), method, periods, kwargs).iloc[len(neighbour) :]
    else:
        result = _shifted(_joined(part, neighbour), method, periods, kwargs).iloc[: len(part)]
    result.index = part.index
    return result


@node
class Shift(Expr):
    """``frame.<method>(periods)`` for shift, diff and pct_change, across partitions (and
    ffill or bfill with ``limit=abs(periods)``)."""

    frame: Expr
    method: str
    periods: int
    kwargs: dict[str, Any]

    _columnwise = True

    def _prefix(self) -> str:
        return self.method.replace("_", "-")

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        return emulate(_shifted, self.frame._meta, self.method, self.periods, self.kwargs)

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _layer(self) -> dict[str, TaskSpec]:
        name, frame, periods = self._name, self.frame, self.periods
        n = frame.npartitions
        before = periods > 0
        reach = abs(periods)
        layer: dict[str, TaskSpec] = {}
        order = range(n) if before else range(n - 1, -1, -1)
        neighbour: Any = None
        for position, i in enumerate(order):
            part = TaskRef(frame._key(i))
            layer[self._key(i)] = (shift_apply, (part, neighbour, self.method, periods, self.kwargs), {})
            if position < n - 1 and reach > 0:
                edge_key = f"{name}-edge-{i}"
                layer[edge_key] = (edge_rows, (neighbour, part, reach, before), {})
                neighbour = TaskRef(edge_key)
        return layer

    def _describe(self) -> str:
        return f"{self.method}({self.periods})"

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]


# --------------------------------------------------------------------------------------------
# shift(freq=...): the index moves, the values stay
# --------------------------------------------------------------------------------------------


def shift_index(part: Any, periods: int, freq: Any) -> Any:
    """``part.shift(periods, freq=freq)``: every label moved by ``periods`` times ``freq``."""
    return part.shift(periods, freq=freq)


@node
class ShiftIndex(Expr):
    """``frame.shift(periods, freq=freq)``, partition by partition.

    Divisions move with the labels when ``freq`` is a fixed span (a Timedelta, or a
    frequency such as "h" or "5min"): such a move keeps every label in its partition's
    bounds.  A calendar frequency ("MS", "B", ...) can send labels of two partitions to the
    same date, so the divisions become unknown.
    """

    frame: Expr
    periods: int
    freq: Any

    _columnwise = True

    def _prefix(self) -> str:
        return "shift-index"

    @cached_property
    def _meta(self) -> Any:
        return emulate(shift_index, self.frame._meta, self.periods, self.freq)

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @cached_property
    def divisions(self) -> tuple[Any, ...]:
        divisions = self.frame.divisions
        step = fixed_span(self.freq)
        if step is None or any(d is None for d in divisions):
            return (None,) * len(divisions)
        return tuple(d + step * self.periods for d in divisions)

    def _layer(self) -> dict[str, TaskSpec]:
        frame = self.frame
        return {
            self._key(i): (shift_index, (TaskRef(frame._key(i)), self.periods, self.freq), {})
            for i in range(frame.npartitions)
        }

    def _describe(self) -> str:
        return f"shift({self.periods}, freq={self.freq!r})"


def fixed_span(freq: Any) -> pd.Timedelta | None:
    """``freq`` as a Timedelta when it is a fixed span of time, else None."""
    if isinstance(freq, (pd.Timedelta, datetime.timedelta)):
        return pd.Timedelta(freq)
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except (TypeError, ValueError):
        return None
    if isinstance(offset, pd.tseries.offsets.Tick):
        return pd.Timedelta(offset)
    return None


# --------------------------------------------------------------------------------------------
# map_overlap: each partition with rows of its neighbours
# --------------------------------------------------------------------------------------------


def overlap_span(reach: Any, name: str) -> int | pd.Timedelta:
    """``before``/``after`` of ``map_overlap``: a row count or a span of the index."""
    if isinstance(reach, bool):
        raise UsageError(f"map_overlap's {name} must be a number of rows or a span of time, not {reach!r}")
    if isinstance(reach, (int, np.integer)):
        if reach < 0:
            raise UsageError(f"map_overlap's {name} must not be negative, not {reach}")
        return int(reach)
    try:
        span = pd.Timedelta(reach)
    except (TypeError, ValueError):
        raise UsageError(
            f"map_overlap's {name} must be a number of rows or a span of time ('2h', a Timedelta), not {reach!r}"
        ) from None
    if span < pd.Timedelta(0):
        raise UsageError(f"map_overlap's {name} must not be negative, not {reach!r}")
    return span


def overlap_before(previous: Any, part: Any, reach: int | pd.Timedelta) -> Any:
    """The rows of ``previous`` then ``part`` that the next partition gets before its own:
    the last ``reach`` rows, or those within ``reach`` of the last label."""
    joined = _joined(previous, part) if previous is not None else part
    if isinstance(reach, int):
        return joined.iloc[max(len(joined) - reach, 0) :]
    if len(joined) == 0:
        return joined
    return joined[joined.index >= joined.index[-1] - reach]


def overlap_after(part: Any, following: Any, reach: int | pd.Timedelta) -> Any:
    """The rows of ``part`` then ``following`` that the previous partition gets after its
    own: the first ``reach`` rows, or those within ``reach`` of the first label."""
    joined = _joined(part, following) if following is not None else part
    if isinstance(reach, int):
        return joined.iloc[:reach]
    if len(joined) == 0:
        return joined
    return joined[joined.index <= joined.index[0] + reach]


def overlap_apply(
    func: Any, previous: Any, part: Any, following: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``func`` of the partition with its neighbours' rows around it, cut back to the
    partition's own rows."""
    before = previous if previous is not None and len(previous) and len(part) else None
    after = following if following is not None and len(following) and len(part) else None
    if before is None and after is None:
        return func(part, *args, **kwargs)
    joined = concat_parts([piece for piece in (before, part, after) if piece is not None])
    result = func(joined, *args, **kwargs)
    if not hasattr(result, "iloc") or len(result) != len(joined):
        raise UsageError(
            "map_overlap's function must return one row per row it is given (it was given "
            f"{len(joined)} and returned {len(result) if hasattr(result, '__len__') else 'a scalar'}); "
            "use map_partitions for other functions"
        )
    start = len(before) if before is not None else 0
    return result.iloc[start : start + len(part)]


@node
class MapOverlap(Expr):
    """``func`` of each partition with ``before`` rows of the partitions before it and
    ``after`` rows of those after it; the result keeps the partition's rows only."""

    frame: Expr
    func: Any
    before: Any
    after: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    meta: Any

    def _prefix(self) -> str:
        return "overlap-" + getattr(self.func, "__name__", "func").lower().strip("<>")

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _layer(self) -> dict[str, TaskSpec]:
        name, frame, n = self._name, self.frame, self.frame.npartitions
        layer: dict[str, TaskSpec] = {}
        # Chains in both directions, so a reach longer than a partition takes rows from
        # further partitions too.
        following: list[Any] = [None] * n
        if self.after:
            for i in range(n - 1, 0, -1):
                key = f"{name}-after-{i}"
                layer[key] = (overlap_after, (TaskRef(frame._key(i)), following[i], self.after), {})
                following[i - 1] = TaskRef(key)
        previous: Any = None
        for i in range(n):
            part = TaskRef(frame._key(i))
            layer[self._key(i)] = (overlap_apply, (self.func, previous, part, following[i], self.args, self.kwargs), {})
            if self.before and i < n - 1:
                key = f"{name}-before-{i}"
                layer[key] = (overlap_before, (previous, part, self.before), {})
                previous = TaskRef(key)
        return layer

    def _describe(self) -> str:
        return f"map_overlap({getattr(self.func, '__name__', self.func)}, before={self.before}, after={self.after})"

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]


def map_overlap(func: Any, frame: Any, before: Any, after: Any, *args: Any, meta: Any = None, **kwargs: Any) -> Any:
    """``func`` of each partition of ``frame`` with ``before`` rows of the partitions before
    it and ``after`` rows of those after it, as Dask's ``map_overlap``.

    ``before``/``after`` are row counts or spans of a datetime index ("2h", a Timedelta).
    ``func`` must return one row per row it is given; each partition keeps the rows of its
    own.  ``meta`` describes the result as in ``map_partitions`` (inferred when omitted).
    """
    from zmqdask.dataframe.planning import result_meta
    from zmqdask.dataframe.wrapping import expr_of, new_collection

    expr = expr_of(frame)
    if not isinstance(expr._meta, (pd.DataFrame, pd.Series)):
        raise UsageError("map_overlap needs a DataFrame or Series")
    if any(isinstance(getattr(a, "expr", None), Expr) for a in (*args, *kwargs.values())):
        raise UsageError("map_overlap takes one collection; pass other values computed, or use map_partitions")
    reach_before, reach_after = overlap_span(before, "before"), overlap_span(after, "after")
    if isinstance(reach_before, pd.Timedelta) or isinstance(reach_after, pd.Timedelta):
        if not isinstance(expr._meta.index, pd.DatetimeIndex):
            raise UsageError("map_overlap with a span of time needs a datetime index; give row counts instead")
    meta, func = result_meta(func, expr._meta, list(args), dict(kwargs), meta)
    return new_collection(MapOverlap(expr, func, reach_before, reach_after, tuple(args), dict(kwargs), meta))
