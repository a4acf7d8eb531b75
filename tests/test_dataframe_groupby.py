"""Grouped aggregations: the pure partition kernels first, then lazy groupby against pandas."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.groupby import (
    AggPlan,
    groupby_aggregate,
    groupby_chunk,
    groupby_combine,
    make_plan,
)
from zmqdask.errors import UsageError


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "k": rng.choice(["a", "b", "c", None], n),
            "j": rng.integers(0, 3, n),
            "x": rng.normal(size=n) * 10 + 100,
            "i": rng.integers(0, 50, n),
            "s": rng.choice(["p", "q", "r"], n),
        }
    )
    frame.loc[frame.index[::7], "x"] = np.nan
    return frame


def _pieces(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Uneven partitions including an empty one."""
    cuts = [0, 30, 30, 31, 150, len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(cuts)]


def _tree(pieces: list[Any], by: Any, plan: AggPlan, sort: bool = True, dropna: bool = True) -> Any:
    chunks = [groupby_chunk(piece, by, plan, sort, dropna) for piece in pieces]
    middle = [groupby_combine(chunks[:2], plan, sort), groupby_combine(chunks[2:], plan, sort)]
    return groupby_aggregate(middle, plan, sort)


def _assert_same(got: Any, expected: Any) -> None:
    if isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected)
    else:
        pd.testing.assert_frame_equal(got, expected)


SPECS = ["sum", "mean", "count", "min", "max", "std", "var", "first", "last", "nunique", ["sum", "mean", "std"]]


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("by", [["k"], ["k", "j"]], ids=str)
@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("dropna", [True, False])
def test_kernels_match_pandas(spec: Any, by: list[str], sort: bool, dropna: bool) -> None:
    frame = _frame()
    columns = ["x", "i"]
    got = _tree(_pieces(frame), by, make_plan(spec, columns), sort, dropna)
    expected = frame.groupby(by, sort=sort, dropna=dropna)[columns].agg(spec)
    _assert_same(got, expected)


def test_kernel_size_and_dict_spec() -> None:
    frame = _frame()
    got = _tree(_pieces(frame), ["k"], make_plan("size", ["x", "i"]))
    _assert_same(got, frame.groupby("k").size())
    spec = {"x": "mean", "i": ["min", "nunique"]}
    got = _tree(_pieces(frame), ["k"], make_plan(spec, ["x", "i"]))
    _assert_same(got, frame.groupby("k").agg(spec))
    spec_flat = {"x": "max", "s": "last"}
    got = _tree(_pieces(frame), ["k"], make_plan(spec_flat, ["x", "s"]))
    _assert_same(got, frame.groupby("k").agg(spec_flat))


def test_kernel_series_selection_and_named() -> None:
    frame = _frame()
    plan = make_plan("mean", ["x"], series_name="x", series_selection=True)
    _assert_same(_tree(_pieces(frame), ["k"], plan), frame.groupby("k").x.mean())
    plan = make_plan(["min", "var"], ["x"], series_name="x", series_selection=True)
    _assert_same(_tree(_pieces(frame), ["k"], plan), frame.groupby("k").x.agg(["min", "var"]))
    plan = make_plan(None, ["x", "i"], named={"total": ("x", "sum"), "top": ("i", "max")})
    _assert_same(_tree(_pieces(frame), ["k"], plan), frame.groupby("k").agg(total=("x", "sum"), top=("i", "max")))


def test_kernel_strings_sum_in_partition_order() -> None:
    frame = _frame()
    got = _tree(_pieces(frame), ["k"], make_plan("sum", ["s", "i"]))
    _assert_same(got, frame.groupby("k")[["s", "i"]].sum())


def test_kernel_single_partition_and_all_empty() -> None:
    frame = _frame()
    plan = make_plan(["sum", "std"], ["x"])
    _assert_same(
        groupby_aggregate([groupby_chunk(frame, ["k"], plan)], plan), frame.groupby("k")[["x"]].agg(["sum", "std"])
    )
    empty = frame.iloc[:0]
    got = _tree([empty, empty, empty], ["k"], plan)
    _assert_same(got, empty.groupby("k")[["x"]].agg(["sum", "std"]))


def test_kernel_variance_is_numerically_careful() -> None:
    # A huge offset with small spread: sum-of-squares formulas lose every digit here.
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"k": rng.integers(0, 4, 4000), "x": 1e9 + rng.normal(size=4000)})
    pieces = [frame.iloc[a : a + 300] for a in range(0, 4000, 300)]
    got = _tree(pieces, ["k"], make_plan(["var", "std"], ["x"]))
    # Subtracting the offset is exact for these values, so the shifted data gives the
    # reference without the cancellation problem.
    shifted = frame.assign(x=frame["x"] - 1e9)
    reference = shifted.groupby("k")[["x"]].agg(["var", "std"])
    pd.testing.assert_frame_equal(got, reference, rtol=1e-9)


def test_kernel_first_last_follow_partition_order() -> None:
    frame = pd.DataFrame({"k": [1, 1, 2, 1, 2, 2], "x": [np.nan, 5.0, np.nan, 7.0, 8.0, np.nan]})
    pieces = [frame.iloc[:1], frame.iloc[1:3], frame.iloc[3:]]
    got = _tree(pieces, ["k"], make_plan(["first", "last"], ["x"]))
    _assert_same(got, frame.groupby("k")[["x"]].agg(["first", "last"]))


def test_kernel_group_by_series_and_grouped_series() -> None:
    frame = _frame()
    keys = frame["i"] % 3
    plan = make_plan("sum", ["x", "j"])
    chunks = [groupby_chunk(piece, keys.loc[piece.index], plan) for piece in _pieces(frame)]
    _assert_same(groupby_aggregate(chunks, plan), frame.groupby(keys)[["x", "j"]].sum())
    series = frame["x"]
    plan = make_plan("max", ["__zmqdask_series__"], series_name="x", series_selection=True)
    chunks = [groupby_chunk(series.loc[p.index], keys.loc[p.index], plan) for p in _pieces(frame)]
    _assert_same(groupby_aggregate(chunks, plan), series.groupby(keys).max())


