"""The timeseries dataset: shape, divisions, dtypes, determinism and projection invariance."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pandas.testing as tm
import pytest

import zmqdask.datasets
from zmqdask.datasets import NAMES, make_timeseries_part, timeseries


def test_default_shape_divisions_and_dtypes() -> None:
    df = timeseries()
    assert df.npartitions == 30
    assert df.known_divisions
    assert df.divisions == tuple(pd.date_range("2000-01-01", "2000-01-31", freq="1D"))
    assert list(df.columns) == ["name", "id", "x", "y"]  # as in Dask
    assert df.dtypes["id"] == np.dtype("int64")
    assert df.dtypes["x"] == np.dtype("float64") and df.dtypes["y"] == np.dtype("float64")
    assert pd.api.types.is_string_dtype(df.dtypes["name"])
    assert df._meta.index.name == "timestamp"
    # Counting rows generates only the index, so the full dataset is cheap to count.
    assert len(df) == 2_592_000


def test_partition_contents() -> None:
    df = timeseries()
    part = df.get_partition(3).compute()
    assert len(part) == 86_400
    assert part.index[0] == pd.Timestamp("2000-01-04")
    assert part.index[-1] == pd.Timestamp("2000-01-04 23:59:59")
    assert part.index.is_monotonic_increasing and part.index.name == "timestamp"
    assert set(part.name.unique()) <= set(NAMES)
    assert len(set(part.name.unique())) == 26
    assert part.x.between(-1, 1, inclusive="left").all() and part.y.between(-1, 1, inclusive="left").all()
    assert abs(part.x.mean()) < 0.02
    assert abs(part.id.mean() - 1000) < 2
    tm.assert_series_equal(part.dtypes, df.dtypes)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = timeseries(freq="1h", seed=7).compute()
    b = timeseries(freq="1h", seed=7).compute()
    c = timeseries(freq="1h", seed=8).compute()
    default_1 = timeseries(freq="1h").compute()
    default_2 = timeseries(freq="1h", seed=None).compute()
    tm.assert_frame_equal(a, b)
    tm.assert_frame_equal(default_1, default_2)
    assert not np.allclose(a.x.to_numpy(), c.x.to_numpy())
    assert not np.allclose(a.x.to_numpy(), default_1.x.to_numpy())


def test_column_values_do_not_depend_on_the_selection() -> None:
    df = timeseries(freq="10min", seed=3)
    full = df.compute()
    tm.assert_series_equal(df.x.compute(), full.x)
    tm.assert_frame_equal(df[["y", "name"]].compute(), full[["y", "name"]])
    narrow = timeseries(freq="10min", seed=3, dtypes={"x": float})
    tm.assert_series_equal(narrow.x.compute(), full.x)


def test_partition_data_does_not_depend_on_the_range_asked() -> None:
    whole = timeseries(start="2000-01-01", end="2000-01-05", freq="1h").compute()
    later = timeseries(start="2000-01-03", end="2000-01-05", freq="1h").compute()
    tm.assert_frame_equal(later, whole.loc["2000-01-03":], check_freq=False)


def test_identical_in_another_process() -> None:
    code = (
        "import pandas as pd; from zmqdask.datasets import timeseries;"
        "print(pd.util.hash_pandas_object(timeseries(freq='1min').get_partition(2).compute()).sum())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    here = pd.util.hash_pandas_object(timeseries(freq="1min").get_partition(2).compute()).sum()
    assert int(out.stdout.strip()) == int(here)


def test_frequencies_and_uneven_end() -> None:
    df = timeseries(start="2000-01-01", end="2000-01-03 12:00", freq="30min", partition_freq="1D")
    assert df.npartitions == 3
    assert df.divisions[-1] == pd.Timestamp("2000-01-03 12:00")
    out = df.compute()
    assert len(out) == 2 * 48 + 24
    assert out.index[-1] == pd.Timestamp("2000-01-03 11:30")
    weekly = timeseries(start="2000-01-01", end="2000-02-01", freq="1h", partition_freq="7D")
    assert weekly.npartitions == 5
    assert len(weekly) == 31 * 24


def test_custom_dtypes() -> None:
    df = timeseries(freq="1h", dtypes={"a": float, "b": int, "c": "category", "d": str, "e": "float32"})
    out = df.compute()
    assert list(out.columns) == ["a", "b", "c", "d", "e"]
    assert isinstance(out.c.dtype, pd.CategoricalDtype) and set(out.c.cat.categories) == set(NAMES)
    assert out.e.dtype == np.dtype("float32")
    assert out.b.dtype == np.dtype("int64")
    tm.assert_series_equal(out.dtypes, df.dtypes)


def test_invalid_range() -> None:
    with pytest.raises(ValueError):
        timeseries(start="2000-01-02", end="2000-01-01")


def test_generation_function_is_module_level() -> None:
    # Workers import the generator by name; the task carries only small arguments.
    fn, args, kwargs = timeseries().expr._task(0)
    assert fn is make_timeseries_part and not kwargs
    assert fn.__module__ == "zmqdask.datasets"
    assert len(repr(args)) < 500
    assert zmqdask.datasets.DEFAULT_SEED == timeseries().expr.seed


def test_poisson_sampler_is_an_exact_inverse_transform() -> None:
    from zmqdask.datasets import _poisson_table, poisson

    low, cdf, _ = _poisson_table(1000.0)
    draws = poisson(np.random.default_rng(5), 1000.0, 200_000)
    uniforms = np.random.default_rng(5).random(200_000)
    # Each draw k is the value whose cumulative-probability interval holds its uniform.
    positions = draws - low
    assert (uniforms < cdf[positions]).all()
    assert (uniforms >= np.where(positions > 0, cdf[np.maximum(positions - 1, 0)], 0.0)).all()
    assert abs(draws.mean() - 1000) < 0.5 and abs(draws.var() / 1000 - 1) < 0.02
    small = poisson(np.random.default_rng(6), 3.0, 100_000)
    assert small.min() >= 0 and abs(small.mean() - 3.0) < 0.03
