"""Categorical columns whose categories are not known until the data is read, as in Dask.

``astype("category")`` runs partition by partition, so each partition gets the categories of
its own values: partition 0 may code ``"z"`` as 0 and partition 1 code ``"y"`` as 0.  Such a
column's meta carries the single category :data:`UNKNOWN_CATEGORIES`; what depends on the
categories of the whole column (``.cat.codes``, ``.cat.categories``) says to make them known
first, with ``.cat.as_known()`` or ``df.categorize()``, which read the column's values once
and cast every partition to the same categories.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from zmqdask.dataframe.indexing import Accessor
from zmqdask.errors import UsageError

if TYPE_CHECKING:
    from zmqdask.dataframe.collection import DataFrame, Series

UNKNOWN_CATEGORIES = "__UNKNOWN_CATEGORIES__"
"""The one category in the meta of a categorical column whose categories are not known."""


def asks_unknown_categories(dtype: Any) -> bool:
    """Whether casting to ``dtype`` makes categories that depend on each partition's values."""
    if isinstance(dtype, str):
        return dtype == "category"
    return isinstance(dtype, pd.CategoricalDtype) and dtype.categories is None


def unknown_columns(meta: Any, dtype: Any) -> list[Hashable]:
    """The columns of ``meta`` (or ``[None]`` for a Series) that ``astype(dtype)`` leaves unknown."""
    if isinstance(dtype, dict):
        return [column for column, wanted in dtype.items() if asks_unknown_categories(wanted)]
    if not asks_unknown_categories(dtype):
        return []
    return list(meta.columns) if isinstance(meta, pd.DataFrame) else [None]


def mark_unknown(meta: Any, columns: Sequence[Hashable]) -> Any:
    """``meta`` with the categories of ``columns`` (``[None]``: the Series itself) marked unknown."""

    def unknown(series: pd.Series) -> pd.Series:
        dtype = pd.CategoricalDtype([UNKNOWN_CATEGORIES], ordered=getattr(series.dtype, "ordered", False))
        return pd.Series([], dtype=dtype, index=series.index, name=series.name)

    if isinstance(meta, pd.Series):
        return unknown(meta)
    meta = meta.copy()
    for column in columns:
        meta[column] = unknown(meta[column])
    return meta


def categories_known(dtype: Any) -> bool:
    """Whether a categorical dtype's categories are those of the whole column."""
    return not (
        isinstance(dtype, pd.CategoricalDtype)
        and len(dtype.categories) == 1
        and dtype.categories[0] == UNKNOWN_CATEGORIES
    )


def conform_dtypes(part: Any, meta: Any) -> Any:
    """``part`` (a DataFrame or Series) in ``meta``'s dtypes, except that a categorical column
    whose categories are unknown keeps (or takes) the categories of its own values: the
    placeholder is no category of real data, and casting to it would erase every value.  A
    value outside the categories the meta lists is never erased either: its category is
    added after them."""
    if isinstance(meta, pd.DataFrame):
        wanted: dict[Any, Any] = {}
        for column, dtype in meta.dtypes.items():
            current = part.dtypes[column]
            if not categories_known(dtype):
                if not isinstance(current, pd.CategoricalDtype):
                    wanted[column] = "category"
            elif current != dtype:
                wanted[column] = _keeping_values(part[column], dtype)
        return part.astype(wanted) if wanted else part
    dtype = meta.dtype
    if not categories_known(dtype):
        return part if isinstance(part.dtype, pd.CategoricalDtype) else part.astype("category")
    return part if part.dtype == dtype else part.astype(_keeping_values(part, dtype))


def _keeping_values(values: pd.Series, dtype: Any) -> Any:
    """``dtype``, or, for a categorical one missing some of ``values``, the same categories
    with those values' added (in order of appearance)."""
    if not isinstance(dtype, pd.CategoricalDtype):
        return dtype
    present = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else values.dropna().unique()
    extra = pd.Index(present).difference(dtype.categories, sort=False)
    if extra.empty:
        return dtype
    return pd.CategoricalDtype(dtype.categories.append(extra), ordered=dtype.ordered)


def _cast_partition(part: Any, dtype: Any) -> Any:
    return part.astype(dtype)


def cast(obj: Any, dtype: Any) -> Any:
    """``obj.astype(dtype)``, with the categories it makes per partition marked unknown."""
    columns = unknown_columns(obj._meta, dtype)
    if not columns:
        return None
    meta = mark_unknown(obj._meta.astype(dtype), columns)
    return obj.map_partitions(_cast_partition, dtype, meta=meta)


def _sorted_categories(values: Any) -> list[Any]:
    # pandas sorts the categories of astype("category"); values that do not sort keep the
    # order they were found in.
    distinct = list(pd.unique(pd.Series(values).dropna()))
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


