"""describe, value_counts and nunique: kernels, then lazy operations against pandas."""

from __future__ import annotations

import io
import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.stats import (
    describe_assemble,
    describe_columns,
    describe_gathered,
    nunique_aggregate,
    unique_chunk,
    unique_combine,
    value_counts_aggregate,
    value_counts_chunk,
    value_counts_combine,
)
from zmqdask.errors import UsageError


def _frame(n: int = 300, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.integers(0, 30, n),
            "f": rng.normal(size=n),
            "s": rng.choice(list("abcdefgh"), n),
            "b": rng.integers(0, 2, n).astype(bool),
        }
    )
    frame.loc[frame.index[::9], "f"] = np.nan
    frame.loc[frame.index[::13], "s"] = None
    return frame


def _pieces(frame: pd.DataFrame) -> list[pd.DataFrame]:
    cuts = [0, 100, 100, 250, len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("column", ["a", "f", "s"])
@pytest.mark.parametrize("dropna", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("ascending", [False, True])
def test_value_counts_kernels(column: str, dropna: bool, normalize: bool, ascending: bool) -> None:
    frame = _frame()
    chunks = [value_counts_chunk(piece[column], dropna) for piece in _pieces(frame)]
    middle = [value_counts_combine(chunks[:2]), value_counts_combine(chunks[2:])]
    got = value_counts_aggregate(middle, True, ascending, normalize)
    expected = frame[column].value_counts(dropna=dropna, normalize=normalize, ascending=ascending)
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index())
    # Sorted by count; the order of equal counts is not part of the contract.
    assert list(got.to_numpy()) == list(expected.to_numpy())


def test_nunique_and_describe_kernels() -> None:
    frame = _frame()
    pieces = _pieces(frame)
    chunks = [unique_chunk(piece) for piece in pieces]
    pd.testing.assert_series_equal(nunique_aggregate([unique_combine(chunks)], frame.columns), frame.nunique())
    assert nunique_aggregate([unique_chunk(piece["s"]) for piece in pieces], None) == frame["s"].nunique()
    columns = describe_columns(frame.iloc[:0])
    assert columns == ["a", "f"]
    described = [describe_gathered([piece[c] for piece in pieces]) for c in columns]
    described_frame = describe_assemble(described, frame.describe().columns, list(frame.describe().index))
    pd.testing.assert_frame_equal(described_frame, frame.describe())


@pytest.mark.parametrize("npartitions", [1, 4])
def test_lazy_describe_matches_pandas(npartitions: int) -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    pd.testing.assert_frame_equal(lazy.describe().compute(), frame.describe())
    pd.testing.assert_series_equal(lazy.f.describe().compute(), frame.f.describe())
    pd.testing.assert_series_equal(lazy.s.describe().compute(), frame.s.describe())


@pytest.mark.parametrize(
    "options",
    [{"include": "all"}, {"include": ["str"]}, {"exclude": ["number"]}, {"percentiles": [0.1, 0.9]},
     {"include": "all", "percentiles": [0.3]}],
)
def test_lazy_describe_options_match_pandas(options: dict[str, Any]) -> None:
    frame = _frame().assign(when=pd.date_range("2021-01-01", periods=len(_frame()), freq="h"))
    lazy = zd.from_pandas(frame, npartitions=3)
    pd.testing.assert_frame_equal(lazy.describe(**options).compute(), frame.describe(**options))
    if "percentiles" in options:
        expected = frame.f.describe(percentiles=options["percentiles"])
        pd.testing.assert_series_equal(lazy.f.describe(percentiles=options["percentiles"]).compute(), expected)


def test_lazy_describe_with_empty_partitions_and_projection() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    kept = lazy[lazy.a > 20]
    pd.testing.assert_frame_equal(kept.describe().compute(), frame[frame.a > 20].describe())
    from zmqdask.dataframe.sources import FromPandas

    plan = lazy.describe().optimize().expr
    sources = [e for e in plan.walk() if isinstance(e, FromPandas)]
    assert all(set(s.columns_selected or ()) <= {"a", "f"} for s in sources)


@pytest.mark.parametrize("npartitions", [1, 5])
def test_lazy_value_counts_and_nunique(npartitions: int) -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    got = lazy.s.value_counts(dropna=False).compute()
    expected = frame.s.value_counts(dropna=False)
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index())
    got = lazy.a.value_counts(normalize=True, sort=False).compute()
    pd.testing.assert_series_equal(got.sort_index(), frame.a.value_counts(normalize=True).sort_index())
    assert lazy.f.nunique().compute() == frame.f.nunique()
    pd.testing.assert_series_equal(lazy.nunique().compute(), frame.nunique())


