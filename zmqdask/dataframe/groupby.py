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

A user's :class:`Aggregation` is kept beside these: its ``chunk`` outputs per group, merged
by its ``agg`` at every combine step (the final one included), then ``finalize`` once.

The kernels (:func:`groupby_chunk`, :func:`groupby_combine`, :func:`groupby_aggregate`) are
plain pandas functions; :class:`GroupBy` turns them into lazy expression nodes.

pandas' ``observed=False`` and ``as_index=False`` change only the final step, which sees
every group at once: the observed groups are completed with the empty ones
(:func:`all_groups`), then the keys become columns (:func:`keys_as_columns`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd

from zmqdask.dataframe import keycodes
from zmqdask.dataframe.core_ops import concat_parts
from zmqdask.dataframe.expr import (
    DEFAULT_SPLIT_EVERY,
    Expr,
    MapPartitions,
    Projection,
    SinglePartition,
    TreeCombine,
    emulate,
    meta_nonempty,
    node,
)
from zmqdask.dataframe.wrapping import expr_of, new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

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
class Aggregation:
    """A user-defined grouped aggregation, in chunk/agg/finalize steps, as Dask's
    ``dd.Aggregation``: ``df.groupby(k).agg(custom)``, ``df.groupby(k).x.agg(custom)``, or
    among other aggregations in a list or dict.

    ``chunk`` is called with the ``SeriesGroupBy`` of a column in each partition and returns
    a Series indexed by the groups, or a tuple of them. ``agg`` is called with one
    ``SeriesGroupBy`` per chunk output (positionally), each grouping the concatenated outputs
    of several partitions, and returns what ``chunk`` does; it runs at every step of the
    combine tree, so it must accept its own outputs. ``finalize`` (optional when the steps
    give one Series) is called once with the final ``agg`` outputs and returns the Series of
    results. ``name`` labels the results (``(column, name)`` in a list of aggregations).
    """

    name: str
    chunk: Callable[..., Any]
    agg: Callable[..., Any]
    finalize: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"Aggregation needs a name (a non-empty string) to label its results, got {self.name!r}")
        for role in ("chunk", "agg"):
            if not callable(getattr(self, role)):
                raise UsageError(f"Aggregation {self.name!r}: {role} must be a function of SeriesGroupBy objects")
        if self.finalize is not None and not callable(self.finalize):
            raise UsageError(f"Aggregation {self.name!r}: finalize must be a function of the agg results, or None")


AggFunc = str | Aggregation
"""A grouped aggregation of a plan: a built-in one by name, or a user's."""


def agg_name(func: AggFunc) -> str:
    """The name labelling an aggregation's results."""
    return func.name if isinstance(func, Aggregation) else func


_NO_FILL: Any = object()
"""``shift``'s fill value when none is given (pandas fills with missing values then)."""


@dataclass(frozen=True)
class AggPlan:
    """What a grouped aggregation computes and how its result is laid out.

    ``outputs`` holds ``(label, column, function)`` triples in output order; ``slots`` the
    ``(column, primitive)`` pairs of the partial frame (slot 0 is the row count);
    ``pair_columns`` the columns whose distinct values are tracked for ``nunique``.
    ``layout`` is ``"series"`` (one output, a Series named ``name``), ``"frame"`` (flat
    columns) or ``"multi"`` (``(column, function)`` MultiIndex columns).

    ``observed=False`` gives every combination of the categories of categorical keys a
    row, empty groups included (see :func:`all_groups`).  ``key_columns`` is None when the
    group keys index the result (``as_index=True``); otherwise they become its first columns
    and it is numbered 0..n-1, as pandas' ``as_index=False`` does: ``"insert"`` leaves out a
    key whose name is already a column, ``"reset"`` refuses it (``reset_index``), as pandas
    does for ``size`` and for several aggregations of one selected column.
    """

    outputs: tuple[tuple[Hashable, Hashable, AggFunc], ...]
    layout: str
    name: Hashable = None
    ddof: int = 1
    observed: bool = True
    key_columns: str | None = None
    slots: tuple[tuple[Hashable, str], ...] = field(init=False)
    pair_columns: tuple[Hashable, ...] = field(init=False)
    customs: tuple[tuple[Hashable, Aggregation], ...] = field(init=False)

    def __post_init__(self) -> None:
        slots: list[tuple[Hashable, str]] = [(None, "size")]
        pairs: list[Hashable] = []
        customs: list[tuple[Hashable, Aggregation]] = []
        for _, column, func in self.outputs:
            if isinstance(func, Aggregation):
                if (column, func) not in customs:
                    customs.append((column, func))
                continue
            if func not in _PRIMITIVES:
                raise UsageError(f"unsupported grouped aggregation {func!r}; use one of {sorted(AGGREGATIONS)}")
            for primitive in _PRIMITIVES[func]:
                if (column, primitive) not in slots:
                    slots.append((column, primitive))
            if func == "nunique" and column not in pairs:
                pairs.append(column)
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "pair_columns", tuple(pairs))
        object.__setattr__(self, "customs", tuple(customs))

    def __repr__(self) -> str:
        funcs = ", ".join(
            "size()" if func == "size" else f"{agg_name(func)}({column!r})" for _, column, func in self.outputs
        )
        return f"AggPlan({funcs})"

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


WHOLE_GROUP_AGGREGATIONS = frozenset({"median", "prod", "idxmax", "idxmin"})
"""Aggregations ``agg`` accepts by name that are computed on whole groups (no tree form)."""


def _needs_whole_groups(arg: Any, named: dict[str, Any]) -> bool:
    """Whether an ``agg`` specification names an aggregation of :data:`WHOLE_GROUP_AGGREGATIONS`."""
    names: list[Any] = []
    if isinstance(arg, dict):
        for value in arg.values():
            names.extend(value if isinstance(value, list) else [value])
    elif isinstance(arg, list):
        names.extend(arg)
    elif arg is not None:
        names.append(arg)
    for value in named.values():
        if isinstance(value, tuple) and len(value) == 2:
            names.append(value[1])
        else:
            names.append(value)  # a selected column's label=function
    return any(isinstance(name, str) and name in WHOLE_GROUP_AGGREGATIONS for name in names)


def _has_custom(arg: Any, named: dict[str, Any]) -> bool:
    """Whether an ``agg`` specification holds an :class:`Aggregation`."""
    items: list[Any] = list(named.values())
    if isinstance(arg, dict):
        items.extend(arg.values())
    else:
        items.append(arg)
    flat = [x for item in items for x in (item if isinstance(item, (list, tuple)) else [item])]
    return any(isinstance(item, Aggregation) for item in flat)


def _func_name(func: Any) -> AggFunc:
    if isinstance(func, (str, Aggregation)):
        return func
    try:
        name = _ALIASES.get(func)
    except TypeError:
        name = None
    if name is None:
        raise UsageError(
            f"grouped aggregation must be one of {sorted(AGGREGATIONS)} (by name) or a "
            f"zmqdask.dataframe.Aggregation(name, chunk, agg, finalize), got {func!r}"
        )
    return name


