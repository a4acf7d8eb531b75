"""Expanding and exponentially weighted windows across partitions.

Both are scans (see :func:`zmqdask.dataframe.scans.carried_layer`): each partition passes on
a per-column summary of its rows, a chain of small carry tasks folds the summaries in
partition order, and each partition is computed by pandas on its own rows, then combined
with the carry of every partition before it.  The result is pandas' up to rounding, and
keeps the partitioning and divisions.

* ``expanding``: the summary is the row count, the count of values, their sum, minimum,
  maximum, mean and sum of squared deviations; summaries merge as in Chan's parallel
  variance.
* ``ewm`` with ``adjust=True``: the weighted mean, sum and variance are sums of weights
  that all shrink by the same factor at each step (each row, or each value with
  ``ignore_na=True``), so what came before a partition enters it as a weighted group of
  its own, shrunk by the steps taken since the partition started.
* ``ewm`` with ``adjust=False`` (mean only): pandas restarts the mean of a partition from
  its first value; the mean carried in moves that start, and the move fades as the weight
  of that first value does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import Expr, emulate, node
from zmqdask.dataframe.scans import carried_layer
from zmqdask.dataframe.wrapping import expr_of, new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec

logger = logging.getLogger(__name__)

EXPANDING_METHODS: tuple[str, ...] = ("sum", "mean", "count", "min", "max", "std", "var")
"""Expanding aggregations computed across partitions."""

EWM_METHODS: tuple[str, ...] = ("mean", "sum", "std", "var")
"""Exponentially weighted aggregations computed across partitions (with ``adjust=True``;
``adjust=False`` has ``mean`` only)."""

State = dict[str, Any]
"""A per-column summary or carry: arrays with one value per column, or plain numbers."""


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def window_whole(obj: Any, kind: str, options: dict[str, Any], method: str | tuple[str, ...], ddof: Any) -> Any:
    """pandas' own ``obj.<kind>(...).<method>()`` (or ``.agg(list)``) on one object."""
    window = obj.expanding(options["min_periods"]) if kind == "expanding" else _pandas_ewm(obj, options)
    if isinstance(method, tuple):
        return window.agg(list(method))
    return getattr(window, method)(**_method_kwargs(kind, method, ddof))


def _method_kwargs(kind: str, method: str, ddof: Any) -> dict[str, Any]:
    if method not in ("std", "var"):
        return {}
    return {"ddof": ddof} if kind == "expanding" else {"bias": ddof}


def _pandas_ewm(obj: Any, options: dict[str, Any], min_periods: int | None = None, **changes: Any) -> Any:
    spec = {**options["decay"], **changes}
    periods = options["min_periods"] if min_periods is None else min_periods
    return obj.ewm(**spec, min_periods=periods, adjust=options["adjust"], ignore_na=options["ignore_na"])


def _shape(obj: Any) -> tuple[int, int]:
    return (len(obj), obj.shape[1] if isinstance(obj, pd.DataFrame) else 1)


def _grid(obj: Any) -> np.ndarray:
    """``obj``'s values as a float array of one column per column (a Series is one column)."""
    return np.asarray(obj.to_numpy(dtype="float64", na_value=np.nan), dtype="float64").reshape(_shape(obj))


def _present(part: Any) -> np.ndarray:
    return np.asarray(part.notna().to_numpy(), dtype=bool).reshape(_shape(part))


def _last(values: np.ndarray) -> np.ndarray:
    """The last row of a grid (the state after the whole partition)."""
    return values[-1].copy()


def _shaped(part: Any, values: np.ndarray) -> Any:
    """A float result with ``part``'s index and columns (or name)."""
    if isinstance(part, pd.DataFrame):
        return pd.DataFrame(values, index=part.index, columns=part.columns)
    return pd.Series(values[:, 0], index=part.index, name=part.name)


def _assembled(part: Any, results: dict[str, np.ndarray], methods: tuple[str, ...], template: Any) -> Any:
    """The frame of ``.agg(list)``: pandas puts a Series' methods side by side, and a frame's
    under each of its columns in turn."""
    ncolumns = next(iter(results.values())).shape[1]
    pieces = [results[method][:, j] for j in range(ncolumns) for method in methods]
    values = np.column_stack(pieces) if pieces else np.empty((len(part), 0))
    return pd.DataFrame(values, index=part.index, columns=template.columns)


def _run(
    part: Any,
    method: str | tuple[str, ...],
    compute: Callable[[str], np.ndarray],
    kind: str,
    options: dict[str, Any],
    ddof: Any,
) -> Any:
    """The result of ``method`` (or of ``.agg`` of a tuple of them) from ``compute(name)``,
    the values of one method."""
    if not isinstance(method, tuple):
        return _shaped(part, compute(method))
    results = {name: compute(name) for name in method}
    return _assembled(part, results, method, window_whole(part.iloc[:0], kind, options, method, ddof))


def _as_methods(method: str | tuple[str, ...]) -> tuple[str, ...]:
    return method if isinstance(method, tuple) else (method,)


# --------------------------------------------------------------------------------------------
# Expanding kernels
# --------------------------------------------------------------------------------------------


def _expanding_state(part: Any, methods: tuple[str, ...]) -> State:
    present = _present(part)
    state: State = {"rows": len(part), "n": present.sum(axis=0).astype("float64")}
    if set(methods) == {"count"}:
        return state  # a count needs no values (and takes columns that are not numbers)
    values = pd.DataFrame(_grid(part))
    state["sum"] = values.sum().to_numpy()
    state["min"] = values.min().to_numpy()
    state["max"] = values.max().to_numpy()
    state["mean"] = values.mean().to_numpy()
    state["m2"] = np.nan_to_num(values.var(ddof=0).to_numpy() * state["n"])
    return state


def _merge_moments(
    n_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sum of squared deviations of two groups of values (Chan's merge); either
    group may be empty (``n`` 0, mean NaN)."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mean_b - mean_a
        mean = np.where(n_a == 0, mean_b, np.where(n_b == 0, mean_a, mean_a + delta * (n_b / n)))
        m2 = np.where(n_a == 0, m2_b, np.where(n_b == 0, m2_a, m2_a + m2_b + delta * delta * (n_a * n_b / n)))
    return mean, m2


def expanding_summary(part: Any, kind: str, options: dict[str, Any], method: Any, ddof: Any) -> State:
    """What a partition passes on to the expanding windows after it."""
    return _expanding_state(part, _as_methods(method))


def expanding_carry(
    carry: State | None, summary: State, kind: str, options: dict[str, Any], method: Any, ddof: Any
) -> State:
    """The summary of every partition up to one, from the carry before it and its summary."""
    if carry is None:
        return summary
    merged: State = {"rows": carry["rows"] + summary["rows"], "n": carry["n"] + summary["n"]}
    if "sum" in summary:
        merged["sum"] = carry["sum"] + summary["sum"]
        merged["min"] = np.fmin(carry["min"], summary["min"])
        merged["max"] = np.fmax(carry["max"], summary["max"])
        merged["mean"], merged["m2"] = _merge_moments(
            carry["n"], carry["mean"], carry["m2"], summary["n"], summary["mean"], summary["m2"]
        )
    return merged


def expanding_apply(part: Any, carry: State | None, kind: str, options: dict[str, Any], method: Any, ddof: Any) -> Any:
    """Expanding ``method`` of a partition, as if the partitions summarized by ``carry``
    came first."""
    if carry is None or carry["rows"] == 0 or len(part) == 0:
        return window_whole(part, kind, options, method, ddof)
    min_periods = options["min_periods"]
    present = _present(part)
    counts = np.cumsum(present, axis=0)
    n = carry["n"] + counts
    rows = carry["rows"] + np.arange(1, len(part) + 1, dtype="float64")[:, None]

    def own(name: str, **kwargs: Any) -> np.ndarray:
        return _grid(getattr(part.expanding(0), name)(**kwargs))

    def compute(name: str) -> np.ndarray:
        if name == "count":
            # pandas counts a window once it has min_periods rows, present or not.
            return np.where(rows >= min_periods, n, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            if name in ("sum", "mean"):
                total = carry["sum"] + own("sum")
                result = total if name == "sum" else total / n
            elif name in ("min", "max"):
                pick = np.fmin if name == "min" else np.fmax
                result = pick(carry[name], own(name))
            else:
                own_mean = own("mean")
                own_m2 = np.nan_to_num(own("var", ddof=0) * counts)
                _, m2 = _merge_moments(carry["n"], carry["mean"], carry["m2"], counts, own_mean, own_m2)
                result = np.where(n > ddof, np.maximum(m2, 0.0) / (n - ddof), np.nan)
                if name == "std":
                    result = np.sqrt(result)
        return np.where(n >= min_periods, result, np.nan)

    return _run(part, method, compute, kind, options, ddof)


# --------------------------------------------------------------------------------------------
# Exponentially weighted kernels
# --------------------------------------------------------------------------------------------


def center_of_mass(decay: dict[str, Any]) -> float:
    """pandas' center of mass for one of ``com``, ``span``, ``halflife`` or ``alpha``."""
    ((name, value),) = decay.items()
    if name == "com":
        return float(value)
    if name == "span":
        return float((value - 1) / 2)
    if name == "halflife":
        return float(1 / (1 - np.exp(np.log(0.5) / value)) - 1)
    return float((1 - value) / value)


def _factor(options: dict[str, Any]) -> float:
    """How much each step shrinks earlier weights."""
    return 1.0 - 1.0 / (1.0 + options["com"])


def _steps(present: np.ndarray, ignore_na: bool) -> np.ndarray:
    """Steps taken from a partition's start through each row (per column): every row, or
    only rows with a value when missing values are ignored."""
    if ignore_na:
        return np.cumsum(present, axis=0)
    return np.broadcast_to(np.arange(1, len(present) + 1, dtype="float64")[:, None], present.shape)


def _indicator(present: np.ndarray) -> pd.DataFrame:
    """1 where a value is present, missing elsewhere: its weighted sum is the weight of the
    values so far."""
    return pd.DataFrame(np.where(present, 1.0, np.nan))


def _adjusted_parts(part: Any, options: dict[str, Any], methods: tuple[str, ...]) -> State:
    """Per row, what a partition's own values give with ``adjust=True``: the weight of its
    values (``w``), of their squares (``w2``), their weighted mean, variance and sum."""
    present = _present(part)
    factor = _factor(options)
    ones = _indicator(present)
    grids: State = {"present": present}
    grids["w"] = np.nan_to_num(_grid(_pandas_ewm(ones, options, 0).sum()))
    if "sum" in methods:
        grids["sum"] = np.nan_to_num(_grid(_pandas_ewm(part, options, 0).sum()))
    if {"mean", "std", "var"} & set(methods):
        grids["mean"] = _grid(_pandas_ewm(part, options, 0).mean())
    if {"std", "var"} & set(methods):
        grids["var"] = np.nan_to_num(_grid(_pandas_ewm(part, options, 0).var(bias=True)))
        # Squared weights shrink by the square of the factor at each step.
        squared = {**options, "decay": {"alpha": 1.0 - factor * factor}}
        grids["w2"] = np.nan_to_num(_grid(_pandas_ewm(ones, squared, 0).sum()))
    else:
        grids["var"] = grids["w2"] = np.zeros_like(grids["w"])
    return grids


def _mix(
    w_a: np.ndarray, mean_a: np.ndarray, var_a: np.ndarray, w_b: np.ndarray, mean_b: np.ndarray, var_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (biased) variance of an earlier group ``a`` and a later group
    ``b``; a group without values has mean NaN.  Weights shrunk to 0 (``alpha=1``, or
    underflow) leave the later group's values, as pandas' running update does."""
    total = w_a + w_b
    with np.errstate(invalid="ignore", divide="ignore"):
        a_only = np.isnan(mean_b)
        b_only = np.isnan(mean_a) | (w_a == 0)
        mean = (w_a * np.nan_to_num(mean_a) + w_b * np.nan_to_num(mean_b)) / total
        var = (
            w_a * (np.nan_to_num(var_a) + (np.nan_to_num(mean_a) - mean) ** 2)
            + w_b * (np.nan_to_num(var_b) + (np.nan_to_num(mean_b) - mean) ** 2)
        ) / total
    mean = np.where(a_only, mean_a, np.where(b_only, mean_b, mean))
    var = np.where(a_only, var_a, np.where(b_only, var_b, var))
    return mean, var


def _first_values(part: Any, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: whether it has a value, the row of its first value and that value."""
    values = _grid(part)
    has = np.asarray(present.any(axis=0))
    first = np.asarray(present.argmax(axis=0))
    return has, first, values[first, np.arange(values.shape[1])]


def _first_weight(part: Any, options: dict[str, Any], present: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per row, the weight pandas' ``adjust=False`` mean of the partition alone gives its
    first value: the mean of a series that is 1 there and 0 at every other value."""
    marks = np.where(present, 0.0, np.nan)
    marks[first, np.arange(present.shape[1])] = np.where(present.any(axis=0), 1.0, np.nan)
    return np.nan_to_num(_grid(_pandas_ewm(pd.DataFrame(marks), options, 0).mean()))


def _empty_ewm(ncolumns: int, adjust: bool) -> State:
    zeros = np.zeros(ncolumns)
    nans = np.full(ncolumns, np.nan)
    if adjust:
        return {"nobs": zeros, "w": zeros, "w2": zeros, "mean": nans, "var": zeros, "sum": zeros}
    return {"nobs": zeros, "mean": nans, "w": np.ones(ncolumns)}


def ewm_summary(part: Any, kind: str, options: dict[str, Any], method: Any, ddof: Any) -> State:
    """What a partition passes on to the exponentially weighted windows after it."""
    present = _present(part)
    ncolumns = present.shape[1]
    if len(part) == 0:
        zeros, nans = np.zeros(ncolumns), np.full(ncolumns, np.nan)
        if options["adjust"]:
            return {**_empty_ewm(ncolumns, True), "steps": zeros}
        names = ("nobs", "steps", "first_steps", "first_weight", "tail")
        return {**dict.fromkeys(names, zeros), "mean": nans, "first_value": nans}
    steps = _steps(present, options["ignore_na"])[-1].astype("float64")
    nobs = present.sum(axis=0).astype("float64")
    if options["adjust"]:
        grids = _adjusted_parts(part, options, _as_methods(method))
        summary = {name: _last(grid) for name, grid in grids.items() if name != "present"}
        # Sums are only computed when asked for.
        return {**_empty_ewm(ncolumns, True), "nobs": nobs, "steps": steps, **summary}
    has, first, first_value = _first_values(part, present)
    last = len(part) - 1 - present[::-1].argmax(axis=0)
    return {
        "nobs": nobs,
        "steps": steps,
        "mean": _last(_grid(_pandas_ewm(part, options, 0).mean())),
        "first_value": first_value,
        "first_steps": np.where(has, 1.0 if options["ignore_na"] else first + 1.0, 0.0),
        "first_weight": _last(_first_weight(part, options, present, first)),
        # With ignore_na=False the weight of the last value keeps shrinking row by row.
        "tail": np.where(has & (not options["ignore_na"]), len(part) - 1 - last, 0).astype("float64"),
    }


def ewm_carry(carry: State | None, summary: State, kind: str, options: dict[str, Any], method: Any, ddof: Any) -> State:
    """The state after every partition up to one, from the state before it and its summary."""
    adjust = options["adjust"]
    if carry is None:
        carry = _empty_ewm(len(summary["nobs"]), adjust)
    factor = _factor(options)
    started, own = carry["nobs"] > 0, summary["nobs"] > 0
    shrink = factor ** summary["steps"]
    if adjust:
        w_before = carry["w"] * shrink
        mean, var = _mix(w_before, carry["mean"], carry["var"], summary["w"], summary["mean"], summary["var"])
        return {
            "nobs": carry["nobs"] + summary["nobs"],
            "w": w_before + summary["w"],
            "w2": carry["w2"] * shrink * shrink + summary["w2"],
            "mean": mean,
            "var": var,
            "sum": carry["sum"] * shrink + summary["sum"],
        }
    moved = _moved_start(carry, summary["first_value"], summary["first_steps"], factor, options)
    return {
        "nobs": carry["nobs"] + summary["nobs"],
        "mean": np.where(own, summary["mean"] + moved * summary["first_weight"], carry["mean"]),
        "w": np.where(own, factor ** summary["tail"], np.where(started, carry["w"] * shrink, 1.0)),
    }


def _moved_start(
    carry: State, first_value: np.ndarray, first_steps: np.ndarray, factor: float, options: dict[str, Any]
) -> np.ndarray:
    """How far the carried mean moves the first mean of a partition (``adjust=False``): the
    carried weight, shrunk up to the first value, against that value's weight ``alpha``."""
    alpha = 1.0 / (1.0 + options["com"])
    weight = carry["w"] * factor**first_steps
    with np.errstate(invalid="ignore"):
        moved = weight / (weight + alpha) * (carry["mean"] - first_value)
    return np.where(carry["nobs"] > 0, moved, 0.0)


def ewm_apply(part: Any, carry: State | None, kind: str, options: dict[str, Any], method: Any, ddof: Any) -> Any:
    """Exponentially weighted ``method`` of a partition, as if the partitions summarized by
    ``carry`` came first."""
    if carry is None or not (carry["nobs"] > 0).any() or len(part) == 0:
        return window_whole(part, kind, options, method, ddof)
    methods = _as_methods(method)
    present = _present(part)
    factor = _factor(options)
    nobs = carry["nobs"] + np.cumsum(present, axis=0)
    enough = nobs >= max(int(options["min_periods"]), 1)
    shrink = factor ** _steps(present, options["ignore_na"])
    if options["adjust"]:
        grids = _adjusted_parts(part, options, methods)
        w_before = carry["w"] * shrink

        def compute(name: str) -> np.ndarray:
            if name == "sum":
                result = carry["sum"] * shrink + grids["sum"]
            else:
                mean, var = _mix(w_before, carry["mean"], carry["var"], grids["w"], grids["mean"], grids["var"])
                if name == "mean":
                    result = mean
                else:
                    result = _unbiased(var, w_before + grids["w"], carry["w2"] * shrink * shrink + grids["w2"], ddof)
                    if name == "std":
                        result = np.sqrt(np.maximum(result, 0.0))
            return np.where(enough, result, np.nan)

        return _run(part, method, compute, kind, options, ddof)
    has, first, first_value = _first_values(part, present)
    rows = np.arange(len(part))[:, None]
    first_steps = np.where(has, 1.0 if options["ignore_na"] else first + 1.0, 0.0)
    moved = _moved_start(carry, first_value, first_steps, factor, options)
    own = _grid(_pandas_ewm(part, options, 0).mean()) + moved * _first_weight(part, options, present, first)
    mean = np.where(has & (rows >= first), own, carry["mean"])
    return _run(part, method, lambda name: np.where(enough, mean, np.nan), kind, options, ddof)


def _unbiased(var: np.ndarray, w: np.ndarray, w2: np.ndarray, bias: bool) -> np.ndarray:
    """pandas' weighted variance: biased, or corrected by the weights' effective count."""
    if bias:
        return var
    numerator = w * w
    denominator = numerator - w2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator * var, np.nan)


# --------------------------------------------------------------------------------------------
# Expression node
# --------------------------------------------------------------------------------------------

_KERNELS = {
    "expanding": (expanding_summary, expanding_carry, expanding_apply),
    "ewm": (ewm_summary, ewm_carry, ewm_apply),
}


@node
class CarriedWindow(Expr):
    """An expanding or exponentially weighted aggregation (``method``, or a tuple of them
    for ``.agg``) across all partitions; see the module docstring."""

    frame: Expr
    kind: str
    options: dict[str, Any]
    method: Any
    ddof: Any = None
    """``ddof`` of an expanding variance, ``bias`` of an exponentially weighted one."""

    def _prefix(self) -> str:
        name = "agg" if isinstance(self.method, tuple) else self.method
        return f"{self.kind}-{name}"

    def _is_columnwise(self) -> bool:
        # The columns of .agg are (column, method) pairs, which a projection cannot name
        # below this node.
        return not isinstance(self.method, tuple)

    def _same_rows(self) -> Expr | None:
        return self.frame

    def _partitioning_parents(self) -> list[Expr] | None:
        return [self.frame]

    @cached_property
    def _meta(self) -> Any:
        return emulate(window_whole, self.frame._meta, self.kind, self.options, self.method, self.ddof)

    @property
    def npartitions(self) -> int:
        return self.frame.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.frame.divisions

    def _layer(self) -> dict[str, TaskSpec]:
        options = (self.kind, self.options, self.method, self.ddof)
        return carried_layer(self, self.frame, _KERNELS[self.kind], options)

    def _describe(self) -> str:
        return f"{self.kind}({self.options}).{self.method}"


# --------------------------------------------------------------------------------------------
# User-facing objects
# --------------------------------------------------------------------------------------------


def _column_names(expr: Expr) -> list[Any]:
    meta = expr._meta
    return list(meta.columns) if isinstance(meta, pd.DataFrame) else []


def _select(frame: Any, key: Any) -> Any:
    columns = _column_names(expr_of(frame))
    missing = [k for k in (key if isinstance(key, list) else [key]) if k not in columns]
    if missing:
        raise KeyError(f"columns not found: {missing}")
    return frame[key]


class _CarriedWindows:
    """What Expanding and EWM share: column selection and building the node."""

    _kind: str
    _default_ddof: Any
    """What ``.agg`` passes to ``std`` and ``var``: pandas' defaults."""

    def __init__(self, frame: Any, options: dict[str, Any]) -> None:
        self._frame = frame
        self._expr = expr_of(frame)
        self._options = options

    def _supported(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _apply(self, method: Any, ddof: Any = None) -> Any:
        return new_collection(CarriedWindow(self._expr, self._kind, self._options, method, ddof))

    def agg(self, func: Any) -> Any:
        """Aggregation by name or list of names, as pandas' (a dict: select columns first)."""
        names = [func] if isinstance(func, str) else func
        if not isinstance(names, (list, tuple)) or not names or any(not isinstance(n, str) for n in names):
            raise UsageError(
                f"{self._kind} aggregation takes a name or a list of names among {list(self._supported())}, "
                f"got {func!r}; "
                "for other aggregations per column, select the columns first"
            )
        unknown = [n for n in names if n not in self._supported()]
        if unknown:
            raise UsageError(f"{self._kind} aggregations must be among {list(self._supported())}, got {unknown}")
        if isinstance(func, str):
            return getattr(self, func)()
        return self._apply(tuple(names), self._default_ddof)

    aggregate = agg

    def __getitem__(self, key: Any) -> Any:
        selected = _select(self._frame, key)
        twin = object.__new__(type(self))
        _CarriedWindows.__init__(twin, selected, self._options)
        return twin

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in _column_names(self._expr):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self[name]


class Expanding(_CarriedWindows):
    """Expanding windows: every row aggregates all rows up to it, across partitions."""

    _kind = "expanding"
    _default_ddof = 1

    def __init__(self, frame: Any, min_periods: int = 1, method: str = "single") -> None:
        if method != "single":
            raise UsageError(f"expanding(method={method!r}) is not supported; each column is aggregated on its own")
        if isinstance(min_periods, bool) or not isinstance(min_periods, (int, np.integer)) or min_periods < 0:
            raise ValueError(f"min_periods must be an integer >= 0, not {min_periods!r}")
        super().__init__(frame, {"min_periods": int(min_periods)})

    def _supported(self) -> tuple[str, ...]:
        return EXPANDING_METHODS

    def sum(self) -> Any:
        """Expanding sum."""
        return self._apply("sum")

    def mean(self) -> Any:
        """Expanding mean."""
        return self._apply("mean")

    def count(self) -> Any:
        """Expanding count of present values."""
        return self._apply("count")

    def min(self) -> Any:
        """Expanding minimum."""
        return self._apply("min")

    def max(self) -> Any:
        """Expanding maximum."""
        return self._apply("max")

    def std(self, ddof: int = 1) -> Any:
        """Expanding standard deviation."""
        return self._apply("std", int(ddof))

    def var(self, ddof: int = 1) -> Any:
        """Expanding variance."""
        return self._apply("var", int(ddof))

    def __repr__(self) -> str:
        return f"<zmqdask Expanding min_periods={self._options['min_periods']}>"


class EWM(_CarriedWindows):
    """Exponentially weighted windows, across partitions (``times=`` is not supported)."""

    _kind = "ewm"
    _default_ddof = False

    def __init__(
        self,
        frame: Any,
        com: float | None = None,
        span: float | None = None,
        halflife: Any = None,
        alpha: float | None = None,
        min_periods: int | None = 0,
        adjust: bool = True,
        ignore_na: bool = False,
        times: Any = None,
        method: str = "single",
    ) -> None:
        if times is not None:
            raise UsageError(
                "ewm(times=...) is not supported: give the decay by com, span, halflife (a number of rows) or alpha"
            )
        if method != "single":
            raise UsageError(f"ewm(method={method!r}) is not supported; each column is weighted on its own")
        decay = (("com", com), ("span", span), ("halflife", halflife), ("alpha", alpha))
        given = {name: value for name, value in decay if value is not None}
        expr = expr_of(frame)
        # pandas checks the arguments (one decay, in range, halflife a number without times).
        expr._meta.ewm(**given, min_periods=min_periods, adjust=adjust, ignore_na=ignore_na)
        options = {
            "decay": given,
            "com": center_of_mass(given),
            "min_periods": 0 if min_periods is None else int(min_periods),
            "adjust": bool(adjust),
            "ignore_na": bool(ignore_na),
        }
        super().__init__(frame, options)

    def _supported(self) -> tuple[str, ...]:
        return EWM_METHODS if self._options["adjust"] else ("mean",)

    def _adjusted_only(self, name: str) -> None:
        if not self._options["adjust"]:
            raise UsageError(f"ewm(adjust=False) supports mean only, not {name}; use adjust=True for sum, std and var")

    def mean(self) -> Any:
        """Exponentially weighted mean."""
        return self._apply("mean")

    def sum(self) -> Any:
        """Exponentially weighted sum (``adjust=True`` only, as in pandas)."""
        self._adjusted_only("sum")
        return self._apply("sum")

    def std(self, bias: bool = False) -> Any:
        """Exponentially weighted standard deviation (``adjust=True`` only)."""
        self._adjusted_only("std")
        return self._apply("std", bool(bias))

    def var(self, bias: bool = False) -> Any:
        """Exponentially weighted variance (``adjust=True`` only)."""
        self._adjusted_only("var")
        return self._apply("var", bool(bias))

    def __repr__(self) -> str:
        return f"<zmqdask EWM {self._options['decay']}, adjust={self._options['adjust']}>"
