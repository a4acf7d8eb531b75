"""Expanding and exponentially weighted windows across partitions, against pandas."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.windows import (
    ewm_apply,
    ewm_carry,
    ewm_summary,
    expanding_apply,
    expanding_carry,
    expanding_summary,
)
from zmqdask.errors import UsageError

DIVISIONS = [0, 4, 5, 6, 200, 230, 298]
"""Partitions of 2, 1, 0, 97, 15 and 35 rows of :func:`_frame`."""


def _frame(n: int = 150, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "i": rng.integers(0, 20, n),
            "far": 1e8 + rng.normal(size=n),  # a variance far below the values' size
            "k": 3.5,
        },
        index=pd.Index(np.arange(n) * 2, name="row"),
    )
    frame.loc[frame.index[::5], "x"] = np.nan
    frame.loc[frame.index[10:130], "k"] = np.nan  # no value in whole partitions
    frame.loc[frame.index[0], "far"] = np.nan  # the first row of all has a gap
    return frame


def _pairs() -> tuple[pd.DataFrame, Any]:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=1).repartition(divisions=DIVISIONS)
    return frame, lazy


def _pieces(frame: pd.DataFrame) -> list[pd.DataFrame]:
    cuts = [0, 2, 3, 3, 100, 115, len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(cuts)]


def _chained(frame: pd.DataFrame, kernels: tuple[Any, Any, Any], *options: Any) -> pd.DataFrame:
    summary, fold, apply = kernels
    carry, outputs = None, []
    for piece in _pieces(frame):
        outputs.append(apply(piece, carry, *options))
        carry = fold(carry, summary(piece, *options), *options)
    return pd.concat(outputs)


EXPANDING = (expanding_summary, expanding_carry, expanding_apply)
EWM = (ewm_summary, ewm_carry, ewm_apply)
DECAYS = [{"com": 0.5}, {"span": 6}, {"halflife": 3}, {"alpha": 0.05}, {"alpha": 1.0}]


def _ewm_options(decay: dict[str, Any], adjust: bool, ignore_na: bool, min_periods: int = 0) -> dict[str, Any]:
    from zmqdask.dataframe.windows import center_of_mass

    return {
        "decay": decay,
        "com": center_of_mass(decay),
        "min_periods": min_periods,
        "adjust": adjust,
        "ignore_na": ignore_na,
    }


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sum", "mean", "count", "min", "max", "std", "var"])
@pytest.mark.parametrize("min_periods", [0, 1, 4])
def test_expanding_kernels_chain_like_one_pandas_call(method: str, min_periods: int) -> None:
    frame = _frame()
    got = _chained(frame, EXPANDING, "expanding", {"min_periods": min_periods}, method, 1)
    pd.testing.assert_frame_equal(got, getattr(frame.expanding(min_periods), method)())


@pytest.mark.parametrize("decay", DECAYS, ids=str)
@pytest.mark.parametrize("adjust", [True, False])
@pytest.mark.parametrize("ignore_na", [False, True])
def test_ewm_mean_kernels_chain_like_one_pandas_call(decay: dict[str, Any], adjust: bool, ignore_na: bool) -> None:
    frame = _frame()
    options = _ewm_options(decay, adjust, ignore_na)
    got = _chained(frame, EWM, "ewm", options, "mean", None)
    pd.testing.assert_frame_equal(got, frame.ewm(**decay, adjust=adjust, ignore_na=ignore_na).mean())


@pytest.mark.parametrize("decay", DECAYS, ids=str)
@pytest.mark.parametrize("ignore_na", [False, True])
def test_ewm_sum_and_variance_kernels_chain_like_one_pandas_call(decay: dict[str, Any], ignore_na: bool) -> None:
    frame = _frame()
    options = _ewm_options(decay, True, ignore_na)
    expected = frame.ewm(**decay, ignore_na=ignore_na)
    pd.testing.assert_frame_equal(_chained(frame, EWM, "ewm", options, "sum", None), expected.sum())
    pd.testing.assert_frame_equal(_chained(frame, EWM, "ewm", options, "var", False), expected.var())
    pd.testing.assert_frame_equal(_chained(frame, EWM, "ewm", options, "std", True), expected.std(bias=True))


# --------------------------------------------------------------------------------------------
# Lazy expanding windows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sum", "mean", "count", "min", "max", "std", "var"])
@pytest.mark.parametrize("min_periods", [0, 1, 5, 120])
def test_lazy_expanding_matches_pandas(method: str, min_periods: int) -> None:
    frame, lazy = _pairs()
    got = getattr(lazy.expanding(min_periods=min_periods), method)()
    pd.testing.assert_frame_equal(got.compute(), getattr(frame.expanding(min_periods=min_periods), method)())
    assert got.divisions == lazy.divisions
    series = getattr(lazy.x.expanding(min_periods), method)().compute()
    pd.testing.assert_series_equal(series, getattr(frame.x.expanding(min_periods), method)())


def test_lazy_expanding_options_aggregations_and_columns() -> None:
    frame, lazy = _pairs()
    pd.testing.assert_frame_equal(lazy.expanding().std(ddof=0).compute(), frame.expanding().std(ddof=0))
    pd.testing.assert_frame_equal(lazy.expanding(2).var(ddof=3).compute(), frame.expanding(2).var(ddof=3))
    names = ["sum", "std", "count"]
    pd.testing.assert_frame_equal(lazy.expanding().agg(names).compute(), frame.expanding().agg(names))
    pd.testing.assert_frame_equal(lazy.x.expanding(3).agg(names).compute(), frame.x.expanding(3).agg(names))
    pd.testing.assert_frame_equal(lazy.expanding().agg(["max"]).compute(), frame.expanding().agg(["max"]))
    pd.testing.assert_series_equal(lazy.expanding().agg("mean").x.compute(), frame.expanding().agg("mean").x)
    pd.testing.assert_series_equal(lazy.expanding()["k"].max().compute(), frame.expanding()["k"].max())
    selected = lazy.expanding()[["x", "i"]].mean()
    pd.testing.assert_frame_equal(selected.compute(), frame.expanding()[["x", "i"]].mean())
    # A projection of the result reads only that column.
    pd.testing.assert_series_equal(lazy.expanding().sum()["x"].compute(), frame.expanding().sum()["x"])


def test_lazy_expanding_of_int_bool_and_nullable_columns() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "b": rng.random(90) > 0.5,
            "n": pd.array(np.where(np.arange(90) % 4 == 0, None, np.arange(90)), dtype="Int64"),
        }
    )
    lazy = zd.from_pandas(frame, npartitions=7)
    for method in ("sum", "mean", "var", "count"):
        expected = getattr(frame.expanding(), method)()
        pd.testing.assert_frame_equal(getattr(lazy.expanding(), method)().compute(), expected)


def test_lazy_expanding_across_many_short_partitions() -> None:
    frame = _frame(120)
    lazy = zd.from_pandas(frame, npartitions=40)
    pd.testing.assert_frame_equal(lazy.expanding(50).mean().compute(), frame.expanding(50).mean())
    pd.testing.assert_frame_equal(lazy.expanding().var().compute(), frame.expanding().var())


def test_expanding_refusals_name_what_is_supported() -> None:
    _, lazy = _pairs()
    with pytest.raises(UsageError, match=r"expanding aggregations must be among \['sum', 'mean'"):
        lazy.expanding().agg(["sum", "median"])
    with pytest.raises(UsageError, match="select the columns first"):
        lazy.expanding().agg({"x": "sum"})
    with pytest.raises(UsageError, match="method='table'"):
        lazy.expanding(method="table")
    with pytest.raises(ValueError, match="min_periods must be an integer >= 0"):
        lazy.expanding(-1)
    with pytest.raises(KeyError, match="nope"):
        lazy.expanding()["nope"]
    with pytest.raises(AttributeError, match="nope"):
        lazy.expanding().nope  # noqa: B018


# --------------------------------------------------------------------------------------------
# Lazy exponentially weighted windows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", DECAYS, ids=str)
@pytest.mark.parametrize("adjust", [True, False])
@pytest.mark.parametrize("ignore_na", [False, True])
def test_lazy_ewm_mean_matches_pandas(decay: dict[str, Any], adjust: bool, ignore_na: bool) -> None:
    frame, lazy = _pairs()
    for min_periods in (0, 3, 110):
        expected = frame.ewm(**decay, min_periods=min_periods, adjust=adjust, ignore_na=ignore_na).mean()
        got = lazy.ewm(**decay, min_periods=min_periods, adjust=adjust, ignore_na=ignore_na).mean()
        pd.testing.assert_frame_equal(got.compute(), expected)
        assert got.divisions == lazy.divisions
    expected_x = frame.x.ewm(**decay, adjust=adjust, ignore_na=ignore_na).mean()
    pd.testing.assert_series_equal(lazy.x.ewm(**decay, adjust=adjust, ignore_na=ignore_na).mean().compute(), expected_x)


@pytest.mark.parametrize("decay", [{"com": 2.0}, {"span": 30}, {"alpha": 1.0}], ids=str)
@pytest.mark.parametrize("ignore_na", [False, True])
def test_lazy_ewm_sum_std_var_match_pandas(decay: dict[str, Any], ignore_na: bool) -> None:
    frame, lazy = _pairs()
    expected = frame.ewm(**decay, min_periods=2, ignore_na=ignore_na)
    got = lazy.ewm(**decay, min_periods=2, ignore_na=ignore_na)
    pd.testing.assert_frame_equal(got.sum().compute(), expected.sum())
    pd.testing.assert_frame_equal(got.var().compute(), expected.var())
    pd.testing.assert_frame_equal(got.std().compute(), expected.std())
    pd.testing.assert_frame_equal(got.var(bias=True).compute(), expected.var(bias=True))
    names = ["mean", "std", "sum"]
    pd.testing.assert_frame_equal(got.agg(names).compute(), expected.agg(names))
    pd.testing.assert_frame_equal(got.far.agg(names).compute(), expected.far.agg(names))
    pd.testing.assert_series_equal(got["i"].var().compute(), expected["i"].var())


def test_lazy_ewm_across_many_short_partitions_and_a_long_gap() -> None:
    frame = _frame(120)
    frame.loc[frame.index[20:95], "x"] = np.nan  # no value for many partitions
    lazy = zd.from_pandas(frame, npartitions=40)
    for adjust in (True, False):
        expected = frame.ewm(halflife=4, adjust=adjust).mean()
        pd.testing.assert_frame_equal(lazy.ewm(halflife=4, adjust=adjust).mean().compute(), expected)
    pd.testing.assert_frame_equal(lazy.ewm(span=9).std().compute(), frame.ewm(span=9).std())


def test_ewm_refusals_name_what_is_supported() -> None:
    frame, lazy = _pairs()
    for method in ("sum", "std", "var"):
        with pytest.raises(UsageError, match=f"adjust=False\\) supports mean only, not {method}"):
            getattr(lazy.ewm(com=1, adjust=False), method)()
    with pytest.raises(UsageError, match=r"must be among \['mean'\]"):
        lazy.ewm(com=1, adjust=False).agg(["mean", "std"])
    with pytest.raises(UsageError, match=r"ewm\(times=...\) is not supported"):
        lazy.ewm(halflife="1D", times=frame.index)
    with pytest.raises(UsageError, match="method='table'"):
        lazy.ewm(com=1, method="table")
    # pandas' own checks of the arguments.
    with pytest.raises(ValueError, match="Must pass one of"):
        lazy.ewm()
    with pytest.raises(ValueError, match="mutually exclusive"):
        lazy.ewm(com=1, span=3)
    with pytest.raises(ValueError, match="alpha must satisfy"):
        lazy.ewm(alpha=1.5)


def test_windows_on_a_cluster(client: Any) -> None:
    frame, lazy = _pairs()
    pd.testing.assert_frame_equal(lazy.expanding(2).std().compute(), frame.expanding(2).std())
    pd.testing.assert_frame_equal(
        lazy.ewm(span=5, adjust=False).mean().compute(), frame.ewm(span=5, adjust=False).mean()
    )
    pd.testing.assert_frame_equal(lazy.ewm(com=3).var().compute(), frame.ewm(com=3).var())
