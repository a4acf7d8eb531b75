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
from functools import cached_property
from typing import Any

import pandas as pd

from zmqdask.dataframe.expr import Expr, emulate, node
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
    # Both are pieces of the same frame: concatenating them keeps every dtype.
    return pd.concat([first, second])


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
        result = _scan(_joined(carry, part), method, skipna).iloc[1:]
    # The same labels, with the partition's own index (concatenating dropped its freq).
    result.index = part.index
    return result


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
        name, frame, method, skipna = self._name, self.frame, self.method, self.skipna
        n = frame.npartitions
        layer: dict[str, TaskSpec] = {}
        # bfill carries from the last partition towards the first.
        order = range(n - 1, -1, -1) if method == "bfill" else range(n)
        carry: Any = None
        for position, i in enumerate(order):
            part = TaskRef(frame._key(i))
            layer[self._key(i)] = (scan_apply, (part, carry, method, skipna), {})
            if position < n - 1:
                summary_key = f"{name}-summary-{i}"
                layer[summary_key] = (scan_summary, (part, method, skipna), {})
                carry_key = f"{name}-carry-{i}"
                layer[carry_key] = (scan_carry, (carry, TaskRef(summary_key), method, skipna), {})
                carry = TaskRef(carry_key)
        return layer

    def _describe(self) -> str:
        return f"{self.method}, skipna={self.skipna}"


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