def categorize(frame: DataFrame, columns: Sequence[Hashable] | None = None) -> DataFrame:
    """``frame`` with ``columns`` (default: text and unknown categorical ones) cast to
    categories read from the data, the same in every partition (computes them now)."""
    from zmqdask.base import compute

    meta = frame._meta
    if columns is None:
        columns = [
            column
            for column, dtype in meta.dtypes.items()
            if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype) or not categories_known(dtype)
        ]
    missing = [column for column in columns if column not in meta.columns]
    if missing:
        raise UsageError(f"categorize: columns not in the frame: {missing}")
    if not columns:
        return frame
    values = compute(*[frame[column].unique() for column in columns])
    dtypes = {
        column: pd.CategoricalDtype(
            _sorted_categories(found), ordered=getattr(meta[column].dtype, "ordered", False) or False
        )
        for column, found in zip(columns, values, strict=True)
    }
    return frame.astype(dtypes)


class CategoricalAccessor(Accessor):
    """``series.cat``: per partition, except what needs the categories of the whole column."""

    _NEEDS_KNOWN = frozenset({"codes"})

    def __init__(self, series: Series) -> None:
        super().__init__(series, "cat")

    @property
    def known(self) -> bool:
        """Whether the categories are those of the whole column (not per partition)."""
        return categories_known(self._series._meta.dtype)

    def as_known(self) -> Series:
        """The same Series with the categories of the whole column in every partition (reads
        the column's values now when they are not known)."""
        if self.known:
            return self._series
        series = self._series
        from zmqdask.base import compute

        (values,) = compute(series.unique())
        dtype = pd.CategoricalDtype(_sorted_categories(values), ordered=series._meta.dtype.ordered)
        return series.astype(dtype)

    @property
    def categories(self) -> pd.Index:
        """The categories of the whole column, from the schema (as Dask gives them): a pandas
        Index, read without computing anything.  They must be known."""
        if not self.known:
            raise self._unknown("categories")
        return self._series._meta.dtype.categories

    @property
    def ordered(self) -> bool:
        """Whether the categories are ordered."""
        return bool(self._series._meta.dtype.ordered)

    def as_unknown(self) -> Series:
        """The same Series with its categories marked unknown."""
        return self._series.map_partitions(
            _identity, meta=mark_unknown(self._series._meta, [None])
        )

    def __getattr__(self, attr: str) -> Any:
        if attr in self._NEEDS_KNOWN and not self.known:
            raise self._unknown(attr)
        return super().__getattr__(attr)

    @staticmethod
    def _unknown(attr: str) -> UsageError:
        return UsageError(
            f".cat.{attr} needs the categories of the whole column, which are not known yet (astype('category') "
            "and read_parquet leave them to each partition): call .cat.as_known() (or df.categorize()) first"
        )


def _identity(part: Any) -> Any:
    return part


def get_dummies(
    data: Any,
    prefix: Any = None,
    prefix_sep: str = "_",
    dummy_na: bool = False,
    columns: Sequence[Hashable] | None = None,
    drop_first: bool = False,
    dtype: Any = bool,
) -> Any:
    """One indicator column per category, as ``pandas.get_dummies``, partition by partition.

    As in Dask, the columns must be categoricals whose categories are known (so that every
    partition makes the same columns): ``categorize()`` the frame first, or ``astype`` a
    ``pandas.CategoricalDtype`` naming them.
    """
    from zmqdask.dataframe.collection import map_partitions
    from zmqdask.dataframe.meta import meta_nonempty

    meta = data._meta
    if isinstance(meta, pd.Series):
        encoded = [meta.name]
        dtypes = [meta.dtype]
    else:
        if columns is None:
            encoded = [c for c, t in meta.dtypes.items() if _encodable(t)]
        else:
            encoded = list(columns)
        dtypes = [meta[c].dtype for c in encoded]
    unknown = [
        column
        for column, kind in zip(encoded, dtypes, strict=True)
        if not isinstance(kind, pd.CategoricalDtype) or not categories_known(kind)
    ]
    if unknown:
        raise UsageError(
            f"get_dummies needs categoricals with known categories; {unknown} are not: call "
            "df.categorize() first (or astype a pandas.CategoricalDtype listing the categories)"
        )
    options = {
        "prefix": prefix,
        "prefix_sep": prefix_sep,
        "dummy_na": dummy_na,
        "drop_first": drop_first,
        "dtype": dtype,
    }
    if not isinstance(meta, pd.Series):
        options["columns"] = columns
    result_meta = pd.get_dummies(meta_nonempty(meta), **options).iloc[:0]
    return map_partitions(pd.get_dummies, data, meta=result_meta, **options)


def _encodable(dtype: Any) -> bool:
    """Whether pandas' get_dummies encodes a column of ``dtype`` by default."""
    return bool(
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )
