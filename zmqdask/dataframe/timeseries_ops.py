"""Time-series operations on a sorted datetime index: resampling and rolling windows.

Resampling reuses the grouped-aggregation partial states of :mod:`zmqdask.dataframe.groupby`
with the bins as groups.  Output partition ``i`` owns the bin labels from the label of the bin
holding division ``i`` up to (not including) the label of the bin holding division ``i + 1``;
a bin that straddles a partition boundary is merged from the partial states of every input
partition it touches (known from the divisions when the graph is built).  Empty bins between
data are filled the way pandas fills them, and a tiny task finds the first and last bin with
data so that loose divisions add no extra bins.  Aggregations without partial states (a
median, a product, a function) follow the same ownership, but each output partition gathers
the rows of its bins and pandas computes them; pandas is also asked what an empty bin gives.

Rolling windows carry the tail of the preceding rows into each partition: for a fixed count
``w`` the last ``w - 1`` rows, for a time window the rows within the window of the last
timestamp.  The carry is a chain of small tasks, so a window may span any number of short
partitions, and each partition sees exactly the rows pandas would see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.core_ops import concat_parts
from zmqdask.dataframe.expr import Expr, MapPartitions, emulate, node, unknown_divisions
from zmqdask.dataframe.groupby import (
    SERIES_COLUMN,
    SIZE_SLOT,
    WHOLE_GROUP_AGGREGATIONS,
    AggPlan,
    Partial,
    finalize,
    groupby_chunk,
    groupby_combine,
    make_plan,
)
from zmqdask.dataframe.wrapping import expr_of, new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

ROLLING_METHODS: frozenset[str] = frozenset(
    {"sum", "mean", "count", "min", "max", "std", "var", "median", "skew", "kurt", "sem", "quantile"}
)
"""Rolling aggregations that are computed with an overlap from earlier partitions."""

_ZERO_FILLED = frozenset({"size", "sum", "count", "vcount"})


# --------------------------------------------------------------------------------------------
# Resampling kernels
# --------------------------------------------------------------------------------------------


def to_offset(rule: Any) -> pd.DateOffset:
    """The pandas offset of a resampling rule such as ``"1h"`` or ``"ME"``."""
    return pd.tseries.frequencies.to_offset(rule)


def grouper(rule: Any, origin: Any, closed: str | None, label: str | None) -> pd.Grouper:
    """The pandas grouper of the bins, with the origin fixed for all partitions."""
    return pd.Grouper(freq=rule, **bin_options(rule, origin, closed, label))


def bin_options(rule: Any, origin: Any, closed: str | None, label: str | None) -> dict[str, Any]:
    """``closed``, ``label`` and ``origin`` as pandas' grouper and ``resample`` take them."""
    kwargs: dict[str, Any] = {}
    if closed is not None:
        kwargs["closed"] = closed
    if label is not None:
        kwargs["label"] = label
    # Fixed frequencies bin from an origin, which must be the same in every partition; since
    # pandas 3 a day ("2D") is not a Tick but is binned that way too, on a naive index (on a
    # timezone-aware one pandas bins by calendar days there, and warns of any origin).
    offset = to_offset(rule)
    if isinstance(offset, pd.offsets.Tick) or (isinstance(offset, pd.offsets.Day) and _naive(origin)):
        kwargs["origin"] = origin
    return kwargs


def _naive(origin: Any) -> bool:
    return not isinstance(origin, pd.Timestamp) or origin.tz is None


def bin_label(timestamp: Any, rule: Any, origin: Any, closed: str | None, label: str | None) -> pd.Timestamp:
    """Label of the bin that holds ``timestamp``, computed by pandas itself."""
    probe = pd.Series([0], index=pd.DatetimeIndex([timestamp]))
    counts = probe.groupby(grouper(rule, origin, closed, label)).size()
    return counts.index[counts.to_numpy() > 0][0]


def resample_chunk(
    obj: pd.DataFrame | pd.Series, rule: Any, origin: Any, closed: str | None, label: str | None, plan: AggPlan
) -> Partial:
    """Partial state per bin of one partition."""
    return groupby_chunk(obj, grouper(rule, origin, closed, label), plan, sort=True, dropna=True)


def data_extent(partial: Partial) -> tuple[Any, Any]:
    """First and last bin label of a partial state that hold rows (None, None when empty)."""
    labels = partial.main.index[partial.main[SIZE_SLOT].to_numpy() > 0]
    if len(labels) == 0:
        return None, None
    return labels[0], labels[-1]


def merge_extents(extents: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
    """First and last bin with data over all partitions."""
    firsts = [first for first, _ in extents if first is not None]
    lasts = [last for _, last in extents if last is not None]
    if not firsts:
        return None, None
    return min(firsts), max(lasts)


def resample_output(
    partials: Sequence[Partial],
    plan: AggPlan,
    rule: Any,
    low: Any,
    high: Any,
    extent: tuple[Any, Any],
    empty: pd.DataFrame | pd.Series,
) -> pd.DataFrame | pd.Series:
    """One output partition: the bins with labels in ``[low, high)`` (None: unbounded).

    ``partials`` are the states of every input partition that may hold rows of those bins,
    in partition order; ``empty`` is the result's empty frame, returned when no bin is owned.
    """
    first, last = extent
    if first is None:
        return empty
    state = groupby_combine(partials, plan, sort=True)
    main = state.main
    grid = _bin_grid(first, last, low, high, rule)
    if len(grid) == 0:
        return empty
    grid = grid.rename(main.index.name)
    filled = {}
    for position, (_, primitive) in enumerate(plan.slots):
        values = main[position]
        if primitive in _ZERO_FILLED:
            filled[position] = values.reindex(grid, fill_value=0)
        else:
            filled[position] = values.reindex(grid)
    pairs = {column: frame[frame.index.isin(grid)] for column, frame in state.pairs.items()}
    return finalize(Partial(pd.DataFrame(filled, index=grid), pairs), plan)


def resampled(
    obj: Any, rule: Any, origin: Any, closed: str | None, label: str | None, method: str, args: Any, kwargs: Any
) -> Any:
    """pandas' ``obj.resample(rule)`` with the fixed origin, then ``method(*args, **kwargs)``."""
    resampler = obj.resample(rule, **bin_options(rule, origin, closed, label))
    return getattr(resampler, method)(*args, **kwargs)


def row_bins(index: pd.DatetimeIndex, rule: Any, origin: Any, closed: str | None, label: str | None) -> pd.Index:
    """The bin label of each timestamp of a sorted index."""
    counts = pd.Series(np.zeros(len(index)), index=index).groupby(grouper(rule, origin, closed, label)).size()
    return counts.index.repeat(counts.to_numpy())


def rows_in_bins(part: Any, rule: Any, origin: Any, closed: str | None, label: str | None, low: Any, high: Any) -> Any:
    """The rows of ``part`` in the bins labelled ``[low, high)`` (None: unbounded)."""
    bins = row_bins(part.index, rule, origin, closed, label)
    keep = np.ones(len(part), dtype=bool)
    if low is not None:
        keep &= np.asarray(bins >= low)
    if high is not None:
        keep &= np.asarray(bins < high)
    return part.iloc[keep]


def row_extent(part: Any, rule: Any, origin: Any, closed: str | None, label: str | None) -> tuple[Any, Any, Any]:
    """First and last bin label of a sorted partition's rows, and its first row (all None when empty)."""
    if len(part) == 0:
        return None, None, None
    first = bin_label(part.index[0], rule, origin, closed, label)
    last = bin_label(part.index[-1], rule, origin, closed, label)
    return first, last, part.iloc[:1]


def merge_row_extents(extents: Sequence[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """First and last bin with data over all partitions, and one row of the data."""
    present = [extent for extent in extents if extent[0] is not None]
    if not present:
        return None, None, None
    return min(e[0] for e in present), max(e[1] for e in present), present[0][2]


def empty_bin(
    row: Any, rule: Any, origin: Any, closed: str | None, label: str | None, method: str, args: Any, kwargs: Any
) -> Any:
    """What pandas gives for a bin without rows, as a one-row result.

    pandas computes it from the data's dtypes (a product of nothing is 1, of integers an
    integer) and may call a function on the empty bin, so it is asked: ``row`` twice, three
    periods apart, leaves the second bin empty.
    """
    probe = row.iloc[[0, 0]]
    start = row.index[0]
    probe.index = pd.DatetimeIndex([start, start + 3 * to_offset(rule)], name=row.index.name)
    return resampled(probe, rule, origin, closed, label, method, args, kwargs).iloc[[1]]


def resample_whole_output(
    pieces: Sequence[Any],
    rule: Any,
    origin: Any,
    closed: str | None,
    label: str | None,
    bounds: tuple[Any, Any],
    extent: tuple[Any, Any, Any],
    call: tuple[str, Any, Any],
    empty: pd.DataFrame | pd.Series,
) -> Any:
    """One output partition of an aggregation over whole bins: pandas on the rows of the
    bins labelled ``[low, high)`` (``bounds``), gathered from every partition holding some.

    Bins without rows between the data and the bounds are filled with pandas' own value
    for an empty bin, as one pandas call over all the data would.
    """
    first, last, row = extent
    if first is None:
        return empty
    low, high = bounds
    method, args, kwargs = call
    grid = _bin_grid(first, last, low, high, rule)
    if len(grid) == 0:
        return empty
    rows = concat_parts(list(pieces))
    result = resampled(rows, rule, origin, closed, label, method, args, kwargs) if len(rows) else None
    missing = grid if result is None else grid.difference(result.index)
    if len(missing):
        gap = empty_bin(row, rule, origin, closed, label, method, args, kwargs)
        filler = gap.iloc[np.zeros(len(missing), dtype=np.int64)]
        filler.index = missing.rename(gap.index.name)
        result = filler if result is None else pd.concat([result, filler]).sort_index()
    return result


# --------------------------------------------------------------------------------------------
# Rolling kernels
# --------------------------------------------------------------------------------------------


def window_offset(window: Any) -> pd.Timedelta | None:
    """The window as a duration for time windows, None for a fixed row count."""
    if isinstance(window, (int, np.integer)):
        return None
    offset: Any = to_offset(window)
    return pd.Timedelta(offset)


def rolling_carry(previous: Any, part: Any, window: Any) -> Any:
    """Rows of ``previous`` followed by ``part`` that a later partition's windows can reach."""
    joined = concat_parts([previous, part]) if previous is not None else part
    duration = window_offset(window)
    if duration is None:
        keep = int(window) - 1
        return joined.iloc[max(len(joined) - keep, 0) :] if keep > 0 else joined.iloc[:0]
    if len(joined) == 0:
        return joined
    last = joined.index[-1]
    return joined[joined.index > last - duration]


def rolling_lead(part: Any, following: Any, window: Any) -> Any:
    """Rows of ``part`` followed by ``following`` that an earlier partition's centered
    windows can reach (the mirror of :func:`rolling_carry`)."""
    joined = concat_parts([part, following]) if following is not None else part
    duration = window_offset(window)
    if duration is None:
        return joined.iloc[: max(int(window) - 1, 0)]
    if len(joined) == 0:
        return joined
    return joined[joined.index < joined.index[0] + duration]


def rolling_apply(
    previous: Any,
    part: Any,
    window: Any,
    min_periods: int | None,
    method: str,
    kwargs: dict[str, Any],
    center: bool = False,
    following: Any = None,
) -> Any:
    """Rolling ``method`` of one partition, computed over the carried rows plus the partition
    (plus, for centered windows, the rows after it that its windows reach)."""
    before = previous if previous is not None and len(previous) and len(part) else None
    after = following if following is not None and len(following) and len(part) else None
    if before is None and after is None:
        return getattr(part.rolling(window, min_periods=min_periods, center=center), method)(**kwargs)
    joined = concat_parts([piece for piece in (before, part, after) if piece is not None])
    result = getattr(joined.rolling(window, min_periods=min_periods, center=center), method)(**kwargs)
    start = len(before) if before is not None else 0
    return result.iloc[start : start + len(part)]


def resample_layout(
    divisions: Sequence[Any] | None, nparts: int, rule: Any, origin: Any, closed: str | None, label: str | None
) -> list[tuple[list[int], Any, Any]]:
    """For each output partition: the input partitions it reads, and its label range ``[low, high)``.

    Without known divisions everything goes to one output partition.
    """
    if divisions is None or any(division is None for division in divisions):
        return [(list(range(nparts)), None, None)]
    labels = [bin_label(division, rule, origin, closed, label) for division in divisions[:-1]]
    layout = []
    for i in range(nparts):
        low = None if i == 0 else labels[i]
        high = labels[i + 1] if i < nparts - 1 else None
        # An earlier partition j can only reach bin labels[i] when the bin holding its upper
        # division is that same bin: its rows lie below that division.
        readers = [j for j in range(i) if labels[j + 1] == labels[i]] + [i]
        if i < nparts - 1 and labels[i] == labels[i + 1]:
            # This output would own no bin; the next one reads this partition instead.
            continue
        layout.append((readers, low, high))
    return layout


# --------------------------------------------------------------------------------------------
# Expression nodes
# --------------------------------------------------------------------------------------------


def resample_whole(obj: Any, rule: Any, origin: Any, closed: str | None, label: str | None, plan: AggPlan) -> Any:
    """Resampling of one pandas object in one step (used to derive result schemas)."""
    return finalize(resample_chunk(obj, rule, origin, closed, label, plan), plan)


class BinnedOutput(Expr):
    """What resampling nodes share: output partitions own ranges of bin labels.

    Subclasses are :func:`node` classes declaring the fields below.
    """

    frame: Expr
    rule: Any
    closed: str | None
    label: str | None
    origin: Any

    @cached_property
    def layout(self) -> tuple[tuple[tuple[int, ...], Any, Any], ...]:
        """Per output partition: the input partitions it reads and its label range."""
        plan = resample_layout(
            self.frame.divisions, self.frame.npartitions, self.rule, self.origin, self.closed, self.label
        )
        return tuple((tuple(readers), low, high) for readers, low, high in plan)

    @property
    def npartitions(self) -> int:
        return len(self.layout)

    @property
    def divisions(self) -> tuple[Any, ...]:
        layout = self.layout
        divisions = self.frame.divisions
        if any(division is None for division in divisions):
            return unknown_divisions(len(layout))
        first = bin_label(divisions[0], self.rule, self.origin, self.closed, self.label)
        last = bin_label(divisions[-1], self.rule, self.origin, self.closed, self.label)
        return (first, *(low for _, low, _ in layout[1:]), last)


@node
class ResampleAggregate(BinnedOutput):
    """Aggregation of ``frame`` per time bin; ``origin`` is fixed for every partition."""

    frame: Expr
    rule: Any
    closed: str | None
    label: str | None
    origin: Any
    plan: AggPlan

    def _prefix(self) -> str:
        return "resample"

    @cached_property
    def _meta(self) -> Any:
        return emulate(resample_whole, self.frame._meta, self.rule, self.origin, self.closed, self.label, self.plan)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if not isinstance(self.frame._meta, pd.DataFrame):
            return None
        return frozenset(self.plan.columns)

    def _lower(self) -> Expr | None:
        chunks = MapPartitions(
            self.frame,
            resample_chunk,
            (self.rule, self.origin, self.closed, self.label, self.plan),
            {},
            None,
            False,
            "resample-chunk",
        )
        return ResampleCombine(chunks, self.rule, self.plan, self.layout, self._meta, self.divisions)

    def _describe(self) -> str:
        funcs = ", ".join(f"{func}({column})" for _, column, func in self.plan.outputs)
        return f"rule={self.rule!r}, {funcs}"


@node
class ResampleWholeBins(BinnedOutput):
    """A resampling that pandas computes on whole bins (a median, a product, a function).

    Each output partition gathers the rows of the bins it owns from the partitions that
    hold them (cut where they live, so only those rows travel) and calls pandas on them.
    """

    frame: Expr
    rule: Any
    closed: str | None
    label: str | None
    origin: Any
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def _prefix(self) -> str:
        return f"resample-{self.method}"

    @cached_property
    def _meta(self) -> Any:
        return emulate(
            resampled,
            self.frame._meta,
            self.rule,
            self.origin,
            self.closed,
            self.label,
            self.method,
            self.args,
            self.kwargs,
        )

    def _describe(self) -> str:
        return f"rule={self.rule!r}, {self.method}{self.args!r}"

    def _layer(self) -> dict[str, TaskSpec]:
        name, frame = self._name, self.frame
        bins = (self.rule, self.origin, self.closed, self.label)
        layer: dict[str, TaskSpec] = {}
        extents = []
        for i in range(frame.npartitions):
            key = f"{name}-extent-{i}"
            layer[key] = (row_extent, (TaskRef(frame._key(i)), *bins), {})
            extents.append(TaskRef(key))
        # Every output needs the global first and last bin with data (divisions wider than
        # the data add no empty bins at either end) and a row to ask pandas about empty bins.
        extent_key = f"{name}-extent"
        layer[extent_key] = (merge_row_extents, (extents,), {})
        call = (self.method, self.args, self.kwargs)
        for j, (readers, low, high) in enumerate(self.layout):
            pieces = []
            for i in readers:
                cut_key = f"{name}-cut-{i}.{j}"
                layer[cut_key] = (rows_in_bins, (TaskRef(frame._key(i)), *bins, low, high), {})
                pieces.append(TaskRef(cut_key))
            args = (pieces, *bins, (low, high), TaskRef(extent_key), call, self._meta)
            layer[self._key(j)] = (resample_whole_output, args, {})
        return layer


@node
class ResampleCombine(Expr):
    """Output bins from per-partition bin states: merges bins shared by neighbours, fills gaps."""

    chunks: Expr
    rule: Any
    plan: AggPlan
    layout: tuple[tuple[tuple[int, ...], Any, Any], ...]
    meta: Any
    division_values: tuple[Any, ...]

    def _prefix(self) -> str:
        return "resample-combine"

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    @property
    def npartitions(self) -> int:
        return len(self.layout)

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _describe(self) -> str:
        return f"rule={self.rule!r}, {self.plan!r}"

    def _layer(self) -> dict[str, TaskSpec]:
        name, chunks = self._name, self.chunks
        layer: dict[str, TaskSpec] = {}
        extents = []
        for i in range(chunks.npartitions):
            key = f"{name}-extent-{i}"
            layer[key] = (data_extent, (TaskRef(chunks._key(i)),), {})
            extents.append(TaskRef(key))
        # Every output needs the global first and last bin with data, so that divisions
        # wider than the data do not add empty bins at either end.
        extent_key = f"{name}-extent"
        layer[extent_key] = (merge_extents, (extents,), {})
        for j, (readers, low, high) in enumerate(self.layout):
            partials = [TaskRef(chunks._key(i)) for i in readers]
            args = (partials, self.plan, self.rule, low, high, TaskRef(extent_key), self.meta)
            layer[self._key(j)] = (resample_output, args, {})
        return layer


def rolling_whole(
    obj: Any, window: Any, min_periods: int | None, method: str, kwargs: dict[str, Any], center: bool = False
) -> Any:
    """Rolling aggregation of one pandas object (used to derive result schemas)."""
    return getattr(obj.rolling(window, min_periods=min_periods, center=center), method)(**kwargs)


@node
class RollingAggregate(Expr):
    """A rolling-window aggregation; each partition also reads the rows its windows reach back to."""

    frame: Expr
    window: Any
    min_periods: int | None
    method: str
    kwargs: dict[str, Any]
    center: bool = False

    def _prefix(self) -> str:
        return f"rolling-{self.method}"

    def _is_columnwise(self) -> bool:
        # The columns of .agg are (column, method) pairs, or the columns a dict names: a
        # projection cannot name them below this node.
        return self.method != "aggregate"

    def _same_rows(self) -> Expr | None:
        return self.frame

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]

    @cached_property
    def _meta(self) -> Any:
        return emulate(
            rolling_whole, self.frame._meta, self.window, self.min_periods, self.method, self.kwargs, self.center
        )

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _layer(self) -> dict[str, TaskSpec]:
        name, frame = self._name, self.frame
        layer: dict[str, TaskSpec] = {}
        # Centered windows also reach forward: a chain of leads from the last partition back.
        leads: list[Any] = [None] * frame.npartitions
        if self.center:
            for i in range(frame.npartitions - 1, 0, -1):
                lead_key = f"{name}-lead-{i}"
                layer[lead_key] = (rolling_lead, (TaskRef(frame._key(i)), leads[i], self.window), {})
                leads[i - 1] = TaskRef(lead_key)
        previous: Any = None
        for i in range(frame.npartitions):
            part = TaskRef(frame._key(i))
            layer[self._key(i)] = (
                rolling_apply,
                (previous, part, self.window, self.min_periods, self.method, self.kwargs, self.center, leads[i]),
                {},
            )
            if i < frame.npartitions - 1:
                # The carry is a chain: partition i's carry includes what reached it from
                # earlier partitions, so a window may span many short partitions.
                carry_key = f"{name}-carry-{i}"
                layer[carry_key] = (rolling_carry, (previous, part, self.window), {})
                previous = TaskRef(carry_key)
        return layer


# --------------------------------------------------------------------------------------------
# User-facing objects
# --------------------------------------------------------------------------------------------


class Resampler:
    """Time-bin aggregations of a frame or Series with a datetime index and known divisions.

    ``origin`` may be ``"start_day"`` (the default: midnight of the first division),
    ``"start"`` (the first division), ``"epoch"`` or a timestamp; ``closed`` and ``label``
    are as in pandas.
    """

    def __init__(
        self,
        frame: Any,
        rule: Any,
        *,
        closed: str | None = None,
        label: str | None = None,
        origin: Any = "start_day",
    ) -> None:
        self._frame = frame
        self._expr = expr_of(frame)
        meta = self._expr._meta
        if not isinstance(meta.index, pd.DatetimeIndex):
            raise UsageError("resample needs a DatetimeIndex; use set_index on a datetime column first")
        if not self._expr.known_divisions:
            raise UsageError("resample needs known divisions; use set_index (or from_pandas with sort=True)")
        try:
            offset = to_offset(rule)
        except ValueError as exc:
            raise UsageError(f"invalid resampling rule {rule!r}: {exc}") from exc
        if offset.n != 1 and isinstance(offset, pd.offsets.Day) and meta.index.tz is not None:
            raise UsageError(
                f"resampling a timezone-aware index by {rule!r} is not supported: pandas bins several "
                "calendar days from where the data starts; resample by '1D', or by hours ('48h')"
            )
        if offset.n != 1 and not isinstance(offset, (pd.offsets.Tick, pd.offsets.Day)):
            # pandas starts such bins (every 2 weeks, 2 month ends, ...) from the data's first
            # timestamp, which each partition would take from its own rows.
            raise UsageError(
                f"resampling by {rule!r} (several calendar periods per bin) is not supported: its bins "
                f"depend on where the data starts; resample by {offset.base.freqstr!r} and combine "
                "neighbouring bins, or use a fixed frequency such as '14D'"
            )
        self._rule = rule
        self._closed = closed
        self._label = label
        self._origin = self._fixed_origin(origin)

    def _fixed_origin(self, origin: Any) -> Any:
        first = pd.Timestamp(self._expr.divisions[0])
        if isinstance(origin, str):
            if origin == "start_day":
                return first.normalize()
            if origin == "start":
                return first
            if origin == "epoch":
                # As pandas reads it; a timestamp also says whether the index has a timezone.
                return pd.Timestamp("1970-01-01", tz=first.tz)
            raise UsageError(f"origin {origin!r} is not supported; use start_day, start, epoch or a timestamp")
        return pd.Timestamp(origin)

    def _aggregate(self, spec: Any, ddof: int = 1) -> Any:
        meta = self._expr._meta
        if isinstance(meta, pd.Series):
            plan = make_plan(spec, [SERIES_COLUMN], series_name=meta.name, series_selection=True, ddof=ddof)
        else:
            plan = make_plan(spec, list(meta.columns), ddof=ddof)
        node_ = ResampleAggregate(self._expr, self._rule, self._closed, self._label, self._origin, plan)
        return new_collection(node_)

    def _whole_bins(self, method: str, *args: Any, **kwargs: Any) -> Any:
        node_ = ResampleWholeBins(
            self._expr, self._rule, self._closed, self._label, self._origin, method, tuple(args), dict(kwargs)
        )
        return new_collection(node_)

    def agg(self, arg: Any, *args: Any, **kwargs: Any) -> Any:
        """Aggregate by name, function, list of them, or dict column -> name(s) or function(s).

        Names that partial states can combine (sums, counts, extremes...) are computed per
        partition and merged; others (a median, a product, a function) by pandas on the
        bins' whole rows.
        """
        if args or kwargs or _needs_whole_bins(arg):
            return self._whole_bins("agg", arg, *args, **kwargs)
        return self._aggregate(arg)

    aggregate = agg

    def apply(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``func`` on each bin's values, as pandas' ``Resampler.apply`` (by pandas on whole bins)."""
        return self._whole_bins("apply", func, *args, **kwargs)

    def median(self) -> Any:
        """Median per bin (by pandas on whole bins)."""
        return self._whole_bins("median")

    def prod(self, min_count: int = 0) -> Any:
        """Product per bin (1 for empty bins, unless ``min_count`` asks for more values)."""
        return self._whole_bins("prod", min_count=min_count)

    def sum(self) -> Any:
        """Sum per bin (0 for empty bins)."""
        return self._aggregate("sum")

    def mean(self) -> Any:
        """Mean per bin."""
        return self._aggregate("mean")

    def count(self) -> Any:
        """Non-missing values per bin."""
        return self._aggregate("count")

    def size(self) -> Any:
        """Rows per bin."""
        return self._aggregate("size")

    def min(self) -> Any:
        """Minimum per bin."""
        return self._aggregate("min")

    def max(self) -> Any:
        """Maximum per bin."""
        return self._aggregate("max")

    def first(self) -> Any:
        """First non-missing value per bin."""
        return self._aggregate("first")

    def last(self) -> Any:
        """Last non-missing value per bin."""
        return self._aggregate("last")

    def std(self, ddof: int = 1) -> Any:
        """Standard deviation per bin."""
        return self._aggregate("std", ddof)

    def var(self, ddof: int = 1) -> Any:
        """Variance per bin."""
        return self._aggregate("var", ddof)

    def nunique(self) -> Any:
        """Distinct non-missing values per bin."""
        return self._aggregate("nunique")

    def ohlc(self) -> Any:
        """First, highest, lowest and last value per bin, as columns ``open``, ``high``,
        ``low`` and ``close`` (under each column of a frame)."""
        result = self._aggregate(["first", "max", "min", "last"])
        names = {"first": "open", "max": "high", "min": "low", "last": "close"}
        if isinstance(self._expr._meta, pd.Series):
            return result.rename(columns=names)
        return result.map_partitions(_ohlc_columns, names)

    def __getitem__(self, key: Any) -> Resampler:
        return Resampler(
            _select(self._frame, key), self._rule, closed=self._closed, label=self._label, origin=self._origin
        )

    def __getattr__(self, name: str) -> Resampler:
        if name.startswith("_") or name not in _column_names(self._expr):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self[name]

    def __repr__(self) -> str:
        return f"<zmqdask Resampler rule={self._rule!r}>"


def _column_names(expr: Expr) -> list[Any]:
    meta = expr._meta
    return list(meta.columns) if isinstance(meta, pd.DataFrame) else []


def _needs_whole_bins(arg: Any) -> bool:
    """Whether an ``agg`` specification holds a function or an aggregation without partial states."""
    values = list(arg.values()) if isinstance(arg, dict) else [arg]
    names = [name for value in values for name in (value if isinstance(value, (list, tuple)) else [value])]
    return any(not isinstance(name, str) or name in WHOLE_GROUP_AGGREGATIONS for name in names)


def _select(frame: Any, key: Any) -> Any:
    """``frame[key]`` for a column label or a list of them, checked against the frame's columns."""
    columns = _column_names(expr_of(frame))
    wanted = key if isinstance(key, list) else [key]
    missing = [k for k in wanted if k not in columns]
    if missing:
        raise KeyError(f"columns not found: {missing}")
    return frame[key]


class Rolling:
    """Rolling windows of ``window`` rows (an int) or of a duration (``"1h"``) over the index.

    Results equal pandas': every partition sees the rows of earlier partitions its windows
    reach.  Time windows need a sorted datetime index.
    """

    def __init__(
        self, frame: Any, window: Any, min_periods: int | None = None, center: bool = False, **options: Any
    ) -> None:
        unsupported = [name for name, value in options.items() if value is not None]
        if unsupported:
            raise UsageError(
                f"rolling does not take {sorted(unsupported)} here: window, min_periods and center are supported; "
                "for other kinds of windows give each partition the rows before it with map_overlap, such as "
                "df.map_overlap(lambda d: d.rolling(5, win_type='triang').mean(), 4, 0)"
            )
        self._frame = frame
        self._expr = expr_of(frame)
        self._center = bool(center)
        if isinstance(window, (int, np.integer)):
            if window < 0:
                raise UsageError("window must be non-negative")
            window = int(window)
        else:
            try:
                window_offset(window)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"invalid rolling window {window!r}: {exc}") from exc
            if not isinstance(self._expr._meta.index, pd.DatetimeIndex):
                raise UsageError("a time window needs a DatetimeIndex")
        self._window = window
        self._min_periods = min_periods

    def _apply(self, method: str, **kwargs: Any) -> Any:
        node_ = RollingAggregate(self._expr, self._window, self._min_periods, method, kwargs, self._center)
        return new_collection(node_)

    def sum(self) -> Any:
        """Rolling sum."""
        return self._apply("sum")

    def mean(self) -> Any:
        """Rolling mean."""
        return self._apply("mean")

    def count(self) -> Any:
        """Rolling count of non-missing values."""
        return self._apply("count")

    def min(self) -> Any:
        """Rolling minimum."""
        return self._apply("min")

    def max(self) -> Any:
        """Rolling maximum."""
        return self._apply("max")

    def median(self) -> Any:
        """Rolling median."""
        return self._apply("median")

    def std(self, ddof: int = 1) -> Any:
        """Rolling standard deviation."""
        return self._apply("std", ddof=ddof)

    def var(self, ddof: int = 1) -> Any:
        """Rolling variance."""
        return self._apply("var", ddof=ddof)

    def skew(self) -> Any:
        """Rolling skewness (pandas': adjusted for the window's size)."""
        return self._apply("skew")

    def kurt(self) -> Any:
        """Rolling excess kurtosis (pandas')."""
        return self._apply("kurt")

    def sem(self, ddof: int = 1) -> Any:
        """Rolling standard error of the mean."""
        return self._apply("sem", ddof=ddof)

    def quantile(self, q: float, interpolation: str = "linear") -> Any:
        """Rolling quantile ``q`` (between 0 and 1)."""
        if not 0 <= q <= 1:
            raise UsageError(f"quantile must be between 0 and 1, not {q!r}")
        return self._apply("quantile", q=q, interpolation=interpolation)

    def apply(
        self,
        func: Callable[..., Any],
        raw: bool = False,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """``func`` of each window (a Series, or a NumPy array with ``raw=True``), as pandas'."""
        if not callable(func):
            raise UsageError(f"rolling apply takes a function, got {type(func).__name__}")
        return self._apply("apply", func=func, raw=raw, args=tuple(args), kwargs=dict(kwargs or {}))

    def agg(self, func: Any) -> Any:
        """Rolling aggregation by name, list of names, or ``{column: name(s)}`` dict, as pandas'."""
        names = [func] if isinstance(func, str) else func
        if isinstance(names, dict):
            columns = _column_names(self._expr)
            missing = [column for column in names if column not in columns]
            if missing:
                raise UsageError(f"rolling aggregation names columns that are not there: {missing}")
            names = [n for value in names.values() for n in ([value] if isinstance(value, str) else value)]
        if not isinstance(names, (list, tuple)) or not names:
            raise UsageError(
                f"rolling aggregation takes a name, a list of names or a {{column: names}} dict, got {func!r}"
            )
        unknown = [n for n in names if n not in ROLLING_METHODS or n == "quantile"]
        if unknown:
            allowed = sorted(ROLLING_METHODS - {"quantile"})
            raise UsageError(f"rolling aggregations must be among {allowed}, got {unknown}")
        if isinstance(func, str):
            return self._apply(func)
        return self._apply("aggregate", func=func)

    aggregate = agg

    def __getitem__(self, key: Any) -> Rolling:
        return Rolling(_select(self._frame, key), self._window, min_periods=self._min_periods, center=self._center)

    def __getattr__(self, name: str) -> Rolling:
        if name.startswith("_") or name not in _column_names(self._expr):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self[name]

    def __repr__(self) -> str:
        return f"<zmqdask Rolling window={self._window!r}>"


def _ohlc_columns(part: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """A frame aggregated by first/max/min/last, with pandas' ohlc column names."""
    part = part.copy()
    pairs: list[Any] = list(part.columns)
    part.columns = pd.MultiIndex.from_tuples([(pair[0], names[pair[1]]) for pair in pairs])
    return part


def _bin_grid(first: Any, last: Any, low: Any, high: Any, rule: Any) -> pd.DatetimeIndex:
    """The bin labels from ``first`` to ``last`` that fall in ``[low, high)`` (None: unbounded)."""
    start = first if low is None else max(low, first)
    if high is None or high > last:
        return pd.date_range(start, last, freq=rule)
    return pd.date_range(start, high, freq=rule, inclusive="left")
