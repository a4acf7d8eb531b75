"""The user-facing lazy collections: DataFrame, Series, Index and Scalar, and their reprs.

Each wraps an immutable expression (``.expr``); methods build new expressions and never
compute, except ``compute``, ``persist`` (without a client), ``head``, ``tail`` and ``len``.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from zmqdask.dataframe import core_ops as ops
from zmqdask.dataframe import indexing as idx
from zmqdask.dataframe import planning as plan
from zmqdask.dataframe.categorical import categories_known
from zmqdask.dataframe.collection_base import Collection, Scalar, _expr_of
from zmqdask.dataframe.expr import Expr, Filter, Projection, Reduction, column_label
from zmqdask.dataframe.methods import FrameMethods
from zmqdask.dataframe.reductions import FrameReductions, len_chunk
from zmqdask.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["Collection", "DataFrame", "Index", "Scalar", "Series", "map_partitions", "new_collection"]


def new_collection(expr: Expr) -> Any:
    """The collection class matching an expression's meta, wrapping it."""
    meta = expr._meta
    if isinstance(meta, pd.DataFrame):
        return DataFrame(expr)
    if isinstance(meta, pd.Series):
        return Series(expr)
    if isinstance(meta, pd.Index):
        return Index(expr)
    return Scalar(expr)


# ---------------------------------------------------------------------------------------
# Frames: what DataFrame, Series and Index share
# ---------------------------------------------------------------------------------------


def _binary(op: str, reflected: bool = False) -> Callable[[Any, Any], Any]:
    def method(self: Any, other: Any) -> Any:
        return self._binop(op, other, reflected)

    method.__name__ = f"__{'r' if reflected else ''}{op.rstrip('_')}__"
    method.__doc__ = f"Lazy ``{op}`` with another collection or a scalar."
    return method


def _arithmetic(name: str, op: str, reflected: bool = False) -> Callable[..., Any]:
    def method(self: Any, other: Any, axis: Any = None, level: Any = None, fill_value: Any = None) -> Any:
        if axis is None and level is None and fill_value is None:
            return self._binop(op, other, reflected)
        # pandas' own method per partition, with ``other`` aligned to the partitions when it
        # is a collection (df.sub(df.x, axis=0), fill_value=...).
        options = {k: v for k, v in (("axis", axis), ("level", level), ("fill_value", fill_value)) if v is not None}
        return self._method(name, _row_aligned_operand(self, other, axis), **options)

    method.__name__ = name
    method.__doc__ = f"pandas' ``{name}`` (``axis``, ``level`` and ``fill_value`` as in pandas), lazily."
    return method


def _row_aligned_operand(frame: Any, other: Any, axis: Any = None) -> Any:
    """``other`` as a lazy collection when pandas would align it with ``frame``'s rows.

    Sent whole to every partition, a pandas Series or DataFrame would be aligned with each
    partition's rows by pandas, and every row of it outside that partition would come back
    (as NaN) once per partition; as a collection it is split along the same divisions
    first, as Dask does.  A pandas Series against a DataFrame's columns (the default axis
    of DataFrame arithmetic) is sent whole, as pandas aligns it with the columns, and so is
    a lazy reduction of a DataFrame's columns (``df - df.mean()``).
    """
    if isinstance(frame, DataFrame) and isinstance(other, Series) and axis not in (0, "index", "rows"):
        row = ops.as_row(other.expr)
        if row is not None:
            return new_collection(row)  # df.mean(): one value per column, for every row
        if other.npartitions == 1 and not other.known_divisions and frame.npartitions != 1:
            raise UsageError(
                "a lazy Series of one value per column is combined with every row of a frame when it "
                "comes from reductions (df.mean(), df.max() - df.min()); for this one, compute it "
                "first: df - values.compute()"
            )
    if isinstance(other, pd.DataFrame) or (
        isinstance(other, pd.Series) and (not isinstance(frame, DataFrame) or axis in (0, "index", "rows"))
    ):
        from zmqdask.dataframe.sources import from_pandas_expr

        kind = type(other).__name__
        if not frame.known_divisions:
            raise UsageError(
                f"a pandas {kind} is aligned with a lazy collection by index, which needs the collection's "
                "divisions (the index range of each partition): set_index first, or use from_pandas(..., sort=True)"
            )
        if len(other) == 0 or other.index.hasnans:
            raise UsageError(
                f"cannot align a lazy collection with a pandas {kind} whose index is empty or has missing "
                "labels; drop those rows first"
            )
        return new_collection(from_pandas_expr(other, npartitions=1))
    return other


if TYPE_CHECKING:
    from zmqdask.dataframe.categorical import CategoricalAccessor


_NO_ARRAYS = (
    "{what} needs a lazy array, which zmqdask does not have: compute first (df.compute().values), "
    "or convert each partition in a task (df.to_delayed(), then delayed calls of p.to_numpy())"
)


def _is_column_label(meta: Any, key: tuple[Any, ...]) -> bool:
    """Whether ``key`` is one whole column label of ``meta`` (a DataFrame's MultiIndex columns)."""
    columns = getattr(meta, "columns", None)
    return isinstance(columns, pd.MultiIndex) and len(key) == columns.nlevels and key in columns


def _no_attribute(kind: str, name: str) -> AttributeError:
    if name == "values":
        return AttributeError(_NO_ARRAYS.format(what=".values"))
    return AttributeError(f"'{kind}' object has no attribute {name!r}")