@pytest.mark.parametrize("npartitions", [1, 4])
def test_lazy_value_counts_orders_ties_by_first_appearance(npartitions: int) -> None:
    values = pd.Series([*list("cbabcadd" * 5), "e"], name="v")
    assert values.value_counts().iloc[:4].nunique() == 1  # four-way tie
    lazy = zd.from_pandas(values, npartitions=npartitions)
    for kwargs in ({}, {"ascending": True}, {"normalize": True}):
        pd.testing.assert_series_equal(lazy.value_counts(**kwargs).compute(), values.value_counts(**kwargs))


def test_stats_reject_wrong_inputs() -> None:
    from zmqdask.dataframe.stats import value_counts

    lazy = zd.from_pandas(_frame(), npartitions=2)
    with pytest.raises(UsageError):
        value_counts(lazy)
    with pytest.raises(UsageError):
        value_counts(pd.Series([1]))  # type: ignore[arg-type]


def test_describe_through_worker_processes(run_async: Any) -> None:
    frame = _frame(3000, seed=9)
    lazy = zd.from_pandas(frame, npartitions=6)
    described = lazy.describe()
    counts = lazy.s.value_counts()

    async def body(client: Any) -> tuple[Any, Any]:
        return await client.compute(described), await client.compute(counts)

    got_described, got_counts = run_async(body)
    pd.testing.assert_frame_equal(got_described, frame.describe())
    pd.testing.assert_series_equal(got_counts.sort_index(), frame.s.value_counts().sort_index())

    async def summary(client: Any) -> str:
        # info() must compute: on a running loop it refuses, naming the awaitable form.
        with pytest.raises(UsageError, match=r"await client\.compute"):
            lazy.info(verbose=True)
        lazy.info(buf=io.StringIO())  # dtypes only: nothing to compute
        return "ok"

    assert run_async(summary) == "ok"


def test_index_nunique_and_unique_count_labels() -> None:
    pdf = pd.DataFrame({"x": range(10)}, index=[1, 1, 2, 2, 3, 3, 4, 4, 5, 7])
    lazy = zd.from_pandas(pdf, npartitions=3)
    assert lazy.index.nunique().compute() == pdf.index.nunique() == 6
    assert list(lazy.index.unique().compute()) == list(pdf.index.unique())


def _moment_frame(n: int = 400, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "e": rng.exponential(2.0, n) + 1e6,  # far from 0: the merge must not lose precision
            "g": rng.normal(size=n),
            "i": rng.integers(0, 7, n),
            "b": rng.integers(0, 2, n).astype(bool),
            "c": 4.25,
        }
    )
    frame.loc[frame.index[::17], "g"] = np.nan
    return frame


def _biased(adjusted_skew: pd.Series, counts: pd.Series) -> pd.Series:
    # scipy's sample skewness from pandas' adjusted one.
    return adjusted_skew * (counts - 2) / np.sqrt(counts * (counts - 1))


