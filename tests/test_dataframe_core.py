"""Core lazy DataFrame/Series/Scalar operations, computed locally, compared with pandas."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pandas.testing as tm
import pytest

import zmqdask.base
import zmqdask.dataframe as zd
import zmqdask.datasets
from zmqdask.dataframe.sources import FromPartitions
from zmqdask.errors import UsageError


def assert_same(lazy: Any, expected: Any, **kwargs: Any) -> None:
    """Compute ``lazy`` in this process and compare with the pandas result."""
    result = lazy.compute() if hasattr(lazy, "compute") else lazy
    if isinstance(expected, pd.DataFrame):
        tm.assert_frame_equal(result, expected, check_freq=False, **kwargs)
    elif isinstance(expected, pd.Series):
        tm.assert_series_equal(result, expected, check_freq=False, **kwargs)
    elif isinstance(expected, pd.Index):
        tm.assert_index_equal(result, expected, **kwargs)
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(result)
    else:
        assert result == pytest.approx(expected)


def make_pdf(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[::7] = np.nan
    return pd.DataFrame(
        {
            "x": x,
            "y": rng.integers(-5, 5, size=n),
            "z": rng.random(n),
            "s": pd.array(rng.choice(["a", "b", "c"], size=n), dtype=pd.Series(["a"]).dtype),
        },
        index=pd.Index(np.arange(n) * 10, name="i"),
    )


@pytest.fixture(params=[1, 3, 7], ids=lambda n: f"{n}parts")
def frames(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, zd.DataFrame]:
    pdf = make_pdf()
    return pdf, zd.from_pandas(pdf, npartitions=request.param)


# -- from_pandas and metadata -------------------------------------------------------------


def test_from_pandas_divisions_and_roundtrip(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert df.known_divisions
    assert df.divisions[0] == pdf.index[0] and df.divisions[-1] == pdf.index[-1]
    assert len(df.divisions) == df.npartitions + 1
    assert list(df.columns) == list(pdf.columns)
    tm.assert_series_equal(df.dtypes, pdf.dtypes)
    assert_same(df, pdf)


def test_from_pandas_sorts_and_keeps_duplicates_together() -> None:
    pdf = pd.DataFrame({"v": range(12)}, index=[5, 5, 5, 1, 1, 9, 9, 9, 9, 3, 3, 7])
    df = zd.from_pandas(pdf, npartitions=4)
    parts = [df.get_partition(i).compute() for i in range(df.npartitions)]
    seen: set[int] = set()
    for part in parts:
        labels = set(part.index)
        assert not labels & seen
        seen |= labels
    assert_same(df, pdf.sort_index(kind="stable"))


def test_from_pandas_unsorted_without_sort_has_unknown_divisions() -> None:
    pdf = make_pdf().sample(frac=1.0, random_state=1)
    df = zd.from_pandas(pdf, npartitions=3, sort=False)
    assert not df.known_divisions
    assert df.divisions == (None,) * 4
    assert_same(df, pdf)


def test_from_pandas_series_empty_and_chunksize() -> None:
    s = pd.Series(np.arange(10.0), name="v")
    ds = zd.from_pandas(s, chunksize=3)
    assert ds.npartitions == 4
    assert_same(ds, s)
    empty = make_pdf().iloc[:0]
    de = zd.from_pandas(empty, npartitions=3)
    assert de.npartitions == 1
    assert_same(de, empty)
    assert_same(de.x.sum(), empty.x.sum())


def test_columns_access_and_selection(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.x, pdf.x)
    assert_same(df["y"], pdf["y"])
    assert_same(df[["z", "x"]], pdf[["z", "x"]])
    assert "x" in dir(df)
    assert list(df) == list(pdf)
    with pytest.raises(KeyError):
        df[["nope"]]
    with pytest.raises(AttributeError):
        _ = df.nope


def test_a_tuple_key_selects_one_column_of_multiindex_columns() -> None:
    columns = pd.MultiIndex.from_tuples([("a", "x"), ("a", "y"), ("b", "x")])
    pdf = pd.DataFrame(np.arange(60.0).reshape(20, 3), columns=columns)
    df = zd.from_pandas(pdf, npartitions=4)
    assert isinstance(df[("a", "y")], zd.Series)
    assert_same(df[("a", "y")], pdf[("a", "y")])
    assert_same(df[("b", "x")] + 1, pdf[("b", "x")] + 1)
    # A list of tuples stays a list of columns; a tuple that is no label is not one.
    assert_same(df[[("b", "x"), ("a", "x")]], pdf[[("b", "x"), ("a", "x")]])
    with pytest.raises(KeyError):
        df[("a", "z")]
    # The same for the (column, method) pairs of a window's .agg.
    flat = pd.DataFrame({"x": np.arange(20.0), "y": np.arange(20.0) ** 2})
    lazy = zd.from_pandas(flat, npartitions=4)
    assert_same(lazy.expanding().agg(["sum", "max"])[("x", "sum")], flat.expanding().agg(["sum", "max"])[("x", "sum")])


def test_first_levels_of_multiindex_columns_select_the_frame_under_them() -> None:
    columns = pd.MultiIndex.from_tuples([("a", "x", 1), ("a", "x", 4), ("a", "y", 2), ("b", "x", 3)])
    pdf = pd.DataFrame(np.arange(80.0).reshape(20, 4), columns=columns)
    df = zd.from_pandas(pdf, npartitions=4)
    for key in ("a", "b", ("a", "x")):
        assert isinstance(df[key], zd.DataFrame)
        assert df[key].known_divisions
        assert_same(df[key], pdf[key])
    assert_same(df.b, pdf.b)
    assert_same(df["a"].sum(), pdf["a"].sum())
    # Columns added under the same first level are selected with it.
    df[("a", "z", 5)] = df[("b", "x", 3)] * 2
    pdf[("a", "z", 5)] = pdf[("b", "x", 3)] * 2
    assert_same(df["a"], pdf["a"])
    with pytest.raises(KeyError):
        df["c"]


def test_a_tuple_key_assigns_one_column_of_multiindex_columns() -> None:
    columns = pd.MultiIndex.from_tuples([("a", "x"), ("a", "y"), ("b", "x")])
    pdf = pd.DataFrame(np.arange(60.0).reshape(20, 3), columns=columns)
    df, expected = zd.from_pandas(pdf, npartitions=4), pdf.copy()
    df[("a", "x")] = df[("b", "x")] * 2
    expected[("a", "x")] = expected[("b", "x")] * 2
    df[("c", "z")] = 7
    expected[("c", "z")] = 7
    assert_same(df, expected)
    assert_same(df[("a", "x")] + df[("c", "z")], expected[("a", "x")] + expected[("c", "z")])
    # On flat columns a tuple is one new label too; a list or an Index names several columns.
    flat = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) ** 2})
    lazy, want = zd.from_pandas(flat, npartitions=3), flat.copy()
    lazy[("x", "y")] = lazy.x + lazy.y
    want[("x", "y")] = want.x + want.y
    lazy[pd.Index(["p", "q"])] = 1
    want[pd.Index(["p", "q"])] = 1
    assert_same(lazy, want)


# -- elementwise --------------------------------------------------------------------------


def test_arithmetic_and_comparisons(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.x + 1, pdf.x + 1)
    assert_same(2 - df.y, 2 - pdf.y)
    assert_same(df.x * df.z, pdf.x * pdf.z)
    assert_same(df.y / 2, pdf.y / 2)
    assert_same(df.y // 3, pdf.y // 3)
    assert_same(df.y % 3, pdf.y % 3)
    assert_same(df.z**2, pdf.z**2)
    assert_same(-df.x, -pdf.x)
    assert_same(df[["x", "z"]] * 3, pdf[["x", "z"]] * 3)
    assert_same(df[["x", "z"]] + df[["x", "z"]], pdf[["x", "z"]] + pdf[["x", "z"]])
    assert_same((df.x > 0) & (df.y < 2), (pdf.x > 0) & (pdf.y < 2))
    assert_same((df.x > 0) | ~(df.y == 1), (pdf.x > 0) | ~(pdf.y == 1))
    assert_same(df.y != 0, pdf.y != 0)
    assert_same(df.y >= 0, pdf.y >= 0)
    assert_same(abs(df.x), pdf.x.abs())


def test_pandas_operands_align_with_the_rows_as_in_pandas(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    short = pd.Series([100.0, 200.0, 300.0], index=pdf.index[[0, 5, 30]])
    full = pd.Series(np.arange(len(pdf), dtype=float), index=pdf.index)
    assert_same(df.z + short, pdf.z + short)
    assert_same(short - df.z, short - pdf.z)
    assert_same(df.z[df.z > full], pdf.z[pdf.z > full])
    assert_same(df[["x", "z"]].div(full, axis=0), pdf[["x", "z"]].div(full, axis=0))
    assert_same(df[["x", "z"]] * pdf[["x", "z"]].iloc[::3], pdf[["x", "z"]] * pdf[["x", "z"]].iloc[::3])
    # Against a DataFrame's columns (the default axis) a pandas Series is one row of factors.
    factors = pd.Series({"x": 2.0, "z": -1.0})
    assert_same(df[["x", "z"]] * factors, pdf[["x", "z"]] * factors)
    assert_same(df[["x", "z"]].sub(factors), pdf[["x", "z"]].sub(factors))
    assert_same(np.add(df.z, short), np.add(pdf.z, short))
    assert_same(np.add(short, df.z), np.add(short, pdf.z))


def test_pandas_operands_that_cannot_be_aligned_are_refused_clearly() -> None:
    pdf = make_pdf()
    unsorted = zd.from_pandas(pdf, npartitions=3, sort=False)
    with pytest.raises(UsageError, match="set_index first"):
        unsorted.z + pd.Series([1.0])
    sorted_ = zd.from_pandas(pdf, npartitions=3)
    for bad in (pd.Series([1.0, 2.0], index=[1.0, np.nan]), pd.Series([], dtype="float64")):
        with pytest.raises(UsageError, match="empty or has missing labels"):
            sorted_.z + bad


def test_scalar_broadcast(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    centered = df.z - df.z.mean()
    assert_same(centered, pdf.z - pdf.z.mean())
    assert_same(df.z.sum() * 2 + 1, pdf.z.sum() * 2 + 1)
    assert_same(1 - df.z.max(), 1 - pdf.z.max())
    assert_same(df.z / df.z.sum(), pdf.z / pdf.z.sum())


def test_filters_and_query(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df[df.x > 0], pdf[pdf.x > 0])
    assert_same(df[df.y > 100], pdf[pdf.y > 100])  # every partition empty
    assert_same(df.x[df.y > 0], pdf.x[pdf.y > 0])
    assert_same(df.query("y > 0 and z < 0.5"), pdf.query("y > 0 and z < 0.5"))
    assert_same(df[df.x > 0][["z"]], pdf[pdf.x > 0][["z"]])


def test_assign_astype_fillna_dropna(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.assign(w=df.x * 2, k=1), pdf.assign(w=pdf.x * 2, k=1))
    assert_same(df.assign(w=lambda d: d.y + 1), pdf.assign(w=lambda d: d.y + 1))
    assert_same(df.y.astype("float32"), pdf.y.astype("float32"))
    assert_same(df.astype({"y": "float64"}), pdf.astype({"y": "float64"}))
    assert_same(df.fillna(0), pdf.fillna(0))
    assert_same(df.x.fillna(-1.0), pdf.x.fillna(-1.0))
    assert_same(df.dropna(), pdf.dropna())
    assert_same(df.dropna(subset=["x"]), pdf.dropna(subset=["x"]))
    copy = df.copy()
    copy["w"] = copy.y * 10
    assert_same(copy, pdf.assign(w=pdf.y * 10))
    assert "w" not in df.columns


def test_elementwise_methods(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.isna(), pdf.isna())
    assert_same(df.x.notna(), pdf.x.notna())
    assert_same(df[["x", "z"]].abs(), pdf[["x", "z"]].abs())
    assert_same(df.z.round(2), pdf.z.round(2))
    assert_same(df.x.clip(-0.5, 0.5), pdf.x.clip(-0.5, 0.5))
    assert_same(df.z.between(0.2, 0.6), pdf.z.between(0.2, 0.6))
    assert_same(df.y.isin([1, 2, 3]), pdf.y.isin([1, 2, 3]))
    assert_same(df.x.where(df.y > 0, 0.0), pdf.x.where(pdf.y > 0, 0.0))
    assert_same(df.x.mask(df.y > 0), pdf.x.mask(pdf.y > 0))
    assert_same(df.y.apply(lambda v: v * 3), pdf.y.apply(lambda v: v * 3))
    assert_same(df.y.map({1: "one"}), pdf.y.map({1: "one"}))
    assert_same(df.s.str.upper(), pdf.s.str.upper())
    assert_same(df.s.str.len(), pdf.s.str.len())
    with pytest.raises(AttributeError):
        _ = df.y.str


def test_rename_drop_reset_index(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.rename(columns={"x": "a"}), pdf.rename(columns={"x": "a"}))
    assert_same(df.drop(columns=["s", "z"]), pdf.drop(columns=["s", "z"]))
    assert_same(df.drop("x", axis=None) if False else df.drop(columns="x"), pdf.drop(columns="x"))
    assert_same(df.reset_index(), pdf.reset_index())
    assert_same(df[df.y > 0].reset_index(drop=True), pdf[pdf.y > 0].reset_index(drop=True))
    assert_same(df.x.reset_index(), pdf.x.reset_index())
    assert_same(df.index, pdf.index)
    assert_same(df.index.max(), pdf.index.max())
    assert not df.reset_index().known_divisions


# -- reductions ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sum", "min", "max", "count", "mean", "prod"])
def test_series_reductions(frames: tuple[pd.DataFrame, zd.DataFrame], how: str) -> None:
    pdf, df = frames
    for column in ["x", "y", "z"]:
        assert_same(getattr(df[column], how)(), getattr(pdf[column], how)())


@pytest.mark.parametrize("how", ["sum", "min", "max", "count", "mean"])
def test_frame_reductions(frames: tuple[pd.DataFrame, zd.DataFrame], how: str) -> None:
    pdf, df = frames
    numeric = ["x", "y", "z"]
    assert_same(getattr(df[numeric], how)(), getattr(pdf[numeric], how)())


def test_string_and_mixed_reductions(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.s.min(), pdf.s.min())
    assert_same(df.s.max(), pdf.s.max())
    assert_same(df.count(), pdf.count())
    assert_same(df.sum(numeric_only=True), pdf.sum(numeric_only=True))


@pytest.mark.parametrize("ddof", [0, 1])
def test_var_std(frames: tuple[pd.DataFrame, zd.DataFrame], ddof: int) -> None:
    pdf, df = frames
    numeric = ["x", "y", "z"]
    assert_same(df[numeric].var(ddof=ddof), pdf[numeric].var(ddof=ddof))
    assert_same(df[numeric].std(ddof=ddof), pdf[numeric].std(ddof=ddof))
    assert_same(df.x.std(ddof=ddof), pdf.x.std(ddof=ddof))
    assert_same(df.y.var(ddof=ddof), pdf.y.var(ddof=ddof))
    assert_same(df.var(numeric_only=True), pdf.var(numeric_only=True))


def test_reductions_on_empty_partitions_and_deep_trees() -> None:
    pdf = make_pdf(200)
    df = zd.from_pandas(pdf, npartitions=20)
    filtered, expected = df[df.y > 3], pdf[pdf.y > 3]  # many empty or small partitions
    for how in ["sum", "min", "max", "count", "mean"]:
        assert_same(getattr(filtered.x, how)(split_every=2), getattr(expected.x, how)())
    assert_same(filtered[["x", "y"]].min(split_every=3), expected[["x", "y"]].min())
    assert_same(filtered.z.std(split_every=2), expected.z.std())
    nothing = df[df.y > 100]
    assert_same(nothing.x.sum(), 0.0)
    assert_same(nothing.x.mean(), float("nan"))
    assert_same(nothing.x.max(), float("nan"))
    assert_same(nothing.z.var(), float("nan"))


@pytest.mark.parametrize("npartitions", [1, 3, 6])
def test_sums_of_opposite_infinities_stay_nan(npartitions: int) -> None:
    values = pd.Series([np.inf, 1.0, -np.inf, 2.0, np.nan, 3.0], name="v")
    frame = pd.DataFrame({"v": values, "w": np.arange(6.0), "k": [0, 0, 0, 1, 1, 1]})
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    with np.errstate(invalid="ignore"):
        assert_same(lazy.v.sum(), values.sum())
        assert_same(lazy.v.prod(), values.prod())
        assert_same(lazy[["v", "w"]].sum(), frame[["v", "w"]].sum())
        assert_same(lazy.groupby("k").v.sum(), frame.groupby("k").v.sum())
        assert_same(lazy.v.mean(), values.mean())


def test_size_len_shape(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert len(df) == len(pdf)
    assert len(df[df.x > 0]) == len(pdf[pdf.x > 0])
    assert len(df.x) == len(pdf)
    assert_same(df.size, pdf.size)
    assert_same(df.x.size, pdf.x.size)
    rows, ncols = df.shape
    assert ncols == pdf.shape[1]
    assert rows.compute() == pdf.shape[0]


def test_any_all(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert bool((df.y > 3).any().compute()) == bool((pdf.y > 3).any())
    assert bool((df.z >= 0).all().compute()) == bool((pdf.z >= 0).all())


# -- rows: head, tail, loc, partitions ------------------------------------------------------


def test_head_tail(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    tm.assert_frame_equal(df.head(), pdf.head())
    tm.assert_frame_equal(df.head(12), pdf.head(12))
    tm.assert_frame_equal(df.tail(3), pdf.tail(3))
    tm.assert_frame_equal(df.tail(17), pdf.tail(17))
    tm.assert_series_equal(df.x.head(4), pdf.x.head(4))
    tm.assert_frame_equal(df.head(1000), pdf)
    # The first partitions are empty after this filter: head keeps reading until it has n rows.
    tm.assert_frame_equal(df[df.index > 300].head(3), pdf[pdf.index > 300].head(3))
    tm.assert_frame_equal(df[df.index < 50].tail(2), pdf[pdf.index < 50].tail(2))
    tm.assert_frame_equal(df.head(3, compute=False).compute(), pdf.head(3))


def test_index_comparisons_filter_rows(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert isinstance(df.index >= 80, zd.Series)
    assert_same(df[df.index >= 80], pdf[pdf.index >= 80])
    assert_same(df[(df.index < 120) & (df.x > 0)], pdf[(pdf.index < 120) & (pdf.x > 0)])
    assert_same(df.x[df.index != 7], pdf.x[pdf.index != 7])
    ts = zmqdask.datasets.timeseries(end="2000-01-03", freq="1h")
    pts = ts.compute()
    cut = pd.Timestamp("2000-01-01 18:00")
    assert_same(ts[ts.index >= cut], pts[pts.index >= cut])
    assert_same(ts.loc[ts.index < cut, ["x"]], pts.loc[pts.index < cut, ["x"]])


def test_loc_labels_and_slices(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    assert_same(df.loc[100:250], pdf.loc[100:250])
    assert_same(df.loc[:55], pdf.loc[:55])
    assert_same(df.loc[333:], pdf.loc[333:])
    assert_same(df.loc[120], pdf.loc[[120]])
    assert_same(df.loc[[30, 200, 390]], pdf.loc[[30, 200, 390]])
    assert_same(df.loc[100:200, ["x", "y"]], pdf.loc[100:200, ["x", "y"]])
    assert_same(df.loc[df.y > 0], pdf.loc[pdf.y > 0])
    assert_same(df.x.loc[50:90], pdf.x.loc[50:90])
    assert_same(df.loc[5000:6000], pdf.loc[5000:6000])


def test_loc_on_dates_culls_partitions() -> None:
    index = pd.date_range("2000-01-01", "2000-01-10 23:00", freq="1h", name="t")
    pdf = pd.DataFrame({"v": np.arange(len(index), dtype="float64")}, index=index)
    df = zd.from_pandas(pdf, npartitions=10)
    day = df.loc["2000-01-05"]
    assert day.npartitions <= 2
    assert_same(day, pdf.loc["2000-01-05":"2000-01-05"])
    span = df.loc["2000-01-03":"2000-01-04 12:00"]
    assert span.npartitions <= 3
    assert_same(span, pdf.loc["2000-01-03":"2000-01-04 12:00"])
    assert_same(df.loc[pd.Timestamp("2000-01-07 05:00")], pdf.loc[[pd.Timestamp("2000-01-07 05:00")]])
    assert_same(df["2000-01-02":"2000-01-02"], pdf.loc["2000-01-02":"2000-01-02"])


def test_partitions_and_get_partition(frames: tuple[pd.DataFrame, zd.DataFrame]) -> None:
    pdf, df = frames
    whole = pd.concat([df.get_partition(i).compute() for i in range(df.npartitions)])
    tm.assert_frame_equal(whole, pdf)
    last = df.partitions[-1]
    assert last.npartitions == 1
    assert last.divisions == (df.divisions[-2], df.divisions[-1])
    with pytest.raises(IndexError):
        df.get_partition(df.npartitions)


# -- partitioning -------------------------------------------------------------------------


@pytest.mark.parametrize("target", [1, 2, 5, 12])
def test_repartition(target: int) -> None:
    pdf = make_pdf(60)
    df = zd.from_pandas(pdf, npartitions=5)
    out = df.repartition(npartitions=target)
    assert out.npartitions == target
    assert_same(out, pdf)
    assert out.known_divisions
    parts = [out.get_partition(i).compute() for i in range(target)]
    for i, part in enumerate(parts):
        if len(part):
            assert out.divisions[i] <= part.index.min()
            assert part.index.max() <= out.divisions[i + 1]


def test_repartition_unknown_divisions_splits_rows() -> None:
    pdf = make_pdf(30)
    df = zd.from_pandas(pdf, npartitions=2, sort=False)
    out = df.repartition(npartitions=6)
    assert out.npartitions == 6 and not out.known_divisions
    assert_same(out, pdf)


def test_alignment_of_different_divisions() -> None:
    pdf = make_pdf(50)
    a = zd.from_pandas(pdf, npartitions=3)
    b = zd.from_pandas(pdf, npartitions=4)
    assert a.divisions != b.divisions
    assert_same(a.x + b.z, pdf.x + pdf.z)
    assert_same(a[b.y > 0], pdf[pdf.y > 0])
    assert_same(a.repartition(divisions=b.divisions), pdf)
    unknown = zd.from_pandas(pdf, npartitions=2, sort=False)
    with pytest.raises(UsageError):
        _ = a.x + unknown.x


def test_map_partitions() -> None:
    pdf = make_pdf(30)
    df = zd.from_pandas(pdf, npartitions=3)
    assert_same(df.map_partitions(lambda p: p.x * 2), pdf.x * 2)
    lengths = df.map_partitions(len)
    assert isinstance(lengths, zd.Series)
    assert_same(lengths, pd.Series([len(df.get_partition(i).compute()) for i in range(3)]))
    assert_same(lengths.sum(), len(pdf))
    out = df.map_partitions(lambda p, k: p.assign(w=p.y + k), 5)
    assert_same(out, pdf.assign(w=pdf.y + 5))
    with_other = zd.map_partitions(lambda a, b: a.x + b, df, df.z)
    assert_same(with_other, pdf.x + pdf.z)
    explicit = df.map_partitions(lambda p: p.y.astype("int32"), meta=("y", "int32"))
    assert explicit.dtype == np.dtype("int32")
    assert_same(explicit, pdf.y.astype("int32"))
    frame_meta = df.map_partitions(lambda p: p[["x"]].rename(columns={"x": "q"}), meta={"q": "float64"})
    assert list(frame_meta.columns) == ["q"]
    assert_same(frame_meta, pdf[["x"]].rename(columns={"x": "q"}))

    def needs_rows(part: pd.DataFrame) -> pd.Series:
        if len(part) == 0:
            raise ValueError("no rows")
        return part.x.iloc[[0]]

    assert df.map_partitions(needs_rows).dtype == np.dtype("float64")


def test_series_apply_on_rows_and_to_frame() -> None:
    pdf = make_pdf(20)
    df = zd.from_pandas(pdf, npartitions=2)
    assert_same(df[["y", "z"]].apply(lambda r: r.y + r.z, axis=1), pdf[["y", "z"]].apply(lambda r: r.y + r.z, axis=1))
    assert_same(df.x.to_frame(), pdf.x.to_frame())
    assert_same(df.x.rename("q"), pdf.x.rename("q"))
    assert_same(df.iloc[:, [0, 2]], pdf.iloc[:, [0, 2]])
    assert_same(df.select_dtypes("number"), pdf.select_dtypes("number"))


# -- compute, persist, graphs ---------------------------------------------------------------


def test_persist_locally_and_compute_many() -> None:
    pdf = make_pdf(30)
    df = zd.from_pandas(pdf, npartitions=3)
    derived = df.assign(w=df.x + df.z)
    persisted = derived.persist()
    assert isinstance(persisted.expr, FromPartitions)
    assert persisted.divisions == derived.divisions
    assert_same(persisted, pdf.assign(w=pdf.x + pdf.z))
    assert_same(persisted[["w"]].sum(), pdf.assign(w=pdf.x + pdf.z)[["w"]].sum())
    total, count, plain = zmqdask.base.compute(df.x.sum(), df.y.count(), 7)
    assert total == pytest.approx(pdf.x.sum()) and count == pdf.y.count() and plain == 7
    (again,) = zmqdask.base.persist(df)
    assert_same(again, pdf)


def test_graph_keys_are_deterministic_and_picklable() -> None:
    pdf = make_pdf(30)
    one = zd.from_pandas(pdf, npartitions=3)
    two = zd.from_pandas(pdf.copy(), npartitions=3)
    graph_a, keys_a = (one.x + 1).sum().__zmqdask_graph__()
    graph_b, keys_b = (two.x + 1).sum().__zmqdask_graph__()
    assert keys_a == keys_b and set(graph_a) == set(graph_b)
    for key in graph_a:
        stem, _, part = key.rpartition("-")
        assert part.isdigit() and len(stem.rsplit("-", 1)[1]) == 32
    restored = pickle.loads(pickle.dumps(graph_a))
    from zmqdask.graph import execute_local

    values = execute_local(restored, keys_a)
    assert one.x.sum().__zmqdask_finalize__() is not None
    assert values[0] == pytest.approx((pdf.x + 1).sum())
    changed = pdf.copy()
    changed.iloc[0, 2] = 99.0
    _, keys_c = (zd.from_pandas(changed, npartitions=3).x + 1).sum().__zmqdask_graph__()
    assert keys_c == keys_a  # column z changed, but only x is read: the pruned source is equal
    changed.iloc[1, 0] = 99.0
    _, keys_d = (zd.from_pandas(changed, npartitions=3).x + 1).sum().__zmqdask_graph__()
    assert keys_d != keys_a


def test_keys_are_stable_across_processes() -> None:
    code = "import zmqdask.datasets as d;print(d.timeseries(freq='1h')[['x','y']].sum().__zmqdask_graph__()[1][0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    import zmqdask.datasets as d

    assert out.stdout.strip() == d.timeseries(freq="1h")[["x", "y"]].sum().__zmqdask_graph__()[1][0]


def test_truth_value_is_refused() -> None:
    df = zd.from_pandas(make_pdf(10), npartitions=2)
    with pytest.raises(TypeError):
        bool(df.x.sum())
    with pytest.raises(TypeError):
        bool(df.x > 0)


# -- reprs --------------------------------------------------------------------------------


def test_dataframe_repr() -> None:
    import zmqdask.datasets

    df = zmqdask.datasets.timeseries()
    text = repr(df)
    lines = text.splitlines()
    assert lines[0] == "zmqdask DataFrame Structure:"
    assert lines[1].split() == ["name", "id", "x", "y"]
    assert lines[2].strip() == "npartitions=30"
    assert lines[3].split()[0] == "2000-01-01" and "int64" in lines[3] and "float64" in lines[3]
    assert lines[5].split()[0] == "..."
    assert lines[-2].split()[0] == "2000-01-31"
    assert lines[-1] == f"zmqdask Name: timeseries, {df.npartitions} tasks"
    html = df._repr_html_()
    assert "zmqdask DataFrame Structure:" in html and "<table" in html and "npartitions=30" in html
    assert "zmqdask Name: timeseries, 30 tasks" in html


def test_series_scalar_and_unknown_division_reprs() -> None:
    pdf = make_pdf(20)
    df = zd.from_pandas(pdf, npartitions=2)
    text = repr(df.x)
    lines = text.splitlines()
    assert lines[0] == "zmqdask Series Structure:"
    assert lines[1] == "npartitions=2"
    assert "float64" in lines[2]
    assert lines[-2] == "Name: x, dtype: float64"
    assert lines[-1] == "zmqdask Name: getitem, 2 tasks"
    total = df.x.sum()
    assert repr(total).splitlines() == [
        "zmqdask Scalar Structure:",
        "dtype: float64",
        f"zmqdask Name: sum, {total.ntasks} tasks",
    ]
    assert "zmqdask Scalar Structure:" in total._repr_html_()
    assert "zmqdask Series Structure:" in df.x._repr_html_()
    unknown = zd.from_pandas(pdf, npartitions=2, sort=False)
    assert "npartitions=2" in repr(unknown)


def test_explain_prints_plan(capsys: pytest.CaptureFixture[str]) -> None:
    df = zd.from_pandas(make_pdf(20), npartitions=2)
    df[df.x > 0].y.sum().explain()
    out = capsys.readouterr().out
    assert "Fused" in out and "FromPandas" in out and "TreeCombine" in out
    df.x.explain(optimized=False)
    assert "Projection" in capsys.readouterr().out
    assert isinstance(df[["x", "y"]].x.optimize(), zd.Series)


# -- through a real client ------------------------------------------------------------------


def test_compute_and_persist_with_a_sync_client(client: Any) -> None:
    import zmqdask.datasets
    from zmqdask.dataframe.sources import FromFutures

    df = zmqdask.datasets.timeseries(freq="1min", seed=5)
    local = df.compute()
    total = df[["x", "y"]].sum()
    tm.assert_series_equal(total.compute(), local[["x", "y"]].sum())
    assert len(df) == len(local)
    tm.assert_frame_equal(df.head(4), local.head(4), check_freq=False)
    persisted = df.persist()
    assert isinstance(persisted.expr, FromFutures)
    assert persisted.divisions == df.divisions
    tm.assert_series_equal(persisted[["x", "y"]].sum().compute(), local[["x", "y"]].sum())
    tm.assert_series_equal(persisted.x.compute(), local.x, check_freq=False)
    assert persisted.y.mean().compute() == pytest.approx(local.y.mean())
    x_sum, y_max = zmqdask.base.compute(df.x.sum(), persisted.y.max())
    assert x_sum == pytest.approx(local.x.sum()) and y_max == local.y.max()


def test_notebook_flow_with_an_async_client(run_async: Any) -> None:
    import zmqdask.datasets
    from zmqdask.dataframe.sources import FromFutures
    from zmqdask.errors import SyncInAsyncError

    expected = zmqdask.datasets.timeseries(freq="10min").compute()

    async def body(client: Any) -> None:
        df = zmqdask.datasets.timeseries(freq="10min")
        df = df.persist()  # returns at once inside the running loop
        assert isinstance(df.expr, FromFutures)
        total = df[["x", "y"]].sum()
        with pytest.raises(SyncInAsyncError, match=r"await client\.compute"):
            total.compute()
        with pytest.raises(SyncInAsyncError, match=r"await client\.compute"):
            len(df)
        with pytest.raises(SyncInAsyncError, match="compute=False"):
            df.head()
        result = await client.compute(total)
        tm.assert_series_equal(result, expected[["x", "y"]].sum())
        head = await client.compute(df.head(3, compute=False))
        tm.assert_frame_equal(head, expected.head(3), check_freq=False)
        assert await client.compute(df.shape[0]) == len(expected)

    run_async(body)


def test_index_attributes_rows_and_axis_errors() -> None:
    ts = zmqdask.datasets.timeseries(end="2000-01-03", freq="1h")
    pts = ts.compute()
    assert_same(ts.index.day_of_week, pts.index.day_of_week)
    assert_same(ts.index.floor("6h"), pts.index.floor("6h"))
    assert_same(ts.assign(h=ts.index.hour).h.sum(), pts.assign(h=pts.index.hour).h.sum())
    assert_same(ts.groupby(ts.index.hour).y.max(), pts.groupby(pts.index.hour).y.max())
    with pytest.raises(AttributeError):
        ts.index.no_such_attribute  # noqa: B018
    with pytest.raises(AttributeError):
        ts.index.hour.day  # noqa: B018 - an attribute of a derived index
    with pytest.raises(ValueError):
        ts.x.sum(axis=1)
    with pytest.raises(ValueError):
        ts[["x", "y"]].mean(axis=2)
    one = zd.from_pandas(pts.reset_index(drop=True).iloc[::-1], npartitions=1, sort=False)
    assert_same(one.sort_index(), pts.reset_index(drop=True))


def test_dataframe_namespace_is_sorted_resolvable_and_documented() -> None:
    import inspect

    assert zd.__all__ == sorted(zd.__all__)
    for name in zd.__all__:
        value = getattr(zd, name)
        assert inspect.getdoc(value), f"{name} has no docstring"


def test_aligning_frames_whose_index_ranges_do_not_overlap_duplicates_no_rows() -> None:
    low = pd.Series(np.arange(5.0), index=range(5))
    high = pd.Series(np.arange(6.0), index=range(100, 106))
    lazy_low, lazy_high = zd.from_pandas(low, npartitions=1), zd.from_pandas(high, npartitions=2)
    # The first output partition has no input: it used to receive a whole input partition.
    pd.testing.assert_series_equal((lazy_low + lazy_high).compute(), low + high)
    pd.testing.assert_series_equal((lazy_high - lazy_low).compute(), high - low)


def test_assigning_columns_of_another_length_is_refused_as_by_pandas() -> None:
    df = zd.from_pandas(pd.DataFrame({"x": [1, 2], "y": [3, 4]}), npartitions=1)
    for names in (["A"], ["A", "B", "C"]):
        with pytest.raises(ValueError, match="Length mismatch"):
            df.columns = names
    df.columns = ["A", "B"]
    assert list(df.compute().columns) == ["A", "B"]


def test_a_reduction_over_the_columns_combines_with_every_row_as_in_pandas() -> None:
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"x": rng.normal(size=30), "y": rng.integers(0, 9, 30), "z": rng.normal(size=30)})
    df = zd.from_pandas(pdf, npartitions=3)
    assert_same((df - df.mean()) / df.std(), (pdf - pdf.mean()) / pdf.std())
    assert_same(df / df.max(), pdf / pdf.max())
    assert_same(df.sub(df.mean(), axis="columns"), pdf.sub(pdf.mean(), axis="columns"))
    assert_same(((df - df.mean()) / df.std())[["x"]], ((pdf - pdf.mean()) / pdf.std())[["x"]])
    assert_same(df[["x", "z"]] - df.mean(), pdf[["x", "z"]] - pdf.mean())  # columns of both, as pandas
    assert_same(np.subtract(df, df.mean()), np.subtract(pdf, pdf.mean()))


def test_row_values_of_any_dtype_and_arithmetic_of_reductions_combine_with_every_row() -> None:
    pdf = pd.DataFrame({"x": [1, 2, 3, 4, 5, 6], "y": [6, 5, 4, 3, 2, 1], "s": list("abcdef")})
    numbers = pdf[["x", "y"]]
    df = zd.from_pandas(pdf, npartitions=2)
    lazy_numbers = df[["x", "y"]]
    cases = [
        (lazy_numbers - lazy_numbers.max(), numbers - numbers.max()),  # integer values
        (lazy_numbers / lazy_numbers.count(), numbers / numbers.count()),
        (
            (lazy_numbers - lazy_numbers.min()) / (lazy_numbers.max() - lazy_numbers.min()),
            (numbers - numbers.min()) / (numbers.max() - numbers.min()),
        ),
        (lazy_numbers - lazy_numbers.mean() * 2, numbers - numbers.mean() * 2),
        (lazy_numbers.mean() - lazy_numbers, numbers.mean() - numbers),  # reflected
        (lazy_numbers - df.mean(numeric_only=True), numbers - pdf.mean(numeric_only=True)),
        (lazy_numbers.add(lazy_numbers.mean(), fill_value=0), numbers.add(numbers.mean(), fill_value=0)),
    ]
    for lazy, expected in cases:
        assert_same(lazy, expected)
        assert list(lazy.columns) == list(expected.columns)  # the lazy schema, before computing
        assert dict(lazy.dtypes) == dict(expected.dtypes)
    gaps = pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0], "y": [np.nan, 5.0, 4.0, 3.0]})
    lazy_gaps = zd.from_pandas(gaps, npartitions=2)
    assert_same(lazy_gaps.fillna(lazy_gaps.mean()), gaps.fillna(gaps.mean()))
    with pytest.raises(UsageError, match="compute it first"):
        lazy_numbers - lazy_numbers.median()  # exact quantiles are not reductions here