class _Frame(Collection, FrameMethods, FrameReductions):
    """Shared by partitioned collections (DataFrame, Series, Index)."""

    # Above pandas' own (DataFrame 4000): ``pandas_object - lazy`` is left to the lazy
    # collection's reflected operator instead of pandas treating it as an array.
    __pandas_priority__ = 4500

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # np.log1p(df.x) stays lazy, as in Dask: an elementwise ufunc is applied per
        # partition, with other collections among its inputs aligned.
        if method != "__call__" or ufunc.nout != 1 or "out" in kwargs:
            raise UsageError(
                f"numpy's {ufunc.__name__}.{method} cannot run on a lazy collection; compute it first, "
                "or use map_partitions"
            )
        return map_partitions(_call_ufunc, ufunc, kwargs, *(_row_aligned_operand(self, x) for x in inputs))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # np.asarray(df.x) computes, as in Dask.
        return np.asarray(self.compute(), dtype=dtype)

    def _binop(self, op: str, other: Any, reflected: bool = False) -> Any:
        if isinstance(self, Series) and isinstance(other, DataFrame):
            # df.mean() - df: the row's values, against every row of the frame.
            row = ops.as_row(self._expr)
            if row is not None:
                left, right = (other.expr, row) if reflected else (row, other.expr)
                return new_collection(ops.Binop(op, left, right))
        other = _row_aligned_operand(self, other)
        if isinstance(other, Collection):
            left, right = plan.align(self._expr, other.expr)
        else:
            left, right = self._expr, other
        if reflected:
            left, right = right, left
        return new_collection(ops.Binop(op, left, right))

    __add__ = _binary("add")
    __radd__ = _binary("add", True)
    __sub__ = _binary("sub")
    __rsub__ = _binary("sub", True)
    __mul__ = _binary("mul")
    __rmul__ = _binary("mul", True)
    __truediv__ = _binary("truediv")
    __rtruediv__ = _binary("truediv", True)
    __floordiv__ = _binary("floordiv")
    __rfloordiv__ = _binary("floordiv", True)
    __mod__ = _binary("mod")
    __rmod__ = _binary("mod", True)
    __pow__ = _binary("pow")
    __rpow__ = _binary("pow", True)
    __lt__ = _binary("lt")
    __le__ = _binary("le")
    __gt__ = _binary("gt")
    __ge__ = _binary("ge")
    __eq__ = _binary("eq")
    __ne__ = _binary("ne")
    # pandas' comparison methods are the operators (alignment included).
    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__
    __and__ = _binary("and_")
    __rand__ = _binary("and_", True)
    __or__ = _binary("or_")
    __ror__ = _binary("or_", True)
    __xor__ = _binary("xor")
    __rxor__ = _binary("xor", True)
    __hash__ = Collection.__hash__

    def __neg__(self) -> Any:
        return new_collection(ops.Unary("neg", self._expr))

    def __pos__(self) -> Any:
        return new_collection(ops.Unary("pos", self._expr))

    def __invert__(self) -> Any:
        return new_collection(ops.Unary("invert", self._expr))

    def __abs__(self) -> Any:
        return self.abs()

    add = _arithmetic("add", "add")
    sub = _arithmetic("sub", "sub")
    mul = _arithmetic("mul", "mul")
    div = _arithmetic("div", "truediv")
    truediv = _arithmetic("truediv", "truediv")
    floordiv = _arithmetic("floordiv", "floordiv")
    mod = _arithmetic("mod", "mod")
    pow = _arithmetic("pow", "pow")
    radd = _arithmetic("radd", "add", True)
    rsub = _arithmetic("rsub", "sub", True)
    rmul = _arithmetic("rmul", "mul", True)
    rdiv = _arithmetic("rdiv", "truediv", True)
    rtruediv = _arithmetic("rtruediv", "truediv", True)
    rfloordiv = _arithmetic("rfloordiv", "floordiv", True)
    rmod = _arithmetic("rmod", "mod", True)
    rpow = _arithmetic("rpow", "pow", True)

    def _method(self, name: str, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_expr_of(a) for a in args)
        kwargs = {k: _expr_of(v) for k, v in kwargs.items()}
        exprs = [a for a in (*args, *kwargs.values()) if isinstance(a, Expr)]
        if exprs:
            aligned = plan.align(self._expr, *exprs)
            mapping = {e._token: a for e, a in zip(exprs, aligned[1:], strict=False)}
            args = tuple(mapping.get(a._token, a) if isinstance(a, Expr) else a for a in args)
            kwargs = {k: (mapping.get(v._token, v) if isinstance(v, Expr) else v) for k, v in kwargs.items()}
            return new_collection(ops.MapMethod(aligned[0], name, args, kwargs))
        return new_collection(ops.MapMethod(self._expr, name, args, kwargs))

    # -- rows -------------------------------------------------------------------------

    def head(self, n: int = 5, npartitions: int = 1, compute: bool = True) -> Any:
        """The first ``n`` rows; reads partitions from the first on, only as many as needed.

        ``npartitions`` is how many partitions the first attempt reads (-1: all).  With
        ``compute=False`` returns the lazy collection of that first attempt instead.
        """
        total = self.npartitions
        sorted_edge = plan.sorted_edge_expr(self._expr, n, last=False)
        if sorted_edge is not None:
            # The first rows of a sort need no shuffle: the first n rows of each partition.
            lazy = new_collection(sorted_edge)
            if not compute:
                return lazy
            self._check_blocking("await client.compute({}.head(n, compute=False))")
            return lazy.compute()
        first = total if npartitions == -1 else max(1, min(npartitions, total))
        lazy = new_collection(plan.edge_expr(self._expr, n, list(range(first)), ops.head_part, "head"))
        if not compute:
            return lazy
        self._check_blocking("await client.compute({}.head(n, compute=False))")
        result = lazy.compute()
        taken = first
        while len(result) < n and taken < total:
            more = list(range(taken, min(total, taken * 2)))
            extra = new_collection(plan.edge_expr(self._expr, n - len(result), more, ops.head_part, "head")).compute()
            result = ops.concat_parts([result, extra])
            taken = more[-1] + 1
        return result

    def tail(self, n: int = 5, npartitions: int = 1, compute: bool = True) -> Any:
        """The last ``n`` rows; reads partitions from the last backwards, as many as needed."""
        total = self.npartitions
        sorted_edge = plan.sorted_edge_expr(self._expr, n, last=True)
        if sorted_edge is not None:
            lazy = new_collection(sorted_edge)
            if not compute:
                return lazy
            self._check_blocking("await client.compute({}.tail(n, compute=False))")
            return lazy.compute()
        count = total if npartitions == -1 else max(1, min(npartitions, total))
        lazy = new_collection(plan.edge_expr(self._expr, n, list(range(total - count, total)), ops.tail_part, "tail"))
        if not compute:
            return lazy
        self._check_blocking("await client.compute({}.tail(n, compute=False))")
        result = lazy.compute()
        start = total - count
        while len(result) < n and start > 0:
            taken = total - start
            more = list(range(max(0, start - taken), start))
            extra = new_collection(plan.edge_expr(self._expr, n - len(result), more, ops.tail_part, "tail")).compute()
            result = ops.concat_parts([extra, result])
            start = more[0]
        return result

    def _check_blocking(self, template: str) -> None:
        from zmqdask.base import ensure_blocking_allowed, get_client

        client = get_client()
        if client is not None:
            ensure_blocking_allowed(client, self._awaitable(template))

    def __len__(self) -> int:
        self._check_blocking("await client.compute({}.shape[0])")
        return int(self._length().compute())

    def _length(self) -> Scalar:
        expr = Reduction(
            self._expr,
            len_chunk,
            ops.sum_values,
            ops.sum_values,
            0,
            label="len",
            columns_needed=(),
        )
        return Scalar(expr)

    @property
    def loc(self) -> idx.LocIndexer:
        """Label-based row selection on a sorted index, culling partitions by divisions."""
        return idx.LocIndexer(self)

    @property
    def index(self) -> Index:
        """The index, lazily."""
        return Index(ops.IndexOf(self._expr))

    # -- delegated to other modules ---------------------------------------------------

    def groupby(
        self,
        by: Any = None,
        level: Any = None,
        as_index: bool = True,
        sort: bool = True,
        group_keys: bool = True,
        observed: bool = True,
        dropna: bool = True,
    ) -> Any:
        """Group rows, or a Series' values (see ``zmqdask.dataframe.groupby``).

        ``by`` may name columns or the index; ``level=0`` (or the index's name) groups by
        the index.  Groups are the key values present (``observed=True``, pandas' default);
        ``observed=False`` adds the unobserved categories of categorical keys (known ones:
        see ``.cat.as_known()``).  ``as_index=False`` gives aggregations with the keys as
        columns and an index 0..n-1, as pandas does (the result is one partition).
        ``group_keys=False`` leaves the group keys out of ``apply``'s index, as in pandas.
        """
        from zmqdask.dataframe.groupby import GroupBy

        if level is not None:
            name = self._meta.index.name
            if by is not None or isinstance(self._meta.index, pd.MultiIndex) or level not in (0, -1, name):
                raise UsageError(
                    "groupby(level=...) takes the index's only level (0 or its name), without by=; "
                    "for several levels, reset_index() and group by the columns"
                )
            by = name if name is not None and name not in getattr(self._meta, "columns", ()) else self.index
        if by is None:
            raise UsageError("groupby needs by= (columns, the index name or a Series) or level=0")
        return GroupBy(
            self, by, sort=sort, dropna=dropna, group_keys=group_keys, as_index=as_index, observed=observed
        )

    def rolling(self, window: Any, min_periods: int | None = None, center: bool = False, **options: Any) -> Any:
        """Rolling windows, centered or not (see ``zmqdask.dataframe.timeseries_ops``)."""
        from zmqdask.dataframe.timeseries_ops import Rolling

        return Rolling(self, window, min_periods=min_periods, center=center, **options)

    def expanding(self, min_periods: int = 1, method: builtins.str = "single") -> Any:
        """Expanding windows: each row aggregates every row up to it, across partitions
        (see ``zmqdask.dataframe.windows``)."""
        from zmqdask.dataframe.windows import Expanding

        return Expanding(self, min_periods=min_periods, method=method)

    def ewm(
        self,
        com: float | None = None,
        span: float | None = None,
        halflife: Any = None,
        alpha: float | None = None,
        min_periods: int | None = 0,
        adjust: bool = True,
        ignore_na: bool = False,
        times: Any = None,
        method: builtins.str = "single",
    ) -> Any:
        """Exponentially weighted windows, across partitions, with pandas' arguments
        (``times=`` is not supported; see ``zmqdask.dataframe.windows``)."""
        from zmqdask.dataframe.windows import EWM

        return EWM(self, com, span, halflife, alpha, min_periods, adjust, ignore_na, times, method)

    def resample(
        self,
        rule: Any,
        closed: builtins.str | None = None,
        label: builtins.str | None = None,
        origin: Any = "start_day",
    ) -> Any:
        """Time-based resampling (see ``zmqdask.dataframe.timeseries_ops.Resampler``)."""
        from zmqdask.dataframe.timeseries_ops import Resampler

        return Resampler(self, rule, closed=closed, label=label, origin=origin)

    def shuffle(
        self,
        on: Any = None,
        ignore_index: bool = False,
        npartitions: int | None = None,
        on_index: bool = False,
        **options: Any,
    ) -> Any:
        """Rows moved so that equal values of ``on`` share a partition, as Dask's ``shuffle``.

        ``on`` names a column or a list of columns; without it (or with ``on_index``) rows
        move by their index.  Rows keep their index whatever ``ignore_index`` says, and the
        result has ``npartitions`` partitions (default: as many as now) with unknown
        divisions.  Dask's tuning options (``shuffle_method``...) are accepted and not used.
        """
        from zmqdask.dataframe.shuffle import hash_shuffle

        if isinstance(on, Collection):
            raise UsageError(
                "shuffle(on=) takes column names; assign the lazy Series as a column and shuffle on its name"
            )
        if npartitions is not None and (not isinstance(npartitions, int) or npartitions < 1):
            raise UsageError(f"shuffle(npartitions=) must be a positive integer, got {npartitions!r}")
        if on_index:
            on = None
        if on is not None:
            # As in pandas' selections, a tuple that is a column label (of MultiIndex columns)
            # is that one column; another tuple lists several.
            one = not isinstance(on, (list, tuple)) or (isinstance(on, tuple) and _is_column_label(self._meta, on))
            names = [on] if one else list(on)
            known = self._meta.columns if isinstance(self._meta, pd.DataFrame) else pd.Index([self._meta.name])
            missing = [name for name in names if name not in known]
            if missing:
                raise UsageError(f"shuffle(on=) names {missing!r}, which are not among the columns {list(known)!r}")
            if not isinstance(self._meta, pd.DataFrame):
                # A Series shuffled on its own values: as a one-column frame, keyed on it.
                series: Any = self
                return hash_shuffle(series.to_frame(), names, npartitions)[self._meta.name]
            on = names
        return hash_shuffle(self, on, npartitions)

    def to_dask_array(self, *args: Any, **kwargs: Any) -> Any:
        """Not available: zmqdask has no lazy arrays (raises AttributeError saying what to do)."""
        raise AttributeError(_NO_ARRAYS.format(what="to_dask_array()"))

    def to_csv(self, filename: Any, **kwargs: Any) -> Any:
        """Write CSV: one file per partition, or one file with ``single_file=True``
        (see ``zmqdask.dataframe.io.to_csv``)."""
        from zmqdask.dataframe.io import to_csv

        return to_csv(self, filename, **kwargs)