def test_plan_rejects_unknown_functions() -> None:
    with pytest.raises(UsageError, match="median"):
        make_plan("median", ["x"])
    with pytest.raises(UsageError, match="not among"):
        make_plan({"zz": "sum"}, ["x"])
    with pytest.raises(UsageError):
        make_plan({"x": "sum"}, ["x"], series_selection=True)


# --------------------------------------------------------------------------------------------
# Lazy groupby (computed in this process: no client)
# --------------------------------------------------------------------------------------------


def _lazy_pair(npartitions: int = 5) -> tuple[pd.DataFrame, Any]:
    """A pandas frame and its lazy twin; with several partitions one of them is empty."""
    frame = _frame(200)
    frame["drop"] = False
    frame.loc[40:79, "drop"] = True
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    return frame[~frame["drop"]].drop(columns="drop"), lazy[~lazy["drop"]].drop(columns="drop")


METHODS = ["sum", "mean", "count", "min", "max", "std", "var", "size", "first", "last", "nunique"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("npartitions", [1, 5])
def test_lazy_methods_match_pandas(method: str, npartitions: int) -> None:
    frame, lazy = _lazy_pair(npartitions)
    columns = ["x", "i", "j"]
    got = getattr(lazy[["k", *columns]].groupby("k"), method)()
    _assert_same(got.compute(), getattr(frame[["k", *columns]].groupby("k"), method)())
    got = getattr(lazy.groupby(["k", "j"]).x, method)()
    _assert_same(got.compute(), getattr(frame.groupby(["k", "j"]).x, method)())


def test_lazy_partitions_really_empty() -> None:
    _, lazy = _lazy_pair(5)
    sizes = [len(lazy.get_partition(i).compute()) for i in range(lazy.npartitions)]
    assert 0 in sizes and sum(sizes) == 160


def test_lazy_agg_forms() -> None:
    frame, lazy = _lazy_pair()
    _assert_same(lazy.groupby("k").agg(["sum", "max"]).compute(), frame.groupby("k").agg(["sum", "max"]))
    spec = {"x": ["mean", "std"], "i": "nunique"}
    _assert_same(lazy.groupby("k").aggregate(spec).compute(), frame.groupby("k").aggregate(spec))
    _assert_same(
        lazy.groupby("k").agg(lo=("x", "min"), n=("i", "count")).compute(),
        frame.groupby("k").agg(lo=("x", "min"), n=("i", "count")),
    )
    _assert_same(lazy.groupby("k")[["x", "i"]].mean().compute(), frame.groupby("k")[["x", "i"]].mean())
    _assert_same(lazy.groupby("k")["x"].agg(["min", "last"]).compute(), frame.groupby("k")["x"].agg(["min", "last"]))
    _assert_same(lazy.groupby("k").x.agg(top="max").compute(), frame.groupby("k").x.agg(top="max"))
    numeric = ["k", "x", "i"]
    _assert_same(lazy[numeric].groupby("k").std(ddof=0).compute(), frame[numeric].groupby("k").std(ddof=0))


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("dropna", [True, False])
def test_lazy_sort_and_dropna(sort: bool, dropna: bool) -> None:
    frame, lazy = _lazy_pair()
    got = lazy.groupby("k", sort=sort, dropna=dropna)[["x", "i"]].sum().compute()
    _assert_same(got, frame.groupby("k", sort=sort, dropna=dropna)[["x", "i"]].sum())


def test_lazy_group_by_series() -> None:
    frame, lazy = _lazy_pair()
    _assert_same(
        lazy.groupby(lazy.i % 4).sum(numeric_only=True).compute(), frame.groupby(frame.i % 4).sum(numeric_only=True)
    )
    # Grouping by the frame's own column leaves that column out, as in pandas.
    _assert_same(lazy.groupby(lazy.k).x.mean().compute(), frame.groupby(frame.k).x.mean())
    _assert_same(lazy[["k", "i"]].groupby(lazy.k).max().compute(), frame[["k", "i"]].groupby(frame.k).max())
    _assert_same(lazy.x.groupby(lazy.k).var().compute(), frame.x.groupby(frame.k).var())
    _assert_same(lazy.x.groupby(lazy.k).size().compute(), frame.x.groupby(frame.k).size())


def test_lazy_tree_depth_does_not_change_results() -> None:
    numeric = _frame(300)[["k", "x", "i"]]
    lazy = zd.from_pandas(numeric, npartitions=12)
    for split_every in (2, 3, 100):
        got = lazy.groupby("k").agg(["mean", "var", "first"], split_every=split_every).compute()
        _assert_same(got, numeric.groupby("k").agg(["mean", "var", "first"]))


def test_lazy_groupby_reads_only_needed_columns() -> None:
    from zmqdask.dataframe.sources import FromPandas

    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=3)
    optimized = lazy.groupby("k").x.sum().optimize().expr
    sources = [e for e in optimized.walk() if isinstance(e, FromPandas)]
    assert [list(s.columns_selected or frame.columns) for s in sources] == [["k", "x"]]


def test_lazy_errors_are_raised_when_building() -> None:
    _, lazy = _lazy_pair()
    with pytest.raises(UsageError, match="zz"):
        lazy.groupby("zz")
    with pytest.raises(UsageError):
        lazy.groupby("k")["zz"]
    with pytest.raises(TypeError):
        lazy.groupby("k").s.mean()
    with pytest.raises(AttributeError):
        _ = lazy.groupby("k").nothing_here


