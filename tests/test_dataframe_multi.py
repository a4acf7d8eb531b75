"""Joins: the partition kernel, then lazy merge/join plans against pandas, then a real cluster."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.multi import HOWS, Merge, join, merge, merge_partitions
from zmqdask.dataframe.shuffle import hash_split
from zmqdask.errors import UsageError


def _sides(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    left = pd.DataFrame(
        {"k": rng.integers(0, 30, 200), "a": rng.normal(size=200), "s": rng.choice(["p", "q", None], 200)}
    )
    right = pd.DataFrame(
        {"k": rng.integers(0, 40, 60).astype("float64"), "b": rng.normal(size=60), "s": rng.choice(["p", "q"], 60)}
    )
    right.loc[3, "k"] = np.nan
    return left, right


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a fixed order: a distributed join does not promise pandas' row order."""
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def _strategy(result: Any) -> str:
    expr = result.expr
    assert isinstance(expr, Merge)
    return expr.strategy


@pytest.mark.parametrize("how", HOWS)
def test_kernel_bucketwise_merge_equals_whole_merge(how: str) -> None:
    left, right = _sides()
    lefts, rights = hash_split(left, ["k"], 4), hash_split(right, ["k"], 4)
    pieces = [merge_partitions(lefts[j], rights[j], how, ("k",), ("k",), ("_x", "_y"), False) for j in range(4)]
    expected = pd.merge(left, right, how=how, on="k")
    pd.testing.assert_frame_equal(_canonical(pd.concat(pieces)), _canonical(expected))


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize(
    "nleft,nright,expected_plan",
    [(1, 1, "single"), (5, 1, None), (1, 4, None), (5, 3, "hash")],
)
def test_merge_plans_match_pandas(how: str, nleft: int, nright: int, expected_plan: str | None) -> None:
    left, right = _sides()
    lazy = zd.from_pandas(left, npartitions=nleft).merge(zd.from_pandas(right, npartitions=nright), how=how, on="k")
    if expected_plan is None:
        broadcast_ok = (nright == 1 and how in ("inner", "left")) or (nleft == 1 and how in ("inner", "right"))
        expected_plan = ("broadcast-right" if nright == 1 else "broadcast-left") if broadcast_ok else "hash"
    assert _strategy(lazy) == expected_plan
    expected = pd.merge(left, right, how=how, on="k")
    pd.testing.assert_frame_equal(_canonical(lazy.compute()), _canonical(expected))


def test_merge_key_forms() -> None:
    left, right = _sides()
    lazy_left, lazy_right = zd.from_pandas(left, npartitions=4), zd.from_pandas(right, npartitions=3)
    cases = [
        ({"on": ["k", "s"]}, {"on": ["k", "s"]}),
        (
            {"left_on": "k", "right_on": "k", "suffixes": ("_l", "_r")},
            {"left_on": "k", "right_on": "k", "suffixes": ("_l", "_r")},
        ),
        ({}, {}),
    ]
    for ours, theirs in cases:
        got = merge(lazy_left, lazy_right, how="outer", **ours).compute()
        pd.testing.assert_frame_equal(_canonical(got), _canonical(pd.merge(left, right, how="outer", **theirs)))


def test_merge_column_with_index_and_pandas_right_side() -> None:
    left, right = _sides()
    indexed = right.dropna(subset=["k"]).drop_duplicates("k").set_index("k")
    lazy_left = zd.from_pandas(left, npartitions=4)
    got = lazy_left.merge(zd.from_pandas(indexed, npartitions=2), left_on="k", right_index=True, how="inner")
    expected = pd.merge(left, indexed, left_on="k", right_index=True, how="inner")
    pd.testing.assert_frame_equal(got.compute().sort_index(), expected.sort_index())
    got = merge(lazy_left, indexed, left_on="k", right_index=True)
    assert _strategy(got) == "broadcast-right"
    pd.testing.assert_frame_equal(got.compute().sort_index(), expected.sort_index())


