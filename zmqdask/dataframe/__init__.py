"""Lazy partitioned pandas DataFrames, optimized locally and computed by zmqdask."""

from __future__ import annotations

from typing import Any

from zmqdask.dataframe.collection import DataFrame, Index, Scalar, Series, map_partitions, new_collection

__all__ = [
    "DataFrame",
    "Index",
    "Scalar",
    "Series",
    "from_pandas",
    "map_partitions",
    "new_collection",
    "read_csv",
    "read_parquet",
    "to_parquet",
]

_IO_NAMES = ("read_csv", "read_parquet", "to_parquet")


def from_pandas(data: Any, npartitions: int | None = None, chunksize: int | None = None, sort: bool = True) -> Any:
    """A lazy collection over a pandas DataFrame or Series split into partitions.

    With ``sort`` (the default) the data is sorted by its index if needed and the
    divisions are known; equal index values never straddle partitions, so there may be
    fewer partitions than asked.  ``chunksize`` (rows per partition) may replace
    ``npartitions``.
    """
    from zmqdask.dataframe.sources import from_pandas_expr

    return new_collection(from_pandas_expr(data, npartitions=npartitions, chunksize=chunksize, sort=sort))


def __getattr__(name: str) -> Any:
    # The io module is imported on first use: it pulls in optional dependencies.
    if name in _IO_NAMES:
        from zmqdask.dataframe import io

        return getattr(io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