@pytest.mark.parametrize("npartitions", [1, 6])
@pytest.mark.parametrize("dropna", [True, False])
def test_lazy_nunique_with_many_groups(npartitions: int, dropna: bool) -> None:
    rng = np.random.default_rng(4)
    n = 3000
    frame = pd.DataFrame(
        {"g": rng.integers(0, 1200, n).astype("float64"), "h": rng.integers(0, 2, n), "v": rng.integers(0, 5, n)}
    )
    frame.loc[frame.index[::11], "g"] = np.nan
    frame.loc[frame.index[::13], "v"] = np.nan
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    expected = frame.groupby("g", dropna=dropna).v.nunique()
    assert len(expected) > 900
    _assert_same(lazy.groupby("g", dropna=dropna).v.nunique(split_every=3).compute(), expected)
    _assert_same(
        lazy.groupby(["g", "h"], dropna=dropna).agg({"v": ["nunique", "count"]}).compute(),
        frame.groupby(["g", "h"], dropna=dropna).agg({"v": ["nunique", "count"]}),
    )


def _mixed_keys(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "f": rng.integers(0, 5, n).astype(float),
            "i": rng.integers(0, 5, n),
            "s": pd.array(rng.choice(["b", "a", "c"], n), dtype="str"),
            "o": pd.array(rng.choice(["b", "a", "c"], n), dtype=object),
            "b": rng.integers(0, 2, n).astype(bool),
            "t": pd.Timestamp("2000-01-01") + pd.to_timedelta(rng.integers(0, 4, n), "D"),
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
        }
    )
    frame.loc[frame.index[::7], "f"] = np.nan
    frame.loc[frame.index[::9], "s"] = None
    frame.loc[frame.index[::5], "x"] = np.nan
    frame.loc[frame.index[3], "y"] = np.inf
    frame.loc[frame.index[4], "y"] = -np.inf
    return frame


@pytest.mark.parametrize("key", ["f", "i", "s", "o", "b", "t"])
@pytest.mark.parametrize(
    "spec", ["sum", "mean", "count", "size", "min", "max", ["sum", "count", "mean"], ["min", "max", "mean"]], ids=str
)
@pytest.mark.parametrize("dropna", [True, False])
def test_counting_kernel_equals_the_general_one(key: str, spec: Any, dropna: bool, monkeypatch: Any) -> None:
    from zmqdask.dataframe import groupby as module

    frame = _mixed_keys()
    columns = [c for c in ["x", "y", "i"] if c != key]
    plan = make_plan(spec, columns)
    for piece in (frame, frame.iloc[:0], frame.iloc[:1], frame[frame[key].isna()], frame.iloc[::2]):
        fast = groupby_chunk(piece, [key], plan, True, dropna)
        with monkeypatch.context() as patched:
            patched.setattr(module, "_counting_chunk", lambda *args: None)
            general = groupby_chunk(piece, [key], plan, True, dropna)
        pd.testing.assert_frame_equal(fast.main, general.main)
    # Both kernels mix in one reduction: partial states are interchangeable.
    _assert_same(
        zd.from_pandas(frame, npartitions=4).groupby(key, dropna=dropna)[columns].agg(spec).compute(),
        frame.groupby(key, dropna=dropna)[columns].agg(spec),
    )


def test_generated_string_keys_group_by_remembered_codes() -> None:
    from zmqdask.dataframe.keycodes import factorize, known_codes
    from zmqdask.datasets import timeseries

    lazy = timeseries(end="2000-01-04", freq="1min", seed=2)
    part = lazy.get_partition(1).compute()
    known = known_codes(part["name"])
    assert known is not None
    codes, categories = known
    assert (categories[codes] == part["name"].to_numpy()).all()
    copied = pd.Series(list(part["name"]), dtype=part["name"].dtype, name="name")
    assert known_codes(copied) is None
    fresh_codes, fresh_uniques = factorize(copied)
    assert (fresh_uniques[fresh_codes] == categories[codes]).all()
    whole = lazy.compute()
    _assert_same(lazy.groupby("name").x.mean().compute(), whole.groupby("name").x.mean())
    _assert_same(
        lazy[lazy.x > 0.5].groupby("name").agg({"y": ["sum", "count"]}).compute(),
        whole[whole.x > 0.5].groupby("name").agg({"y": ["sum", "count"]}),
    )


@pytest.mark.parametrize("method", ["median", "prod", "idxmax", "idxmin"])
def test_whole_group_aggregations_match_pandas_sorted_by_key(method: str) -> None:
    frame = _frame()
    numeric = frame[["j", "x", "i"]]
    lazy = zd.from_pandas(frame, npartitions=4)
    by_j = getattr(lazy[["j", "x", "i"]].groupby("j"), method)().compute()
    pd.testing.assert_frame_equal(by_j, getattr(numeric.groupby("j"), method)())
    by_k = getattr(lazy.groupby("k").i, method)().compute()
    pd.testing.assert_series_equal(by_k, getattr(frame.groupby("k").i, method)())
    if method in ("median", "prod"):  # as pandas: no such aggregation of strings
        with pytest.raises(UsageError, match=rf"groupby\(\.\.\.\)\.{method}\(\) on sample data"):
            getattr(lazy.groupby("j"), method)()


def test_grouped_value_counts_match_pandas() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    # Groups by key, each group's values by count, as pandas orders them.
    pd.testing.assert_series_equal(lazy.groupby("j").s.value_counts().compute(), frame.groupby("j").s.value_counts())


def test_groupby_level_and_what_it_refuses() -> None:
    frame = _frame().set_index("j").sort_index()
    lazy = zd.from_pandas(frame, npartitions=4)
    pd.testing.assert_series_equal(lazy.groupby(level=0).x.sum().compute(), frame.groupby(level=0).x.sum())
    unnamed = frame.rename_axis(None)
    lazy_unnamed = zd.from_pandas(unnamed, npartitions=4)
    pd.testing.assert_series_equal(lazy_unnamed.i.groupby(level=0).max().compute(), unnamed.i.groupby(level=0).max())
    with pytest.raises(UsageError, match="only level"):
        lazy.groupby(level=1)


