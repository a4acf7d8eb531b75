"""Grouped aggregations of partitioned frames: per-partition chunks, a combine tree, a final step.

Every aggregation is decomposed into *primitives* that can be computed per partition and then
merged without looking at rows again:

=========  =========================================================
function   partial state kept per group
=========  =========================================================
sum        sum
count      count of non-missing values
size       number of rows (always kept: it also fixes the set of groups)
min/max    min/max
first/last first/last non-missing value (partials stay in partition order)
mean       sum and count
var/std    count, mean and sum of squared deviations (merged exactly)
nunique    the distinct ``(group, value)`` pairs
=========  =========================================================

The kernels (:func:`groupby_chunk`, :func:`groupby_combine`, :func:`groupby_aggregate`) are
plain pandas functions; :class:`GroupBy` turns them into lazy expression nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from zmqdask.errors import UsageError

logger = logging.getLogger(__name__)

SERIES_COLUMN = "__zmqdask_series__"
"""Column name a grouped Series takes while it is handled as a one-column frame."""

SIZE_SLOT = 0
"""Position of the row-count slot, present in every partial frame."""

_PRIMITIVES: dict[str, tuple[str, ...]] = {
    "sum": ("sum",),
    "count": ("count",),
    "size": (),
    "min": ("min",),
    "max": ("max",),
    "first": ("first",),
    "last": ("last",),
    "mean": ("sum", "count"),
    "var": ("vcount", "vmean", "m2"),
    "std": ("vcount", "vmean", "m2"),
    "nunique": (),
}

AGGREGATIONS: frozenset[str] = frozenset(_PRIMITIVES)
"""Names of the aggregations that can be computed by a combine tree."""

_ALIASES: dict[Any, str] = {
    np.sum: "sum",
    np.mean: "mean",
    np.min: "min",
    np.max: "max",
    np.std: "std",
    np.var: "var",
    sum: "sum",
    min: "min",
    max: "max",
    len: "size",
}


@dataclass(frozen=True)
class AggPlan:
    """What a grouped aggregation computes and how its result is laid out.

    ``outputs`` holds ``(label, column, function)`` triples in output order; ``slots`` the
    ``(column, primitive)`` pairs of the partial frame (slot 0 is the row count);
    ``pair_columns`` the columns whose distinct values are tracked for ``nunique``.
    ``layout`` is ``"series"`` (one output, a Series named ``name``), ``"frame"`` (flat
    columns) or ``"multi"`` (``(column, function)`` MultiIndex columns).
    """

    outputs: tuple[tuple[Hashable, Hashable, str], ...]
    layout: str
    name: Hashable = None
    ddof: int = 1
    slots: tuple[tuple[Hashable, str], ...] = field(init=False)
    pair_columns: tuple[Hashable, ...] = field(init=False)

    def __post_init__(self) -> None:
        slots: list[tuple[Hashable, str]] = [(None, "size")]
        pairs: list[Hashable] = []
        for _, column, func in self.outputs:
            if func not in _PRIMITIVES:
                raise UsageError(f"unsupported grouped aggregation {func!r}; use one of {sorted(AGGREGATIONS)}")
            for primitive in _PRIMITIVES[func]:
                if (column, primitive) not in slots:
                    slots.append((column, primitive))
            if func == "nunique" and column not in pairs:
                pairs.append(column)
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "pair_columns", tuple(pairs))

    def slot(self, column: Hashable, primitive: str) -> int:
        """Position of a ``(column, primitive)`` slot in the partial frame."""
        return self.slots.index((column, primitive))

    @property
    def columns(self) -> list[Hashable]:
        """The input columns the aggregation reads, in first-use order."""
        seen: list[Hashable] = []
        for _, column, func in self.outputs:
            if func != "size" and column not in seen:
                seen.append(column)
        return seen


def _func_name(func: Any) -> str:
    if isinstance(func, str):
        return func
    try:
        name = _ALIASES.get(func)
    except TypeError:
        name = None
    if name is None:
        raise UsageError(f"grouped aggregation must be one of {sorted(AGGREGATIONS)} (by name), got {func!r}")
    return name


def make_plan(
    spec: Any,
    columns: Sequence[Hashable],
    *,
    series_name: Hashable = None,
    series_selection: bool = False,
    named: dict[str, tuple[Hashable, Any]] | None = None,
    ddof: int = 1,
) -> AggPlan:
    """Normalize an aggregation spec the way pandas reads it.

    ``columns`` are the aggregated columns (the selection, or every non-key column);
    ``series_selection`` says the selection is a single column (``gb.x`` or ``gb['x']``), whose
    results are Series named ``series_name``.  ``spec`` is a function name, a list of names or
    a dict column -> name(s); ``named`` is the keyword form ``label=(column, name)``.
    """
    if named:
        if spec is not None:
            raise UsageError("pass either an aggregation spec or named aggregations, not both")
        outputs = []
        for label, pair in named.items():
            if series_selection:
                # A single column is aggregated as ``label=function``.
                outputs.append((label, columns[0], _func_name(pair)))
                continue
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise UsageError(f"named aggregation {label}= must be a (column, function) pair, got {pair!r}")
            column, func = pair
            _check_column(column, columns)
            outputs.append((label, column, _func_name(func)))
        return AggPlan(tuple(outputs), "frame", ddof=ddof)
    if isinstance(spec, dict):
        if series_selection:
            raise UsageError("a dict of aggregations needs a DataFrame groupby, not a single column")
        multi = any(isinstance(v, (list, tuple)) for v in spec.values())
        outputs = []
        for column, funcs in spec.items():
            _check_column(column, columns)
            for func in funcs if isinstance(funcs, (list, tuple)) else [funcs]:
                name = _func_name(func)
                outputs.append(((column, name) if multi else column, column, name))
        return AggPlan(tuple(outputs), "multi" if multi else "frame", ddof=ddof)
    if isinstance(spec, (list, tuple)):
        names = [_func_name(func) for func in spec]
        if series_selection:
            return AggPlan(tuple((name, columns[0], name) for name in names), "frame", ddof=ddof)
        return AggPlan(
            tuple(((column, name), column, name) for column in columns for name in names), "multi", ddof=ddof
        )
    name = _func_name(spec)
    if name == "size":
        column = columns[0] if columns else None
        return AggPlan(((series_name, column, "size"),), "series", name=series_name if series_selection else None)
    if series_selection:
        return AggPlan(((series_name, columns[0], name),), "series", name=series_name, ddof=ddof)
    return AggPlan(tuple((column, column, name) for column in columns), "frame", ddof=ddof)


def _check_column(column: Hashable, columns: Sequence[Hashable]) -> None:
    if column not in columns:
        raise UsageError(f"column {column!r} is not among the aggregated columns {list(columns)}")


class Partial(NamedTuple):
    """Partial aggregation state of some rows: a frame of slots plus nunique pair frames."""

    main: pd.DataFrame
    pairs: dict[Hashable, pd.DataFrame]


def concat_nonempty(frames: Sequence[Any]) -> Any:
    """``pd.concat`` that leaves out empty pieces (their dtypes must not decide the result's)."""
    full = [frame for frame in frames if len(frame)]
    if not full:
        return frames[0]
    if len(full) == 1:
        return full[0]
    return pd.concat(full)


def _as_frame(obj: pd.DataFrame | pd.Series) -> pd.DataFrame:
    if isinstance(obj, pd.Series):
        return obj.to_frame(SERIES_COLUMN)
    return obj


def _float(series: pd.Series) -> pd.Series:
    return pd.Series(series.to_numpy(dtype="float64", na_value=np.nan), index=series.index, name=series.name)


def groupby_chunk(
    obj: pd.DataFrame | pd.Series,
    by: Any,
    plan: AggPlan,
    sort: bool = True,
    dropna: bool = True,
) -> Partial:
    """Partial state of one partition; ``by`` is a list of column names, a Series or a Grouper."""
    frame = _as_frame(obj)
    grouped = frame.groupby(by, sort=sort, dropna=dropna, observed=True)
    size = grouped.size()
    columns: dict[int, pd.Series] = {SIZE_SLOT: size}
    for position, (column, primitive) in enumerate(plan.slots):
        if position == SIZE_SLOT:
            continue
        values = grouped[column]
        if primitive == "vcount":
            columns[position] = values.count()
        elif primitive == "vmean":
            columns[position] = _float(values.mean())
        elif primitive == "m2":
            count = values.count()
            columns[position] = _float(values.var(ddof=0)) * count
        else:
            columns[position] = getattr(values, primitive)()
    main = pd.DataFrame(columns, index=size.index)
    pairs = {}
    for column in plan.pair_columns:
        counts = grouped[column].value_counts(dropna=True)
        keys = counts.index.droplevel(-1)
        pairs[column] = pd.DataFrame({0: counts.index.get_level_values(-1)}, index=keys)
    return Partial(main, pairs)


def _levels(index: pd.Index) -> int | list[int]:
    return 0 if index.nlevels == 1 else list(range(index.nlevels))


def groupby_combine(partials: Sequence[Partial], plan: AggPlan, sort: bool = True) -> Partial:
    """Merge partial states (in partition order) into one partial state."""
    if len(partials) == 1:
        return partials[0]
    main = concat_nonempty([partial.main for partial in partials])
    levels = _levels(main.index)
    # dropna=False throughout: missing keys were already dropped by the chunks when asked to,
    # and the ones left must survive as groups of their own.
    grouped = main.groupby(level=levels, sort=sort, dropna=False)
    out: dict[int, pd.Series] = {}
    for position, (column, primitive) in enumerate(plan.slots):
        if primitive in ("size", "sum", "count"):
            out[position] = grouped[position].sum()
        elif primitive in ("min", "max", "first", "last"):
            out[position] = getattr(grouped[position], primitive)()
        elif primitive == "vcount":
            n_slot, mean_slot, m2_slot = position, plan.slot(column, "vmean"), plan.slot(column, "m2")
            out.update(_merge_moments(main, levels, sort, n_slot, mean_slot, m2_slot))
    combined = pd.DataFrame({position: out[position] for position in range(len(plan.slots))})
    pairs = {}
    for column in plan.pair_columns:
        pieces = concat_nonempty([partial.pairs[column] for partial in partials])
        keep = ~pieces.reset_index().duplicated().to_numpy()
        pairs[column] = pieces[keep]
    return Partial(combined, pairs)


def _merge_moments(
    main: pd.DataFrame, levels: int | list[int], sort: bool, n_slot: int, mean_slot: int, m2_slot: int
) -> dict[int, pd.Series]:
    """Exact merge of (count, mean, M2) triples per group: M2 = sum M2_i + sum n_i (m_i - m)^2."""
    n = main[n_slot]
    valid = (n > 0).to_numpy()
    mean = main[mean_slot].where(valid, 0.0)
    weighted = n * mean
    frame = pd.DataFrame({"n": n, "nm": weighted}, index=main.index)
    grouped = frame.groupby(level=levels, sort=sort, dropna=False)
    total = grouped["n"].transform("sum")
    group_mean = grouped["nm"].transform("sum") / total
    deviation = mean - group_mean
    spread = (main[m2_slot].where(valid, 0.0) + n * deviation * deviation).where(valid, 0.0)
    frame["m2"] = spread
    sums = frame.groupby(level=levels, sort=sort, dropna=False).sum()
    merged_mean = (sums["nm"] / sums["n"]).where(sums["n"] > 0, np.nan)
    merged_m2 = sums["m2"].where(sums["n"] > 0, np.nan)
    return {n_slot: sums["n"], mean_slot: merged_mean, m2_slot: merged_m2}


def groupby_aggregate(partials: Sequence[Partial], plan: AggPlan, sort: bool = True) -> pd.DataFrame | pd.Series:
    """Final result from the partial states of all partitions (in partition order)."""
    state = groupby_combine(partials, plan, sort)
    return finalize(state, plan)


def finalize(state: Partial, plan: AggPlan) -> pd.DataFrame | pd.Series:
    """Turn one merged partial state into the pandas-shaped result."""
    main = state.main
    results: list[pd.Series] = []
    for _, column, func in plan.outputs:
        results.append(_final_values(state, plan, column, func))
    if plan.layout == "series":
        result = results[0]
        result.name = plan.name
        return result
    labels = [label for label, _, _ in plan.outputs]
    frame = pd.DataFrame({position: values for position, values in enumerate(results)}, index=main.index)
    if plan.layout == "multi":
        frame.columns = (
            pd.MultiIndex.from_tuples(labels) if labels else pd.MultiIndex.from_tuples([], names=[None, None])
        )
    else:
        frame.columns = pd.Index(labels)
    return frame


def _final_values(state: Partial, plan: AggPlan, column: Hashable, func: str) -> pd.Series:
    main = state.main
    if func == "size":
        return main[SIZE_SLOT]
    if func in ("sum", "count", "min", "max", "first", "last"):
        return main[plan.slot(column, func)]
    if func == "mean":
        total = main[plan.slot(column, "sum")]
        count = main[plan.slot(column, "count")]
        return (total / count).where(count > 0)
    if func in ("var", "std"):
        n = main[plan.slot(column, "vcount")]
        m2 = main[plan.slot(column, "m2")]
        dof = n - plan.ddof
        var = (m2 / dof.where(dof > 0, np.nan)).where(dof > 0, np.nan)
        return np.sqrt(var) if func == "std" else var
    if func == "nunique":
        pairs = state.pairs[column]
        counts = pairs.groupby(level=_levels(pairs.index), sort=False, dropna=False).size()
        return counts.reindex(main.index, fill_value=0)
    raise UsageError(f"unsupported grouped aggregation {func!r}")