def make_plan(
    spec: Any,
    columns: Sequence[Hashable],
    *,
    series_name: Hashable = None,
    series_selection: bool = False,
    named: dict[str, tuple[Hashable, Any]] | None = None,
    ddof: int = 1,
    observed: bool = True,
    as_index: bool = True,
) -> AggPlan:
    """Normalize an aggregation spec the way pandas reads it.

    ``columns`` are the aggregated columns (the selection, or every non-key column);
    ``series_selection`` says the selection is a single column (``gb.x`` or ``gb['x']``), whose
    results are Series named ``series_name``.  ``spec`` is a function name, a list of names or
    a dict column -> name(s); ``named`` is the keyword form ``label=(column, name)``.
    ``observed`` and ``as_index`` are pandas' groupby options (see :class:`AggPlan`).
    """
    plan = _make_plan(spec, columns, series_name, series_selection, named, ddof)
    if observed and as_index:
        return plan
    key_columns = None if as_index else key_columns_mode(spec, series_selection, named)
    return replace(plan, observed=observed, key_columns=key_columns)


def key_columns_mode(spec: Any, series_selection: bool, named: dict[str, Any] | None) -> str:
    """How pandas' ``as_index=False`` adds the keys to the result of this aggregation.

    ``size`` and, of one selected column, a list of aggregations or named ones are reset as
    pandas' ``reset_index`` does (a key whose name is taken is an error); other results get
    the keys whose names are not columns already.
    """
    if (isinstance(spec, str) and spec == "size") or spec is len:
        return "reset"
    if series_selection and (named or isinstance(spec, (list, tuple))):
        return "reset"
    return "insert"