@pytest.mark.parametrize("method", ["cumsum", "cumprod", "cummax", "cummin", "cumcount", "shift", "diff"])
@pytest.mark.parametrize("sort", [True, False])
def test_per_row_group_methods_match_pandas_row_for_row(method: str, sort: bool) -> None:
    frame = _frame()
    # Unsorted: unknown divisions, as after read_csv; only partitioning lines rows up.
    lazy = zd.from_pandas(frame, npartitions=4, sort=sort)
    result = getattr(lazy.groupby("k").x, method)()
    assert result.divisions == lazy.divisions
    pd.testing.assert_series_equal(result.compute(), getattr(frame.groupby("k").x, method)())
    # Partitioned like the frame, so it lines up with it and its columns.
    pd.testing.assert_frame_equal(
        lazy.assign(r=result).compute(), frame.assign(r=getattr(frame.groupby("k").x, method)())
    )


def test_transform_lines_up_with_its_frame_even_with_unknown_divisions() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=5, sort=False)
    share = lazy.x / lazy.groupby("j").x.transform("sum")
    pd.testing.assert_series_equal(share.compute(), frame.x / frame.groupby("j").x.transform("sum"))
    kept = lazy[lazy.i > 10]
    deviation = kept.x - kept.groupby(["k", "j"]).x.transform("mean")
    expected = frame[frame.i > 10].x - frame[frame.i > 10].groupby(["k", "j"]).x.transform("mean")
    pd.testing.assert_series_equal(deviation.compute(), expected)
    both = kept.groupby("j")[["x", "i"]].transform(lambda g: g - g.min())
    expected_both = frame[frame.i > 10].groupby("j")[["x", "i"]].transform(lambda g: g - g.min())
    pd.testing.assert_frame_equal(both.compute(), expected_both)


def test_per_row_results_grouped_by_series_and_of_a_series() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    key, lazy_key = frame.i % 3, lazy.i % 3
    pd.testing.assert_series_equal(lazy.x.groupby(lazy_key).cumsum().compute(), frame.x.groupby(key).cumsum())
    pd.testing.assert_series_equal(
        lazy.x.groupby(lazy.k).transform("mean").compute(), frame.x.groupby(frame.k).transform("mean")
    )
    pd.testing.assert_frame_equal(
        lazy.groupby(lazy_key)[["x", "i"]].cumsum().compute(), frame.groupby(key)[["x", "i"]].cumsum()
    )
    shifted = lazy.groupby(["k", lazy_key]).x.shift(1)
    pd.testing.assert_series_equal(shifted.compute(), frame.groupby(["k", key]).x.shift(1))
    # A key partitioned differently (unknown divisions) cannot be lined up with the rows.
    unsorted = zd.from_pandas(frame, npartitions=4, sort=False)
    with pytest.raises(UsageError, match="cannot line these collections up"):
        unsorted.x.groupby(unsorted.shuffle(on="j").j)


def test_rows_partitioned_differently_with_unknown_divisions_are_not_paired() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4, sort=False)
    shuffled = lazy.shuffle(on="j")
    for other in (shuffled.x, lazy.sort_values("i").x, zd.from_pandas(frame, npartitions=4).x):
        with pytest.raises(UsageError, match="cannot line these collections up"):
            lazy.x - other
    with pytest.raises(UsageError, match="cannot line these collections up"):
        lazy.assign(y=shuffled.i)
    # The same steps on both sides keep partitions paired: filters, arithmetic, scans.
    kept = lazy[lazy.i > 5]
    pd.testing.assert_series_equal(
        (kept.x - lazy.x.cumsum()).compute(), frame[frame.i > 5].x - frame.x.cumsum()
    )
    pd.testing.assert_series_equal((shuffled.x - shuffled.i).compute().sort_index(), (frame.x - frame.i).sort_index())


def test_group_shift_takes_dask_meta_and_a_fill_value() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    shifted = lazy.groupby("k").x.shift(2, meta=("x", "float64"))
    assert shifted.dtype == "float64"
    pd.testing.assert_series_equal(shifted.compute().sort_index(), frame.groupby("k").x.shift(2).sort_index())
    filled = lazy.groupby("k").i.shift(1, fill_value=-1).compute().sort_index()
    pd.testing.assert_series_equal(filled, frame.groupby("k").i.shift(1, fill_value=-1).sort_index())
    assert lazy.i.nunique_approx().compute() == frame.i.nunique()


def test_get_group_by_one_and_by_several_keys() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    pd.testing.assert_frame_equal(lazy.groupby("k").get_group("b").compute(), frame.groupby("k").get_group("b"))
    pd.testing.assert_frame_equal(
        lazy.groupby(["k", "j"]).get_group(("a", 2)).compute(), frame.groupby(["k", "j"]).get_group(("a", 2))
    )
    with pytest.raises(UsageError, match="2 key values"):
        lazy.groupby(["k", "j"]).get_group("a")


@pytest.mark.parametrize(
    "spec",
    [{"x": "median", "i": "prod"}, {"x": ["median", "mean"], "i": "sum"}, ["median", "max"]],
    ids=["dict", "dict-of-lists", "list"],
)
def test_agg_with_whole_group_aggregations_matches_pandas(spec: Any) -> None:
    frame = _frame()[["j", "x", "i"]]
    lazy = zd.from_pandas(frame, npartitions=4)
    pd.testing.assert_frame_equal(lazy.groupby("j").agg(spec).compute(), frame.groupby("j").agg(spec))
    named = lazy.groupby("j").agg(mid=("x", "median"), total=("i", "sum")).compute()
    pd.testing.assert_frame_equal(named, frame.groupby("j").agg(mid=("x", "median"), total=("i", "sum")))
    selected = lazy.groupby("j").x.agg(mid="median", top="max").compute()
    pd.testing.assert_frame_equal(selected, frame.groupby("j").x.agg(mid="median", top="max"))


