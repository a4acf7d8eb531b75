"""Meta helpers: empty pandas objects that describe a lazy result's schema, and fake data to infer them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def is_frame_like(meta: Any) -> bool:
    """Whether ``meta`` describes a partitioned object (DataFrame, Series or Index)."""
    return isinstance(meta, (pd.DataFrame, pd.Series, pd.Index))


def make_meta(obj: Any) -> Any:
    """The empty version of a pandas object; other objects are returned unchanged."""
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return obj.iloc[:0]
    if isinstance(obj, pd.Index):
        return obj[:0]
    return obj


def _fake_values(dtype: Any, n: int) -> Any:
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        if len(cats) == 0:
            return pd.Categorical([None] * n, categories=cats, ordered=dtype.ordered)
        return pd.Categorical([cats[0]] * n, categories=cats, ordered=dtype.ordered)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return pd.array([pd.Timestamp("2000-01-01", tz=dtype.tz)] * n, dtype=dtype)
    kind = getattr(dtype, "kind", "O")
    try:
        if kind == "b":
            return pd.array([True, False][:n] * (n // 2 + 1), dtype=dtype)[:n]
        if kind in "iu":
            return pd.array([1] * n, dtype=dtype)
        if kind == "f":
            return pd.array([1.0] * n, dtype=dtype)
        if kind == "c":
            return np.array([1 + 1j] * n, dtype=dtype)
        if kind == "M":
            return pd.array([pd.Timestamp("2000-01-01")] * n, dtype=dtype)
        if kind == "m":
            return pd.array([pd.Timedelta(1, "s")] * n, dtype=dtype)
        return pd.array(["foo"] * n, dtype=dtype)
    except (TypeError, ValueError):
        return pd.array([None] * n, dtype=dtype)


def _fake_index(index: pd.Index, n: int) -> pd.Index:
    if isinstance(index, pd.RangeIndex):
        return pd.RangeIndex(n, name=index.name)
    if isinstance(index, pd.MultiIndex):
        levels = [_fake_index(pd.Index(index.levels[k][:0]), n) for k in range(index.nlevels)]
        return pd.MultiIndex.from_arrays(levels, names=index.names)
    if isinstance(index, pd.DatetimeIndex):
        return pd.date_range("2000-01-01", periods=n, freq="D", tz=index.tz, name=index.name).as_unit(index.unit)
    if index.dtype.kind in "iuf":
        return pd.Index(np.arange(n), name=index.name).astype(index.dtype)
    return pd.Index(_fake_values(index.dtype, n), name=index.name)


class RowValues:
    """The meta of one value per column (``df.mean()``) used against a frame's rows: not
    partitioned, so every partition gets the whole of it, as pandas aligns it with columns."""

    def __init__(self, labels: pd.Index, dtype: Any) -> None:
        self.labels = labels
        self.dtype = dtype

    def sample(self) -> pd.Series:
        """Fake values, one per column label."""
        return pd.Series(_fake_values(self.dtype, len(self.labels)), index=self.labels)

    def __repr__(self) -> str:
        return f"RowValues({list(self.labels)!r}, {self.dtype})"


def meta_nonempty(meta: Any, n: int = 2) -> Any:
    """Fake data with ``meta``'s schema and ``n`` rows, to run functions on for inference."""
    if isinstance(meta, RowValues):
        return meta.sample()
    if isinstance(meta, pd.DataFrame):
        index = _fake_index(meta.index, n)
        data = {i: _fake_values(dtype, n) for i, dtype in enumerate(meta.dtypes)}
        frame = pd.DataFrame(data, index=index)
        frame.columns = meta.columns
        return frame
    if isinstance(meta, pd.Series):
        return pd.Series(_fake_values(meta.dtype, n), index=_fake_index(meta.index, n), name=meta.name)
    if isinstance(meta, pd.Index):
        return _fake_index(meta, n)
    return meta


def emulate(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The meta of ``func(*args, **kwargs)`` where pandas arguments are metas.

    Runs on fake non-empty data first (so dtype inference sees values), then on the empty
    metas; raises the first error if both fail.
    """
    fake_args = [meta_nonempty(a) for a in args]
    fake_kwargs = {k: meta_nonempty(v) for k, v in kwargs.items()}
    # Warnings about made-up values (unparseable dates, ...) say nothing about real data.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return make_meta(func(*fake_args, **fake_kwargs))
        except Exception as exc:
            first = exc
        try:
            return make_meta(func(*args, **kwargs))
        except Exception:
            raise first from None


def unknown_divisions(npartitions: int) -> tuple[Any, ...]:
    """Divisions of ``npartitions`` partitions whose index bounds are not known."""
    return (None,) * (npartitions + 1)
