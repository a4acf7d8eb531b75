"""Lazy partitioned pandas DataFrames, optimized locally and computed by zmqdask."""

from __future__ import annotations

from typing import Any

import pandas as _pd

# Results follow pandas 3 (which columns a groupby keeps, copy-on-write, string dtypes...):
# with an older pandas they would differ from the user's own pandas without a word.
if int(_pd.__version__.split(".", 1)[0]) < 3:
    raise ImportError(
        f"zmqdask.dataframe needs pandas 3 or newer, found pandas {_pd.__version__}; "
        "upgrade it with: pip install 'pandas>=3'"
    )

from zmqdask.dataframe.collection import DataFrame, Index, Scalar, Series, map_partitions, new_collection
from zmqdask.dataframe.groupby import Aggregation

__all__ = [
    "Aggregation",
    "DataFrame",
    "Index",
    "Scalar",
    "Series",
    "compute",
    "concat",
    "from_delayed",
    "from_dict",
    "from_pandas",
    "get_dummies",
    "isna",
    "map_overlap",
    "map_partitions",
    "melt",
    "merge",
    "new_collection",
    "read_csv",
    "read_parquet",
    "to_csv",
    "to_datetime",
    "to_numeric",
    "to_parquet",
    "to_timedelta",
]

_IO_NAMES = ("read_csv", "read_parquet", "to_csv", "to_parquet")


def from_pandas(data: Any, npartitions: int | None = None, chunksize: int | None = None, sort: bool = True) -> Any:
    """A lazy collection over a pandas DataFrame or Series split into partitions.

    With ``sort`` (the default) the data is sorted by its index if needed and the
    divisions are known; equal index values never straddle partitions, so there may be
    fewer partitions than asked.  ``chunksize`` (rows per partition) may replace
    ``npartitions``.
    """
    from zmqdask.dataframe.sources import from_pandas_expr

    return new_collection(from_pandas_expr(data, npartitions=npartitions, chunksize=chunksize, sort=sort))


def from_dict(
    data: Any,
    npartitions: int | None = None,
    orient: str = "columns",
    dtype: Any = None,
    columns: Any = None,
    chunksize: int | None = None,
) -> Any:
    """A lazy DataFrame from a dict of columns (or of rows, with ``orient="index"``), as
    ``pandas.DataFrame.from_dict`` then :func:`from_pandas` with ``npartitions``."""
    frame = _pd.DataFrame.from_dict(data, orient=orient, dtype=dtype, columns=columns)  # type: ignore[call-overload]
    return from_pandas(frame, npartitions=npartitions, chunksize=chunksize)


def compute(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """Compute several collections at once, sharing their common work (``zmqdask.compute``)."""
    from zmqdask.base import compute as compute_

    return compute_(*args, **kwargs)


def isna(obj: Any) -> Any:
    """Missing-value mask: lazy for a collection, ``pandas.isna`` for anything else."""
    from zmqdask.dataframe.methods import FrameMethods

    if isinstance(obj, FrameMethods):
        return obj.isna()
    return _pd.isna(obj)


def from_delayed(dfs: Any, meta: Any = None, divisions: Any = None, verify_meta: bool = True) -> Any:
    """A collection whose partitions are the values of delayed calls (or futures), in order.

    The delayed values are sent off for computing at once (to the current client, or
    computed in this process without one), and the frame is backed by their results.
    ``meta`` (an empty frame, or a dict or list of ``(column, dtype)``) gives the schema;
    without it the first partition is waited for, which an asynchronous client's running
    loop cannot do (pass ``meta=`` there).  ``divisions`` may give the index bounds.
    """
    from zmqdask.dataframe.sources import from_delayed_collection

    return from_delayed_collection(dfs, meta=meta, divisions=divisions, verify_meta=verify_meta)


def concat(
    objs: Any,
    axis: int | str = 0,
    join: str = "outer",
    ignore_index: bool = False,
    interleave_partitions: bool = False,
    ignore_unknown_divisions: bool = False,
    ignore_order: bool = False,
) -> Any:
    """The rows of several collections one after the other (see ``zmqdask.dataframe.multi.concat``)."""
    from zmqdask.dataframe.multi import concat as concat_

    return concat_(
        objs,
        axis=axis,
        join=join,
        ignore_index=ignore_index,
        interleave_partitions=interleave_partitions,
        ignore_unknown_divisions=ignore_unknown_divisions,
        ignore_order=ignore_order,
    )


def get_dummies(data: Any, **kwargs: Any) -> Any:
    """Indicator columns of categoricals with known categories (see ``zmqdask.dataframe.categorical``)."""
    from zmqdask.dataframe.categorical import get_dummies as get_dummies_

    return get_dummies_(data, **kwargs)


def map_overlap(func: Any, df: Any, before: Any, after: Any, *args: Any, meta: Any = None, **kwargs: Any) -> Any:
    """``func`` of each partition with rows of its neighbours (see ``zmqdask.dataframe.scans.map_overlap``)."""
    from zmqdask.dataframe.scans import map_overlap as map_overlap_

    return map_overlap_(func, df, before, after, *args, meta=meta, **kwargs)


def melt(
    frame: Any, id_vars: Any = None, value_vars: Any = None, var_name: Any = None, value_name: Any = "value"
) -> Any:
    """Wide to long, as ``pandas.melt`` (see ``DataFrame.melt``)."""
    return frame.melt(id_vars=id_vars, value_vars=value_vars, var_name=var_name, value_name=value_name)


def merge(left: Any, right: Any, **kwargs: Any) -> Any:
    """Database-style join, like ``pandas.merge`` (see ``zmqdask.dataframe.multi.merge``)."""
    from zmqdask.dataframe.multi import merge as merge_

    return merge_(left, right, **kwargs)


def to_datetime(arg: Any, meta: Any = None, **kwargs: Any) -> Any:
    """``pandas.to_datetime`` of a lazy Series, per partition.

    Text without a ``format=`` is read in the format pandas guesses from the first value
    of the whole Series (not of each partition), so every partition reads it alike and
    ``errors="coerce"`` turns the same values into NaT as pandas does.
    """
    import pandas as pd

    from zmqdask.dataframe.stats import datetime_format

    if kwargs.get("format") is None and _is_text_series(arg):
        # One format for all partitions: a lazy value computed with them.
        kwargs["format"] = datetime_format(arg, dayfirst=bool(kwargs.get("dayfirst")))
    return map_partitions(pd.to_datetime, arg, meta=meta, **kwargs)


def _is_text_series(arg: Any) -> bool:
    import pandas as pd

    meta = getattr(getattr(arg, "expr", None), "_meta", None)
    if not isinstance(meta, (pd.Series, pd.Index)):
        return False
    return bool(pd.api.types.is_object_dtype(meta.dtype) or pd.api.types.is_string_dtype(meta.dtype))


def to_numeric(arg: Any, errors: str = "raise", meta: Any = None) -> Any:
    """``pandas.to_numeric`` of a lazy Series, per partition."""
    import pandas as pd

    return map_partitions(pd.to_numeric, arg, meta=meta, errors=errors)


def to_timedelta(arg: Any, unit: str | None = None, errors: str = "raise", meta: Any = None) -> Any:
    """``pandas.to_timedelta`` of a lazy Series, per partition."""
    import pandas as pd

    return map_partitions(pd.to_timedelta, arg, meta=meta, unit=unit, errors=errors)


def __getattr__(name: str) -> Any:
    # The io module is imported on first use: it pulls in optional dependencies.
    if name in _IO_NAMES:
        from zmqdask.dataframe import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