def test_groupby_by_the_index_name_and_dask_keywords() -> None:
    pdf = pd.DataFrame({"k": [1, 2, 1, 3, 2, 1] * 3, "x": np.arange(18.0)})
    lazy = zd.from_pandas(pdf, npartitions=3)
    by_index, pandas_by_index = lazy.set_index("k"), pdf.set_index("k")
    pd.testing.assert_series_equal(by_index.groupby("k").x.sum().compute(), pandas_by_index.groupby("k").x.sum())
    pd.testing.assert_frame_equal(by_index.groupby("k").max().compute(), pandas_by_index.groupby("k").max())
    expected = pdf.groupby("k").x.sum()
    grouped = lazy.groupby("k", observed=True, group_keys=False)
    pd.testing.assert_series_equal(grouped.x.sum(split_out=2).compute(), expected)
    pd.testing.assert_series_equal(lazy.groupby("k").x.sum(shuffle_method="tasks").compute(), expected)
    pd.testing.assert_frame_equal(
        lazy.groupby("k").agg({"x": "sum"}, split_out=2).compute(), pdf.groupby("k").agg({"x": "sum"})
    )
    with pytest.raises(UsageError, match="min_count"):
        lazy.groupby("k").x.sum(min_count=1)


def test_groupby_apply_without_group_keys_keeps_the_rows_index() -> None:
    pdf = pd.DataFrame({"k": list("abab" * 5), "x": np.arange(20.0)})
    lazy = zd.from_pandas(pdf, npartitions=3)
    for func in (lambda g: g.nlargest(2, "x"), lambda g: g.assign(r=g.x - g.x.mean())):
        expected = pdf.groupby("k", group_keys=False).apply(func).sort_index()
        got = lazy.groupby("k", group_keys=False).apply(func).compute().sort_index()
        pd.testing.assert_frame_equal(got, expected)
    keyed = lazy.groupby("k").apply(lambda g: g.nlargest(2, "x")).compute().sort_index()
    pd.testing.assert_frame_equal(keyed, pdf.groupby("k").apply(lambda g: g.nlargest(2, "x")).sort_index())


def test_groupby_unique_lists_each_groups_values_in_order_of_appearance() -> None:
    pdf = pd.DataFrame({"k": list("abcab" * 4), "x": np.arange(20) % 7})
    got = zd.from_pandas(pdf, npartitions=3).groupby("k").x.unique().compute()
    expected = pdf.groupby("k").x.unique()
    assert got.index.equals(expected.index)
    for key in expected.index:
        assert list(got[key]) == list(expected[key])
    with pytest.raises(UsageError, match="select one first"):
        zd.from_pandas(pdf, npartitions=2).groupby("k").unique()


# --------------------------------------------------------------------------------------------
# as_index=False: the keys as first columns, numbered 0..n-1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("npartitions", [1, 5])
def test_as_index_false_matches_pandas(method: str, npartitions: int) -> None:
    frame, lazy = _lazy_pair(npartitions)
    columns = ["k", "x", "i", "j"]
    got = getattr(lazy[columns].groupby("k", as_index=False), method)().compute()
    pd.testing.assert_frame_equal(got, getattr(frame[columns].groupby("k", as_index=False), method)())
    got = getattr(lazy.groupby(["k", "j"], as_index=False).x, method)().compute()
    pd.testing.assert_frame_equal(got, getattr(frame.groupby(["k", "j"], as_index=False).x, method)())
    got = getattr(lazy.groupby(["j", "k"], as_index=False, sort=False, dropna=False)[["x", "i"]], method)()
    expected = getattr(frame.groupby(["j", "k"], as_index=False, sort=False, dropna=False)[["x", "i"]], method)()
    pd.testing.assert_frame_equal(got.compute(), expected)
    assert isinstance(got.compute().index, pd.RangeIndex)


def test_as_index_false_agg_forms_match_pandas() -> None:
    frame, lazy = _lazy_pair()
    numeric = ["k", "j", "x", "i"]
    cases: list[Any] = [
        lambda d: d[numeric].groupby("k", as_index=False).agg("mean"),
        lambda d: d[numeric].groupby("k", as_index=False).agg(["sum", "max"]),
        lambda d: d.groupby("k", as_index=False).agg({"x": ["mean", "std"], "i": "nunique"}),
        lambda d: d.groupby("k", as_index=False).agg({"x": "min", "s": "last"}),
        lambda d: d.groupby(["k", "j"], as_index=False).agg(lo=("x", "min"), n=("i", "count")),
        lambda d: d.groupby("k", as_index=False)["x"].agg(["min", "last"]),
        lambda d: d.groupby("k", as_index=False).x.agg(top="max"),
        lambda d: d.groupby("k", as_index=False)[["x", "i"]].agg("sum"),
        lambda d: d[numeric].groupby("k", as_index=False).std(ddof=0),
        # A named aggregation taking a key's name: the key is left out, as pandas does.
        lambda d: d.groupby("k", as_index=False).agg(n=("x", "min"), k=("i", "max")),
    ]
    for case in cases:
        pd.testing.assert_frame_equal(case(lazy).compute(), case(frame))


def test_as_index_false_by_series_keys_matches_pandas() -> None:
    frame, lazy = _lazy_pair()
    pd.testing.assert_frame_equal(
        lazy.groupby(lazy.i % 4, as_index=False).x.sum().compute(), frame.groupby(frame.i % 4, as_index=False).x.sum()
    )
    # The key is named like an aggregated column: pandas keeps the aggregated one.
    pd.testing.assert_frame_equal(
        lazy[["x", "i"]].groupby(lazy.i % 4, as_index=False).sum().compute(),
        frame[["x", "i"]].groupby(frame.i % 4, as_index=False).sum(),
    )
    pd.testing.assert_frame_equal(
        lazy.groupby(["k", (lazy.i % 3).rename("r")], as_index=False).x.mean().compute(),
        frame.groupby(["k", (frame.i % 3).rename("r")], as_index=False).x.mean(),
    )