@pytest.mark.parametrize("how", HOWS)
def test_join_on_index(how: str) -> None:
    left, right = _sides()
    lefts = left.groupby("k")[["a"]].sum()
    rights = right.groupby("k")[["b"]].sum()
    lazy_left, lazy_right = zd.from_pandas(lefts, npartitions=3), zd.from_pandas(rights, npartitions=4)
    got = lazy_left.join(lazy_right, how=how)
    pd.testing.assert_frame_equal(got.compute().sort_index(), lefts.join(rights, how=how).sort_index())
    got = join(lazy_left, lazy_right, how=how)
    pd.testing.assert_frame_equal(got.compute().sort_index(), lefts.join(rights, how=how).sort_index())


def test_join_aligned_partitions_need_no_shuffle() -> None:
    index = pd.Index(np.arange(100), name="id")
    lefts = pd.DataFrame({"a": np.arange(100.0)}, index=index)
    rights = pd.DataFrame({"b": np.arange(100) % 7}, index=index).iloc[::2]
    lazy_left = zd.from_pandas(lefts, npartitions=4)
    lazy_right = zd.from_pandas(rights, npartitions=1).repartition(divisions=lazy_left.divisions)
    got = lazy_left.join(lazy_right)
    assert _strategy(got) == "aligned"
    assert got.divisions == lazy_left.divisions
    pd.testing.assert_frame_equal(got.compute(), lefts.join(rights))


def test_join_on_column() -> None:
    left, right = _sides()
    rights = right.dropna(subset=["k"]).drop_duplicates("k").set_index("k")[["b"]]
    lazy = join(zd.from_pandas(left, npartitions=4), zd.from_pandas(rights, npartitions=2), on="k")
    pd.testing.assert_frame_equal(lazy.compute().sort_index(), left.join(rights, on="k").sort_index())


def test_merge_with_empty_partitions() -> None:
    left, right = _sides()
    left["n"] = np.arange(len(left))
    lazy_left = zd.from_pandas(left, npartitions=5)
    lazy_left = lazy_left[lazy_left.n >= 80]
    assert len(lazy_left.get_partition(0).compute()) == 0
    got = lazy_left.merge(zd.from_pandas(right, npartitions=2), on="k", how="left").compute()
    expected = pd.merge(left[left.n >= 80], right, on="k", how="left")
    pd.testing.assert_frame_equal(_canonical(got), _canonical(expected))


def test_merge_errors() -> None:
    left, right = _sides()
    lazy_left, lazy_right = zd.from_pandas(left, npartitions=2), zd.from_pandas(right, npartitions=2)
    with pytest.raises(UsageError):
        lazy_left.merge(lazy_right, how="cross")
    with pytest.raises(UsageError):
        lazy_left.merge(lazy_right, on="zz")
    with pytest.raises(UsageError):
        merge(lazy_left, lazy_right, left_on="k")
    with pytest.raises(ValueError):
        lazy_left.join(lazy_right)  # overlapping columns and no suffixes, as in pandas


def test_hash_merge_through_worker_processes(run_async: Any) -> None:
    # The asynchronous client submits a whole graph in one loop tick, as one batch.
    left, right = _sides(3)
    lazy = zd.from_pandas(left, npartitions=6).merge(zd.from_pandas(right, npartitions=4), on="k", how="outer")
    assert _strategy(lazy) == "hash"
    grouped = lazy.groupby("s_x").b.agg(["count", "mean"])

    async def body(client: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        return await client.compute(lazy), await client.compute(grouped)

    merged, aggregated = run_async(body)
    expected = pd.merge(left, right, on="k", how="outer")
    pd.testing.assert_frame_equal(_canonical(merged), _canonical(expected))
    pd.testing.assert_frame_equal(aggregated, expected.groupby("s_x").b.agg(["count", "mean"]))


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("nright", [1, 3])
def test_dataframe_join_method_takes_on(how: str, nright: int) -> None:
    left, right = _sides()
    rights = right.dropna(subset=["k"]).drop_duplicates("k").set_index("k")[["b"]]
    lazy_left = zd.from_pandas(left, npartitions=4)
    got = lazy_left.join(zd.from_pandas(rights, npartitions=nright), on="k", how=how).compute()
    expected = left.join(rights, on="k", how=how)
    pd.testing.assert_frame_equal(_canonical(got.reset_index()), _canonical(expected.reset_index()))
    # A pandas right side works as well, broadcast to every partition.
    clashing = rights.rename(columns={"b": "a"})
    got = lazy_left.join(clashing, on="k", rsuffix="_r").compute()
    expected = merge_partitions(left, clashing, "left", ("k",), None, ("", "_r"), True)
    assert list(expected.columns) == ["k", "a", "s", "a_r"]
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index())