@pytest.mark.parametrize("npartitions", [1, 6])
def test_lazy_skew_and_kurtosis_match_pandas_and_dask_conventions(npartitions: int) -> None:
    frame = _moment_frame()
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    # pandas' values: adjusted, missing values skipped.
    pd.testing.assert_series_equal(lazy.skew(bias=False, nan_policy="omit").compute(), frame.skew())
    pd.testing.assert_series_equal(lazy.kurtosis(bias=False, nan_policy="omit").compute(), frame.kurt())
    pd.testing.assert_series_equal(
        lazy.kurt(fisher=False, bias=False, nan_policy="omit").compute(), frame.kurt().add(3.0)
    )
    # Dask's defaults: no finite-sample correction, a column with a missing value is NaN, a
    # constant one has skewness 0 and excess kurtosis -3.
    skew = lazy.skew().compute()
    expected = _biased(frame.skew(), frame.count())
    expected["c"] = 0.0
    expected["g"] = np.nan
    pd.testing.assert_series_equal(skew, expected)
    kurt = lazy.kurtosis().compute()
    deviations = frame - frame.mean()
    pearson = (deviations**4).mean() / (deviations**2).mean() ** 2
    assert kurt["g"] != kurt["g"] and kurt["c"] == -3.0
    np.testing.assert_allclose(kurt[["e", "i", "b"]], pearson[["e", "i", "b"]].astype(float) - 3, rtol=1e-9)
    # A Series, a filter leaving empty partitions, rows, and the numeric columns only.
    assert lazy.e.skew(bias=False, nan_policy="omit").compute() == pytest.approx(frame.e.skew(), rel=1e-9)
    kept = lazy[lazy.i > 4]
    pd.testing.assert_series_equal(
        kept.skew(bias=False, nan_policy="omit").compute(), frame[frame.i > 4].skew()
    )
    pd.testing.assert_series_equal(lazy.skew(axis=1).compute(), frame.skew(axis=1, skipna=False))
    mixed = zd.from_pandas(frame.assign(s="x"), npartitions=2)
    pd.testing.assert_series_equal(
        mixed.skew(numeric_only=True, bias=False, nan_policy="omit").compute(), frame.skew()
    )


def test_skew_and_kurtosis_refuse_what_they_cannot_compute() -> None:
    lazy = zd.from_pandas(_moment_frame().assign(s="x"), npartitions=2)
    with pytest.raises(TypeError, match="skew"):
        lazy.s.skew()
    with pytest.raises(TypeError):
        lazy.skew()
    with pytest.raises(ValueError, match="nan_policy"):
        lazy.e.skew(nan_policy="raise")
    with pytest.raises(UsageError, match="add 3"):
        lazy.kurtosis(axis=1, fisher=False, numeric_only=True)


def _info_text(frame: Any, **options: Any) -> str:
    out = io.StringIO()
    frame.info(buf=out, **options)
    return out.getvalue()


def test_info_summarizes_like_pandas() -> None:
    frame = pd.DataFrame(
        {"a": range(12), "b": [1.5, None] * 6, "s": list("abcdefghijkl")},
        index=pd.date_range("2000-01-01", periods=12, name="when"),
    )
    lazy = zd.from_pandas(frame, npartitions=3)
    brief = _info_text(lazy)
    assert brief.splitlines()[1:] == ["Columns: 3 entries, a to s", "dtypes: float64(1), int64(1), str(1)"]
    lines = _info_text(lazy, verbose=True, memory_usage=True).splitlines()
    expected = io.StringIO()
    frame.info(buf=expected, memory_usage="deep")
    wanted = [line.rstrip() for line in expected.getvalue().splitlines() if not line.startswith("Freq")]
    # The same table, counts and memory; the index range is written in full.
    assert lines[1] == "DatetimeIndex: 12 entries, 2000-01-01 00:00:00 to 2000-01-12 00:00:00"
    assert lines[2:] == wanted[2:]
    # Unknown divisions and a first partition left empty: the range is read from the rows.
    shifted = lazy[lazy.a > 5].reset_index(drop=True)
    lines = _info_text(shifted, verbose=True).splitlines()
    assert lines[1] == "RangeIndex: 6 entries, 0 to 5" and lines[5] == " 0   a       6 non-null      int64"
    # Nothing left: every count is 0 (not the sum of no rows), as pandas.
    empty = lazy[lazy.a > 100]
    pd.testing.assert_series_equal(empty.count().compute(), frame.iloc[:0].count())
    assert " 2   s       0 non-null      str" in _info_text(empty, verbose=True)