@pytest.mark.parametrize("method", ["median", "prod", "idxmax", "idxmin"])
def test_as_index_false_whole_group_aggregations_match_pandas(method: str) -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    got = getattr(lazy[["j", "x", "i"]].groupby("j", as_index=False), method)().compute()
    pd.testing.assert_frame_equal(got, getattr(frame[["j", "x", "i"]].groupby("j", as_index=False), method)())
    got = getattr(lazy.groupby(["k", "j"], as_index=False).i, method)().compute()
    pd.testing.assert_frame_equal(got, getattr(frame.groupby(["k", "j"], as_index=False).i, method)())


def test_as_index_false_value_counts_unique_and_agg_with_a_median() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    counts = lazy.groupby("j", as_index=False).s.value_counts().compute()
    pd.testing.assert_frame_equal(counts, frame.groupby("j", as_index=False).s.value_counts())
    spec = {"x": ["median", "mean"], "i": "sum"}
    pd.testing.assert_frame_equal(
        lazy.groupby("j", as_index=False).agg(spec).compute(), frame.groupby("j", as_index=False).agg(spec)
    )
    pd.testing.assert_frame_equal(
        lazy.groupby("j", as_index=False).x.agg(mid="median").compute(),
        frame.groupby("j", as_index=False).x.agg(mid="median"),
    )
    got = lazy.groupby("j", as_index=False).i.unique().compute()
    expected = frame.groupby("j", as_index=False).i.unique()
    assert list(got.columns) == list(expected.columns) and got.index.equals(expected.index)
    assert [list(v) for v in got.i] == [list(v) for v in expected.i]


def test_as_index_false_per_row_methods_are_as_in_pandas() -> None:
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=4)
    pd.testing.assert_series_equal(
        lazy.groupby("k", as_index=False).x.cumsum().compute(), frame.groupby("k", as_index=False).x.cumsum()
    )
    pd.testing.assert_series_equal(
        lazy.groupby("k", as_index=False).x.transform("mean").compute(),
        frame.groupby("k", as_index=False).x.transform("mean"),
    )


def test_as_index_false_what_it_refuses() -> None:
    frame, lazy = _lazy_pair()
    with pytest.raises(UsageError, match=r"as_index=False\) needs a DataFrame.*reset_index"):
        lazy.x.groupby(lazy.k, as_index=False)
    with pytest.raises(UsageError, match=r"as_index=False\)\.apply.*reset_index"):
        lazy.groupby("k", as_index=False).apply(lambda g: g.x.sum())
    # A key whose name the size column takes: pandas refuses it too.
    with pytest.raises(ValueError, match="cannot insert size"):
        frame.groupby((frame.i % 2).rename("size"), as_index=False).size()
    with pytest.raises(ValueError, match="cannot insert size"):
        lazy.groupby((lazy.i % 2).rename("size"), as_index=False).size()


# --------------------------------------------------------------------------------------------
# observed=False: the categories of categorical keys without rows, as empty groups
# --------------------------------------------------------------------------------------------


def _categorical_pair(npartitions: int = 4) -> tuple[pd.DataFrame, Any]:
    """A frame keyed by a categorical with unobserved categories (not in sorted order)."""
    frame = _frame(160)
    categories = ["c", "z", "b", "a", "y"]
    frame["c"] = pd.Categorical(frame["k"], categories=categories)
    frame = frame.drop(columns=["k", "s"])
    return frame, zd.from_pandas(frame, npartitions=npartitions)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("dropna", [True, False])
def test_observed_false_matches_pandas(method: str, sort: bool, dropna: bool) -> None:
    frame, lazy = _categorical_pair()
    options = {"observed": False, "sort": sort, "dropna": dropna}
    got = getattr(lazy.groupby("c", **options), method)().compute()
    _assert_same(got, getattr(frame.groupby("c", **options), method)())
    got = getattr(lazy.groupby(["j", "c"], **options).x, method)().compute()
    _assert_same(got, getattr(frame.groupby(["j", "c"], **options).x, method)())
    got = getattr(lazy.groupby(["c", "j"], as_index=False, **options)[["x", "i"]], method)().compute()
    _assert_same(got, getattr(frame.groupby(["c", "j"], as_index=False, **options)[["x", "i"]], method)())


def test_observed_false_agg_forms_and_series_keys_match_pandas() -> None:
    frame, lazy = _categorical_pair()
    spec = {"x": ["mean", "min"], "i": "sum"}
    _assert_same(lazy.groupby("c", observed=False).agg(spec).compute(), frame.groupby("c", observed=False).agg(spec))
    _assert_same(
        lazy.groupby("c", observed=False).agg(lo=("x", "min"), n=("i", "count")).compute(),
        frame.groupby("c", observed=False).agg(lo=("x", "min"), n=("i", "count")),
    )
    _assert_same(lazy.i.groupby(lazy.c, observed=False).sum().compute(), frame.i.groupby(frame.c, observed=False).sum())
    # Only some partitions: most categories have no rows at all.
    few = lazy.partitions[:1]
    expected = frame.iloc[:40].groupby("c", observed=False).x.mean()
    _assert_same(few.groupby("c", observed=False).x.mean().compute(), expected)


def test_observed_false_needs_known_categories() -> None:
    frame = _frame(60)
    lazy = zd.from_pandas(frame, npartitions=3)
    unknown = lazy.assign(s=lazy.s.astype("category"))
    with pytest.raises(UsageError, match=r"categories of key 's'.*\.cat\.as_known\(\)"):
        unknown.groupby("s", observed=False)
    # Observed groups need no categories; once known, the unobserved ones can be added.
    expected = frame.assign(s=frame.s.astype("category")).groupby("s", observed=True).x.sum()
    _assert_same(unknown.groupby("s").x.sum().compute(), expected)
    known = unknown.assign(s=unknown.s.cat.as_known())
    _assert_same(
        known.groupby("s", observed=False).x.sum().compute(),
        frame.assign(s=frame.s.astype("category")).groupby("s", observed=False).x.sum(),
    )


