"""Synthetic datasets, generated lazily per partition: ``timeseries()``.

Every value is derived from ``(seed, partition start, column name)`` alone, so any process
generates identical data for a partition, and a column's values do not depend on which
other columns a query reads (the optimizer pushes column selection into generation).
"""

from __future__ import annotations

import functools
import math
import zlib
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from zmqdask.dataframe.expr import Source, node
from zmqdask.dataframe.keycodes import remember_codes
from zmqdask.graph import TaskSpec

__all__ = ["NAMES", "timeseries"]

NAMES = (
    "Alice Bob Charlie Dan Edith Frank George Hannah Ingrid Jerry Kevin Laura Michael "
    "Norbert Oliver Patricia Quinn Ray Sarah Tim Ursula Victor Wendy Xavier Yvonne Zelda"
).split()
"""The first names the string columns draw from."""

DEFAULT_SEED = 20000101
"""Seed used when ``seed=None``: data is the same in every process and every run."""

POISSON_MEAN = 1000
"""Mean of the integer columns."""

DEFAULT_DTYPES: dict[str, Any] = {"name": str, "id": int, "x": float, "y": float}
"""Columns of ``timeseries()`` by default, in order."""

_NAMES_ARRAY = np.array(NAMES, dtype=object)
_FLOAT64 = np.dtype("float64")

_POISSON_TAIL_SIGMAS = 12.0
"""Standard deviations of support kept on each side of the Poisson mean."""

_POISSON_GUIDE = 8192
"""Buckets of the Poisson guide table."""


def default_string_dtype() -> Any:
    """The dtype of string columns: pandas' default string dtype, Arrow-backed where possible."""
    inferred = pd.Series(["a"]).dtype
    if inferred != np.dtype(object):
        return inferred
    try:
        import pyarrow  # noqa: F401

        return pd.StringDtype("pyarrow")
    except ImportError:
        return pd.StringDtype()


def _normalize_dtype(dtype: Any) -> Any:
    """A concrete pandas/numpy dtype for a ``dtypes=`` entry."""
    if dtype is str or dtype == "str" or dtype == "string" or dtype is object:
        return default_string_dtype()
    if dtype == "category":
        return pd.CategoricalDtype(NAMES)
    if dtype is int:
        return np.dtype("int64")
    if dtype is float:
        return np.dtype("float64")
    return pd.api.types.pandas_dtype(dtype)


