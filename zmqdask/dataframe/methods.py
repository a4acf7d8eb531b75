"""Per-row and per-column methods of DataFrame, Series and Index, as a mixin of the collections.

Elementwise methods map every partition; scans (``cumsum``, ``ffill``...) carry state from
partition to partition; row selections that look at every partition (``drop_duplicates``,
``nlargest``, ``idxmax``, ``quantile``) are tree reductions or gathers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import Expr
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError

_UNSET: Any = object()


def _is_collection(value: Any) -> bool:
    from zmqdask.dataframe.collection import Collection

    return isinstance(value, Collection)


class FrameMethods:
    """Methods shared by DataFrame, Series and Index that keep or select rows."""

    _expr: Expr

    def _method(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``partition.name(*args, **kwargs)`` on every partition (collections are aligned)."""
        raise NotImplementedError

    # -- elementwise ------------------------------------------------------------------

    def abs(self) -> Any:
        """Absolute values."""
        return self._method("abs")

    def round(self, decimals: int = 0) -> Any:
        """Values rounded to ``decimals``."""
        return self._method("round", decimals)

    def clip(self, lower: Any = None, upper: Any = None) -> Any:
        """Values limited to ``[lower, upper]``."""
        return self._method("clip", lower, upper)

    def isna(self) -> Any:
        """Boolean mask of missing values."""
        return self._method("isna")

    isnull = isna

    def notna(self) -> Any:
        """Boolean mask of present values."""
        return self._method("notna")

    notnull = notna

    def isin(self, values: Any) -> Any:
        """Boolean mask of membership in ``values``."""
        if _is_collection(values):
            raise UsageError("isin needs concrete values, not a lazy collection; compute it first")
        if not isinstance(values, dict):
            values = list(values)
        return self._method("isin", values)

    def where(self, cond: Any, other: Any = np.nan) -> Any:
        """Values where ``cond`` holds, ``other`` elsewhere."""
        return self._method("where", cond, other)

    def mask(self, cond: Any, other: Any = np.nan) -> Any:
        """Values where ``cond`` does not hold, ``other`` elsewhere."""
        return self._method("mask", cond, other)

    def combine_first(self, other: Any) -> Any:
        """Missing values filled from ``other`` at the same labels, and ``other``'s rows whose
        labels this one lacks added (as pandas).  Both need known divisions (or the same
        partitions); they are aligned partition by partition."""
        if not _is_collection(other):
            raise UsageError("combine_first takes a zmqdask DataFrame or Series; use fillna for plain values")
        this: Any = self  # the collection classes provide divisions and _meta
        if not (this.known_divisions and other.known_divisions) and this.divisions != other.divisions:
            raise UsageError(
                "combine_first needs known divisions on both (set_index(..., sorted=True) or from_pandas), "
                "so that each label is looked for in one partition"
            )
        from zmqdask.dataframe.collection import map_partitions
        from zmqdask.dataframe.core_ops import combine_first_meta, combine_first_part

        meta = combine_first_meta(this._meta, other._meta)
        return map_partitions(combine_first_part, self, other, meta, meta=meta)

    def explode(self, *args: Any, **kwargs: Any) -> Any:
        """List-like values spread over rows, each keeping its row's index (as in pandas)."""
        if kwargs.get("ignore_index"):
            raise UsageError("explode(ignore_index=True) is not supported; call reset_index() afterwards")
        return self._method("explode", *args, **kwargs)

    def fillna(self, value: Any = None, **kwargs: Any) -> Any:
        """Missing values replaced by ``value`` (a scalar, dict or aligned collection)."""
        if value is None and kwargs.get("method") is not None:
            raise UsageError("fillna(method=...) is not supported; use ffill() or bfill()")
        if isinstance(self._expr._meta, pd.DataFrame):
            from zmqdask.dataframe.collection import Series
            from zmqdask.dataframe.core_ops import as_row

            if isinstance(value, Series):
                # df.fillna(df.mean()): one value per column, for every partition.
                row = as_row(value.expr)
                if row is not None:
                    value = new_collection(row)
        return self._method("fillna", value, **kwargs)

    def astype(self, dtype: Any) -> Any:
        """Values cast to ``dtype`` (or a ``{column: dtype}`` mapping).

        ``"category"`` makes each partition's categories from its own values: they are
        unknown until made known (``.cat.as_known()``, ``categorize()``), as in Dask.
        """
        from zmqdask.dataframe.categorical import cast

        categorical = cast(self, dtype)
        return categorical if categorical is not None else self._method("astype", dtype)

    def dropna(self, **kwargs: Any) -> Any:
        """Rows with missing values removed (``how``, ``subset``, ``thresh`` as in pandas)."""
        return self._method("dropna", **kwargs)

    def map(self, func: Any, na_action: str | None = None) -> Any:
        """``func`` applied to every element (per partition)."""
        return self._method("map", func, na_action=na_action)

    def replace(self, to_replace: Any = None, value: Any = _UNSET, **kwargs: Any) -> Any:
        """Values replaced as by pandas' ``replace`` (per partition)."""
        if value is _UNSET:
            return self._method("replace", to_replace, **kwargs)
        return self._method("replace", to_replace, value, **kwargs)

    def query(self, expr: str, **kwargs: Any) -> Any:
        """Rows matching a pandas query string (evaluated per partition)."""
        return self._method("query", expr, **kwargs)

    def eval(self, expr: str, **kwargs: Any) -> Any:
        """A pandas ``eval`` expression of the columns, such as ``"z = x + y"`` (per partition)."""
        if kwargs.get("inplace"):
            raise UsageError("eval(inplace=True) cannot change a lazy frame; use df = df.eval(expr)")
        return self._method("eval", expr, **kwargs)

    # -- scans ------------------------------------------------------------------------

    def ffill(self, limit: int | None = None) -> Any:
        """Missing values replaced by the last valid one before them (across partitions);
        with ``limit``, at most that many in a row."""
        if limit is None:
            return self._scan("ffill")
        return self._shift("ffill", _fill_limit(limit), {})

    def bfill(self, limit: int | None = None) -> Any:
        """Missing values replaced by the next valid one after them (across partitions);
        with ``limit``, at most that many in a row."""
        if limit is None:
            return self._scan("bfill")
        return self._shift("bfill", -_fill_limit(limit), {})

    def cumsum(self, skipna: bool = True) -> Any:
        """Cumulative sum over all partitions."""
        return self._scan("cumsum", skipna=skipna)

    def cumprod(self, skipna: bool = True) -> Any:
        """Cumulative product over all partitions."""
        return self._scan("cumprod", skipna=skipna)

    def cummin(self, skipna: bool = True) -> Any:
        """Cumulative minimum over all partitions."""
        return self._scan("cummin", skipna=skipna)

    def cummax(self, skipna: bool = True) -> Any:
        """Cumulative maximum over all partitions."""
        return self._scan("cummax", skipna=skipna)

    def _scan(self, method: str, skipna: bool = True) -> Any:
        from zmqdask.dataframe.scans import Scan

        return new_collection(Scan(self._expr, method, bool(skipna)))

    def shift(self, periods: int = 1, freq: Any = None, fill_value: Any = _UNSET) -> Any:
        """Values moved by ``periods`` rows (rows cross partition boundaries, as in pandas);
        with ``freq``, the index labels move by ``periods`` times ``freq`` instead.

        ``fill_value`` replaces the missing values of the first ``periods`` rows of the
        whole collection (the last ones for negative ``periods``); other partitions'
        first rows get the values of the rows before them, as without it.
        """
        if freq is not None:
            if fill_value is not _UNSET:
                raise UsageError("shift takes freq= or fill_value=, not both: with freq the values do not move")
            from zmqdask.dataframe.scans import ShiftIndex

            return new_collection(ShiftIndex(self._expr, int(periods), freq))
        if fill_value is _UNSET:
            return self._shift("shift", periods, {})
        if _is_collection(fill_value):
            raise UsageError("shift's fill_value must be a plain value, not a lazy collection; compute it first")
        # Each partition shifts its rows with those of the partitions before it in front,
        # so the value only lands in rows that have no earlier row in the whole collection.
        return self._shift("shift", periods, {"fill_value": fill_value})

    def diff(self, periods: int = 1) -> Any:
        """Difference with the value ``periods`` rows earlier (across partitions)."""
        return self._shift("diff", periods, {})

    def pct_change(self, periods: int = 1, **kwargs: Any) -> Any:
        """Relative change from the value ``periods`` rows earlier (across partitions)."""
        return self._shift("pct_change", periods, kwargs)

    def _shift(self, method: str, periods: int, kwargs: dict[str, Any]) -> Any:
        from zmqdask.dataframe.scans import Shift

        return new_collection(Shift(self._expr, method, int(periods), kwargs))

    # -- row selections over all partitions -------------------------------------------

    def sample(self, frac: float | None = None, replace: bool = False, random_state: int | None = None) -> Any:
        """A random fraction of each partition's rows (reproducible with ``random_state``)."""
        from zmqdask.dataframe.core_ops import Sample

        if frac is None or not 0 <= frac or (frac > 1 and not replace):
            raise UsageError("sample needs frac= between 0 and 1 (above 1 only with replace=True)")
        entropy: Any = np.random.SeedSequence().entropy
        seed = int(entropy) % 2**32 if random_state is None else int(random_state)
        return new_collection(Sample(self._expr, float(frac), bool(replace), seed))

    def random_split(self, frac: Any, random_state: int | None = None, shuffle: bool = False) -> list[Any]:
        """The rows split at random into pieces of about the fractions ``frac`` (which sum to
        1), as Dask's ``random_split``: disjoint, together every row, reproducible with
        ``random_state``.  ``shuffle`` is accepted; rows keep their partition and order."""
        from zmqdask.dataframe.core_ops import RandomSplitPiece

        fractions = [float(f) for f in frac]
        if not fractions or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
            raise UsageError(f"random_split needs non-negative fractions that sum to 1, got {list(frac)}")
        entropy: Any = np.random.SeedSequence().entropy
        seed = int(entropy) % 2**32 if random_state is None else int(random_state)
        bounds = np.concatenate([[0.0], np.cumsum(fractions)])
        bounds[-1] = np.inf  # every draw (in [0, 1)) lands in some piece despite rounding
        return [
            new_collection(RandomSplitPiece(self._expr, float(bounds[k]), float(bounds[k + 1]), seed))
            for k in range(len(fractions))
        ]

    def sort_index(self, ascending: bool = True) -> Any:
        """Rows sorted by index; needs known divisions (partitions already hold sorted ranges)."""
        from zmqdask.dataframe.expr import Partitions

        if not self._expr.known_divisions and self._expr.npartitions > 1:
            raise UsageError("sort_index needs known divisions (or one partition); use set_index to sort by a column")
        sorted_ = self._method("sort_index")
        if ascending:
            return sorted_
        reversed_ = new_collection(Partitions(sorted_.expr, tuple(range(self._expr.npartitions - 1, -1, -1))))
        return reversed_._method("sort_index", ascending=False)

    def drop_duplicates(self, subset: Any = None, keep: Any = "first", split_every: int | None = None) -> Any:
        """Rows without repeats (of ``subset`` columns), in their original order, in one partition.

        ``keep`` is ``"first"``, ``"last"`` or ``False`` (no row whose value repeats, wherever
        the other rows are), as in pandas."""
        from zmqdask.dataframe import stats

        return stats.drop_duplicates(self, subset=subset, keep=keep, split_every=split_every)

    def nlargest(self, n: int = 5, columns: Any = None, split_every: int | None = None) -> Any:
        """The ``n`` rows with the largest values (of ``columns`` for a DataFrame)."""
        from zmqdask.dataframe import stats

        return stats.nlargest(self, n, columns, largest=True, split_every=split_every)

    def nsmallest(self, n: int = 5, columns: Any = None, split_every: int | None = None) -> Any:
        """The ``n`` rows with the smallest values (of ``columns`` for a DataFrame)."""
        from zmqdask.dataframe import stats

        return stats.nlargest(self, n, columns, largest=False, split_every=split_every)

    def idxmax(self, skipna: bool = True, split_every: int | None = None) -> Any:
        """Label of the largest value (per column for a DataFrame); the first one on ties."""
        from zmqdask.dataframe import stats

        return stats.idxextreme(self, True, skipna=skipna, split_every=split_every)

    def idxmin(self, skipna: bool = True, split_every: int | None = None) -> Any:
        """Label of the smallest value (per column for a DataFrame); the first one on ties."""
        from zmqdask.dataframe import stats

        return stats.idxextreme(self, False, skipna=skipna, split_every=split_every)

    def quantile(self, q: Any = 0.5, numeric_only: bool = False) -> Any:
        """Exact quantiles, as pandas gives them (each column is gathered into one task)."""
        from zmqdask.dataframe import stats

        return stats.quantile(self, q, numeric_only=numeric_only)

    def median(self, numeric_only: bool = False) -> Any:
        """Exact median (each column is gathered into one task)."""
        from zmqdask.dataframe.collection import Series

        result = self.quantile(0.5, numeric_only=numeric_only)
        # pandas names a DataFrame's quantiles by q, but not its medians.
        return result.rename(None) if isinstance(result, Series) else result

    def pipe(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(self, *args, **kwargs)``."""
        return func(self, *args, **kwargs)


def _fill_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive integer, not {limit!r}")
    return int(limit)