def test_observed_false_where_it_is_refused_and_where_it_changes_nothing() -> None:
    frame, lazy = _categorical_pair()
    for call in (
        lambda g: g.median(),
        lambda g: g.x.value_counts(),
        lambda g: g.agg({"x": "median"}),
        lambda g: g.apply(lambda part: part.x.sum()),
    ):
        with pytest.raises(UsageError, match=r"groupby\(observed=False\)\.\w+\(\.\.\.\) is not supported"):
            call(lazy.groupby("c", observed=False))
    # Keys that are not categorical: observed changes nothing, for every method.
    plain = frame.assign(c=frame.c.astype(object))
    lazy_plain = zd.from_pandas(plain, npartitions=4)
    _assert_same(
        lazy_plain.groupby("c", observed=False).x.median().compute(), plain.groupby("c", observed=False).x.median()
    )
    _assert_same(lazy_plain.groupby("c", observed=False).x.sum().compute(), plain.groupby("c", observed=False).x.sum())
    # Per-row results have one row per row whatever observed says.
    _assert_same(
        lazy.groupby("c", observed=False).x.cumsum().compute(), frame.groupby("c", observed=False).x.cumsum()
    )


def test_as_index_and_observed_through_a_real_client(client: Any) -> None:
    frame, lazy = _categorical_pair()
    expected = frame.groupby("c", observed=False, as_index=False).agg(lo=("x", "min"), n=("i", "nunique"))
    got = lazy.groupby("c", observed=False, as_index=False).agg(lo=("x", "min"), n=("i", "nunique")).compute()
    pd.testing.assert_frame_equal(got, expected)
    got = lazy.groupby("j", as_index=False).x.median().compute()
    pd.testing.assert_frame_equal(got, frame.groupby("j", as_index=False).x.median())


@pytest.mark.parametrize("npartitions", [3, 7])
def test_categoricals_whose_partitions_differ_keep_their_dtype_as_keys_and_values(npartitions: int) -> None:
    rows = np.arange(90)
    plain = pd.DataFrame({"c": [f"v{r // 10 + r % 3}" for r in rows], "x": (rows * 7) % 31, "k": rows % 4})
    # Categorized partition by partition (as astype does lazily): each has its own categories.
    lazy = zd.from_pandas(plain, npartitions=npartitions).astype({"c": "category"})
    frame = plain.astype({"c": "category"})
    _assert_same(lazy.groupby("c", observed=True).x.sum().compute(), frame.groupby("c", observed=True).x.sum())
    _assert_same(
        lazy.groupby(["k", "c"], observed=True).x.mean(split_every=2).compute(),
        frame.groupby(["k", "c"], observed=True).x.mean(),
    )
    _assert_same(lazy.groupby("k").c.first().compute(), frame.groupby("k").c.first())
    spec = {"c": ["first", "last"], "x": "max"}
    _assert_same(lazy.groupby("k").agg(spec).compute(), frame.groupby("k").agg(spec))


# --------------------------------------------------------------------------------------------
# Aggregation: a user's chunk / agg / finalize steps
# --------------------------------------------------------------------------------------------


def _custom_sum_and_mean() -> tuple[Any, Any]:
    """A sum and a mean as Aggregations (the examples of Dask's documentation)."""
    custom_sum = zd.Aggregation("custom_sum", lambda s: s.sum(), lambda s0: s0.sum())
    custom_mean = zd.Aggregation(
        "custom_mean",
        lambda s: (s.count(), s.sum()),
        lambda count, total: (count.sum(), total.sum()),
        lambda count, total: total / count,
    )
    return custom_sum, custom_mean


def _custom_pair(npartitions: int) -> tuple[pd.DataFrame, Any]:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"k": rng.integers(0, 6, 200), "x": rng.normal(size=200), "y": rng.integers(0, 50, 200)})
    frame.loc[frame.index[::7], "x"] = np.nan
    return frame, zd.from_pandas(frame, npartitions=npartitions)


