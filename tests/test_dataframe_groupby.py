"""Grouped aggregations: the pure partition kernels first, then lazy groupby against pandas."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

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