@pytest.mark.parametrize("nfirst", [1, 3])
def test_concat_matches_pandas(nfirst: int) -> None:
    left, right = _sides()
    first = left.set_index(np.arange(len(left)))
    second = right.set_index(np.arange(1000, 1000 + len(right)))
    lazy_first, lazy_second = zd.from_pandas(first, npartitions=nfirst), zd.from_pandas(second, npartitions=2)
    both = zd.concat([lazy_first, lazy_second])
    assert both.npartitions == nfirst + 2 and both.known_divisions
    pd.testing.assert_frame_equal(both.compute(), pd.concat([first, second]))
    overlapping = zd.concat([lazy_second, lazy_first])
    assert not overlapping.known_divisions
    pd.testing.assert_frame_equal(overlapping.compute(), pd.concat([second, first]))
    pd.testing.assert_series_equal(zd.concat([lazy_first.a, lazy_second.b]).compute(), pd.concat([first.a, second.b]))
    pd.testing.assert_frame_equal(
        zd.concat([lazy_first, lazy_second], ignore_index=True).compute(), pd.concat([first, second], ignore_index=True)
    )
    # Projections read only the needed columns of each input; missing ones are filled as pandas does.
    pd.testing.assert_series_equal(both["b"].compute(), pd.concat([first, second])["b"])
    pd.testing.assert_frame_equal(
        zd.merge(lazy_first, lazy_second, on="k").compute().pipe(_canonical),
        pd.merge(first, second, on="k").pipe(_canonical),
    )
    # Side by side, over index ranges that do not overlap: the union, as pandas gives it.
    pd.testing.assert_frame_equal(
        zd.concat([lazy_first, lazy_second], axis=1).compute(), pd.concat([first, second], axis=1)
    )


def test_concat_along_columns_aligns_partitions() -> None:
    left = pd.DataFrame({"x": range(20), "y": np.arange(20.0)})
    right = pd.DataFrame({"z": range(100, 120)})
    frame = zd.from_pandas(left, npartitions=3)
    side = zd.concat([frame[["x"]], frame.y], axis=1)
    assert list(side.columns) == ["x", "y"] and side.npartitions == 3
    pd.testing.assert_frame_equal(side.compute(), pd.concat([left[["x"]], left.y], axis=1))
    # Different partitions: repartitioned to common divisions first.
    both = zd.concat([frame, zd.from_pandas(right, npartitions=2)], axis=1)
    pd.testing.assert_frame_equal(both.compute(), pd.concat([left, right], axis=1))
    with pytest.raises(UsageError, match="axis must be 0"):
        zd.concat([frame, frame], axis=2)