def test_to_datetime_reads_every_partition_in_the_format_of_the_first_value() -> None:
    text = pd.Series(["2021-01-01", None, "2021-01-02", "2021-03-28 02:30", "2021-01-03", "03/01/2021"], name="d")
    lazy = zd.from_pandas(text, npartitions=3)
    pd.testing.assert_series_equal(
        zd.to_datetime(lazy, errors="coerce").compute(), pd.to_datetime(text, errors="coerce")
    )
    # Partitions whose first values differ: still the first value's format for all.
    days = pd.Series(["02/01/2021", "13/01/2021", "01/02/2021"], name="d")
    lazy_days = zd.from_pandas(days, npartitions=3)
    pd.testing.assert_series_equal(
        zd.to_datetime(lazy_days, dayfirst=True).compute(), pd.to_datetime(days, dayfirst=True)
    )
    numbers = pd.Series([1_600_000_000, 1_700_000_000], name="t")
    pd.testing.assert_series_equal(
        zd.to_datetime(zd.from_pandas(numbers, npartitions=2), unit="s").compute(), pd.to_datetime(numbers, unit="s")
    )


def test_reductions_of_nullable_columns_keep_pandas_dtypes() -> None:
    frame = pd.DataFrame(
        {"i": pd.array([1, None, 3, 4, 7], dtype="Int64"), "f": pd.array([0.5, 1.5, None, 2.0, 1.0], dtype="Float64")}
    )
    lazy = zd.from_pandas(frame, npartitions=3)
    for method in ("sum", "mean", "max", "min", "std", "var", "count"):
        pd.testing.assert_series_equal(getattr(lazy, method)().compute(), getattr(frame, method)())


def test_mean_of_dates_and_durations_is_exact() -> None:
    dates = pd.Series(pd.date_range("2021-01-01", periods=1000, freq="37min"), name="t")
    dates[5] = pd.NaT
    lazy = zd.from_pandas(dates, npartitions=7)
    # pandas sums in floats and truncates; an exact sum, rounded, is within one unit (us) of it.
    assert abs(lazy.mean().compute() - dates.mean()) <= pd.Timedelta("1us")
    durations = dates - dates.min()
    assert abs((lazy - lazy.min()).mean().compute() - durations.mean()) <= pd.Timedelta("1us")
    local = dates.dt.tz_localize("Europe/Paris")
    assert zd.from_pandas(local, npartitions=3).mean().compute() == local.mean()
    assert lazy.mean(skipna=False).compute() is pd.NaT
    assert lazy[lazy.isna()].mean().compute() is pd.NaT


def test_idxmax_without_skipna_refuses_missing_values_as_pandas() -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0, 2.0], "y": [4.0, 1.0, 2.0, 3.0]})
    lazy = zd.from_pandas(frame, npartitions=2)
    with pytest.raises(ValueError, match="NA value"):
        lazy.x.idxmax(skipna=False).compute()
    assert lazy.y.idxmax(skipna=False).compute() == frame.y.idxmax(skipna=False)
    pd.testing.assert_series_equal(lazy.idxmin().compute(), frame.idxmin())


def test_mean_of_large_integers_does_not_overflow() -> None:
    frame = pd.DataFrame({"big": np.full(10, 2**62), "small": np.arange(10)})
    lazy = zd.from_pandas(frame, npartitions=3)
    assert lazy.big.mean().compute() == frame.big.mean()
    pd.testing.assert_series_equal(lazy.mean().compute(), frame.mean())