def _make_plan(
    spec: Any,
    columns: Sequence[Hashable],
    series_name: Hashable,
    series_selection: bool,
    named: dict[str, tuple[Hashable, Any]] | None,
    ddof: int,
) -> AggPlan:
    outputs: list[tuple[Hashable, Hashable, AggFunc]] = []
    if named:
        if spec is not None:
            raise UsageError("pass either an aggregation spec or named aggregations, not both")
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
        for column, funcs in spec.items():
            _check_column(column, columns)
            for func in funcs if isinstance(funcs, (list, tuple)) else [funcs]:
                name = _func_name(func)
                outputs.append(((column, agg_name(name)) if multi else column, column, name))
        return AggPlan(tuple(outputs), "multi" if multi else "frame", ddof=ddof)
    if isinstance(spec, (list, tuple)):
        names = [_func_name(func) for func in spec]
        if series_selection:
            return AggPlan(tuple((agg_name(name), columns[0], name) for name in names), "frame", ddof=ddof)
        return AggPlan(
            tuple(((column, agg_name(name)), column, name) for column in columns for name in names), "multi", ddof=ddof
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
    """Partial aggregation state of some rows: a frame of slots plus nunique pair frames,
    and the outputs of the plan's :class:`Aggregation` steps (in ``plan.customs`` order)."""

    main: pd.DataFrame
    pairs: dict[Hashable, pd.DataFrame]
    custom: tuple[tuple[pd.Series, ...], ...] = ()


def _custom_outputs(result: Any, aggregation: Aggregation, step: str) -> tuple[pd.Series, ...]:
    """The Series an :class:`Aggregation` step returned, as a tuple."""
    outputs = result if isinstance(result, tuple) else (result,)
    if not outputs or not all(isinstance(output, pd.Series) for output in outputs):
        kinds = ", ".join(type(output).__name__ for output in outputs) or "nothing"
        raise UsageError(
            f"Aggregation {aggregation.name!r}: {step} must return a Series indexed by the groups, or a tuple "
            f"of them; it returned {kinds}"
        )
    return outputs


def _custom_combine(partials: Sequence[Partial], plan: AggPlan, sort: bool) -> tuple[tuple[pd.Series, ...], ...]:
    """Each :class:`Aggregation`'s ``agg`` of its outputs in ``partials`` (in partition order)."""
    merged = []
    for position, (_, aggregation) in enumerate(plan.customs):
        outputs = [partial.custom[position] for partial in partials]
        if len({len(output) for output in outputs}) != 1:
            raise UsageError(f"Aggregation {aggregation.name!r}: chunk and agg must return the same number of Series")
        joined = [concat_parts([output[i] for output in outputs]) for i in range(len(outputs[0]))]
        levels = _levels(joined[0].index)
        grouped = [piece.groupby(level=levels, sort=sort, dropna=False, observed=True) for piece in joined]
        merged.append(_custom_outputs(aggregation.agg(*grouped), aggregation, "agg"))
    return tuple(merged)


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
    fast = _counting_chunk(frame, by, plan, sort, dropna)
    if fast is not None:
        return fast
    # Typed loosely: pandas accepts any hashable column label here.
    grouped: Any = frame.groupby(by, sort=sort, dropna=dropna, observed=True)
    size = grouped.size()
    columns: dict[int, pd.Series] = {SIZE_SLOT: size}
    for position, (column, primitive) in enumerate(plan.slots):
        if position == SIZE_SLOT:
            continue
        values = column_groups(grouped, frame, by, column, sort, dropna)
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
    if plan.pair_columns:
        # Group numbers index into ``size``'s index (NaN for rows whose key was dropped);
        # deduplicating (number, value) pairs is much cheaper than counting values per group.
        codes = grouped.ngroup().to_numpy(dtype="float64", na_value=np.nan)
        for column in plan.pair_columns:
            values = frame[column]
            keep = ~np.isnan(codes) & values.notna().to_numpy()
            distinct = pd.DataFrame({"group": codes[keep].astype(np.int64), 0: values[keep].to_numpy()})
            distinct = distinct.drop_duplicates()
            keys = size.index.take(distinct["group"].to_numpy())
            pairs[column] = pd.DataFrame({0: distinct[0].to_numpy()}, index=keys)
    custom = tuple(
        _custom_outputs(
            aggregation.chunk(column_groups(grouped, frame, by, column, sort, dropna)), aggregation, "chunk"
        )
        for column, aggregation in plan.customs
    )
    return Partial(main, pairs, custom)


def column_groups(grouped: Any, frame: pd.DataFrame, by: Any, column: Hashable, sort: bool, dropna: bool) -> Any:
    """The SeriesGroupBy of one column of ``frame``, grouped as ``grouped`` is (by ``by``).

    pandas' ``grouped[label]`` refuses a tuple, which once meant several columns; a column of
    MultiIndex columns is named by one, so that column is grouped by the same keys itself.
    """
    if not isinstance(column, tuple):
        return grouped[column]
    keys = by if isinstance(by, list) else [by]
    series_keys = [frame[key] if _is_label(key) and key in frame.columns else key for key in keys]
    return frame[column].groupby(series_keys, sort=sort, dropna=dropna, observed=True)


def _is_label(key: Any) -> bool:
    """Whether a grouping key is a column label (not a Series, an Index or a Grouper)."""
    return not isinstance(key, (pd.Series, pd.Index, pd.Grouper, np.ndarray))


_COUNTING = frozenset({"size", "sum", "count", "min", "max"})
_EXTREMES = {"min": (np.fmin, np.inf), "max": (np.fmax, -np.inf)}


def _counting_chunk(frame: pd.DataFrame, by: Any, plan: AggPlan, sort: bool, dropna: bool) -> Partial | None:
    """The partial state by integer codes and ``np.bincount``, when that gives pandas' result.

    Covers one key column, sorted groups, sums of float64 columns, minima and maxima of
    float64 and int64 columns, counts and sizes (which is what means need); anything else
    returns None for the general path.
    """
    if not sort or not isinstance(by, list) or len(by) != 1 or plan.pair_columns or plan.customs:
        return None
    key = by[0]
    if isinstance(key, (pd.Series, pd.Index, pd.Grouper)) or key not in frame.columns:
        return None
    if isinstance(frame[key].dtype, pd.CategoricalDtype):
        return None
    for column, primitive in plan.slots[1:]:
        if primitive not in _COUNTING or column not in frame.columns:
            return None
        dtype = frame[column].dtype
        if primitive == "sum" and dtype != np.dtype("float64"):
            return None
        if primitive in _EXTREMES and dtype not in (np.dtype("float64"), np.dtype("int64")):
            return None
    codes, uniques = keycodes.factorize(cast(pd.Series, frame[key]))
    present = codes >= 0
    everywhere = bool(present.all())
    if not everywhere:
        if not dropna:
            return None
        codes = codes[present]
    ngroups = len(uniques)
    size = np.bincount(codes, minlength=ngroups)
    observed = size > 0
    index = uniques[observed]
    index.name = key
    columns: dict[int, Any] = {SIZE_SLOT: size[observed].astype(np.int64, copy=False)}
    for position, (column, primitive) in enumerate(plan.slots):
        if position == SIZE_SLOT:
            continue
        series = frame[column]
        if primitive == "count":
            valid = series.notna().to_numpy()
            if not everywhere:
                valid = valid[present]
            columns[position] = np.bincount(codes[valid], minlength=ngroups)[observed].astype(np.int64, copy=False)
        elif primitive in _EXTREMES:
            columns[position] = _extreme(series.to_numpy(), codes, present, everywhere, ngroups, primitive)[observed]
        else:
            values = series.to_numpy()
            if not everywhere:
                values = values[present]
            sums = np.bincount(codes, weights=values, minlength=ngroups)
            if np.isnan(sums).any():
                # Missing values are skipped, as pandas does (inf - inf stays NaN).
                sums = np.bincount(codes, weights=np.where(np.isnan(values), 0.0, values), minlength=ngroups)
            columns[position] = sums[observed].astype(np.float64, copy=False)
    return Partial(pd.DataFrame(columns, index=index), {})


def _extreme(
    values: np.ndarray, codes: np.ndarray, present: np.ndarray, everywhere: bool, ngroups: int, how: str
) -> np.ndarray:
    """Per-group minimum or maximum; NaN for a float group without values, as pandas gives."""
    if not everywhere:
        values = values[present]
    ufunc, start = _EXTREMES[how]
    if values.dtype.kind == "i":
        info = np.iinfo(values.dtype)
        out = np.full(ngroups, info.max if how == "min" else info.min, dtype=values.dtype)
        (np.minimum if how == "min" else np.maximum).at(out, codes, values)
        return out
    out = np.full(ngroups, start)
    ufunc.at(out, codes, values)  # fmin/fmax skip missing values
    valid = np.bincount(codes[~np.isnan(values)], minlength=ngroups)
    out[valid == 0] = np.nan
    return out


def _levels(index: pd.Index) -> int | list[int]:
    return 0 if index.nlevels == 1 else list(range(index.nlevels))


def groupby_combine(partials: Sequence[Partial], plan: AggPlan, sort: bool = True) -> Partial:
    """Merge partial states (in partition order) into one partial state."""
    if len(partials) == 1:
        # An Aggregation's agg runs at every step, even over one partition's outputs.
        single = partials[0]
        return single._replace(custom=_custom_combine(partials, plan, sort)) if plan.customs else single
    main = concat_parts([partial.main for partial in partials])
    levels = _levels(main.index)
    # dropna=False throughout: missing keys were already dropped by the chunks when asked to,
    # and the ones left must survive as groups of their own.
    grouped = main.groupby(level=levels, sort=sort, dropna=False)
    out: dict[int, pd.Series] = {}
    for position, (column, primitive) in enumerate(plan.slots):
        if primitive in ("size", "count"):
            out[position] = grouped[position].sum()
        elif primitive == "sum":
            # A NaN partial sum comes from inf - inf (missing values were skipped already)
            # and must stay NaN, as in pandas' sum of the whole group.
            with np.errstate(invalid="ignore"):
                out[position] = grouped[position].sum(skipna=False)
        elif primitive in ("min", "max", "first", "last"):
            out[position] = getattr(grouped[position], primitive)()
        elif primitive == "vcount":
            n_slot, mean_slot, m2_slot = position, plan.slot(column, "vmean"), plan.slot(column, "m2")
            out.update(_merge_moments(main, levels, sort, n_slot, mean_slot, m2_slot))
    combined = pd.DataFrame({position: out[position] for position in range(len(plan.slots))})
    pairs = {}
    for column in plan.pair_columns:
        pieces = concat_parts([partial.pairs[column] for partial in partials])
        keep = ~pieces.reset_index().duplicated().to_numpy()
        pairs[column] = pieces[keep]
    return Partial(combined, pairs, _custom_combine(partials, plan, sort))


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
    return finalize(state, plan, sort)


_EMPTY_GROUP_ZERO = frozenset({"sum", "count", "size", "nunique"})
"""Aggregations whose value for a group without rows is 0 (the others give a missing value)."""


def finalize(state: Partial, plan: AggPlan, sort: bool = True) -> pd.DataFrame | pd.Series:
    """Turn one merged partial state into the pandas-shaped result."""
    main = state.main
    index = main.index
    if not plan.observed:
        index = all_groups(index, sort)
    results: list[pd.Series] = []
    for _, column, func in plan.outputs:
        values = _final_values(state, plan, column, func)
        if not plan.observed:
            values = values.reindex(index, fill_value=0 if func in _EMPTY_GROUP_ZERO else np.nan)
        results.append(values)
    if plan.layout == "series":
        result = results[0]
        result.name = plan.name
        if plan.key_columns is None:
            return result
        return keys_as_columns(result, plan.key_columns, agg_name(plan.outputs[0][2]))
    labels = [label for label, _, _ in plan.outputs]
    frame = pd.DataFrame({position: values for position, values in enumerate(results)}, index=index)
    if plan.layout == "multi":
        frame.columns = (
            pd.MultiIndex.from_tuples([_flat_label(label) for label in labels])
            if labels
            else pd.MultiIndex.from_tuples([], names=[None, None])
        )
    else:
        frame.columns = pd.Index(labels)
    return frame if plan.key_columns is None else keys_as_columns(frame, plan.key_columns)


def all_groups(index: pd.Index, sort: bool) -> pd.Index:
    """The groups of pandas' ``observed=False`` from the observed ones in ``index``.

    Every category of a categorical key is combined with the values of the other keys, in
    the order pandas gives them: pandas itself groups the observed keys (in the order they
    were first seen, which is all its order depends on) with ``observed=False``.
    """
    # String labels: pandas 3.1 swaps the levels of observed=False groups keyed by integer labels.
    labels = [f"key{level}" for level in range(index.nlevels)]
    keys = pd.DataFrame({label: index.get_level_values(level) for level, label in enumerate(labels)})
    grouped: Any = keys.groupby(labels, sort=sort, dropna=False, observed=False)
    full = grouped.size().index
    full.names = index.names
    return full


def keys_as_columns(result: pd.DataFrame | pd.Series, mode: str, func: str | None = None) -> pd.DataFrame:
    """``result`` with its group keys (index levels) as first columns, numbered 0..n-1.

    This is pandas' ``as_index=False``; ``mode`` says how a key whose name is already a
    column is handled (see :class:`AggPlan`).  A ``size`` Series becomes a ``size`` column.
    """
    if isinstance(result, pd.Series) and func == "size":
        result = result.rename("size")
    if mode == "reset":
        return result.reset_index()
    frame = result.to_frame() if isinstance(result, pd.Series) else result.copy()
    index = frame.index
    if index.nlevels == 1:
        names = [index.name if index.name is not None else ("index" if "index" not in frame.columns else "level_0")]
    else:
        names = [name if name is not None else f"level_{level}" for level, name in enumerate(index.names)]
    # Below MultiIndex columns a key's label is (name, "", ...), as pandas makes it.
    padding = ("",) * (frame.columns.nlevels - 1)
    # Inserted last key first, each at position 0, so the keys end up in their own order.
    for level in reversed(range(index.nlevels)):
        name = names[level]
        if name not in frame.columns:
            whole = isinstance(name, tuple) and len(name) == frame.columns.nlevels  # a full label already
            label = (name, *padding) if padding and not whole else name
            frame.insert(0, label, index.get_level_values(level))
    return frame.reset_index(drop=True)


def _flat_label(label: Any) -> tuple[Any, ...]:
    """A ``(column, aggregation)`` label as one tuple; pandas puts a column of MultiIndex
    columns (a tuple) as its levels before the aggregation's."""
    column, name = label
    return (*column, name) if isinstance(column, tuple) else (column, name)


def _final_values(state: Partial, plan: AggPlan, column: Hashable, func: AggFunc) -> pd.Series:
    main = state.main
    if isinstance(func, Aggregation):
        return _custom_final(state, plan.customs.index((column, func)), func)
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
        return cast(pd.Series, np.sqrt(var)) if func == "std" else var
    if func == "nunique":
        pairs = state.pairs[column]
        counts = pairs.groupby(level=_levels(pairs.index), sort=False, dropna=False).size()
        return counts.reindex(main.index, fill_value=0)
    raise UsageError(f"unsupported grouped aggregation {func!r}")


def _custom_final(state: Partial, position: int, aggregation: Aggregation) -> pd.Series:
    """An :class:`Aggregation`'s results, one per group of ``state`` (in its order)."""
    outputs = state.custom[position]
    if aggregation.finalize is not None:
        result = aggregation.finalize(*outputs)
    elif len(outputs) == 1:
        result = outputs[0]
    else:
        raise UsageError(
            f"Aggregation {aggregation.name!r}: its steps give {len(outputs)} Series per group; pass "
            "finalize= to turn them into the results"
        )
    if not isinstance(result, pd.Series):
        raise UsageError(
            f"Aggregation {aggregation.name!r}: finalize must return a Series indexed by the groups, "
            f"it returned {type(result).__name__}"
        )
    return result.reindex(state.main.index)


# --------------------------------------------------------------------------------------------
# Expression nodes and the user-facing GroupBy
# --------------------------------------------------------------------------------------------


def _labels_as_list(by: Any) -> Any:
    return list(by) if type(by) is tuple else by


def groupby_chunk_task(obj: Any, by: Any, plan: AggPlan, sort: bool = True, dropna: bool = True) -> Partial:
    """:func:`groupby_chunk` with ``by`` as a tuple of labels (the form kept in expressions)."""
    return groupby_chunk(obj, _labels_as_list(by), plan, sort, dropna)


def groupby_whole(obj: Any, by: Any, plan: AggPlan, sort: bool = True, dropna: bool = True) -> Any:
    """The aggregation of one pandas object in one step (used to derive result schemas)."""
    return groupby_aggregate([groupby_chunk_task(obj, by, plan, sort, dropna)], plan, sort)


def whole_groups_part(
    part: Any,
    by: tuple[Hashable, ...],
    selection: Any,
    how: str,
    func: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sort: bool,
    dropna: bool,
    group_keys: bool = True,
) -> Any:
    """pandas' ``groupby(by)[selection].<how>(func)`` of a partition holding whole groups
    (``how="method"``: the GroupBy method named ``func``)."""
    grouped: Any = part.groupby(list(by), sort=sort, dropna=dropna, observed=True, group_keys=group_keys)
    if selection is not None:
        grouped = grouped[selection]
    if how == "method":
        return getattr(grouped, func)(*args, **kwargs)
    return getattr(grouped, how)(func, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Per-row results within groups (transform, cumsum, shift, ...): there and back again
# --------------------------------------------------------------------------------------------

_SOURCE = "__zmqdask_source_partition__"
_POSITION = "__zmqdask_source_position__"


def group_rows_split(part: pd.DataFrame, source: int, by: tuple[Hashable, ...], nout: int) -> list[pd.DataFrame]:
    """Partition ``source``'s rows, tagged with where they came from, cut by the hash of
    the group keys into ``nout`` buckets."""
    from zmqdask.dataframe.shuffle import hash_split

    tagged = part.copy(deep=False)
    tagged[_tag(part.columns, _SOURCE)] = np.full(len(part), source, dtype=np.int64)
    tagged[_tag(part.columns, _POSITION)] = np.arange(len(part))
    return hash_split(tagged, list(by), nout)


def _tag(columns: pd.Index, name: str) -> Hashable:
    """The label of a tag column among ``columns``: MultiIndex columns take whole tuples."""
    return (name, *[""] * (columns.nlevels - 1)) if isinstance(columns, pd.MultiIndex) else name


def _untagged(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its tag columns."""
    return frame.drop(columns=[_tag(frame.columns, _SOURCE), _tag(frame.columns, _POSITION)])


def group_rows_apply(pieces: Sequence[pd.DataFrame], nsources: int, options: tuple[Any, ...], meta: Any) -> list[Any]:
    """The per-row result of one bucket's whole groups, cut back by source partition:
    ``(rows, their positions there)`` for each source."""
    from zmqdask.dataframe.shuffle import gather

    joined = gather(pieces)
    sources = joined[_tag(joined.columns, _SOURCE)].to_numpy()
    positions = joined[_tag(joined.columns, _POSITION)].to_numpy()
    if len(joined) == 0:
        # pandas cannot transform no groups with a function: nothing to compute anyway.
        return [(meta, positions)] * nsources
    result = whole_groups_part(_untagged(joined), *options)
    if len(result) != len(joined):
        raise UsageError(
            f"groupby(...).{options[2] if options[2] != 'method' else options[3]} must give one row per row "
            f"(got {len(result)} for {len(joined)}); use groupby(...).apply for other results"
        )
    # pandas keeps the rows' order in these results, so position i is joined's row i.
    return [(result.iloc[mask], positions[mask]) for mask in (sources == s for s in range(nsources))]


def group_rows_restore(pieces: Sequence[tuple[Any, np.ndarray]]) -> Any:
    """Partition ``i`` of the result: its rows from every bucket, back in their order."""
    full = [(rows, positions) for rows, positions in pieces if len(rows)]
    if not full:
        return pieces[0][0]
    rows = pd.concat([r for r, _ in full]) if len(full) > 1 else full[0][0]
    order = np.argsort(np.concatenate([p for _, p in full]), kind="stable")
    return rows.iloc[order]


@node
class GroupRows(Expr):
    """Per-row results of ``frame``'s groups (``whole_groups_part`` options), with each row
    back in its partition and place: the groups are brought together by a hash shuffle,
    computed whole, and the results go back where their rows came from.  The result is
    partitioned like ``frame`` (same divisions), so it lines up with it."""

    frame: Expr
    options: tuple[Any, ...]
    meta: Any

    def _prefix(self) -> str:
        how, func = self.options[2], self.options[3]
        return f"groupby-{func if how == 'method' else how}"

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]

    def _same_rows(self) -> Expr | None:
        return self.frame

    def _layer(self) -> dict[str, TaskSpec]:
        from zmqdask.dataframe.shuffle import pick

        name, frame, n = self._name, self.frame, self.frame.npartitions
        by = self.options[0]
        layer: dict[str, TaskSpec] = {}
        for i in range(n):
            layer[f"{name}-split-{i}"] = (group_rows_split, (TaskRef(frame._key(i)), i, by, n), {})
            for j in range(n):
                layer[f"{name}-pick-{i}.{j}"] = (pick, (TaskRef(f"{name}-split-{i}"), j), {})
        for j in range(n):
            pieces = [TaskRef(f"{name}-pick-{i}.{j}") for i in range(n)]
            layer[f"{name}-groups-{j}"] = (group_rows_apply, (pieces, n, self.options, self.meta), {})
            for i in range(n):
                layer[f"{name}-back-{j}.{i}"] = (pick, (TaskRef(f"{name}-groups-{j}"), i), {})
        for i in range(n):
            back = [TaskRef(f"{name}-back-{j}.{i}") for j in range(n)]
            layer[self._key(i)] = (group_rows_restore, (back,), {})
        return layer

    def _describe(self) -> str:
        return f"by={list(self.options[0])}, {self.options[2]} {self.options[3]}"


_VALUES = "__zmqdask_values__"
"""The column a grouped Series' values take while its per-row result is computed."""

_KEY = "__zmqdask_key_"
"""Prefix of the columns grouping Series take while a per-row result is computed."""

_NO_RENAME = object()


def _as_values_frame(part: pd.Series) -> pd.DataFrame:
    return part.to_frame(_VALUES)


def _sort_by_keys(part: Any, nkeys: int) -> Any:
    """Rows sorted by the first ``nkeys`` index levels (the group keys), stably."""
    if part.index.nlevels <= nkeys:
        return part.sort_index()
    return part.sort_index(level=list(range(nkeys)), sort_remaining=False, kind="stable")


@node
class GroupbyAggregate(SinglePartition):
    """A grouped aggregation of all partitions into one partition, as a tree reduction.

    ``by`` is a tuple of column labels of ``frame`` or an expression (a Series partitioned
    like ``frame``).
    """

    frame: Expr
    by: Any
    plan: AggPlan
    sort: bool = True
    dropna: bool = True
    split_every: int = DEFAULT_SPLIT_EVERY

    def _prefix(self) -> str:
        return "groupby-agg"

    @cached_property
    def _meta(self) -> Any:
        by = _key_metas(self.by)
        return emulate(groupby_whole, self.frame._meta, by, self.plan, self.sort, self.dropna)

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if dep != self.frame or not isinstance(self.frame._meta, pd.DataFrame):
            return None
        wanted = set(self.plan.columns)
        if type(self.by) is tuple:
            wanted.update(key for key in self.by if not isinstance(key, Expr))
        return frozenset(wanted)

    def _lower(self) -> Expr | None:
        chunks = MapPartitions(
            self.frame,
            groupby_chunk_task,
            (self.by,),
            {"plan": self.plan, "sort": self.sort, "dropna": self.dropna},
            None,
            False,
            "groupby-chunk",
        )
        kwargs = {"plan": self.plan, "sort": self.sort}
        return TreeCombine(
            chunks, groupby_combine, groupby_aggregate, self._meta, kwargs, kwargs, self.split_every, "groupby-agg"
        )

    def _describe(self) -> str:
        funcs = ", ".join(f"{agg_name(func)}({column})" for _, column, func in self.plan.outputs)
        by = "<series>" if isinstance(self.by, Expr) else ["<series>" if isinstance(k, Expr) else k for k in self.by]
        return f"by={by}, {funcs}"


def _is_lazy(obj: Any) -> bool:
    return isinstance(getattr(obj, "expr", None), Expr)


def _key_metas(by: Any) -> Any:
    """``by`` with expressions replaced by their metas (the form pandas sees per partition)."""
    if isinstance(by, Expr):
        return by._meta
    return tuple(key._meta if isinstance(key, Expr) else key for key in by)


class GroupBy:
    """Grouped view of a DataFrame or Series; aggregations return lazy collections.

    ``by`` is a column label, a list of labels, or a Series partitioned like ``frame``.
    Results are sorted by group key when ``sort`` is true (as in pandas); groups whose key
    is missing are dropped unless ``dropna`` is false.

    ``as_index=False`` makes the keys the first columns of an aggregation's result instead
    of its index, as pandas does.  Aggregations give one partition, so its index is pandas'
    own: 0..n-1 in the result's order.  ``observed=False`` adds the categories of
    categorical keys that have no rows, as empty groups (pandas' ``observed=False``); it
    needs the categories to be known, and changes nothing for other keys.
    """

    def __init__(
        self,
        frame: Any,
        by: Any,
        *,
        sort: bool = True,
        dropna: bool = True,
        group_keys: bool = True,
        as_index: bool = True,
        observed: bool = True,
        _selection: Any = None,
        _series_selection: bool = False,
    ) -> None:
        self._frame = frame
        self._frame_expr = expr_of(frame)
        self._sort = bool(sort)
        self._dropna = bool(dropna)
        self._group_keys = bool(group_keys)
        """Whether ``apply``'s result is indexed by the group keys too (pandas' default)."""
        meta = self._frame_expr._meta
        self._is_series = isinstance(meta, pd.Series)
        if not as_index and self._is_series:
            raise UsageError(
                "groupby(as_index=False) needs a DataFrame, as in pandas: a Series' groups give a Series "
                "indexed by the keys; call .reset_index() on the result to have them as columns"
            )
        self._as_index = bool(as_index)
        self._by = self._normalize_by(by, meta)
        self._observed = bool(observed) or not self._categorical_keys()
        """False only when some key is categorical: for other keys observed changes nothing."""
        self._selection = _selection
        self._series_selection = _series_selection

    def _normalize_by(self, by: Any, meta: Any) -> Any:
        if _is_lazy(by):
            key = self._key_expr(by)
            return (key,) if not isinstance(key, Expr) else key
        labels = list(by) if isinstance(by, list) else [by]
        index_name = meta.index.name
        keys = []
        for label in labels:
            if _is_lazy(label):
                keys.append(self._key_expr(label))
            elif index_name is not None and label == index_name and label not in getattr(meta, "columns", ()):
                # The name of the index, as pandas allows: group by the index itself.
                keys.append(self._key_expr(self._frame.index))
            else:
                keys.append(label)
        if self._is_series and any(not isinstance(key, Expr) for key in keys):
            raise UsageError("a Series can only be grouped by another Series")
        missing = [key for key in keys if not isinstance(key, Expr) and key not in meta.columns]
        if missing:
            raise UsageError(f"cannot group by {missing}: not columns of the frame {list(meta.columns)}")
        return tuple(keys)

    def _categorical_keys(self) -> list[Hashable]:
        """Names of the categorical keys; raises when one's categories are not known."""
        from zmqdask.dataframe.categorical import categories_known

        keys = [self._by] if isinstance(self._by, Expr) else list(self._by)
        meta = self._frame_expr._meta
        found = []
        for key in keys:
            dtype = key._meta.dtype if isinstance(key, Expr) else meta[key].dtype
            name = key._meta.name if isinstance(key, Expr) else key
            if not isinstance(dtype, pd.CategoricalDtype):
                continue
            if not categories_known(dtype):
                raise UsageError(
                    f"groupby(observed=False) needs the categories of key {name!r}, which are not known: "
                    "call .cat.as_known() on that column first (or df.categorize())"
                )
            found.append(name)
        return found

    def _key_expr(self, by: Any) -> Any:
        """A lazy grouping key as an expression lined up with the frame, or a column label."""
        aligned = getattr(by, "_aligned", None)
        by_expr: Expr = aligned().expr if aligned is not None else by.expr  # an Index: by frame rows
        if not isinstance(by_expr._meta, pd.Series):
            raise UsageError("groupby by an expression needs a Series")
        from zmqdask.dataframe.planning import align

        # Each row's key must be in the partition of the row: lined up as any two
        # collections are (refused when that cannot be known).
        frame_expr, aligned_by = align(self._frame_expr, by_expr)
        if frame_expr is not self._frame_expr:
            self._frame_expr = frame_expr
            self._frame = new_collection(frame_expr)
        by_expr = aligned_by
        # Grouping by one of the frame's own columns is grouping by that column's name
        # (pandas then leaves the column out of the aggregated ones).
        if self._is_own_column(by_expr):
            return by_expr.columns
        return by_expr

    def _is_own_column(self, by_expr: Expr) -> bool:
        """Whether ``by_expr`` is a column of the grouped frame, taken from the same data."""
        if not isinstance(by_expr, Projection) or type(by_expr.columns) is tuple:
            return False
        frame = self._frame_expr
        if by_expr.frame == frame:
            return True
        return (
            isinstance(frame, Projection)
            and type(frame.columns) is tuple
            and by_expr.columns in frame.columns
            and frame.frame == by_expr.frame
        )

    # -- selection ---------------------------------------------------------------------

    def _key_labels(self) -> list[Hashable]:
        return [key for key in self._by if not isinstance(key, Expr)] if type(self._by) is tuple else []

    def _available(self) -> list[Hashable]:
        if self._is_series:
            return [SERIES_COLUMN]
        keys = self._key_labels()
        return [column for column in self._frame_expr._meta.columns if column not in keys]

    def _columns(self) -> list[Hashable]:
        if self._selection is None:
            return self._available()
        if isinstance(self._selection, list):
            return list(self._selection)
        return [self._selection]

    def __getitem__(self, key: Any) -> GroupBy:
        if self._is_series:
            raise UsageError("cannot select columns of a grouped Series")
        if isinstance(key, tuple) and len(key) > 1:
            raise UsageError(
                f"groupby(...)[{key!r}]: a tuple cannot select here, as in pandas (it used to mean several "
                f"columns); select with a list, groupby(...)[[{key!r}]], or group the column itself, "
                f"df[{key!r}].groupby(...)"
            )
        columns = list(self._frame_expr._meta.columns)
        keys = key if isinstance(key, list) else [key]
        missing = [k for k in keys if k not in columns]
        if missing:
            raise UsageError(f"columns {missing} not found among {columns}")
        return GroupBy(
            self._frame,
            self._by_argument(),
            sort=self._sort,
            dropna=self._dropna,
            group_keys=self._group_keys,
            as_index=self._as_index,
            observed=self._observed,
            _selection=list(key) if isinstance(key, list) else key,
            _series_selection=not isinstance(key, list),
        )

    def _by_argument(self) -> Any:
        if type(self._by) is tuple:
            return [new_collection(key) if isinstance(key, Expr) else key for key in self._by]
        return new_collection(self._by)

    def __getattr__(self, name: str) -> GroupBy:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            columns = list(self._frame_expr._meta.columns)
        except AttributeError:
            columns = []
        if name in columns:
            return self[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- aggregations ------------------------------------------------------------------

    def _aggregate(
        self,
        spec: Any,
        *,
        ddof: int = 1,
        named: dict[str, Any] | None = None,
        split_every: int | None = None,
        numeric_only: bool = False,
    ) -> Any:
        columns = self._columns()
        if numeric_only and not self._is_series:
            dtypes = self._frame_expr._meta.dtypes
            columns = [c for c in columns if pd.api.types.is_numeric_dtype(dtypes[c])]
        series = self._is_series or self._series_selection
        if self._is_series:
            name = self._frame_expr._meta.name
        else:
            name = self._selection if self._series_selection else None
        plan = make_plan(
            spec,
            columns,
            series_name=name,
            series_selection=series,
            named=named,
            ddof=ddof,
            observed=self._observed,
            as_index=self._as_index,
        )
        node = GroupbyAggregate(
            self._frame_expr,
            self._by,
            plan,
            self._sort,
            self._dropna,
            DEFAULT_SPLIT_EVERY if split_every is None else int(split_every),
        )
        return new_collection(node)

    def sum(self, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Sum of each group."""
        _accept_dask_options(options)
        return self._aggregate("sum", numeric_only=numeric_only, split_every=split_every)

    def mean(self, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Mean of each group (from partial sums and counts)."""
        _accept_dask_options(options)
        return self._aggregate("mean", numeric_only=numeric_only, split_every=split_every)

    def count(self, split_every: int | None = None, **options: Any) -> Any:
        """Number of non-missing values in each group."""
        _accept_dask_options(options)
        return self._aggregate("count", split_every=split_every)

    def min(self, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Minimum of each group."""
        _accept_dask_options(options)
        return self._aggregate("min", numeric_only=numeric_only, split_every=split_every)

    def max(self, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Maximum of each group."""
        _accept_dask_options(options)
        return self._aggregate("max", numeric_only=numeric_only, split_every=split_every)

    def std(self, ddof: int = 1, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Standard deviation of each group."""
        _accept_dask_options(options)
        return self._aggregate("std", ddof=ddof, numeric_only=numeric_only, split_every=split_every)

    def var(self, ddof: int = 1, numeric_only: bool = False, split_every: int | None = None, **options: Any) -> Any:
        """Variance of each group."""
        _accept_dask_options(options)
        return self._aggregate("var", ddof=ddof, numeric_only=numeric_only, split_every=split_every)

    def size(self, split_every: int | None = None, **options: Any) -> Any:
        """Number of rows in each group."""
        _accept_dask_options(options)
        return self._aggregate("size", split_every=split_every)

    def first(self, split_every: int | None = None, **options: Any) -> Any:
        """First non-missing value of each group, in partition order."""
        _accept_dask_options(options)
        return self._aggregate("first", split_every=split_every)

    def last(self, split_every: int | None = None, **options: Any) -> Any:
        """Last non-missing value of each group, in partition order."""
        _accept_dask_options(options)
        return self._aggregate("last", split_every=split_every)

    def nunique(self, split_every: int | None = None, **options: Any) -> Any:
        """Number of distinct non-missing values in each group."""
        _accept_dask_options(options)
        return self._aggregate("nunique", split_every=split_every)

    def agg(self, arg: Any = None, split_every: int | None = None, **named: Any) -> Any:
        """Aggregate by name, list of names, dict column -> name(s), or ``label=(column, name)``;
        an :class:`Aggregation` may stand wherever a name does."""
        _accept_dask_options({key: named.pop(key) for key in list(named) if key in _DASK_OPTIONS})
        if arg is None and not named:
            raise UsageError("agg needs an aggregation: a name, a list, a dict, or label=(column, name)")
        if _needs_whole_groups(arg, named):
            if _has_custom(arg, named):
                raise UsageError(
                    f"an Aggregation cannot be computed in one agg with {sorted(WHOLE_GROUP_AGGREGATIONS)}, "
                    "which need whole groups: aggregate them in two agg calls and join the results"
                )
            # Some of them (a median, a product...) have no chunk/combine form: all of them
            # are computed by pandas on whole groups instead.
            keys = key_columns_mode(arg, self._is_series or self._series_selection, named)
            if named:
                return self._whole_group_aggregate("agg", keys, **named)
            return self._whole_group_aggregate("agg", keys, arg)
        return self._aggregate(arg, named=named or None, split_every=split_every)

    aggregate = agg

    # -- whole groups: shuffle, then pandas per partition ---------------------------------

    def apply(self, func: Any, *args: Any, meta: Any = None, **kwargs: Any) -> Any:
        """``func`` on each group, as pandas' ``GroupBy.apply``.

        Rows are first moved so that every group lies in one partition (a hash shuffle by
        the keys, worker to worker), then pandas applies ``func`` per partition.  Groups come
        out in partition order, not sorted.  Pass ``meta`` to skip inferring the result's
        schema from sample data.
        """
        if not self._as_index:
            raise UsageError(
                "groupby(as_index=False).apply(...) is not supported: group with as_index=True and call "
                ".reset_index() on the result"
            )
        self._refuse_unobserved("apply")
        return self._whole_groups("apply", func, args, kwargs, meta)

    def transform(self, func: Any, *args: Any, meta: Any = None, **kwargs: Any) -> Any:
        """``func`` on each group, broadcast back to its rows, as pandas' ``GroupBy.transform``.

        Rows are moved so that groups are whole (see :meth:`apply`), and the results go back
        to their rows' partitions and places: the result is partitioned like the frame
        (same divisions, same row order), so it lines up with it (``df.x - transformed``).
        """
        return self._per_row("transform", func, args, kwargs, meta)

    # Aggregations that need a group's rows together (no chunk/combine form): computed on
    # whole groups after a shuffle, then gathered into one partition sorted by key, as the
    # tree-reduced aggregations are.
    def median(self, numeric_only: bool = False) -> Any:
        """Median of each group."""
        return self._whole_group_aggregate("median", "insert", numeric_only=numeric_only)

    def prod(self, numeric_only: bool = False, min_count: int = 0) -> Any:
        """Product of each group."""
        return self._whole_group_aggregate("prod", "insert", numeric_only=numeric_only, min_count=min_count)

    def unique(self) -> Any:
        """The distinct values of each group, in order of appearance (a Series of arrays)."""
        if not self._is_series and not self._series_selection:
            raise UsageError("groupby(...).unique() is a method of a column's groups: select one first (gb[col])")
        return self._whole_group_aggregate("unique", "insert")

    def idxmax(self, skipna: bool = True) -> Any:
        """Index label of each group's largest value."""
        return self._whole_group_aggregate("idxmax", "insert", skipna=skipna)

    def idxmin(self, skipna: bool = True) -> Any:
        """Index label of each group's smallest value."""
        return self._whole_group_aggregate("idxmin", "insert", skipna=skipna)

    def value_counts(self, normalize: bool = False, dropna: bool = True) -> Any:
        """Counts of each value within each group (a Series indexed by key and value).

        Groups come sorted by key and each group's values by count, largest first, as in
        pandas; values with equal counts may come in another order than pandas gives. pandas
        (3.1) orders them by an unstable sort of the group keys over every (key, value) pair of the
        whole frame, in the order the pairs first appear, so the order of ties in one group
        depends on the pairs of all the others: each partition of shuffled whole groups runs
        pandas on its own groups only. Matching it would take the distinct pairs of the whole
        column, in order of first appearance, into one final step (not done yet).
        """
        return self._whole_group_aggregate("value_counts", "reset", normalize=normalize, dropna=dropna)

    # Per-row results within groups: as transform, partitioned like the frame, in its order.
    def cumsum(self) -> Any:
        """Running sum within each group."""
        return self._per_row("method", "cumsum", (), {}, None)

    def cumprod(self) -> Any:
        """Running product within each group."""
        return self._per_row("method", "cumprod", (), {}, None)

    def cummax(self) -> Any:
        """Running maximum within each group."""
        return self._per_row("method", "cummax", (), {}, None)

    def cummin(self) -> Any:
        """Running minimum within each group."""
        return self._per_row("method", "cummin", (), {}, None)

    def cumcount(self, ascending: bool = True) -> Any:
        """Position of each row within its group."""
        return self._per_row("method", "cumcount", (), {"ascending": ascending}, None)

    def shift(self, periods: int = 1, fill_value: Any = _NO_FILL, meta: Any = None) -> Any:
        """Values shifted within each group.

        ``meta`` (Dask's) may give the result's schema instead of it being inferred."""
        kwargs: dict[str, Any] = {"periods": periods}
        if fill_value is not _NO_FILL:
            kwargs["fill_value"] = fill_value
        return self._per_row("method", "shift", (), kwargs, meta)

    def diff(self, periods: int = 1, meta: Any = None) -> Any:
        """Differences within each group."""
        return self._per_row("method", "diff", (), {"periods": periods}, meta)

    def get_group(self, name: Any) -> Any:
        """The rows of one group (keys given as a value, or a tuple for several keys)."""
        keys = self._key_labels()
        if type(self._by) is not tuple or len(keys) != len(self._by):
            raise UsageError("get_group needs column labels as keys, not a Series")
        values = name if isinstance(name, tuple) else (name,)
        if len(values) != len(keys):
            raise UsageError(f"get_group needs {len(keys)} key values (one per key column), got {name!r}")
        frame = self._frame
        mask = None
        for key, value in zip(keys, values, strict=True):
            match = frame[key] == value
            mask = match if mask is None else mask & match
        rows = frame[mask]
        return rows if self._selection is None else rows[self._selection]

    def _whole_group_aggregate(self, method: str, key_columns: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` of whole groups, gathered into one partition sorted by key;
        ``key_columns`` says how ``as_index=False`` adds the keys (see :class:`AggPlan`)."""
        self._refuse_unobserved(method)
        result = self._whole_groups("method", method, args, kwargs, None)
        if result.npartitions > 1:
            result = result.repartition(npartitions=1)
        if self._sort:
            # By the keys only, keeping each group's own order (value_counts: by count).
            result = result.map_partitions(_sort_by_keys, len(self._key_labels()), meta=result._meta)
        if self._as_index:
            return result
        # After sorting, which needs the keys in the index; one partition, so 0..n-1 is pandas' index.
        meta = keys_as_columns(meta_nonempty(result._meta), key_columns).iloc[:0]
        return result.map_partitions(keys_as_columns, key_columns, meta=meta)

    def _refuse_unobserved(self, method: str) -> None:
        if not self._observed:
            raise UsageError(
                f"groupby(observed=False).{method}(...) is not supported (it works on the groups that have rows); "
                "use observed=True, or an aggregation that takes observed=False (sum, mean, count, min, max, "
                "size, std, var, nunique, first, last, agg of these)"
            )

    def _per_row(self, how: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> Any:
        """A result with one row per row of the frame, partitioned like it (see :class:`GroupRows`)."""
        by = self._by if type(self._by) is tuple else (self._by,)
        frame, selection = self._frame_expr, self._selection
        rename: Any = _NO_RENAME
        if self._is_series or any(isinstance(key, Expr) for key in by):
            # Keys given as Series (and a grouped Series' values) become columns of one frame
            # under names of their own; the result takes the original name back.
            if self._is_series:
                rename = frame._meta.name
                frame = MapPartitions(frame, _as_values_frame, (), {}, frame._meta.to_frame(_VALUES), True, "to-frame")
                selection = _VALUES
            from zmqdask.dataframe.core_ops import Assign

            names = tuple(f"{_KEY}{i}" for i, key in enumerate(by) if isinstance(key, Expr))
            values = tuple(key for key in by if isinstance(key, Expr))
            frame = Assign(frame, names, values)
            keys = iter(names)
            by = tuple(next(keys) if isinstance(key, Expr) else key for key in by)
        options = (by, selection, how, func, args, kwargs, self._sort, self._dropna)
        meta = self._whole_groups_meta(frame, options, None if rename is not _NO_RENAME else meta)
        if frame.npartitions == 1:
            result = new_collection(MapPartitions(frame, whole_groups_part, options, {}, meta, True, f"groupby-{how}"))
        else:
            result = new_collection(GroupRows(frame, options, meta))
        return result if rename is _NO_RENAME else result.rename(rename)

    def _whole_groups_meta(self, frame: Expr, options: tuple[Any, ...], meta: Any) -> Any:
        from zmqdask.dataframe.planning import meta_from

        if meta is not None:
            return meta_from(meta)
        how, func = options[2], options[3]
        try:
            return emulate(whole_groups_part, frame._meta, *options)
        except Exception as exc:
            call = f"{func}()" if how == "method" else f"{how}({getattr(func, '__name__', func)!r})"
            raise UsageError(
                f"could not infer the result of groupby(...).{call} on sample data "
                f"({type(exc).__name__}: {exc})" + ("" if how == "method" else "; pass meta=")
            ) from exc

    def _whole_groups(self, how: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> Any:
        from zmqdask.dataframe.shuffle import HashShuffle

        if type(self._by) is not tuple or any(isinstance(key, Expr) for key in self._by):
            raise UsageError(f"groupby(...).{how} needs column labels as keys, not a Series")
        frame = self._frame_expr
        if frame.npartitions > 1:
            frame = HashShuffle(frame, self._by, frame.npartitions)
        options = (self._by, self._selection, how, func, args, kwargs, self._sort, self._dropna, self._group_keys)
        meta = self._whole_groups_meta(frame, options, meta)
        node_ = MapPartitions(frame, whole_groups_part, options, {}, meta, False, f"groupby-{how}")
        return new_collection(node_)

    def __repr__(self) -> str:
        by = self._key_labels() if type(self._by) is tuple else "<series>"
        return f"<zmqdask GroupBy by={by} npartitions={self._frame_expr.npartitions}>"


_DASK_OPTIONS = frozenset({"split_out", "shuffle", "shuffle_method"})
"""Dask's keywords of groupby aggregations that choose how the result is partitioned or how
rows move: accepted, and the result is the same (one partition)."""


def _accept_dask_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - _DASK_OPTIONS)
    if unknown:
        raise UsageError(
            f"unexpected keyword arguments {unknown}; groupby aggregations take numeric_only, ddof, split_every "
            f"and Dask's {sorted(_DASK_OPTIONS)}"
        )