def _renamed(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """``frame`` with the function names of its (column, function) labels renamed."""
    frame = frame.copy()
    frame.columns = pd.MultiIndex.from_tuples([(column, names.get(func, func)) for column, func in frame.columns])
    return frame


@pytest.mark.parametrize("npartitions", [1, 7])
@pytest.mark.parametrize("split_every", [None, 2])
def test_custom_aggregations_match_the_builtin_ones(npartitions: int, split_every: int | None) -> None:
    custom_sum, custom_mean = _custom_sum_and_mean()
    frame, lazy = _custom_pair(npartitions)
    grouped, expected = lazy.groupby("k"), frame.groupby("k")
    _assert_same(grouped.agg(custom_sum, split_every=split_every).compute(), expected.sum())
    _assert_same(grouped.agg(custom_mean, split_every=split_every).compute(), expected.mean())
    _assert_same(grouped.x.agg(custom_mean, split_every=split_every).compute(), expected.x.mean())
    _assert_same(lazy.x.groupby(lazy.k).agg(custom_sum).compute(), frame.x.groupby(frame.k).sum())
    # Among built-in aggregations, in a list, a dict or named.
    _assert_same(
        grouped.agg([custom_mean, "sum", "max"], split_every=split_every).compute(),
        _renamed(expected.agg(["mean", "sum", "max"]), {"mean": "custom_mean"}),
    )
    _assert_same(grouped.agg({"x": custom_mean, "y": "min"}).compute(), expected.agg({"x": "mean", "y": "min"}))
    _assert_same(
        grouped.agg({"x": [custom_sum, "count"], "y": "max"}).compute(),
        _renamed(expected.agg({"x": ["sum", "count"], "y": ["max"]}), {"sum": "custom_sum"}),
    )
    _assert_same(
        grouped.x.agg([custom_mean, "count"]).compute(),
        expected.x.agg(["mean", "count"]).rename(columns={"mean": "custom_mean"}),
    )
    _assert_same(
        grouped.agg(m=("x", custom_mean), s=("y", "sum")).compute(), expected.agg(m=("x", "mean"), s=("y", "sum"))
    )
    flat = lazy.groupby("k", as_index=False)
    _assert_same(flat.agg(custom_mean).compute(), frame.groupby("k", as_index=False).mean())
    keys = [frame.k, frame.y > 20]
    _assert_same(lazy.groupby(["k", lazy.y > 20]).x.agg(custom_mean).compute(), frame.groupby(keys).x.mean())


def test_custom_aggregation_steps_see_grouped_series_and_agg_runs_at_the_end() -> None:
    frame, lazy = _custom_pair(4)
    # chunk lists a group's values, agg keeps the distinct ones, finalize counts them: agg
    # must run even over a single partition's lists, or repeated values would be counted.
    distinct = zd.Aggregation(
        "distinct",
        lambda s: s.agg(lambda values: list(values.dropna())),
        lambda lists: lists.agg(lambda pieces: sorted(set().union(*pieces))),
        lambda lists: lists.map(len),
    )
    expected = frame.groupby("k").y.nunique()
    for npartitions in (1, 4):
        got = zd.from_pandas(frame, npartitions=npartitions).groupby("k").y.agg(distinct).compute()
        _assert_same(got, expected.rename("y"))
    _assert_same(lazy.groupby("k").agg({"y": distinct}).compute(), frame.groupby("k").agg({"y": "nunique"}))


def test_custom_aggregation_errors_say_what_to_do() -> None:
    custom_sum, _ = _custom_sum_and_mean()
    _, lazy = _custom_pair(4)
    with pytest.raises(UsageError, match="needs a name"):
        zd.Aggregation("", lambda s: s.sum(), lambda s: s.sum())
    with pytest.raises(UsageError, match="'m': agg must be a function of SeriesGroupBy"):
        zd.Aggregation("m", lambda s: s.sum(), "sum")
    with pytest.raises(UsageError, match="'m': finalize must be a function"):
        zd.Aggregation("m", lambda s: s.sum(), lambda s: s.sum(), finalize=3)
    two = zd.Aggregation("two", lambda s: (s.sum(), s.count()), lambda a, b: (a.sum(), b.sum()))
    with pytest.raises(UsageError, match="'two': its steps give 2 Series per group; pass finalize="):
        lazy.groupby("k").x.agg(two).compute()
    scalar = zd.Aggregation("scalar", lambda s: 1.0, lambda s: s.sum())
    with pytest.raises(UsageError, match=r"'scalar': chunk must return a Series indexed by the groups.*float"):
        lazy.groupby("k").x.agg(scalar).compute()
    with pytest.raises(UsageError, match="in two agg calls"):
        lazy.groupby("k").agg([custom_sum, "median"])
    with pytest.raises(UsageError, match=r"or a zmqdask\.dataframe\.Aggregation"):
        lazy.groupby("k").agg(lambda s: s.sum())


def test_custom_aggregation_through_worker_processes(run_async: Any) -> None:
    custom_sum, custom_mean = _custom_sum_and_mean()
    frame, lazy = _custom_pair(5)
    result = lazy.groupby("k").agg({"x": custom_mean, "y": [custom_sum, "max"]})

    async def body(client: Any) -> Any:
        return await client.compute(result)

    expected = frame.groupby("k").agg({"x": ["mean"], "y": ["sum", "max"]})
    _assert_same(run_async(body), _renamed(expected, {"mean": "custom_mean", "sum": "custom_sum"}))


def _multiindex_columns_frame() -> pd.DataFrame:
    rng = np.random.default_rng(8)
    n = 90
    return pd.DataFrame(
        {
            ("a", "x"): rng.integers(0, 9, n),
            ("a", "y"): rng.normal(size=n),
            ("b", "s"): rng.choice(list("pqr"), n),
            ("b", "t"): rng.choice(list("uv"), n),
        }
    )


@pytest.mark.parametrize(
    "compute",
    [
        lambda d: d.groupby(("b", "s")).sum(),
        lambda d: d.groupby(("b", "s")).mean(numeric_only=True),
        lambda d: d.groupby([("b", "s"), ("b", "t")]).count(),
        lambda d: d.groupby(("b", "s"))[[("a", "x"), ("a", "y")]].var(),
        lambda d: d.groupby(("b", "s"))[[("a", "x")]].nunique(),
        lambda d: d.groupby(("b", "s")).agg({("a", "x"): "sum", ("a", "y"): ["min", "max"]}),
        lambda d: d.groupby(("b", "s"))[[("a", "x"), ("a", "y")]].agg(["sum", "count"]),
        lambda d: d.groupby(("b", "s")).size(),
        lambda d: d.groupby(("b", "s"))[[("a", "y")]].cumsum(),
        lambda d: d[("a", "x")].groupby(d[("b", "s")]).max(),
        lambda d: d.groupby(("b", "s"), as_index=False)[[("a", "x")]].sum(),
        lambda d: d.groupby([("b", "s"), ("b", "t")], as_index=False).count(),
    ],
    ids=[
        "sum",
        "mean",
        "two-keys-count",
        "var",
        "nunique",
        "agg-dict",
        "agg-list",
        "size",
        "cumsum",
        "series",
        "as-index-false",
        "as-index-false-two-keys",
    ],
)
def test_groupby_on_multiindex_columns_matches_pandas(compute: Any) -> None:
    frame = _multiindex_columns_frame()
    got = compute(zd.from_pandas(frame, npartitions=4)).compute()
    expected = compute(frame)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        pd.testing.assert_series_equal(got, expected)


def test_groupby_refuses_a_tuple_selection_as_pandas() -> None:
    frame = _multiindex_columns_frame()
    with pytest.raises(ValueError, match="Cannot subset columns with a tuple"):
        frame.groupby(("b", "s"))[("a", "x")]
    lazy = zd.from_pandas(frame, npartitions=4)
    with pytest.raises(UsageError, match=r"select with a list, groupby\(...\)\[\[\('a', 'x'\)\]\]"):
        lazy.groupby(("b", "s"))[("a", "x")]