def _rng(seed: int, start: pd.Timestamp, column: str) -> np.random.Generator:
    # One independent stream per (seed, partition, column); crc32 is stable across processes,
    # unlike hash(), and nanoseconds are shifted to be non-negative for SeedSequence.
    entropy = [seed, int(start.value) + 2**63, zlib.crc32(str(column).encode())]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _uniform_into(out: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``out`` (float64) with values uniform on [-1, 1), in place."""
    rng.random(out=out)
    out *= 2.0
    out -= 1.0


@functools.lru_cache(maxsize=8)
def _poisson_table(mean: float) -> tuple[int, np.ndarray, np.ndarray]:
    """``(lowest value, cumulative probabilities, guide)`` for inverse-transform Poisson sampling.

    The support is cut where the tails hold less probability than a float64 uniform can
    resolve, so sampling is exact to float precision.  ``guide[j]`` is the first support
    index whose cumulative probability exceeds ``j / len(guide)``.
    """
    spread = _POISSON_TAIL_SIGMAS * math.sqrt(mean) + 10
    low = max(0, int(mean - spread))
    values = np.arange(low, int(mean + spread) + 1)
    log_pmf = values * math.log(mean) - mean - np.array([math.lgamma(v + 1.0) for v in values])
    cdf = np.cumsum(np.exp(log_pmf))
    cdf /= cdf[-1]
    cdf[-1] = np.inf  # every uniform draw lands inside the support
    guide = np.searchsorted(cdf, np.arange(_POISSON_GUIDE) / _POISSON_GUIDE, side="right")
    return low, cdf, guide


def poisson(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    """``n`` Poisson draws by inverse transform with a guide table (several times faster than
    ``Generator.poisson`` for large means)."""
    low, cdf, guide = _poisson_table(float(mean))
    u = rng.random(n)
    index = guide[(u * len(guide)).astype(np.intp)]
    # A guide bucket near the mode holds at most one boundary, so one step settles most
    # draws; the rare ones left (far tails, where buckets hold many boundaries) are searched.
    index += cdf[index] <= u
    left = np.flatnonzero(cdf[index] <= u)
    if left.size:
        index[left] = np.searchsorted(cdf, u[left], side="right")
    index += low
    return index


def _column(dtype: Any, n: int, rng: np.random.Generator) -> Any:
    if isinstance(dtype, pd.CategoricalDtype):
        codes = rng.integers(0, len(dtype.categories), n)
        return pd.Categorical.from_codes(codes, dtype=dtype)
    kind = getattr(dtype, "kind", "O")
    if kind == "f":
        values = np.empty(n)
        _uniform_into(values, rng)
        return values.astype(dtype, copy=False)
    if kind in "iu":
        return poisson(rng, POISSON_MEAN, n).astype(dtype, copy=False)
    if kind == "b":
        return rng.random(n) < 0.5
    codes = rng.integers(0, len(NAMES), n)
    return _names(codes, dtype)


@functools.lru_cache(maxsize=4)
def _arrow_names(storage: str) -> Any:
    import pyarrow as pa

    return pa.array(NAMES, type=pa.large_string() if storage == "large" else pa.string())


def _names(codes: np.ndarray, dtype: Any) -> Any:
    if getattr(dtype, "storage", None) == "pyarrow":
        import pyarrow as pa

        # Taking from a 26-element Arrow array avoids creating a Python string per row; the
        # codes are remembered, so grouping by this column needs no hashing of strings.
        sample = pd.array(["a"], dtype=dtype)
        storage = "large" if pa.types.is_large_string(getattr(sample, "_pa_array", pa.array([""])).type) else "small"
        values = pd.array(_arrow_names(storage).take(pa.array(codes)), dtype=dtype)
        remember_codes(values, codes.astype(np.int8), _names_index(dtype))  # 26 names fit a byte
        return values
    return pd.array(_NAMES_ARRAY[codes], dtype=dtype)


@functools.lru_cache(maxsize=4)
def _names_index(dtype: Any) -> pd.Index:
    return pd.Index(NAMES, dtype=dtype)


def make_timeseries_part(
    start: pd.Timestamp, stop: pd.Timestamp, freq: str, columns: tuple[tuple[str, Any], ...], seed: int
) -> pd.DataFrame:
    """One partition: rows every ``freq`` in ``[start, stop)``, the given ``(column, dtype)``s."""
    index = pd.date_range(start, stop, freq=freq, inclusive="left", name="timestamp")
    n = len(index)
    floats = [name for name, dtype in columns if dtype == _FLOAT64]
    # float64 columns are drawn straight into one 2-D block, which the frame then uses
    # as it is (no consolidation copy); other columns are inserted next to it.
    block = np.empty((len(floats), n))
    for row, name in enumerate(floats):
        _uniform_into(block[row], _rng(seed, start, name))
    frame = pd.DataFrame(block.T, index=index, columns=floats, copy=False)
    for position, (name, dtype) in enumerate(columns):
        if dtype != _FLOAT64:
            frame.insert(position, name, _column(dtype, n, _rng(seed, start, name)))
    return frame


def _divisions(start: pd.Timestamp, end: pd.Timestamp, partition_freq: str) -> tuple[pd.Timestamp, ...]:
    points = list(pd.date_range(start, end, freq=partition_freq))
    if not points or points[0] > start:
        points.insert(0, start)
    if points[-1] < end:
        points.append(end)
    if len(points) < 2:
        points = [start, end]
    return tuple(points)


@node
class Timeseries(Source):
    """Random time-indexed data, one partition per ``partition_freq`` period."""

    start: pd.Timestamp
    end: pd.Timestamp
    freq: str
    partition_freq: str
    dtypes: tuple[tuple[str, Any], ...]
    seed: int
    columns: tuple[str, ...]

    def _prefix(self) -> str:
        return "timeseries"

    @cached_property
    def _division_values(self) -> tuple[pd.Timestamp, ...]:
        return _divisions(self.start, self.end, self.partition_freq)

    @property
    def npartitions(self) -> int:
        return len(self._division_values) - 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self._division_values

    @cached_property
    def _chosen(self) -> tuple[tuple[str, Any], ...]:
        types = dict(self.dtypes)
        return tuple((name, types[name]) for name in self.columns)

    @cached_property
    def _meta(self) -> Any:
        return make_timeseries_part(self.start, self.start, self.freq, self._chosen, self.seed)

    def _task(self, i: int) -> TaskSpec:
        divisions = self._division_values
        return (make_timeseries_part, (divisions[i], divisions[i + 1], self.freq, self._chosen, self.seed), {})

    def _with_columns(self, columns: list[Any]) -> Timeseries:
        return self._replace(columns=tuple(columns))

    def _describe(self) -> str:
        return f"{self.start} to {self.end} every {self.freq}, columns={list(self.columns)}"


def timeseries(
    start: Any = "2000-01-01",
    end: Any = "2000-01-31",
    freq: str = "1s",
    partition_freq: str = "1D",
    dtypes: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Any:
    """A lazy DataFrame of random data indexed by time, one partition per ``partition_freq``.

    Defaults give 30 daily partitions of 86,400 rows: ``name`` (one of 26 first names),
    ``id`` (Poisson, mean 1000), ``x`` and ``y`` (uniform on [-1, 1)), indexed by
    ``timestamp`` with known divisions.  ``dtypes`` maps column names to dtypes (float,
    int, str, "category" or bool columns are generated accordingly).  The same ``seed``
    gives the same data; ``seed=None`` uses a fixed default.
    """
    from zmqdask.dataframe.collection import new_collection

    spec = DEFAULT_DTYPES if dtypes is None else dtypes
    pairs = tuple((str(name), _normalize_dtype(dtype)) for name, dtype in spec.items())
    start_ts = pd.Timestamp(start)
    end_ts = pd.Timestamp(end)
    if end_ts <= start_ts:
        raise ValueError(f"end ({end_ts}) must be after start ({start_ts})")
    expr = Timeseries(
        start_ts,
        end_ts,
        freq,
        partition_freq,
        pairs,
        DEFAULT_SEED if seed is None else int(seed),
        tuple(name for name, _ in pairs),
    )
    return new_collection(expr)