def test_concat_inner_join_keeps_the_shared_columns() -> None:
    first = pd.DataFrame({"x": range(6), "y": list("abcdef"), "z": 1.5})
    second = pd.DataFrame({"z": [9.0] * 4, "x": range(10, 14), "w": 0}, index=range(6, 10))
    lazy_first, lazy_second = zd.from_pandas(first, npartitions=2), zd.from_pandas(second, npartitions=2)
    rows = zd.concat([lazy_first, lazy_second], join="inner")
    assert list(rows.columns) == ["x", "z"] and rows.known_divisions
    pd.testing.assert_frame_equal(rows.compute(), pd.concat([first, second], join="inner"))
    # Dask's options about partition order are accepted: the rows come as pandas gives them.
    shuffled = zd.concat([lazy_second, lazy_first], join="inner", interleave_partitions=True, ignore_index=True)
    pd.testing.assert_frame_equal(shuffled.compute(), pd.concat([second, first], join="inner", ignore_index=True))
    other = pd.DataFrame({"q": range(4)}, index=[1, 2, 3, 7])
    lazy_other = zd.from_pandas(other, npartitions=2)
    side = zd.concat([lazy_first, lazy_other], axis=1, join="inner")
    pd.testing.assert_frame_equal(side.compute(), pd.concat([first, other], axis=1, join="inner"))
    with pytest.raises(UsageError, match="join must be"):
        zd.concat([lazy_first, lazy_second], join="left")


@pytest.mark.parametrize("how", ["inner", "left", "right", "outer"])
@pytest.mark.parametrize("npartitions", [(3, 2), (3, 1), (1, 3)])
def test_merge_indicator_says_where_each_row_came_from(how: str, npartitions: tuple[int, int]) -> None:
    left = pd.DataFrame({"k": np.arange(40) % 13, "a": np.arange(40)})
    right = pd.DataFrame({"k": np.arange(0, 30, 2), "b": np.arange(15)})
    lazy = zd.from_pandas(left, npartitions=npartitions[0]).merge(
        zd.from_pandas(right, npartitions=npartitions[1]), on="k", how=how, indicator=True
    )
    expected = left.merge(right, on="k", how=how, indicator=True)
    assert list(lazy.columns) == list(expected.columns) and lazy["_merge"].dtype == expected["_merge"].dtype
    got = lazy.compute().sort_values(["k", "a", "b"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.sort_values(["k", "a", "b"]).reset_index(drop=True), check_dtype=False)
    with pytest.raises(UsageError, match="indicator"):
        zd.merge(zd.from_pandas(left, npartitions=2), zd.from_pandas(right, npartitions=2), indicator="source")


def test_combine_first_fills_from_the_other_and_adds_its_labels() -> None:
    first = pd.DataFrame(
        {"x": [1.0, np.nan, 3.0, np.nan, 5.0, 6.0], "y": [None, "b", "c", None, "e", "f"]}, index=[0, 2, 4, 6, 8, 10]
    )
    second = pd.DataFrame({"x": [10.0, 20.0, 30.0, 40.0], "z": [1, 2, 3, 4]}, index=[1, 2, 6, 12])
    lazy_first, lazy_second = zd.from_pandas(first, npartitions=3), zd.from_pandas(second, npartitions=2)
    # Partitions where one side has no rows are where pandas itself behaves differently.
    pd.testing.assert_frame_equal(lazy_first.combine_first(lazy_second).compute(), first.combine_first(second))
    pd.testing.assert_series_equal(lazy_first.x.combine_first(lazy_second.x).compute(), first.x.combine_first(second.x))
    ints, other_ints = pd.Series([1, 2, 3], index=[0, 5, 9]), pd.Series([7, 8], index=[1, 5])
    got = zd.from_pandas(ints, npartitions=2).combine_first(zd.from_pandas(other_ints, npartitions=1)).compute()
    pd.testing.assert_series_equal(got, ints.combine_first(other_ints))
    with pytest.raises(UsageError, match="known divisions"):
        lazy_first.reset_index().combine_first(lazy_second.reset_index().repartition(npartitions=2))
    with pytest.raises(UsageError, match="fillna"):
        lazy_first.combine_first(3)


def test_concat_and_combine_first_keep_values_of_categories_not_known_yet() -> None:
    frame = pd.DataFrame({"k": ["a", "b", None, "a", "c", "b"], "x": np.arange(6.0)})
    other = pd.DataFrame({"k": ["z", "b", "q"], "x": [7.0, 8.0, 9.0]}, index=[10, 11, 12])
    lazy = zd.from_pandas(frame, npartitions=2)
    lazy_other = zd.from_pandas(other, npartitions=2)
    cat, cat_other = lazy.assign(k=lazy.k.astype("category")), lazy_other.assign(k=lazy_other.k.astype("category"))
    expected = pd.concat([frame, other])
    got = zd.concat([cat, cat_other]).compute()
    assert got.k.astype(object).tolist() == expected.k.tolist()
    assert zd.concat([cat.k, cat_other.k]).compute().astype(object).tolist() == expected.k.tolist()
    # A frame without the column: missing there, as pandas.
    missing = zd.concat([cat, lazy_other[["x"]]]).compute()
    assert missing.k.astype(object).tolist() == pd.concat([frame, other[["x"]]]).k.tolist()
    combined = cat.combine_first(cat_other).compute()
    assert combined.k.astype(object).tolist() == frame.combine_first(other).k.tolist()


def test_index_joins_of_known_divisions_keep_them_and_line_up_with_their_inputs() -> None:
    left = pd.DataFrame({"x": np.arange(40.0)}, index=np.arange(0, 80, 2))
    right = pd.DataFrame({"y": np.arange(30.0)}, index=np.arange(0, 90, 3))
    a, b = zd.from_pandas(left, npartitions=4), zd.from_pandas(right, npartitions=3)
    for how in ("inner", "left", "right", "outer"):
        joined = a.join(b, how=how)
        assert joined.known_divisions
        expected = left.join(right, how=how)
        pd.testing.assert_frame_equal(joined.compute(), expected)
        merged = zd.merge(a, b, left_index=True, right_index=True, how=how)
        assert merged.known_divisions
        pd.testing.assert_frame_equal(merged.compute(), left.merge(right, left_index=True, right_index=True, how=how))
    joined = a.join(b)
    pd.testing.assert_series_equal((joined.x / b.y).compute(), left.join(right).x / right.y)
    pd.testing.assert_frame_equal(joined.assign(r=a.x * 2).compute(), left.join(right).assign(r=left.x * 2))


def test_persisted_and_column_pruned_collections_line_up_with_their_source(tmp_path: Any) -> None:
    frame = pd.DataFrame({"x": np.arange(300.0), "y": np.arange(300) % 7})
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    lazy = zd.read_csv(str(path), blocksize=1000)
    assert not lazy.known_divisions and lazy.npartitions > 1
    clean = lazy[lazy.y > 2]
    persisted = clean.persist(scheduler="sync")
    # Each block numbers its rows from 0: labels line up within partitions, as in Dask.
    got = (persisted.x + lazy.y).compute().to_numpy()
    np.testing.assert_array_equal(got, (frame.x.where(frame.y > 2) + frame.y).to_numpy())
    just_x = zd.read_csv(str(path), blocksize=1000, usecols=["x"])
    just_y = zd.read_csv(str(path), blocksize=1000, usecols=["y"])
    np.testing.assert_array_equal((just_x.x + just_y.y).compute().to_numpy(), (frame.x + frame.y).to_numpy())
    forgotten = zd.from_pandas(frame, npartitions=3).clear_divisions()
    assert not forgotten.known_divisions
    pd.testing.assert_series_equal((forgotten.x + zd.from_pandas(frame, npartitions=3).y).compute(), frame.x + frame.y)


def test_concat_never_erases_a_value_outside_the_categories_the_meta_lists() -> None:
    from zmqdask import delayed

    first = pd.DataFrame({"c": pd.Categorical(["b", "a"]), "x": [0, 1]})
    second = pd.DataFrame({"c": pd.Categorical(["c", "d"]), "x": [2, 3]}, index=[2, 3])
    # A meta (the first partition's) that does not list the other partition's categories.
    lazy = zd.from_delayed([delayed(_same)(first), delayed(_same)(second)], meta=first.iloc[:0])
    result = zd.concat([lazy, lazy]).compute()
    assert list(result.c.astype(str)) == ["b", "a", "c", "d"] * 2
    assert result.c.isna().sum() == 0


def _same(frame: pd.DataFrame) -> pd.DataFrame:
    return frame
