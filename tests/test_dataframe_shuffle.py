"""Shuffles: hash and boundary partitioning kernels, then set_index and sort_values against pandas."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.shuffle import (
    choose_boundaries,
    compute_divisions,
    hash_codes,
    hash_shuffle,
    hash_split,
    index_partition,
    sample_partition,
    sort_partition,
    sort_values,
    split_by_codes,
)
from zmqdask.errors import UsageError


def _frame(n: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.integers(0, 40, n),
            "f": rng.normal(size=n),
            "s": rng.choice(list("abcdefgh"), n),
            "t": pd.date_range("2000", periods=n, freq="h")[rng.permutation(n)],
        }
    )
    frame.loc[frame.index[::11], "f"] = np.nan
    return frame


def _pieces(frame: pd.DataFrame) -> list[pd.DataFrame]:
    cuts = [0, 90, 90, 91, 250, len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(cuts)]


def _boundary_sort(pieces: list[pd.DataFrame], by: str, nout: int, ascending: bool) -> list[pd.DataFrame]:
    from zmqdask.dataframe.shuffle import boundary_split

    samples = [sample_partition(piece, by, 16) for piece in pieces]
    _, boundaries, _ = choose_boundaries(samples, nout)
    splits = [boundary_split(piece, by, boundaries, nout, ascending) for piece in pieces]
    return [sort_partition([split[j] for split in splits], by, ascending) for j in range(nout)]


@pytest.mark.parametrize("by", ["a", "f", "s", "t"])
@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("nout", [1, 3, 7])
def test_boundary_sort_kernels_match_pandas(by: str, ascending: bool, nout: int) -> None:
    frame = _frame()
    outputs = _boundary_sort(_pieces(frame), by, nout, ascending)
    expected = frame.sort_values(by, ascending=ascending, kind="stable", na_position="last")
    pd.testing.assert_frame_equal(pd.concat(outputs), expected)


def test_boundaries_balance_partitions() -> None:
    frame = pd.DataFrame({"x": np.arange(10_000) % 997})
    pieces = [frame.iloc[a : a + 1000] for a in range(0, 10_000, 1000)]
    sizes = [len(p) for p in _boundary_sort(pieces, "x", 5, True)]
    assert sum(sizes) == len(frame)
    assert max(sizes) < 1.5 * len(frame) / 5


def test_boundaries_without_values() -> None:
    empty = pd.DataFrame({"x": [np.nan, np.nan]})
    assert choose_boundaries([sample_partition(empty, "x", 8)], 4) == (None, [], None)


def test_set_index_kernels_respect_divisions() -> None:
    frame = _frame()
    pieces = _pieces(frame)
    samples = [sample_partition(piece, "a", 16) for piece in pieces]
    low, boundaries, high = choose_boundaries(samples, 4)
    assert (low, high) == (frame["a"].min(), frame["a"].max())
    divisions = [low, *boundaries, high]
    assert divisions == sorted(set(divisions))
    from zmqdask.dataframe.shuffle import boundary_split

    nout = len(boundaries) + 1
    splits = [boundary_split(piece, "a", boundaries, nout) for piece in pieces]
    outputs = [index_partition([split[j] for split in splits], "a") for j in range(nout)]
    for j, part in enumerate(outputs):
        assert part.index.min() >= divisions[j]
        assert part.index.max() < divisions[j + 1] or (j == nout - 1 and part.index.max() <= divisions[-1])
    pd.testing.assert_frame_equal(pd.concat(outputs), frame.set_index("a").sort_index(kind="stable"))


@pytest.mark.parametrize(
    "left,right",
    [
        (pd.Series([1, 2, 3, -0], dtype="int64"), pd.Series([1.0, 2.0, 3.0, -0.0])),
        (pd.Series([1, 2, None], dtype="Int32"), pd.Series([1.0, 2.0, np.nan])),
        (pd.Series(["a", "b", None], dtype="str"), pd.Series(["a", "b", None], dtype=object)),
        (pd.Series(["a", "b", None], dtype="category"), pd.Series(["a", "b", None], dtype="str")),
        (
            pd.Series(pd.to_datetime(["2000-01-01", "2001-05-03"]).as_unit("s")),
            pd.Series(pd.to_datetime(["2000-01-01", "2001-05-03"]).as_unit("ns")),
        ),
    ],
    ids=["int-float", "nullable-float", "str-object", "category-str", "datetime-units"],
)
def test_equal_keys_hash_alike(left: pd.Series, right: pd.Series) -> None:
    assert list(hash_codes(left, [0], 13)) == list(hash_codes(right, [0], 13))


def test_hash_split_keeps_keys_together_and_order() -> None:
    frame = _frame()
    buckets = hash_split(frame, ["s", "a"], 5)
    assert sum(len(b) for b in buckets) == len(frame)
    owners: dict[Any, int] = {}
    for j, bucket in enumerate(buckets):
        assert bucket.index.is_monotonic_increasing
        for key in zip(bucket["s"], bucket["a"], strict=True):
            assert owners.setdefault(key, j) == j
    by_index = hash_codes(frame.set_index("a"), None, 5)
    assert list(by_index) == list(hash_codes(frame, ["a"], 5))


def test_split_by_codes_empty_buckets_keep_schema() -> None:
    frame = _frame().iloc[:3]
    pieces = split_by_codes(frame, np.array([2, 2, 0]), 4)
    assert [len(p) for p in pieces] == [1, 0, 2, 0]
    assert all(list(p.dtypes) == list(frame.dtypes) for p in pieces)


# --------------------------------------------------------------------------------------------
# Lazy set_index / sort_values (no client), then through a real cluster
# --------------------------------------------------------------------------------------------


def _lazy(frame: pd.DataFrame, npartitions: int) -> Any:
    return zd.from_pandas(frame, npartitions=npartitions)


@pytest.mark.parametrize("by", ["a", "f", "s", ["a", "f"]], ids=str)
@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("npartitions", [1, 6])
def test_lazy_sort_values_matches_pandas(by: Any, ascending: bool, npartitions: int) -> None:
    frame = _frame()
    got = _lazy(frame, npartitions).sort_values(by, ascending=ascending)
    assert got.npartitions == npartitions
    expected = frame.sort_values(by, ascending=ascending, kind="stable", na_position="last")
    pd.testing.assert_frame_equal(got.compute(), expected)


def test_lazy_sort_values_mixed_directions_and_series() -> None:
    frame = _frame()
    lazy = _lazy(frame, 4)
    got = lazy.sort_values(["s", "a"], ascending=[False, True]).compute()
    pd.testing.assert_frame_equal(got, frame.sort_values(["s", "a"], ascending=[False, True], kind="stable"))
    series = sort_values(lazy["f"], "f", ascending=False).compute()
    pd.testing.assert_series_equal(series, frame["f"].sort_values(ascending=False, kind="stable"))


@pytest.mark.parametrize(
    ("by", "ascending"),
    [("f", True), ("f", False), (["f", "g"], True), (["f", "g"], [True, False]), (["g", "f"], [False, True])],
    ids=str,
)
@pytest.mark.parametrize("npartitions", [1, 6])
def test_lazy_sort_values_with_missing_values_first(by: Any, ascending: Any, npartitions: int) -> None:
    frame = _frame().assign(g=lambda d: d["a"].where(d["a"] % 5 != 0))  # missing in other rows than f
    lazy = _lazy(frame, npartitions)
    got = lazy.sort_values(by, ascending=ascending, na_position="first")
    expected = frame.sort_values(by, ascending=ascending, kind="stable", na_position="first")
    pd.testing.assert_frame_equal(got.compute(), expected)
    for n in (5, 60):
        pd.testing.assert_frame_equal(got.head(n), expected.head(n))
        pd.testing.assert_frame_equal(got.tail(n), expected.tail(n))
    series = lazy["f"].sort_values(ascending=ascending is not False, na_position="first").compute()
    pd.testing.assert_series_equal(
        series, frame["f"].sort_values(ascending=ascending is not False, kind="stable", na_position="first")
    )


@pytest.mark.parametrize("column", ["a", "f", "t", "s"])
def test_lazy_set_index_matches_pandas(column: str) -> None:
    frame = _frame()
    lazy = _lazy(frame, 5).set_index(column)
    assert lazy.known_divisions
    parts = [lazy.get_partition(i).compute() for i in range(lazy.npartitions)]
    divisions = lazy.divisions
    for i, part in enumerate(parts):
        present = part.index[part.index.notna()]
        if len(present):
            assert present.min() >= divisions[i]
            assert present.max() < divisions[i + 1] or i == len(parts) - 1
    expected = frame.set_index(column).sort_index(kind="stable")
    pd.testing.assert_frame_equal(lazy.compute(), expected)
    kept = _lazy(frame, 5).set_index(column, drop=False)
    assert kept.known_divisions and kept.divisions == divisions and list(kept.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(kept.compute(), frame.set_index(column, drop=False).sort_index(kind="stable"))


def test_lazy_set_index_with_given_divisions_and_empty_partitions() -> None:
    frame = _frame()
    kept = frame[frame["a"] >= 20]
    lazy = _lazy(frame, 4)
    result = lazy[lazy["a"] >= 20].set_index("a", divisions=[0, 10, 20, 30, 39])
    assert result.divisions == (0, 10, 20, 30, 39)
    sizes = [len(result.get_partition(i).compute()) for i in range(4)]
    assert sizes[:2] == [0, 0]
    pd.testing.assert_frame_equal(result.compute(), kept.set_index("a").sort_index(kind="stable"))


def test_set_index_then_resample_uses_known_divisions() -> None:
    frame = _frame()
    indexed = _lazy(frame, 3).set_index("t")
    got = indexed["f"].resample("1D").mean()
    pd.testing.assert_series_equal(
        got.compute(), frame.set_index("t").sort_index()["f"].resample("1D").mean(), check_freq=False
    )


def test_shuffle_errors() -> None:
    lazy = _lazy(_frame(), 2)
    with pytest.raises(UsageError):
        lazy.set_index("nope")
    with pytest.raises(UsageError):
        lazy.sort_values("nope")
    with pytest.raises(UsageError):
        lazy.set_index("a", divisions=[5, 1])


def test_hash_shuffle_collection() -> None:
    frame = _frame()
    shuffled = hash_shuffle(_lazy(frame, 4), "s", npartitions=3)
    parts = [shuffled.get_partition(i).compute() for i in range(3)]
    owners = [set(part["s"]) for part in parts]
    assert all(not (owners[i] & owners[j]) for i in range(3) for j in range(i + 1, 3))
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), frame)


def test_shuffles_through_worker_processes(run_async: Any) -> None:
    # The asynchronous client submits a whole graph in one loop tick, as one batch.
    frame = _frame(2000, seed=4)
    lazy = _lazy(frame, 8)
    divisions = compute_divisions(lazy, "a", 4)  # eager, so done before the event loop runs
    sorted_ = lazy.sort_values("f")
    indexed = lazy.set_index("a", divisions=divisions)

    async def body(client: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
        return await client.compute(sorted_), await client.compute(indexed)

    got_sorted, got_indexed = run_async(body)
    pd.testing.assert_frame_equal(got_sorted, frame.sort_values("f", kind="stable"))
    pd.testing.assert_frame_equal(got_indexed, frame.set_index("a").sort_index(kind="stable"))


def test_set_index_inside_an_event_loop_samples_in_the_graph(run_async: Any) -> None:
    frame = _frame(1500, seed=6)
    lazy = _lazy(frame, 5)

    async def body(client: Any) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
        indexed = lazy.set_index("f", npartitions=3)  # would block to sample: done in the graph
        persisted = client.persist(indexed)
        return indexed, await client.compute(indexed), await client.compute(persisted.head(4, compute=False))

    indexed, got, head = run_async(body)
    assert indexed.npartitions == 3 and not indexed.known_divisions
    expected = frame.set_index("f").sort_index(kind="stable")
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(head, expected.head(4))


def test_divisions_given_must_cover_the_index() -> None:
    pdf = pd.DataFrame({"v": np.arange(1000)}, index=pd.RangeIndex(1000) * 3)
    lazy = zd.from_pandas(pdf, npartitions=7)
    with pytest.raises(UsageError, match="must cover the data's index"):
        lazy.repartition(divisions=[100, 1500, 2000])
    covered = lazy.repartition(divisions=[0, 1500, 2997])
    pd.testing.assert_frame_equal(covered.loc[2500:].compute(), pdf.loc[2500:])
    keyed = pdf.reset_index().rename(columns={"index": "k"})
    narrow = zd.from_pandas(keyed, npartitions=4).set_index("k", divisions=[100, 1500, 2000])
    with pytest.raises(ValueError, match="span every value"):
        narrow.compute()
    wide = zd.from_pandas(keyed, npartitions=4).set_index("k", divisions=[0, 1500, 2997])
    pd.testing.assert_frame_equal(wide.loc[2500:].compute(), keyed.set_index("k").loc[2500:])


# --------------------------------------------------------------------------------------------
# Categorical sort keys
# --------------------------------------------------------------------------------------------


def _categorical_frame() -> pd.DataFrame:
    """Five blocks of 60 rows drawing from different letters, some missing."""
    rng = np.random.default_rng(5)
    letters = ["xyz", "abcx", "mnop", "bdfh", "qrsa"]
    values = np.concatenate([rng.choice(list(block), 60) for block in letters]).astype(object)
    values[::17] = None
    return pd.DataFrame({"c": values, "v": np.arange(len(values))})


def _per_partition_categories(dtype: Any = "category") -> tuple[Any, pd.DataFrame]:
    """A lazy frame whose partitions categorize their own values of ``c``, and the frame
    pandas holds once their categories are unified."""
    lazy = zd.from_pandas(_categorical_frame(), npartitions=5).astype({"c": dtype})
    parts = [lazy.get_partition(i).compute() for i in range(lazy.npartitions)]
    assert len({tuple(part["c"].cat.categories) for part in parts}) == len(parts)
    union = pd.api.types.union_categoricals([part["c"] for part in parts], sort_categories=True, ignore_order=True)
    unified = pd.CategoricalDtype(union.categories, ordered=parts[0]["c"].dtype.ordered)
    return lazy, pd.concat([part.astype({"c": unified}) for part in parts])


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("na_position", ["last", "first"])
def test_sort_by_categories_differing_between_partitions(ascending: bool, na_position: str) -> None:
    lazy, expected = _per_partition_categories()
    got = lazy.sort_values("c", ascending=ascending, na_position=na_position)
    want = expected.sort_values("c", ascending=ascending, kind="stable", na_position=na_position)
    pd.testing.assert_frame_equal(got.compute(), want)
    # Every output partition holds the whole column's categories.
    assert got.get_partition(1).compute()["c"].dtype == want["c"].dtype


@pytest.mark.parametrize("npartitions", [1, 3, 5])
def test_set_index_by_categories_differing_between_partitions(npartitions: int) -> None:
    lazy, expected = _per_partition_categories()
    got = lazy.set_index("c", npartitions=npartitions)
    pd.testing.assert_frame_equal(got.compute(), expected.set_index("c").sort_index(kind="stable"))


@pytest.mark.parametrize("npartitions", [1, 3])
def test_set_index_sampled_in_the_graph_by_categories_differing_between_partitions(npartitions: int) -> None:
    from zmqdask.dataframe.shuffle import SampledSetIndex
    from zmqdask.dataframe.wrapping import expr_of, new_collection

    lazy, expected = _per_partition_categories()
    got = new_collection(SampledSetIndex(expr_of(lazy), "c", npartitions))
    pd.testing.assert_frame_equal(got.compute(), expected.set_index("c").sort_index(kind="stable"))


def test_sort_by_per_partition_ordered_categories() -> None:
    lazy, expected = _per_partition_categories(pd.CategoricalDtype(ordered=True))
    assert expected["c"].dtype.ordered
    pd.testing.assert_frame_equal(
        lazy.sort_values("c", ascending=False).compute(), expected.sort_values("c", ascending=False, kind="stable")
    )


@pytest.mark.parametrize("ordered", [False, True])
def test_sort_by_categories_shared_by_every_partition_follows_their_order(ordered: bool) -> None:
    # Categories out of the values' order: pandas sorts by the categories' order.
    dtype = pd.CategoricalDtype(list("zyxsrqponmhfdcba"), ordered=ordered)
    frame = _categorical_frame().astype({"c": dtype})
    lazy = zd.from_pandas(frame, npartitions=5)
    pd.testing.assert_frame_equal(lazy.sort_values("c").compute(), frame.sort_values("c", kind="stable"))
    indexed = lazy.set_index("c", npartitions=4)
    assert indexed.npartitions == 4
    pd.testing.assert_frame_equal(indexed.compute(), frame.set_index("c").sort_index(kind="stable"))
