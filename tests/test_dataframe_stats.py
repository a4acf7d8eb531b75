"""describe, value_counts and nunique: kernels, then lazy operations against pandas."""

from __future__ import annotations

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


def test_index_nunique_and_unique_count_labels() -> None:
    pdf = pd.DataFrame({"x": range(10)}, index=[1, 1, 2, 2, 3, 3, 4, 4, 5, 7])
    lazy = zd.from_pandas(pdf, npartitions=3)
    assert lazy.index.nunique().compute() == pdf.index.nunique() == 6
    assert list(lazy.index.unique().compute()) == list(pdf.index.unique())