# ---------------------------------------------------------------------------------------
# DataFrame
# ---------------------------------------------------------------------------------------


class DataFrame(_Frame):
    """A lazy pandas DataFrame split into partitions along its index."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._meta.columns:
            return self[name]
        raise _no_attribute("DataFrame", name)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        names.update(c for c in self._meta.columns if isinstance(c, str) and c.isidentifier())
        return sorted(names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._meta.columns)

    def info(self, buf: Any = None, verbose: bool = False, memory_usage: bool = False) -> None:
        """Print a concise summary, as pandas does (see ``zmqdask.dataframe.stats.info``)."""
        from zmqdask.dataframe.stats import info

        info(self, buf, verbose, memory_usage)

    def categorize(self, columns: Sequence[Hashable] | None = None, index: Any = None) -> DataFrame:
        """Text columns (or ``columns``) as categoricals with the same categories in every
        partition; reads those columns once, now.  ``index`` is accepted and not used."""
        from zmqdask.dataframe.categorical import categorize

        return categorize(self, columns)

    def __getitem__(self, key: Any) -> Any:
        if callable(key) and not isinstance(key, (Collection, type)):
            key = key(self)  # as pandas: df[lambda d: d.x > 0]
        if isinstance(key, Series):
            (frame, predicate) = plan.align(self._expr, key.expr)
            return DataFrame(Filter(frame, predicate))
        if isinstance(key, slice):
            return self.loc[key]
        if isinstance(key, (list, pd.Index, np.ndarray)):
            columns = list(key)
            missing = [c for c in columns if c not in self._meta.columns]
            if missing:
                raise KeyError(f"columns not found: {missing}")
            return DataFrame(Projection(self._expr, tuple(columns)))
        if isinstance(key, DataFrame):
            return self.where(key)
        if key in self._meta.columns:
            under = _labels_under(self._meta.columns, key)
            if under is not None:
                # The labels go first into a projection, so the columns the selection needs
                # are known below it; the level is dropped on the partitions.
                return self[under].map_partitions(_select_top, key, meta=self._meta[key])
            # As in pandas, a tuple is one label (a column of MultiIndex columns), never a list.
            return Series(Projection(self._expr, column_label(key)))
        raise KeyError(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        # As in pandas (and __getitem__), a tuple is one label (a column of MultiIndex
        # columns), never a list of columns.
        if isinstance(key, (list, pd.Index, np.ndarray)):
            self._expr = _assign(self, _column_pairs(list(key), value)).expr
        elif isinstance(key, str):
            self._expr = self.assign(**{key: value}).expr
        else:
            self._expr = _assign(self, [(key, value)]).expr
        self.__dict__.pop("_optimized", None)
        self.__dict__.pop("_graph", None)

    def __delitem__(self, key: Any) -> None:
        self._expr = self.drop(columns=[key]).expr
        self.__dict__.pop("_optimized", None)
        self.__dict__.pop("_graph", None)

    def pop(self, item: Any) -> Series:
        """Remove column ``item`` from this frame and return it (lazily, as in Dask)."""
        column = self[item]
        del self[item]
        return column

    def items(self) -> Iterator[tuple[Any, Series]]:
        """``(column name, lazy Series)`` for each column, as ``pandas.DataFrame.items``."""
        for name in self._meta.columns:
            yield name, self[name]

    def add_prefix(self, prefix: builtins.str) -> DataFrame:
        """Column names with ``prefix`` in front."""
        return self._method("add_prefix", prefix)

    def add_suffix(self, suffix: builtins.str) -> DataFrame:
        """Column names with ``suffix`` after them."""
        return self._method("add_suffix", suffix)

    def iterrows(self) -> Iterator[tuple[Any, pd.Series]]:
        """``(label, row)`` pairs, computing one partition at a time."""
        for i in range(self.npartitions):
            yield from self.get_partition(i).compute().iterrows()

    def itertuples(self, index: bool = True, name: builtins.str | None = "Pandas") -> Iterator[Any]:
        """Rows as named tuples, computing one partition at a time."""
        for i in range(self.npartitions):
            yield from self.get_partition(i).compute().itertuples(index=index, name=name)

    @property
    def columns(self) -> pd.Index:
        """Column labels."""
        return self._meta.columns

    @columns.setter
    def columns(self, names: Any) -> None:
        names = list(names)
        if len(names) != len(self._meta.columns):
            raise ValueError(
                f"Length mismatch: Expected axis has {len(self._meta.columns)} elements, new values have "
                f"{len(names)} elements"
            )
        renamed = self.rename(columns=dict(zip(self._meta.columns, names, strict=True)))
        self._expr = renamed.expr
        self.__dict__.pop("_optimized", None)
        self.__dict__.pop("_graph", None)

    @property
    def dtypes(self) -> pd.Series:
        """Column dtypes."""
        return self._meta.dtypes

    @property
    def ndim(self) -> int:
        """Always 2."""
        return 2

    @property
    def shape(self) -> tuple[Scalar, int]:
        """``(lazy number of rows, number of columns)``."""
        return (self._length(), len(self._meta.columns))

    @property
    def empty(self) -> bool:
        """Refused: emptiness needs a computation; use ``len(df) == 0``."""
        raise UsageError("DataFrame.empty is not supported lazily; use len(df) == 0")

    @property
    def iloc(self) -> idx.ILocIndexer:
        """Column selection by position: ``df.iloc[:, positions]``."""
        return idx.ILocIndexer(self)

    def assign(self, **kwargs: Any) -> DataFrame:
        """New or replaced columns from aligned Series, scalars, or callables of the frame."""
        return _assign(self, list(kwargs.items()))

    def rename(self, columns: Any = None, index: Any = None) -> DataFrame:
        """Columns renamed by a mapping or a function."""
        if index is not None:
            raise UsageError("rename(index=...) is not supported; use map_partitions")
        return self._method("rename", columns=columns)

    def drop(self, labels: Any = None, axis: Any = 0, columns: Any = None, errors: str = "raise") -> DataFrame:
        """The frame without some columns: ``drop(columns=...)`` or ``drop(labels, axis=1)``."""
        if columns is None:
            if labels is not None and axis not in (1, "columns"):
                raise UsageError("dropping rows is not supported: pass axis=1 (or columns=) to drop columns")
            columns = labels
        if columns is None:
            raise UsageError("drop needs columns (dropping rows is not supported)")
        dropped = [columns] if isinstance(columns, (str, int)) or not hasattr(columns, "__iter__") else list(columns)
        missing = [c for c in dropped if c not in self._meta.columns]
        if missing and errors == "raise":
            raise KeyError(f"columns not found: {missing}")
        return self[[c for c in self._meta.columns if c not in dropped]]

    def melt(
        self,
        id_vars: Any = None,
        value_vars: Any = None,
        var_name: Any = None,
        value_name: Any = "value",
    ) -> DataFrame:
        """Wide to long, as ``pandas.melt``, partition by partition (the index is not kept)."""
        return map_partitions(
            pd.melt,
            self,
            id_vars=id_vars,
            value_vars=value_vars,
            var_name=var_name,
            value_name=value_name,
            clear_divisions=True,
        )

    def pivot_table(self, index: Hashable, columns: Hashable, values: Hashable, aggfunc: builtins.str = "mean") -> Any:
        """A spreadsheet-style table, as Dask's ``pivot_table``: one row per value of the
        ``index`` column, one column per category of ``columns``, cells aggregating ``values``.

        ``columns`` must be a categorical column with known categories (``df.categorize()``),
        so the result's columns are known before computing.  ``aggfunc`` is one of ``mean``,
        ``sum``, ``count``, ``first``, ``last``; empty cells are 0 for ``sum`` and ``count``.
        """
        meta = self._meta
        for role, name in (("index", index), ("columns", columns), ("values", values)):
            if not isinstance(name, Hashable) or isinstance(name, tuple) or name not in meta.columns:
                raise UsageError(f"pivot_table({role}=) must name one column of {list(meta.columns)!r}, got {name!r}")
        dtype = meta[columns].dtype
        if not isinstance(dtype, pd.CategoricalDtype) or not categories_known(dtype):
            raise UsageError(
                f"pivot_table(columns={columns!r}) needs a categorical column with known categories: "
                f"use df.categorize(columns=[{columns!r}]) first"
            )
        if aggfunc not in _PIVOT_AGGREGATIONS:
            raise UsageError(f"pivot_table(aggfunc=) must be one of {sorted(_PIVOT_AGGREGATIONS)}, got {aggfunc!r}")
        labels = pd.CategoricalIndex(dtype.categories, dtype=dtype, name=columns)
        table_meta = pd.DataFrame(
            index=pd.Index([], dtype=meta[index].dtype, name=index), columns=labels, dtype="float64"
        )
        cells = self[[index, columns, values]].groupby([index, columns], observed=True)[values].agg(aggfunc)
        return cells.map_partitions(_pivot_cells, columns, labels, aggfunc in ("sum", "count"), meta=table_meta)

    def reset_index(self, drop: bool = False) -> DataFrame:
        """The index moved into a column (unless ``drop``), rows numbered 0..n-1 as in pandas."""
        return DataFrame(plan.reset_index_expr(self._expr, drop))

    def select_dtypes(self, include: Any = None, exclude: Any = None) -> DataFrame:
        """Columns of the given dtypes."""
        picked = self._meta.select_dtypes(include=include, exclude=exclude).columns
        return self[list(picked)]

    def mode(
        self, axis: Any = 0, numeric_only: bool = False, dropna: bool = True, split_every: int | None = None
    ) -> DataFrame:
        """The most frequent value(s) of each column, sorted, as ``pandas.DataFrame.mode``: one
        partition numbered 0..n-1, columns with fewer modes padded with missing values."""
        from zmqdask.dataframe import stats

        if axis not in (0, "index", "rows"):
            raise UsageError("DataFrame.mode supports axis=0 only: the modes of each column")
        return stats.mode(self, dropna=dropna, split_every=split_every, numeric_only=numeric_only)

    def apply(
        self, func: Callable[..., Any], axis: int = 1, meta: Any = None, args: tuple[Any, ...] = (), **kwargs: Any
    ) -> Any:
        """``func`` applied to each row (``axis=1`` only)."""
        if axis not in (1, "columns"):
            raise UsageError("DataFrame.apply supports axis=1 only; use map_partitions or reductions")
        return self.map_partitions(_apply_rows, func, args, kwargs, meta=meta)

    # -- delegated to other modules ---------------------------------------------------

    def merge(
        self,
        right: Any,
        how: str = "inner",
        on: Any = None,
        left_on: Any = None,
        right_on: Any = None,
        left_index: bool = False,
        right_index: bool = False,
        suffixes: tuple[str, str] = ("_x", "_y"),
        indicator: bool = False,
    ) -> Any:
        """Database-style join (see ``zmqdask.dataframe.multi``)."""
        from zmqdask.dataframe.multi import merge

        return merge(
            self,
            right,
            how=how,
            on=on,
            left_on=left_on,
            right_on=right_on,
            left_index=left_index,
            right_index=right_index,
            suffixes=suffixes,
            indicator=indicator,
        )

    def join(self, other: Any, on: Any = None, how: str = "left", lsuffix: str = "", rsuffix: str = "") -> Any:
        """Join ``other`` by its index to this frame's index, or to columns ``on``.

        See ``zmqdask.dataframe.multi.join``.
        """
        from zmqdask.dataframe.multi import join

        return join(self, other, on=on, how=how, lsuffix=lsuffix, rsuffix=rsuffix)

    def set_index(
        self,
        column: Any,
        npartitions: int | None = None,
        divisions: Any = None,
        sorted: bool = False,
        drop: bool = True,
        **options: Any,
    ) -> Any:
        """A sorted index from a column (see ``zmqdask.dataframe.shuffle``).

        ``sorted=True`` (Dask's hint that the column is sorted already) is accepted; the
        boundaries are sampled either way.  ``drop=False`` keeps the column as well.  Other
        Dask options (``shuffle_method``, ``compute``...) are ignored.
        """
        from zmqdask.dataframe.shuffle import set_index

        if drop or not isinstance(column, Hashable) or column not in self._meta.columns:
            return set_index(self, column, npartitions=npartitions, divisions=divisions)
        # A copy of the column becomes the index, under the column's name.
        copy = f"__index_{column}__"
        indexed = set_index(self.assign(**{copy: self[column]}), copy, npartitions=npartitions, divisions=divisions)
        return indexed.map_partitions(_name_index, column)

    def sort_values(self, by: Any, ascending: bool = True, na_position: builtins.str = "last") -> Any:
        """Rows sorted by columns, missing values last or first (see ``zmqdask.dataframe.shuffle``)."""
        from zmqdask.dataframe.shuffle import sort_values

        return sort_values(self, by, ascending=ascending, na_position=na_position)

    def to_parquet(self, path: Any, **kwargs: Any) -> Any:
        """Write partitions as Parquet files (see ``zmqdask.dataframe.io``)."""
        from zmqdask.dataframe.io import to_parquet

        return to_parquet(self, path, **kwargs)

    # -- reprs ------------------------------------------------------------------------

    def _structure(self) -> pd.DataFrame:
        meta = self._meta
        labels = plan.division_labels(self.divisions)
        rows = [[str(dtype) for dtype in meta.dtypes]] + [["..."] * len(meta.columns) for _ in labels[1:]]
        frame = pd.DataFrame(rows, columns=meta.columns, index=pd.Index(labels, name=f"npartitions={self.npartitions}"))
        return frame

    def __repr__(self) -> str:
        body = self._structure().to_string()
        return f"zmqdask DataFrame Structure:\n{body}\nzmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks"

    def _repr_html_(self) -> str:
        table = self._structure().to_html()
        return (
            "<div><strong>zmqdask DataFrame Structure:</strong></div>\n"
            f"{table}\n<div>zmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks</div>"
        )


_PIVOT_AGGREGATIONS = frozenset({"mean", "sum", "count", "first", "last"})


def _pivot_cells(cells: pd.Series, columns: Hashable, labels: pd.CategoricalIndex, zero_fill: bool) -> pd.DataFrame:
    """The aggregated ``(index, category)`` cells laid out as a table with every category."""
    table = cells.unstack(columns).reindex(columns=labels).astype("float64")
    table.columns = labels
    return table.fillna(0.0) if zero_fill else table


def _labels_under(columns: pd.Index, key: Hashable) -> list[Hashable] | None:
    """The column labels under ``key`` when it names only their first levels (pandas' ``df[key]``
    on MultiIndex columns is then the frame of those columns without these levels); None when
    ``key`` is one whole column label."""
    if not isinstance(columns, pd.MultiIndex):
        return None
    prefix = key if isinstance(key, tuple) else (key,)
    if len(prefix) >= columns.nlevels:
        return None
    return [label for label in columns if label[: len(prefix)] == prefix]


def _select_top(part: pd.DataFrame, key: Hashable) -> pd.DataFrame | pd.Series:
    """pandas' ``part[key]`` for the first levels ``key`` of its MultiIndex columns."""
    return part[key]


def _apply_rows(part: pd.DataFrame, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return part.apply(func, axis=1, args=args, **kwargs)


def _assign(frame: DataFrame, pairs: list[tuple[Any, Any]]) -> DataFrame:
    expr = frame.expr
    for name, value in pairs:
        if callable(value) and not isinstance(value, Collection):
            value = value(new_collection(expr))
        if isinstance(value, (np.ndarray, pd.Index, list)) and np.ndim(value) > 0:
            # Partition by partition each piece would get the whole sequence (a pandas
            # Series is fine: each partition takes the values of its own labels).
            raise UsageError(
                f"cannot assign a {type(value).__name__} of values to column {name!r} of a lazy frame: "
                "make it a lazy Series partitioned like the frame (from_pandas with the frame's "
                "divisions), or merge it on a key column"
            )
        value = _expr_of(value)
        if isinstance(value, Expr):
            expr, value = plan.align(expr, value)
        expr = ops.Assign(expr, (name,), (value,))
    return DataFrame(expr)


# ---------------------------------------------------------------------------------------
# Series and Index
# ---------------------------------------------------------------------------------------


class Series(_Frame):
    """A lazy pandas Series split into partitions along its index."""

    @property
    def name(self) -> Any:
        """The Series name."""
        return self._meta.name

    @property
    def dtype(self) -> Any:
        """The values' dtype."""
        return self._meta.dtype

    @property
    def dtypes(self) -> Any:
        """The values' dtype (as ``dtype``)."""
        return self._meta.dtype

    @property
    def ndim(self) -> int:
        """Always 1."""
        return 1

    @property
    def shape(self) -> tuple[Scalar]:
        """``(lazy length,)``."""
        return (self._length(),)

    def __getitem__(self, key: Any) -> Any:
        if callable(key) and not isinstance(key, (Collection, type)):
            key = key(self)
        if isinstance(key, Series):
            (frame, predicate) = plan.align(self._expr, key.expr)
            return Series(Filter(frame, predicate))
        return self.loc[key]

    def __iter__(self) -> Iterator[Any]:
        """The values, computing one partition at a time (as Dask does)."""
        for i in range(self.npartitions):
            yield from self.get_partition(i).compute()

    def __getattr__(self, name: str) -> Any:
        raise _no_attribute("Series", name)

    @property
    def str(self) -> idx.Accessor:
        """String methods, applied per partition."""
        return idx.Accessor(self, "str")

    @property
    def dt(self) -> idx.Accessor:
        """Datetime properties and methods, applied per partition."""
        return idx.Accessor(self, "dt")

    @property
    def cat(self) -> CategoricalAccessor:
        """Categorical properties and methods, applied per partition (``known``,
        ``as_known()`` and ``as_unknown()`` as in Dask)."""
        from zmqdask.dataframe.categorical import CategoricalAccessor

        return CategoricalAccessor(self)

    def between(self, left: Any, right: Any, inclusive: builtins.str = "both") -> Series:
        """Boolean mask of ``left <= value <= right``."""
        return self._method("between", left, right, inclusive=inclusive)

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (), meta: Any = None, **kwargs: Any) -> Series:
        """``func`` applied to each element."""
        return self.map_partitions(_apply_elements, func, args, kwargs, meta=meta)

    def map(self, arg: Any, na_action: builtins.str | None = None, meta: Any = None) -> Series:
        """Values mapped by a function, dict or Series."""
        return self.map_partitions(_map_elements, arg, na_action, meta=meta)

    def sort_values(self, ascending: bool = True, na_position: builtins.str = "last") -> Series:
        """Values sorted across partitions, missing values last or first (see ``zmqdask.dataframe.shuffle``)."""
        from zmqdask.dataframe.shuffle import sort_values

        return sort_values(self, self._meta.name, ascending=ascending, na_position=na_position)

    def mode(self, dropna: bool = True, split_every: int | None = None) -> Series:
        """The most frequent value(s), sorted (see ``zmqdask.dataframe.stats``)."""
        from zmqdask.dataframe import stats

        return stats.mode(self, dropna=dropna, split_every=split_every)

    def unique(self, split_every: int | None = None) -> Series:
        """Distinct values in order of first appearance, as a Series numbered from 0."""
        return self.drop_duplicates(split_every=split_every).reset_index(drop=True)

    def rename(self, name: Any) -> Series:
        """The same values under another name."""
        return self._method("rename", name)

    def to_frame(self, name: Any = None) -> DataFrame:
        """A one-column DataFrame."""
        return self._method("to_frame", *(() if name is None else (name,)))

    def reset_index(self, drop: bool = False) -> Any:
        """The index moved into a column (unless ``drop``), rows numbered 0..n-1."""
        return new_collection(plan.reset_index_expr(self._expr, drop))

    def value_counts(self, *args: Any, **kwargs: Any) -> Any:
        """Counts of distinct values (see ``zmqdask.dataframe.stats``)."""
        from zmqdask.dataframe import stats

        return stats.value_counts(self, *args, **kwargs)

    def _structure(self) -> pd.Series:
        labels = plan.division_labels(self.divisions)
        values = [str(self._meta.dtype)] + ["..."] * (len(labels) - 1)
        return pd.Series(values, index=pd.Index(labels, name=f"npartitions={self.npartitions}"), dtype=object)

    def _footer(self) -> builtins.str:
        return f"Name: {self._meta.name}, dtype: {self._meta.dtype}"

    def __repr__(self) -> builtins.str:
        body = self._structure().to_string()
        kind = type(self).__name__
        return (
            f"zmqdask {kind} Structure:\n{self._structure().index.name}\n{body.split(chr(10), 1)[1]}\n"
            f"{self._footer()}\nzmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks"
        )

    def _repr_html_(self) -> builtins.str:
        kind = type(self).__name__
        table = self._structure().to_frame(name=str(self._meta.name)).to_html()
        return (
            f"<div><strong>zmqdask {kind} Structure:</strong></div>\n{table}\n"
            f"<div>{self._footer()}</div>\n<div>zmqdask Name: {self._expr._prefix()}, {self.ntasks} tasks</div>"
        )


def _apply_elements(part: pd.Series, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return part.apply(func, args=args, **kwargs)


def _map_elements(part: pd.Series, arg: Any, na_action: str | None) -> Any:
    return part.map(arg, na_action=na_action)  # type: ignore[arg-type]


def _column_pairs(keys: list[Any], value: Any) -> list[tuple[Any, Any]]:
    """``df[keys] = value`` as (column, value) pairs, as pandas pairs them: a frame's columns
    by position, a list's items one per key, anything else (a scalar) to every key."""
    if isinstance(value, DataFrame):
        columns = list(value.columns)
        if len(columns) != len(keys):
            raise UsageError(f"df[{keys!r}] = frame needs a frame of {len(keys)} columns, got {len(columns)}")
        return [(key, value[column]) for key, column in zip(keys, columns, strict=True)]
    if isinstance(value, Series):
        raise UsageError(f"df[{keys!r}] = series: assign the series to each column one at a time")
    if isinstance(value, (list, tuple)):
        if len(value) != len(keys):
            raise UsageError(f"df[{keys!r}] = list needs {len(keys)} values, got {len(value)}")
        return list(zip(keys, value, strict=True))
    return [(key, value) for key in keys]


class Index(Series):
    """A lazy pandas Index, one piece per partition."""

    @property
    def name(self) -> Any:
        """The index name."""
        return self._meta.name

    def _footer(self) -> str:
        return f"Name: {self._meta.name}, dtype: {self._meta.dtype}"

    def _binop(self, op: str, other: Any, reflected: bool = False) -> Any:
        # pandas gives numpy arrays for Index comparisons; a Series of the values indexed like
        # the frame gives the same values and can filter the frame it came from.
        return self._aligned()._binop(op, other, reflected)

    def _method(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return new_collection(ops.MapMethod(self._expr, name, args, kwargs))

    def min(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Smallest label."""
        return self.to_series().min(axis=axis, skipna=skipna, split_every=split_every)

    def max(
        self, axis: Any = None, skipna: bool = True, numeric_only: bool = False, split_every: int | None = None
    ) -> Any:
        """Largest label."""
        return self.to_series().max(axis=axis, skipna=skipna, split_every=split_every)

    def to_series(self) -> Series:
        """The labels as a Series indexed by themselves."""
        return self._method("to_series")

    def unique(self, split_every: int | None = None) -> Series:
        """Distinct labels in order of first appearance, as a Series numbered from 0."""
        return self._aligned().unique(split_every=split_every)

    def _aligned(self) -> Series:
        """The labels as a Series indexed like the frame they came from (lines up with its rows)."""
        expr = self._expr
        if isinstance(expr, ops.IndexAttribute):
            return Series(expr._replace(as_series=True))
        return self.to_series()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not hasattr(self._meta, name):
            raise AttributeError(f"'Index' object has no attribute {name!r}")
        expr = self._expr
        if not isinstance(expr, ops.IndexOf):
            raise AttributeError(f"'{name}' of a derived index is not supported; compute it from df.index")
        value = getattr(self._meta, name)
        if callable(value):

            def method(*args: Any, **kwargs: Any) -> Any:
                _check_per_label(name, value(*args, **kwargs))
                return new_collection(ops.IndexAttribute(expr.frame, name, True, args, kwargs))

            method.__name__ = name
            method.__doc__ = f"``index.{name}(...)`` per partition."
            return method
        _check_per_label(name, value)
        return new_collection(ops.IndexAttribute(expr.frame, name, False, (), {}))


_PER_LABEL_ARRAYS = frozenset(
    {
        "date",
        "time",
        "timetz",
        "isin",
        "isna",
        "isnull",
        "notna",
        "notnull",
        "to_pydatetime",
        "is_leap_year",
        "is_month_start",
        "is_month_end",
        "is_quarter_start",
        "is_quarter_end",
        "is_year_start",
        "is_year_end",
    }
)
"""Index attributes and methods whose pandas result is a NumPy array of one value per label:
computed partition by partition, they give the labels' values (as an Index)."""


def _check_per_label(name: str, result: Any) -> None:
    """Refuse an index attribute or method whose value depends on the whole index (a count,
    a flag, ``duplicated``) or that materializes it (``values``, ``tolist``): partition by
    partition it would be wrong."""
    if isinstance(result, pd.Index) or name in _PER_LABEL_ARRAYS:
        return
    raise UsageError(
        f"index.{name} needs the whole index at once; compute the index first "
        f"(df.index.compute().{name}), or work on df.index.to_series()"
    )


# ---------------------------------------------------------------------------------------
# map_partitions
# ---------------------------------------------------------------------------------------


def _name_index(part: Any, name: Any) -> Any:
    """``part`` with its index named ``name``."""
    return part.rename_axis(name)


def _call_ufunc(ufunc: np.ufunc, kwargs: dict[str, Any], *inputs: Any) -> Any:
    """One partition of ``ufunc(*inputs, **kwargs)``."""
    return ufunc(*inputs, **kwargs)


def map_partitions(
    func: Callable[..., Any], *args: Any, meta: Any = None, clear_divisions: bool = False, **kwargs: Any
) -> Any:
    """Apply ``func`` to the partitions of the collections among ``args`` (aligned).

    Collections among ``args``/``kwargs`` are aligned partition by partition (scalars are
    broadcast).  ``meta`` (an empty pandas object, a dtype, a ``(name, dtype)`` pair or a
    ``{column: dtype}`` dict) describes the result; without it ``func`` runs on fake data
    to infer it.  The result keeps the input's divisions (the function is assumed to keep
    each row's index) unless ``clear_divisions`` is true.  A function returning a scalar
    gives a Series with one value per partition.
    """
    exprs = [_expr_of(_delayed_value(a)) for a in args]
    kw = {k: _expr_of(_delayed_value(v)) for k, v in kwargs.items()}
    return new_collection(plan.map_partitions_expr(func, exprs, kw, meta, clear_divisions))


def _delayed_value(value: Any) -> Any:
    """A delayed argument as something a partition task can take: a future of its value on
    the current client (computing from now on), else its value computed here."""
    from zmqdask.delayed import Delayed

    if not isinstance(value, Delayed):
        return value
    from zmqdask.base import get_client

    client = get_client()
    if client is not None:
        return client.compute(value)
    return value.compute(scheduler="sync")
