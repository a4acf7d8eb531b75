"""Time-series operations on a sorted datetime index: resampling and rolling windows.

Resampling reuses the grouped-aggregation partial states of :mod:`zmqdask.dataframe.groupby`
with the bins as groups.  Output partition ``i`` owns the bin labels from the label of the bin
holding division ``i`` up to (not including) the label of the bin holding division ``i + 1``;
a bin that straddles a partition boundary is merged from the partial states of every input
partition it touches (known from the divisions when the graph is built).  Empty bins between
data are filled the way pandas fills them, and a tiny task finds the first and last bin with
data so that loose divisions add no extra bins.

Rolling windows carry the tail of the preceding rows into each partition: for a fixed count
``w`` the last ``w - 1`` rows, for a time window the rows within the window of the last
timestamp.  The carry is a chain of small tasks, so a window may span any number of short
partitions, and each partition sees exactly the rows pandas would see.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.groupby import (
    SIZE_SLOT,
    AggPlan,
    Partial,
    concat_nonempty,
    finalize,
    groupby_chunk,
    groupby_combine,
)

logger = logging.getLogger(__name__)

ROLLING_METHODS: frozenset[str] = frozenset({"sum", "mean", "count", "min", "max", "std", "var", "median"})
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
    kwargs: dict[str, Any] = {"freq": rule}
    if closed is not None:
        kwargs["closed"] = closed
    if label is not None:
        kwargs["label"] = label
    if isinstance(to_offset(rule), pd.offsets.Tick):
        kwargs["origin"] = origin
    return pd.Grouper(**kwargs)


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
    start = first if low is None else max(low, first)
    state = groupby_combine(partials, plan, sort=True)
    main = state.main
    if high is None or high > last:
        grid = pd.date_range(start, last, freq=rule)
    else:
        grid = pd.date_range(start, high, freq=rule, inclusive="left")
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
    result = finalize(Partial(pd.DataFrame(filled, index=grid), pairs), plan)
    result.index.freq = None
    return result


# --------------------------------------------------------------------------------------------
# Rolling kernels
# --------------------------------------------------------------------------------------------


def window_offset(window: Any) -> pd.Timedelta | None:
    """The window as a duration for time windows, None for a fixed row count."""
    if isinstance(window, (int, np.integer)):
        return None
    return pd.Timedelta(to_offset(window))


def rolling_carry(previous: Any, part: Any, window: Any) -> Any:
    """Rows of ``previous`` followed by ``part`` that a later partition's windows can reach."""
    joined = concat_nonempty([previous, part]) if previous is not None else part
    duration = window_offset(window)
    if duration is None:
        keep = int(window) - 1
        return joined.iloc[len(joined) - keep :] if keep > 0 else joined.iloc[:0]
    if len(joined) == 0:
        return joined
    last = joined.index[-1]
    return joined[joined.index > last - duration]


def rolling_apply(
    previous: Any,
    part: Any,
    window: Any,
    min_periods: int | None,
    method: str,
    kwargs: dict[str, Any],
) -> Any:
    """Rolling ``method`` of one partition, computed over the carried rows plus the partition."""
    if previous is None or len(previous) == 0 or len(part) == 0:
        return getattr(part.rolling(window, min_periods=min_periods), method)(**kwargs)
    joined = pd.concat([previous, part])
    result = getattr(joined.rolling(window, min_periods=min_periods), method)(**kwargs)
    return result.iloc[len(previous) :]


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
        layout.append((readers, low, high))
    return layout