@pytest.mark.parametrize("dropna", [True, False])
def test_series_mode_matches_pandas(dropna: bool) -> None:
    for series in (
        pd.Series([1, 2, 2, 3, 3, np.nan, np.nan, np.nan], name="x"),
        pd.Series(list("abcabcaa")),
        pd.Series([], dtype=float),
    ):
        got = zd.from_pandas(series, npartitions=2).mode(dropna=dropna).compute()
        pd.testing.assert_series_equal(got, series.mode(dropna=dropna))


def _multiindex_columns_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            ("a", "x"): rng.normal(size=n),
            ("a", "y"): rng.integers(0, 5, n),
            ("b", "x"): rng.normal(size=n),
            ("b", "s"): rng.choice(list("pqr"), n),
        }
    )
    frame.columns = pd.MultiIndex.from_tuples(list(frame.columns))
    return frame


@pytest.mark.parametrize("npartitions", [1, 4])
def test_statistics_of_multiindex_columns_take_each_tuple_as_one_column(npartitions: int) -> None:
    frame = _multiindex_columns_frame()
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    pd.testing.assert_frame_equal(lazy.describe().compute(), frame.describe())
    pd.testing.assert_frame_equal(lazy.describe(include="all").compute(), frame.describe(include="all"))
    pd.testing.assert_series_equal(
        lazy.quantile(0.3, numeric_only=True).compute(), frame.quantile(0.3, numeric_only=True)
    )
    pd.testing.assert_frame_equal(
        lazy.quantile([0.25, 0.5], numeric_only=True).compute(), frame.quantile([0.25, 0.5], numeric_only=True)
    )
    for keep in ("first", "last", False):
        pd.testing.assert_frame_equal(
            lazy.drop_duplicates(subset=("b", "s"), keep=keep).compute(),
            frame.drop_duplicates(subset=("b", "s"), keep=keep),
        )
    pd.testing.assert_frame_equal(lazy.nlargest(5, ("a", "x")).compute(), frame.nlargest(5, ("a", "x")))
    pd.testing.assert_series_equal(lazy.nunique().compute(), frame.nunique())
    pd.testing.assert_frame_equal(lazy.mode().compute(), frame.mode())
    pd.testing.assert_series_equal(lazy[("b", "s")].value_counts().compute(), frame[("b", "s")].value_counts())


def _categorized_per_partition(npartitions: int) -> tuple[pd.DataFrame, Any]:
    """A frame with a categorical ``c`` and the lazy frame categorizing it partition by
    partition (as astype does lazily), so each partition has its own categories."""
    rows = np.arange(90)
    frame = pd.DataFrame({"c": [f"v{r // 10 + r % 3}" for r in rows], "x": (rows * 7) % 31, "k": rows % 4})
    lazy = zd.from_pandas(frame, npartitions=npartitions).astype({"c": "category"})
    return frame.astype({"c": "category"}), lazy


@pytest.mark.parametrize("npartitions", [3, 7])
def test_statistics_keep_categoricals_whose_partitions_differ(npartitions: int) -> None:
    frame, lazy = _categorized_per_partition(npartitions)
    pd.testing.assert_frame_equal(lazy.nlargest(8, "x").compute(), frame.nlargest(8, "x"))
    pd.testing.assert_frame_equal(lazy.nsmallest(8, "x", split_every=2).compute(), frame.nsmallest(8, "x"))
    for normalize in (False, True):
        pd.testing.assert_series_equal(
            lazy.c.value_counts(normalize=normalize).compute(), frame.c.value_counts(normalize=normalize)
        )
    pd.testing.assert_series_equal(lazy.c.mode().compute(), frame.c.mode())
    pd.testing.assert_frame_equal(lazy[["c", "k"]].mode().compute(), frame[["c", "k"]].mode())
    pd.testing.assert_frame_equal(lazy.describe(include="all").compute(), frame.describe(include="all"))
