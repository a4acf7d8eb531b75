"""Indexers and accessors of the collections: ``.loc``, ``.iloc``, ``.partitions``, ``.str``/``.dt``/``.cat``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from zmqdask.dataframe import core_ops as ops
from zmqdask.dataframe import planning as plan
from zmqdask.dataframe.expr import Partitions
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError

if TYPE_CHECKING:
    from zmqdask.dataframe.collection import Collection, DataFrame, Series, _Frame


def _classes() -> tuple[type, type]:
    from zmqdask.dataframe.collection import DataFrame, Series

    return DataFrame, Series


class PartitionsIndexer:
    """``obj.partitions[key]``: a subset of the partitions, by position or slice."""

    def __init__(self, obj: Collection) -> None:
        self._obj = obj

    def __getitem__(self, key: Any) -> Any:
        n = self._obj.npartitions
        picked = list(range(n))[key] if isinstance(key, slice) else np.arange(n)[key]
        picked = [int(p) for p in np.atleast_1d(picked)]
        if not picked:
            raise IndexError("no partitions selected")
        return new_collection(Partitions(self._obj.expr, tuple(picked)))


def _is_boolean_mask(value: Any) -> bool:
    """A list or array of booleans (not a lazy Series)."""
    return (
        isinstance(value, (list, np.ndarray, pd.Index))
        and len(value) > 0
        and all(isinstance(item, (bool, np.bool_)) for item in value)
    )


class LocIndexer:
    """``obj.loc[...]``: rows by label (culling partitions by divisions), optionally columns."""

    def __init__(self, obj: _Frame) -> None:
        self._obj = obj

    def __getitem__(self, key: Any) -> Any:
        obj = self._obj
        if callable(key) and not hasattr(key, "expr"):
            key = key(obj)  # as pandas: df.loc[lambda d: d.x > 0]
        if isinstance(key, tuple) and len(key) == 2 and isinstance(obj, _classes()[0]):
            rows, cols = key
            if callable(rows) and not hasattr(rows, "expr"):
                rows = rows(obj)
            if callable(cols) and not hasattr(cols, "expr"):
                cols = cols(obj)
            if isinstance(cols, slice) or _is_boolean_mask(cols):
                # A slice of column labels, or a boolean mask over the columns: which columns
                # is known from the meta alone (a slice given to df[...] would select rows).
                cols = list(obj._meta.loc[:, cols].columns)
            selected: Any = self[rows] if not plan.is_full_slice(rows) else obj
            return selected[cols]
        if isinstance(key, _classes()[1]):
            return cast(Any, obj)[key]
        if isinstance(key, slice):
            if key.step is not None:
                raise UsageError("loc with a slice step is not supported")
            return new_collection(plan.loc_expr(obj.expr, key.start, key.stop, True))
        if isinstance(key, (list, np.ndarray, pd.Index, pd.Series)):
            labels = list(key)
            expr = obj.expr
            if expr.known_divisions:
                keep = sorted({p for label in labels for p in plan.partitions_for(expr.divisions, label, label, False)})
                expr = Partitions(expr, tuple(keep or [0]))
            return new_collection(ops.RowSelect(expr, ops.loc_labels, (labels,), "loc"))
        return new_collection(plan.loc_expr(obj.expr, key, key, False))


class ILocIndexer:
    """``df.iloc[:, positions]``: columns by position (rows by position are not supported)."""

    def __init__(self, obj: DataFrame) -> None:
        self._obj = obj

    def __getitem__(self, key: Any) -> Any:
        if not (isinstance(key, tuple) and len(key) == 2 and plan.is_full_slice(key[0])):
            raise UsageError("iloc supports column selection only: df.iloc[:, positions]")
        columns = self._obj.columns[key[1]]
        if isinstance(columns, pd.Index):
            return self._obj[list(columns)]
        return self._obj[columns]


class Accessor:
    """``series.str``/``.dt``/``.cat``: pandas accessor members run per partition."""

    def __init__(self, series: Series, name: str) -> None:
        self._series = series
        self._name = name
        # Validate early, as pandas would: .str on numbers raises here, not at compute.
        getattr(series._meta, name)

    def __dir__(self) -> list[str]:
        return dir(getattr(self._series._meta, self._name))

    def __getitem__(self, key: Any) -> Any:
        """``series.str[0]``, ``series.str[:2]``: per partition."""
        if self._name != "str":
            raise TypeError(f"'.{self._name}' accessor is not subscriptable")
        return new_collection(ops.MapAccessor(self._series.expr, "str", "__getitem__", True, (key,), {}))

    def cat(self, others: Any = None, sep: str | None = None, na_rep: str | None = None, join: str = "left") -> Any:
        """``.str.cat``: without ``others`` all values joined into one string (a lazy
        scalar, across partitions); with a Series (lazy or pandas), row by row, aligned."""
        if self._name != "str":
            return self.__getattr__("cat")(others, sep=sep, na_rep=na_rep, join=join)
        from zmqdask.dataframe.collection import Collection, _row_aligned_operand, map_partitions
        from zmqdask.dataframe.expr import Reduction

        if others is None:
            options = {"sep": sep or "", "na_rep": na_rep}
            reduction = Reduction(
                self._series.expr,
                str_cat_chunk,
                str_cat_combine,
                str_cat_aggregate,
                "",
                options,
                {"sep": sep or ""},
                {"sep": sep or ""},
                label="str-cat",
            )
            return new_collection(reduction)
        listed = list(others) if isinstance(others, (list, tuple)) else [others]
        aligned = [_row_aligned_operand(self._series, other) for other in listed]
        if not all(isinstance(other, Collection) for other in aligned):
            raise UsageError(
                "str.cat of a lazy Series takes other Series (lazy or pandas, aligned by index); "
                "for a list of values, make a Series of them with the same index first"
            )
        return map_partitions(_str_cat_rows, self._series, *aligned, sep=sep, na_rep=na_rep, join=join)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        sample = getattr(getattr(self._series._meta, self._name), attr)
        expr = self._series.expr
        if callable(sample):

            def method(*args: Any, **kwargs: Any) -> Any:
                return new_collection(ops.MapAccessor(expr, self._name, attr, True, args, kwargs))

            method.__name__ = attr
            method.__doc__ = f"``.{self._name}.{attr}`` per partition."
            return method
        return new_collection(ops.MapAccessor(expr, self._name, attr, False, (), {}))


def str_cat_chunk(part: pd.Series, sep: str, na_rep: str | None) -> tuple[bool, str]:
    """One partition's values joined (missing ones skipped unless ``na_rep``), and whether
    it had any value to join (an empty result may stand for one empty string)."""
    values = part if na_rep is not None else part.dropna()
    return len(values) > 0, values.str.cat(sep=sep, na_rep=na_rep)


def str_cat_combine(chunks: list[tuple[bool, str]], sep: str) -> tuple[bool, str]:
    """Joined chunks, in partition order."""
    texts = [text for has_values, text in chunks if has_values]
    return bool(texts), sep.join(texts)


def str_cat_aggregate(chunks: list[tuple[bool, str]], sep: str) -> str:
    """The one string of all values."""
    return str_cat_combine(chunks, sep)[1]


def _str_cat_rows(part: pd.Series, *others: pd.Series, **options: Any) -> pd.Series:
    joined: Any = list(others) if len(others) > 1 else others[0]
    return part.str.cat(joined, **options)
