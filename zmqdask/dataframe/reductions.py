"""Tree reductions of DataFrames and Series (sum, mean, var...), as a mixin of the collections."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe import core_ops as ops
from zmqdask.dataframe.expr import DEFAULT_SPLIT_EVERY, Expr, Reduction, emulate
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError


class FrameReductions:
    """Reductions shared by DataFrame, Series and Index; each builds a lazy tree reduction.

    A DataFrame reduces to a Series (one value per column), a Series to a Scalar.
    """

    _expr: Expr

    @property
    def _meta(self) -> Any:
        return self._expr._meta

    def _reduce(self, how: str, split_every: int | None = None, **kwargs: Any) -> Any:
        meta = emulate(lambda m: getattr(m, how)(**kwargs), self._meta)
        expr = Reduction(
            self._expr,
            ops.reduce_chunk,
            ops.reduce_combine,
            ops.reduce_aggregate,
            meta,
            {"how": how, "kwargs": kwargs},
            {"how": ops.COMBINE_HOW[how], "kwargs": _combine_kwargs(how, kwargs)},
            {"how": ops.COMBINE_HOW[how], "kwargs": _combine_kwargs(how, kwargs)},
            split_every or DEFAULT_SPLIT_EVERY,
            how,
        )
        return new_collection(expr)

    def sum(
        self,
        axis: Any = None,
        skipna: bool = True,
        numeric_only: bool = False,
        min_count: int = 0,
        split_every: int | None = None,
    ) -> Any:
        """Sum (per column for a DataFrame); NaN where fewer than ``min_count`` values are
        not missing."""
        if _by_row(axis):
            return self._rowwise("sum", skipna=skipna, numeric_only=numeric_only, min_count=min_count)
        if min_count:
            if not isinstance(min_count, int) or min_count < 0:
                raise UsageError(f"min_count must be a non-negative int, not {min_count!r}")
            meta = emulate(
                lambda m: m.sum(numeric_only=numeric_only, min_count=min_count)
                if isinstance(m, pd.DataFrame)
                else m.sum(min_count=min_count),
                self._meta,
            )
            expr = Reduction(
                self._expr,
                ops.mean_chunk,
                ops.mean_combine,
                ops.sum_min_count_aggregate,
                meta,
                {"skipna": skipna, "numeric_only": numeric_only},
                {},
                {"min_count": min_count},
                split_every or DEFAULT_SPLIT_EVERY,
                "sum",
            )
            return new_collection(expr)
        return self._reduce("sum", split_every, **self._numeric(skipna=skipna, numeric_only=numeric_only))

    def prod(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Product (per column for a DataFrame)."""
        if _by_row(axis):
            return self._rowwise("prod", skipna=skipna, numeric_only=numeric_only)
        return self._reduce("prod", split_every, **self._numeric(skipna=skipna, numeric_only=numeric_only))

    product = prod

    def memory_usage(self, index: bool = True, deep: bool = False, split_every: int | None = None) -> Any:
        """Bytes held, summed over partitions: per column for a DataFrame (the index as
        ``Index`` when ``index``), one number for a Series.  ``deep`` counts the contents of
        object and string values too, as in pandas."""
        meta = emulate(lambda m: ops.reduce_aggregate([ops.memory_usage_chunk(m, index, deep)], "sum", {}), self._meta)
        total = {"how": "sum", "kwargs": {}}
        expr = Reduction(
            self._expr,
            ops.memory_usage_chunk,
            ops.reduce_combine,
            ops.reduce_aggregate,
            meta,
            {"index": index, "deep": deep},
            total,
            total,
            split_every or DEFAULT_SPLIT_EVERY,
            "memory-usage",
        )
        return new_collection(expr)

    def min(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Minimum (per column for a DataFrame)."""
        if _by_row(axis):
            return self._rowwise("min", skipna=skipna, numeric_only=numeric_only)
        return self._reduce("min", split_every, **self._numeric(skipna=skipna, numeric_only=numeric_only))

    def max(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Maximum (per column for a DataFrame)."""
        if _by_row(axis):
            return self._rowwise("max", skipna=skipna, numeric_only=numeric_only)
        return self._reduce("max", split_every, **self._numeric(skipna=skipna, numeric_only=numeric_only))

    def count(self, axis: Any = None, numeric_only: bool = False, split_every: int | None = None) -> Any:
        """Number of non-missing values (per column for a DataFrame)."""
        if _by_row(axis):
            return self._rowwise("count", numeric_only=numeric_only)
        return self._reduce("count", split_every, **self._numeric(numeric_only=numeric_only))

    def any(self, axis: Any = None, skipna: bool = True, split_every: int | None = None) -> Any:
        """Whether any value is true."""
        if _by_row(axis):
            return self._rowwise("any", skipna=skipna)
        return self._reduce("any", split_every, skipna=skipna)

    def all(self, axis: Any = None, skipna: bool = True, split_every: int | None = None) -> Any:
        """Whether all values are true."""
        if _by_row(axis):
            return self._rowwise("all", skipna=skipna)
        return self._reduce("all", split_every, skipna=skipna)

    def _rowwise(self, how: str, **kwargs: Any) -> Any:
        """A reduction across each row's columns: a per-partition operation."""
        if not isinstance(self._meta, pd.DataFrame):
            raise ValueError(f"{how}(axis=1) needs a DataFrame")
        wrapped: Any = self  # the collection classes provide _method
        return wrapped._method(how, axis=1, **kwargs)

    def _numeric(self, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(self._meta, pd.DataFrame):
            kwargs.pop("numeric_only", None)
        elif not kwargs.get("numeric_only"):
            kwargs.pop("numeric_only", None)
        return kwargs

    def mean(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Arithmetic mean (per column for a DataFrame)."""
        if _by_row(axis):
            return self._rowwise("mean", skipna=skipna, numeric_only=numeric_only)
        kind = getattr(self._meta, "dtype", None)
        if kind is not None and (pd.api.types.is_datetime64_any_dtype(kind) or pd.api.types.is_timedelta64_dtype(kind)):
            # Dates and durations: means merged by their differences, as dates cannot be summed.
            expr = Reduction(
                self._expr,
                ops.time_mean_chunk,
                ops.time_mean_combine,
                ops.time_mean_aggregate,
                emulate(lambda m: m.mean(), self._meta),
                {},
                {},
                {"skipna": skipna},
                split_every or DEFAULT_SPLIT_EVERY,
                "mean",
            )
            return new_collection(expr)
        meta = emulate(
            lambda m: m.mean(numeric_only=numeric_only) if isinstance(m, pd.DataFrame) else m.mean(), self._meta
        )
        expr = Reduction(
            self._expr,
            ops.mean_chunk,
            ops.mean_combine,
            ops.mean_aggregate,
            meta,
            {"skipna": skipna, "numeric_only": numeric_only},
            split_every=split_every or DEFAULT_SPLIT_EVERY,
            label="mean",
        )
        return new_collection(expr)

    def var(self, axis: Any = None, ddof: int = 1, numeric_only: bool = False, split_every: int | None = None) -> Any:
        """Variance with ``ddof`` delta degrees of freedom (missing values skipped)."""
        if _by_row(axis):
            return self._rowwise("var", ddof=ddof, numeric_only=numeric_only)
        return self._moments(ddof, numeric_only, split_every, sqrt=False)

    def std(self, axis: Any = None, ddof: int = 1, numeric_only: bool = False, split_every: int | None = None) -> Any:
        """Standard deviation with ``ddof`` delta degrees of freedom (missing values skipped)."""
        if _by_row(axis):
            return self._rowwise("std", ddof=ddof, numeric_only=numeric_only)
        return self._moments(ddof, numeric_only, split_every, sqrt=True)

    def corr(
        self,
        other: Any = None,
        method: str = "pearson",
        min_periods: int | None = None,
        numeric_only: bool = False,
        split_every: int | None = None,
    ) -> Any:
        """Pearson correlation: the matrix of a DataFrame's columns, or of a Series with ``other``."""
        return self._pairwise(other, method, min_periods, numeric_only, split_every, True, 1)

    def cov(
        self,
        other: Any = None,
        min_periods: int | None = None,
        ddof: int = 1,
        numeric_only: bool = False,
        split_every: int | None = None,
    ) -> Any:
        """Covariance: the matrix of a DataFrame's columns, or of a Series with ``other``."""
        return self._pairwise(other, "pearson", min_periods, numeric_only, split_every, False, ddof)

    def _pairwise(
        self,
        other: Any,
        method: str,
        min_periods: int | None,
        numeric_only: bool,
        split_every: int | None,
        correlation: bool,
        ddof: int,
    ) -> Any:
        from zmqdask.dataframe import correlation as corr
        from zmqdask.dataframe.core_ops import MapMethod
        from zmqdask.dataframe.expr import MapPartitions, Projection
        from zmqdask.dataframe.planning import align

        corr.check_method(method)
        if isinstance(self._meta, pd.DataFrame):
            if other is not None:
                raise UsageError("DataFrame.corr/cov take no other; use Series.corr(other)")
            columns = corr.numeric_frame(self._meta, numeric_only)
            frame: Expr = Projection(self._expr, tuple(columns))
            return new_collection(corr.moments_reduction(frame, correlation, min_periods, ddof, split_every))
        other_expr = getattr(other, "expr", None)
        if not isinstance(other_expr, Expr) or not isinstance(other_expr._meta, pd.Series):
            raise UsageError("Series.corr/cov need another lazy Series")
        left, right = align(self._expr, other_expr)
        meta = pd.DataFrame({"a": pd.Series(dtype="float64"), "b": pd.Series(dtype="float64")})
        pairs = MapPartitions(left, _side_by_side, (right,), {}, meta, True, "pair")
        matrix = corr.moments_reduction(pairs, correlation, min_periods, ddof, split_every)
        return new_collection(MapMethod(matrix, "pipe", (corr.pair_value,), {}))

    def sem(self, ddof: int = 1, numeric_only: bool = False, split_every: int | None = None) -> Any:
        """Standard error of the mean: ``std(ddof) / sqrt(count)``."""
        std = self.std(ddof=ddof, numeric_only=numeric_only, split_every=split_every)
        if numeric_only and isinstance(self._meta, pd.DataFrame):
            count = self._wrap_self(self._meta.select_dtypes(include=["number", "bool"]).columns).count()
        else:
            count = self.count(split_every=split_every)
        return std / count**0.5

    def _wrap_self(self, columns: Any) -> Any:
        from zmqdask.dataframe.expr import Projection

        return new_collection(Projection(self._expr, tuple(columns)))

    def _moments(self, ddof: int, numeric_only: bool, split_every: int | None, sqrt: bool) -> Any:
        meta = emulate(
            lambda m: m.var(numeric_only=numeric_only) if isinstance(m, pd.DataFrame) else m.var(), self._meta
        )
        expr = Reduction(
            self._expr,
            ops.moments_chunk,
            ops.moments_combine,
            ops.moments_aggregate,
            meta,
            {"numeric_only": numeric_only},
            {},
            {"ddof": ddof, "sqrt": sqrt},
            split_every or DEFAULT_SPLIT_EVERY,
            "std" if sqrt else "var",
        )
        return new_collection(expr)

    def skew(
        self,
        axis: Any = 0,
        bias: bool = True,
        nan_policy: str = "propagate",
        numeric_only: bool = False,
        split_every: int | None = None,
    ) -> Any:
        """Skewness per column.

        As Dask: ``bias=True`` gives the sample skewness without the finite-sample correction
        (scipy's default), and ``nan_policy="propagate"`` makes a column with a missing value
        NaN.  ``bias=False`` gives pandas' adjusted value and ``nan_policy="omit"`` skips
        missing values, as pandas does: both together equal ``pandas.DataFrame.skew()``.
        """
        skipna = _nan_policy(nan_policy)
        if _by_row(axis):
            return self._rowwise("skew", skipna=skipna, numeric_only=numeric_only)
        aggregate_kwargs = {"bias": bool(bias), "skipna": skipna}
        return self._higher_moments(ops.skew_aggregate, aggregate_kwargs, numeric_only, split_every, "skew")

    def kurtosis(
        self,
        axis: Any = 0,
        fisher: bool = True,
        bias: bool = True,
        nan_policy: str = "propagate",
        numeric_only: bool = False,
        split_every: int | None = None,
    ) -> Any:
        """Kurtosis per column: excess kurtosis with ``fisher=True`` (normal is 0).

        As Dask: ``bias=True`` (scipy's default, no finite-sample correction) and
        ``nan_policy="propagate"``; ``bias=False, nan_policy="omit"`` equals
        ``pandas.DataFrame.kurtosis()``.
        """
        skipna = _nan_policy(nan_policy)
        if _by_row(axis):
            if not fisher:
                raise UsageError("kurtosis(axis=1) gives Fisher's (excess) kurtosis only; add 3 for Pearson's")
            return self._rowwise("kurt", skipna=skipna, numeric_only=numeric_only)
        aggregate_kwargs = {"fisher": bool(fisher), "bias": bool(bias), "skipna": skipna}
        return self._higher_moments(ops.kurtosis_aggregate, aggregate_kwargs, numeric_only, split_every, "kurtosis")

    kurt = kurtosis

    def _higher_moments(
        self, aggregate: Any, aggregate_kwargs: dict[str, Any], numeric_only: bool, split_every: int | None, label: str
    ) -> Any:
        meta = emulate(
            lambda m: m.skew(numeric_only=numeric_only) if isinstance(m, pd.DataFrame) else m.skew(), self._meta
        )
        if not isinstance(self._meta, pd.DataFrame) and not _is_numeric(self._meta.dtype):
            raise TypeError(f"{label} needs numbers; this Series holds {self._meta.dtype}")
        expr = Reduction(
            self._expr,
            ops.higher_moments_chunk,
            ops.higher_moments_combine,
            aggregate,
            meta,
            {"numeric_only": numeric_only},
            {},
            aggregate_kwargs,
            split_every or DEFAULT_SPLIT_EVERY,
            label,
        )
        return new_collection(expr)

    @property
    def size(self) -> Any:
        """Number of elements, lazily."""
        expr = Reduction(self._expr, ops.size_chunk, ops.sum_values, ops.sum_values, 0, label="size")
        return new_collection(expr)

    def nunique(self, *args: Any, **kwargs: Any) -> Any:
        """Number of distinct values (see ``zmqdask.dataframe.stats``)."""
        from zmqdask.dataframe import stats

        return stats.nunique(self, *args, **kwargs)

    def nunique_approx(self, split_every: int | None = None) -> Any:
        """Dask's approximate count of distinct values; here the exact count (``nunique``)."""
        return self.nunique()

    def describe(self, *args: Any, **kwargs: Any) -> Any:
        """Summary statistics (see ``zmqdask.dataframe.stats``)."""
        from zmqdask.dataframe import stats

        return stats.describe(self, *args, **kwargs)


def _side_by_side(left: pd.Series, right: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {"a": left.to_numpy(dtype="float64", na_value=np.nan), "b": right.to_numpy(dtype="float64", na_value=np.nan)},
        index=left.index,
    )


def _by_row(axis: Any) -> bool:
    """Whether ``axis`` asks for one result per row; raises on values pandas rejects."""
    if axis in (None, 0, "index", "rows"):
        return False
    if axis in (1, "columns"):
        return True
    raise ValueError(f"no axis named {axis!r}")


def len_chunk(part: Any) -> int:
    """Number of rows of a partition."""
    return len(part)


def _combine_kwargs(how: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    # Partial results are already per column; only skipna still matters when merging.  A
    # NaN partial sum or product comes from inf - inf or 0 * inf (missing values were skipped
    # already, unless skipna=False asked for NaN) and must stay NaN, as pandas gives it.
    if how in ("sum", "prod"):
        return {"skipna": False}
    return {k: v for k, v in kwargs.items() if k == "skipna"}


def _nan_policy(policy: str) -> bool:
    """Whether missing values are skipped, for Dask's ``nan_policy``."""
    if policy == "propagate":
        return False
    if policy == "omit":
        return True
    raise ValueError(f"nan_policy must be 'propagate' or 'omit', not {policy!r}")


def _is_numeric(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
