"""Scans, row selections over all partitions, quantiles and categoricals, against pandas."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.scans import scan_apply, scan_carry, scan_summary
from zmqdask.errors import UsageError


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "i": rng.integers(0, 20, n),
            "s": rng.choice(["p", "q", "r", "s"], n),
            "k": rng.integers(0, 4, n).astype("float64"),
        },
        index=pd.Index(np.arange(n) * 2, name="row"),
    )
    frame.loc[frame.index[::6], "x"] = np.nan
    frame.loc[frame.index[40:70], "k"] = np.nan  # whole partitions without a value
    return frame


def _pairs(npartitions: int) -> tuple[pd.DataFrame, Any]:
    """pandas data and a lazy frame of it, some partitions emptied by a filter."""
    frame = _frame()
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    return frame[(frame.i < 15) | (frame.index < 30)], lazy[(lazy.i < 15) | (lazy.index < 30)]


def _same(got: Any, expected: Any) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected)
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)


PARTITIONS = [1, 4, 11]


@pytest.mark.parametrize("method", ["cumsum", "cumprod", "cummin", "cummax"])
@pytest.mark.parametrize("skipna", [True, False])
def test_scan_kernels_chain_like_one_pandas_call(method: str, skipna: bool) -> None:
    frame = _frame()[["x", "i", "k"]]
    frame["x"] = frame["x"] / 10 + 1  # products stay finite
    pieces = [frame.iloc[a:b] for a, b in [(0, 10), (10, 10), (10, 55), (55, 56), (56, 120)]]
    carry, outputs = None, []
    for piece in pieces:
        outputs.append(scan_apply(piece, carry, method, skipna))
        carry = scan_carry(carry, scan_summary(piece, method, skipna), method, skipna)
    pd.testing.assert_frame_equal(pd.concat(outputs), getattr(frame, method)(skipna=skipna))


@pytest.mark.parametrize("npartitions", PARTITIONS)
@pytest.mark.parametrize("method", ["cumsum", "cummin", "cummax", "ffill", "bfill"])
def test_lazy_scans_match_pandas(npartitions: int, method: str) -> None:
    frame, lazy = _pairs(npartitions)
    numeric = ["x", "i", "k"]
    _same(getattr(lazy[numeric], method)().compute(), getattr(frame[numeric], method)())
    _same(getattr(lazy.k, method)().compute(), getattr(frame.k, method)())
    if method.startswith("cum"):
        _same(getattr(lazy.x, method)(skipna=False).compute(), getattr(frame.x, method)(skipna=False))
    else:
        # Strings fill across partitions too, and the result keeps every dtype.
        masked = frame.s.where(frame.i > 5)
        _same(getattr(lazy.s.where(lazy.i > 5), method)().compute(), getattr(masked, method)())


def test_lazy_cumprod_and_scan_options() -> None:
    frame, lazy = _pairs(5)
    _same((lazy.x / 10 + 1).cumprod().compute(), (frame.x / 10 + 1).cumprod())
    assert lazy.cumsum().divisions == lazy.divisions
    with pytest.raises(ValueError, match="positive integer"):
        lazy.ffill(limit=0)


@pytest.mark.parametrize("npartitions", PARTITIONS)
@pytest.mark.parametrize("limit", [1, 2, 7])
def test_lazy_fills_with_a_limit_reach_across_partitions(npartitions: int, limit: int) -> None:
    frame, lazy = _pairs(npartitions)
    # Runs of missing values longer than the limit, some crossing partition boundaries.
    masked = frame.x.where((frame.index % 11 < 3) | (frame.index % 23 == 0))
    lazy_masked = lazy.x.where((lazy.index % 11 < 3) | (lazy.index % 23 == 0))
    _same(lazy_masked.ffill(limit=limit).compute(), masked.ffill(limit=limit))
    _same(lazy_masked.bfill(limit=limit).compute(), masked.bfill(limit=limit))
    both = lazy.assign(x=lazy_masked)[["x", "s"]]
    _same(both.ffill(limit=limit).compute(), frame.assign(x=masked)[["x", "s"]].ffill(limit=limit))
    assert both.bfill(limit=limit).divisions == lazy.divisions


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_drop_duplicates_and_unique(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    _same(lazy[["s", "k"]].drop_duplicates().compute(), frame[["s", "k"]].drop_duplicates())
    _same(lazy.drop_duplicates(subset=["s"]).compute(), frame.drop_duplicates(subset=["s"]))
    _same(lazy.drop_duplicates("k", keep="last", split_every=2).compute(), frame.drop_duplicates("k", keep="last"))
    _same(lazy.i.drop_duplicates().compute(), frame.i.drop_duplicates())
    _same(lazy.s.unique().compute(), pd.Series(frame.s.unique(), name="s"))
    with pytest.raises(UsageError, match="keep='first', 'last' or False, got 'middle'"):
        lazy.drop_duplicates(keep="middle")


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_drop_duplicates_keeping_none(npartitions: int) -> None:
    frame = _frame()
    # u repeats in rows 90 apart (other partitions), v in pairs of neighbours (mostly the same one).
    rows = np.arange(len(frame))
    frame = frame.assign(u=rows % 90, v=np.where(rows < 60, rows // 2, rows))
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    for subset in ("u", ["u"], ["v"], ["u", "s"], ["k"]):
        _same(lazy.drop_duplicates(subset=subset, keep=False).compute(), frame.drop_duplicates(subset, keep=False))
    pair = ["u", "v"]
    _same(lazy[pair].drop_duplicates(keep=False, split_every=2).compute(), frame[pair].drop_duplicates(keep=False))
    _same(lazy.u.drop_duplicates(keep=False).compute(), frame.u.drop_duplicates(keep=False))
    _same(lazy.k.drop_duplicates(keep=False).compute(), frame.k.drop_duplicates(keep=False))
    kept = lazy[lazy.i > 3]
    _same(kept.v.drop_duplicates(keep=False).compute(), frame[frame.i > 3].v.drop_duplicates(keep=False))
    by_u = frame.set_index("u")
    got = zd.from_pandas(by_u, npartitions=npartitions, sort=False).index.drop_duplicates(keep=False).compute()
    pd.testing.assert_index_equal(got, by_u.index.drop_duplicates(keep=False))


@pytest.mark.parametrize("npartitions", [4, 11])
@pytest.mark.parametrize("keep", ["first", "last", False])
def test_lazy_drop_duplicates_keeps_categoricals_whose_partitions_differ(npartitions: int, keep: Any) -> None:
    # Categorized per partition (as astype does lazily), so each partition has its own categories.
    rows = np.arange(120)
    frame = pd.DataFrame({"c": [f"v{r // 7:02d}" for r in rows], "n": rows % 9}).astype({"c": "category"})
    lazy = zd.from_pandas(frame.astype({"c": str}), npartitions=npartitions).astype({"c": "category"})
    _same(lazy.drop_duplicates(keep=keep).compute(), frame.drop_duplicates(keep=keep))
    _same(lazy.drop_duplicates("c", keep=keep, split_every=2).compute(), frame.drop_duplicates("c", keep=keep))
    _same(lazy.c.drop_duplicates(keep=keep).compute(), frame.c.drop_duplicates(keep=keep))


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_nlargest_nsmallest(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    _same(lazy.i.nlargest(7).compute(), frame.i.nlargest(7))  # ties: earliest rows first
    _same(lazy.x.nsmallest(3, split_every=2).compute(), frame.x.nsmallest(3))
    _same(lazy.nlargest(5, "i").compute(), frame.nlargest(5, "i"))
    _same(lazy.nsmallest(6, ["k", "x"]).compute(), frame.nsmallest(6, ["k", "x"]))
    with pytest.raises(UsageError):
        lazy.nlargest(3)


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_idxmax_idxmin(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    numeric = ["x", "i", "k"]
    _same(lazy.x.idxmax().compute(), frame.x.idxmax())
    _same(lazy.i.idxmin(split_every=2).compute(), frame.i.idxmin())  # ties: the first label
    _same(lazy[numeric].idxmax().compute(), frame[numeric].idxmax())
    _same(lazy[numeric].idxmin().compute(), frame[numeric].idxmin())
    nothing = lazy[lazy.i > 100]
    with pytest.raises(ValueError):
        nothing.x.idxmax().compute()


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_exact_quantiles(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    numeric = ["x", "i", "k"]
    _same(lazy.x.quantile(0.3).compute(), frame.x.quantile(0.3))
    _same(lazy.i.quantile([0.1, 0.5, 0.95]).compute(), frame.i.quantile([0.1, 0.5, 0.95]))
    _same(lazy[numeric].quantile(0.75).compute(), frame[numeric].quantile(0.75))
    _same(lazy[numeric].quantile([0.25, 0.5]).compute(), frame[numeric].quantile([0.25, 0.5]))
    _same(lazy.quantile(0.5, numeric_only=True).compute(), frame.quantile(0.5, numeric_only=True))
    _same(lazy.x.median().compute(), frame.x.median())
    _same(lazy.median(numeric_only=True).compute(), frame.median(numeric_only=True))


def test_categories_made_per_partition_are_unified() -> None:
    frame = _frame(60)
    lazy = zd.from_pandas(frame, npartitions=6)
    # Each partition sees only some of the values, so their categories differ.
    subset = frame.s.where(frame.index < 40, "zz")
    lazy_subset = lazy.s.where(lazy.index < 40, "zz")
    _same(lazy_subset.astype("category").compute(), subset.astype("category"))
    _same(lazy.astype({"s": "category"}).compute(), frame.astype({"s": "category"}))
    _same(lazy.astype({"s": "category"}).repartition(npartitions=2).compute(), frame.astype({"s": "category"}))
    both = lazy.assign(c=lazy_subset.astype("category")).set_index("i", divisions=[0, 5, 12, 19])
    expected = frame.assign(c=subset.astype("category")).set_index("i").sort_index(kind="stable")
    _same(both.compute(), expected)


@pytest.mark.parametrize("npartitions", [4, 11])
def test_rows_joined_with_their_neighbours_keep_categoricals_whose_partitions_differ(npartitions: int) -> None:
    rows = np.arange(120)
    plain = pd.DataFrame({"c": [f"v{r // 7:02d}" for r in rows], "n": (rows % 9).astype("float64")})
    plain.loc[plain.index[::5], "n"] = np.nan
    # Categorized partition by partition (as astype does lazily): each has its own categories.
    lazy = zd.from_pandas(plain, npartitions=npartitions).astype({"c": "category"})
    frame = plain.astype({"c": "category"})
    _same(lazy.shift(2).compute(), frame.shift(2))
    _same(lazy.ffill().compute(), frame.ffill())
    _same(lazy.bfill().compute(), frame.bfill())
    _same(lazy.map_overlap(lambda part: part.shift(1), 1, 0).compute(), frame.shift(1))


def test_pipe_calls_through() -> None:
    frame, lazy = _pairs(3)
    _same(lazy.pipe(lambda d, n: d.i + n, n=3).compute(), frame.i + 3)


@pytest.mark.parametrize("npartitions", PARTITIONS)
@pytest.mark.parametrize("periods", [1, 3, -2, 0])
def test_lazy_shift_diff_pct_change(npartitions: int, periods: int) -> None:
    frame, lazy = _pairs(npartitions)
    numeric = ["x", "i", "k"]
    _same(lazy[numeric].shift(periods).compute(), frame[numeric].shift(periods))
    _same(lazy.s.shift(periods).compute(), frame.s.shift(periods))
    _same(lazy.x.diff(periods).compute(), frame.x.diff(periods))
    _same(lazy[numeric].pct_change(periods, fill_method=None).compute(), frame[numeric].pct_change(periods))
    assert lazy.shift(periods).divisions == lazy.divisions


@pytest.mark.parametrize("npartitions", PARTITIONS)
@pytest.mark.parametrize("periods", [1, 3, -2, 0, 40, -70])
def test_lazy_shift_with_a_fill_value_fills_only_the_ends_of_the_whole_frame(npartitions: int, periods: int) -> None:
    # Filtered partitions are uneven and some are empty; 40 and 70 rows reach across several.
    frame, lazy = _pairs(npartitions)
    numeric = ["x", "i", "k"]
    _same(lazy[numeric].shift(periods, fill_value=-1).compute(), frame[numeric].shift(periods, fill_value=-1))
    _same(lazy.i.shift(periods, fill_value=0).compute(), frame.i.shift(periods, fill_value=0))
    _same(lazy.s.shift(periods, fill_value="none").compute(), frame.s.shift(periods, fill_value="none"))
    assert lazy.shift(periods, fill_value=0).divisions == lazy.divisions


def test_shift_fill_value_refusals() -> None:
    _, lazy = _pairs(3)
    with pytest.raises(UsageError, match="freq= or fill_value=, not both"):
        lazy.shift(1, freq="h", fill_value=0)
    with pytest.raises(UsageError, match="fill_value must be a plain value"):
        lazy.x.shift(1, fill_value=lazy.x.mean())


@pytest.mark.parametrize("freq", ["h", "15min", pd.Timedelta("2h"), "MS", "B"])
@pytest.mark.parametrize("periods", [1, -3])
def test_lazy_shift_with_freq_moves_the_index(freq: Any, periods: int) -> None:
    index = pd.date_range("2000-01-01", periods=300, freq="37min")
    frame = pd.DataFrame({"x": np.arange(300.0), "s": [f"v{i % 7}" for i in range(300)]}, index=index)
    lazy = zd.from_pandas(frame, npartitions=6)
    shifted = lazy.shift(periods, freq=freq)
    _same(shifted.compute(), frame.shift(periods, freq=freq))
    _same(lazy.x.shift(periods, freq=freq).compute(), frame.x.shift(periods, freq=freq))
    if freq in ("MS", "B"):
        assert not shifted.known_divisions  # calendar steps may merge partitions' labels
    else:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) * periods
        assert shifted.divisions == tuple(d + step for d in lazy.divisions)
        window = slice("2000-01-02 03:00", "2000-01-02 09:00")
        _same(shifted.loc[window].compute(), frame.shift(periods, freq=freq).loc[window])


def test_lazy_elementwise_extras() -> None:
    frame, lazy = _pairs(4)
    _same(lazy.replace({"s": {"p": "P"}}).compute(), frame.replace({"s": {"p": "P"}}))
    _same(lazy.i.replace(3, -3).compute(), frame.i.replace(3, -3))
    _same(lazy[["x", "i"]].map(lambda v: v * 2).compute(), frame[["x", "i"]].map(lambda v: v * 2))
    _same(lazy.sort_index(ascending=False).compute(), frame.sort_index(ascending=False))
    _same(lazy.x.sem().compute(), frame.x.sem())
    _same(lazy.sem(numeric_only=True).compute(), frame.sem(numeric_only=True))
    with pytest.raises(UsageError):
        zd.from_pandas(frame, npartitions=3, sort=False).sort_index()


def test_lazy_sample_is_reproducible_per_partition() -> None:
    frame, lazy = _pairs(5)
    first = lazy.sample(frac=0.5, random_state=3).compute()
    pd.testing.assert_frame_equal(first, lazy.sample(frac=0.5, random_state=3).compute())
    assert first.index.isin(frame.index).all() and first.index.is_unique
    assert abs(len(first) - len(frame) / 2) <= lazy.npartitions
    doubled = lazy.sample(frac=2.0, replace=True, random_state=1).compute()
    assert abs(len(doubled) - 2 * len(frame)) <= lazy.npartitions
    with pytest.raises(UsageError):
        lazy.sample(frac=1.5)


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_corr_and_cov(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    frame = frame.assign(big=frame.x * 3 + 1e7)  # an offset that would cancel naive sums
    lazy = lazy.assign(big=lazy.x * 3 + 1e7)
    numeric = ["x", "i", "k", "big"]
    _same(lazy[numeric].corr().compute(), frame[numeric].corr())
    _same(lazy[numeric].cov(split_every=2).compute(), frame[numeric].cov())
    _same(lazy[numeric].cov(min_periods=50).compute(), frame[numeric].cov(min_periods=50))
    _same(lazy.corr(numeric_only=True).compute(), frame.corr(numeric_only=True))
    _same(lazy.x.corr(lazy.k).compute(), frame.x.corr(frame.k))
    _same(lazy.i.cov(lazy.big).compute(), frame.i.cov(frame.big))
    whole = frame[["i", "big"]]
    _same(lazy[["i", "big"]].cov(ddof=0).compute(), whole.cov(ddof=0))  # no missing values: ddof counts
    with pytest.raises(UsageError):
        lazy.corr()  # a string column
    with pytest.raises(UsageError):
        lazy[numeric].corr(method="spearman")


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_lazy_mode(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)
    _same(lazy.s.mode().compute(), frame.s.mode())
    _same(lazy.k.mode(dropna=False).compute(), frame.k.mode(dropna=False))
    _same(lazy.i.mode(split_every=2).compute(), frame.i.mode())
    _same(lazy.s[lazy.i > 100].mode().compute(), frame.s[frame.i > 100].mode())


@pytest.mark.parametrize("npartitions", PARTITIONS)
@pytest.mark.parametrize("dropna", [True, False])
def test_lazy_frame_mode(npartitions: int, dropna: bool) -> None:
    frame, lazy = _pairs(npartitions)
    frame = frame.assign(b=frame.i % 3 == 0, c=frame.s.astype("category"))
    lazy = lazy.assign(b=lazy.i % 3 == 0, c=lazy.s.astype("category").cat.as_known())
    # Columns with different numbers of modes: the shorter ones are padded, as in pandas.
    _same(lazy.mode(dropna=dropna).compute(), frame.mode(dropna=dropna))
    some = ["i", "s", "k"]
    _same(lazy[some].mode(dropna=dropna, split_every=2).compute(), frame[some].mode(dropna=dropna))
    _same(lazy.mode(numeric_only=True, dropna=dropna).compute(), frame.mode(numeric_only=True, dropna=dropna))
    _same(lazy[lazy.i > 100].mode(dropna=dropna).compute(), frame[frame.i > 100].mode(dropna=dropna))
    # A categorical's categories without values are no modes.
    _same(lazy.c[lazy.i > 100].mode(dropna=dropna).compute(), frame.c[frame.i > 100].mode(dropna=dropna))


def test_lazy_frame_mode_refuses_rows() -> None:
    _, lazy = _pairs(2)
    with pytest.raises(UsageError, match="axis=0 only"):
        lazy.mode(axis=1)


@pytest.mark.parametrize("npartitions", [1, 5])
def test_lazy_groupby_apply_and_transform(npartitions: int) -> None:
    frame, lazy = _pairs(npartitions)

    def spread(group: pd.DataFrame) -> float:
        return float(group.x.max() - group.x.min())

    _same(lazy.groupby("s").apply(spread).compute().sort_index(), frame.groupby("s").apply(spread))
    top = lazy.groupby("s").apply(lambda g: g.nlargest(2, "i"), meta=frame.iloc[:0]).compute()
    _same(top.sort_index(), frame.groupby("s").apply(lambda g: g.nlargest(2, "i")).sort_index())
    centred = lazy.groupby("s").x.transform(lambda v: v - v.mean()).compute()
    _same(centred.sort_index(), frame.groupby("s").x.transform(lambda v: v - v.mean()))
    running = lazy.groupby(["s", "k"])[["x", "i"]].transform("cumsum").compute()
    _same(running.sort_index(), frame.groupby(["s", "k"])[["x", "i"]].transform("cumsum"))
    with pytest.raises(UsageError):
        lazy.groupby(lazy.i % 3).x.apply(len)


def test_numpy_ufuncs_stay_lazy_and_iteration_computes_partition_by_partition() -> None:
    pdf = pd.DataFrame({"t": np.arange(1.0, 31.0), "u": np.arange(30.0) * 2}, index=np.arange(30) * 3)
    df = zd.from_pandas(pdf, npartitions=4)
    logged = np.log1p(df.t)
    assert isinstance(logged, zd.Series)  # lazy, as in Dask
    pd.testing.assert_series_equal(logged.compute(), np.log1p(pdf.t))
    pd.testing.assert_series_equal(np.add(df.t, df.u).compute(), pdf.t + pdf.u)
    pd.testing.assert_series_equal(np.maximum(df.t, 10.0).compute(), np.maximum(pdf.t, 10.0))
    pd.testing.assert_frame_equal(np.sqrt(df).compute(), np.sqrt(pdf))
    # The sequence protocol used to build lazy items for ever: iteration now ends.
    assert list(df.t) == list(pdf.t) and sum(df.t) == pdf.t.sum()
    assert list(df.index) == list(pdf.index) and list(df) == ["t", "u"]
    np.testing.assert_array_equal(np.asarray(df.t), pdf.t.to_numpy())
    np.testing.assert_array_equal(np.asarray(df), pdf.to_numpy())
    with pytest.raises(UsageError, match=r"add\.reduce"):
        np.add.reduce(df.t)


def test_loc_selects_columns_by_label_slice_or_boolean_mask() -> None:
    pdf = pd.DataFrame({name: range(12) for name in "abcd"})
    df = zd.from_pandas(pdf, npartitions=3)
    sliced = df.loc[:, "b":"c"]
    assert list(sliced.columns) == ["b", "c"]  # known before computing
    pd.testing.assert_frame_equal(sliced.compute(), pdf.loc[:, "b":"c"])
    pd.testing.assert_frame_equal(df.loc[2:7, "c":].compute(), pdf.loc[2:7, "c":])
    mask = [True, False, True, False]
    pd.testing.assert_frame_equal(df.loc[:, mask].compute(), pdf.loc[:, mask])
    pd.testing.assert_series_equal(df.loc[:, "a"].compute(), pdf.loc[:, "a"])


def test_categories_made_per_partition_are_unknown_until_made_known() -> None:
    pdf = pd.DataFrame({"c": list("zyxxyzzw"), "t": ["p", "q"] * 4, "n": range(8)})
    df = zd.from_pandas(pdf, npartitions=3)
    per_partition = df.c.astype("category")
    assert str(per_partition.dtype) == "category" and not per_partition.cat.known
    # Partition-local codes would be silently wrong: asking for them says what to do.
    with pytest.raises(UsageError, match=r"as_known\(\)"):
        _ = per_partition.cat.codes
    with pytest.raises(UsageError, match="categorize"):
        _ = per_partition.cat.categories
    assert per_partition.compute().tolist() == pdf.c.tolist()
    known = per_partition.cat.as_known()
    assert known.cat.known and list(known.dtype.categories) == ["w", "x", "y", "z"]
    # The whole column's categories, once, as a pandas Index (not one copy per partition).
    pd.testing.assert_index_equal(known.cat.categories, pd.Index(["w", "x", "y", "z"]))
    assert known.cat.categories.tolist() == ["w", "x", "y", "z"] and known.cat.ordered is False
    assert df.categorize(columns=["t"]).t.cat.categories.tolist() == ["p", "q"]
    pd.testing.assert_series_equal(known.cat.codes.compute(), pdf.c.astype("category").cat.codes)
    assert not known.cat.as_unknown().cat.known
    categorized = df.categorize()
    assert categorized.c.cat.known and categorized.t.cat.known and categorized.n.dtype == pdf.n.dtype
    pd.testing.assert_frame_equal(categorized.compute(), pdf.astype({"c": "category", "t": "category"}))
    assert list(df.categorize(columns=["t"]).dtypes.index) == ["c", "t", "n"]
    assert not df.astype({"c": "category"}).c.cat.known
    # Categories given explicitly are the same in every partition: known.
    order = pd.CategoricalDtype(["z", "y", "x", "w"])
    explicit = df.c.astype(order)
    assert explicit.cat.known and explicit.cat.categories.tolist() == ["z", "y", "x", "w"]
    assert explicit.cat.codes.compute().tolist() == pdf.c.astype(order).cat.codes.tolist()


def test_random_split_gives_disjoint_reproducible_pieces_covering_every_row() -> None:
    pdf = pd.DataFrame({"x": range(2000), "y": np.arange(2000.0)})
    df = zd.from_pandas(pdf, npartitions=5)
    train, valid, test = df.random_split([0.6, 0.3, 0.1], random_state=7)
    pieces = [piece.compute() for piece in (train, valid, test)]
    assert sum(len(piece) for piece in pieces) == len(pdf)
    combined = pd.concat(pieces).sort_index()
    pd.testing.assert_frame_equal(combined, pdf)  # disjoint and complete
    assert 1000 < len(pieces[0]) < 1400 and 80 < len(pieces[2]) < 320
    again = df.random_split([0.6, 0.3, 0.1], random_state=7)
    pd.testing.assert_frame_equal(again[1].compute(), pieces[1])
    assert again[0].x.sum().compute() == pieces[0].x.sum()  # a projection draws the same rows
    with pytest.raises(UsageError, match="sum to 1"):
        df.random_split([0.5, 0.2])


@pytest.mark.parametrize("npartitions", [1, 4])
def test_memory_usage_sums_every_partition_like_pandas(npartitions: int) -> None:
    expected, lazy = _pairs(npartitions)  # some partitions emptied by the filter
    by_column = lazy.memory_usage(index=False).compute()
    numeric = ["x", "i", "k"]
    pd.testing.assert_series_equal(by_column[numeric], expected.memory_usage(index=False)[numeric])
    # Strings held in separate partitions cost a few bytes more each (their offsets): bounds.
    for deep in (False, True):
        strings = lazy.memory_usage(index=False, deep=deep).compute()["s"]
        single = expected.s.memory_usage(index=False, deep=deep)
        assert single <= strings <= single + 64 * npartitions
    with_index = lazy.memory_usage().compute()
    assert list(with_index.index) == ["Index", *expected.columns]
    assert with_index["Index"] == expected.memory_usage()["Index"]
    assert lazy.x.memory_usage(index=False).compute() == expected.x.memory_usage(index=False)
    assert lazy.s.memory_usage(deep=True).compute() >= expected.s.memory_usage(index=False, deep=True)


def test_shuffle_puts_equal_keys_in_one_partition_and_keeps_every_row() -> None:
    frame = _frame(200)
    lazy = zd.from_pandas(frame, npartitions=5)
    shuffled = lazy.shuffle(on="i", npartitions=3)
    assert shuffled.npartitions == 3 and not shuffled.known_divisions
    parts = [shuffled.get_partition(n).compute() for n in range(3)]
    owners: dict[int, int] = {}
    for n, part in enumerate(parts):
        for key in part.i.unique():
            assert owners.setdefault(int(key), n) == n
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), frame)
    by_two = lazy.shuffle(on=["i", "s"]).compute().sort_index()
    pd.testing.assert_frame_equal(by_two, frame)
    values = lazy.i.shuffle(on="i", npartitions=2).compute().sort_index()
    pd.testing.assert_series_equal(values, frame.i)
    on_index = lazy.shuffle(on_index=True, npartitions=2).compute().sort_index()
    pd.testing.assert_frame_equal(on_index, frame)
    with pytest.raises(UsageError, match="not among the columns"):
        lazy.shuffle(on="nope")
    with pytest.raises(UsageError, match="column names"):
        lazy.shuffle(on=lazy.i)
    with pytest.raises(UsageError, match="positive integer"):
        lazy.shuffle(on="i", npartitions=0)


def test_shuffle_on_a_column_of_multiindex_columns() -> None:
    frame = _frame(120)
    frame.columns = pd.MultiIndex.from_tuples([(name, "v") for name in frame.columns])
    lazy = zd.from_pandas(frame, npartitions=4)
    shuffled = lazy.shuffle(on=("i", "v"), npartitions=3)
    parts = [shuffled.get_partition(n).compute() for n in range(3)]
    owners: dict[int, int] = {}
    for n, part in enumerate(parts):
        for key in part[("i", "v")].unique():
            assert owners.setdefault(int(key), n) == n
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), frame)
    # A list of tuples names several columns.
    both = lazy.shuffle(on=[("i", "v"), ("s", "v")]).compute().sort_index()
    pd.testing.assert_frame_equal(both, frame)


def test_array_conversions_say_there_are_no_lazy_arrays() -> None:
    lazy = zd.from_pandas(_frame(20), npartitions=2)
    for attempt in (lambda: lazy.x.values, lambda: lazy.values, lambda: lazy.to_dask_array(lengths=True)):
        with pytest.raises(AttributeError, match=r"needs a lazy array.*compute first"):
            attempt()
    assert not hasattr(lazy, "values")  # duck-typing probes still get a plain False
    named = zd.from_pandas(pd.DataFrame({"values": [1, 2]}), npartitions=1)
    assert named.values.sum().compute() == 3  # a column of that name is still reachable


def test_small_dask_conveniences_match_pandas() -> None:
    frame = _frame(60)
    lazy = zd.from_pandas(frame, npartitions=3)
    pd.testing.assert_frame_equal(lazy.add_prefix("p_").compute(), frame.add_prefix("p_"))
    assert list(lazy.add_suffix("_s").columns) == list(frame.add_suffix("_s").columns)
    items = dict(lazy.items())
    assert list(items) == list(frame.columns)
    pd.testing.assert_series_equal(items["i"].compute(), frame.i)
    assert lazy.x.dtypes == frame.x.dtypes
    assert lazy.i.add(1).product().compute() == (frame.i + 1).product()
    pd.testing.assert_series_equal(zd.isna(lazy.k).compute(), pd.isna(frame.k))
    assert zd.isna(None)
    total, largest = zd.compute(lazy.i.sum(), lazy.x.max())
    assert total == frame.i.sum() and largest == frame.x.max()
    pd.testing.assert_series_equal(
        zd.to_timedelta(lazy.i, unit="s").compute(), pd.to_timedelta(frame.i, unit="s")
    )
    data = {"a": [1, 2, 3, 4, 5], "b": ["u", "v", "w", "x", "y"]}
    from_dict = zd.from_dict(data, npartitions=2)
    assert from_dict.npartitions == 2
    pd.testing.assert_frame_equal(from_dict.compute(), pd.DataFrame(data))
    rows = zd.from_dict({"r1": [1, 2], "r2": [3, 4]}, orient="index", columns=["p", "q"], npartitions=1)
    pd.testing.assert_frame_equal(
        rows.compute(), pd.DataFrame.from_dict({"r1": [1, 2], "r2": [3, 4]}, orient="index", columns=["p", "q"])
    )


@pytest.mark.parametrize("aggfunc", ["mean", "sum", "count", "first", "last"])
def test_pivot_table_lays_out_every_category_like_pandas(aggfunc: str) -> None:
    rng = np.random.default_rng(3)
    kinds = pd.CategoricalDtype(["p", "q", "r", "unused"])
    frame = pd.DataFrame(
        {"day": rng.integers(0, 6, 80), "kind": pd.Categorical(rng.choice(["p", "q", "r"], 80), dtype=kinds),
         "v": rng.normal(size=80)}
    )
    lazy = zd.from_pandas(frame, npartitions=4)
    table = lazy.pivot_table(index="day", columns="kind", values="v", aggfunc=aggfunc)
    assert list(table.columns) == ["p", "q", "r", "unused"] and table.columns.name == "kind"
    expected = frame.pivot_table(index="day", columns="kind", values="v", aggfunc=aggfunc, observed=False)
    expected = expected.reindex(columns=table.columns).astype("float64")
    if aggfunc in ("sum", "count"):
        expected = expected.fillna(0.0)
    got = table.compute()
    pd.testing.assert_frame_equal(got, expected, check_names=False, check_column_type=False)
    assert got.columns.name == "kind" and got.index.name == "day"


def test_pivot_table_says_what_it_needs() -> None:
    frame = pd.DataFrame({"day": [1, 2], "kind": ["p", "q"], "v": [1.0, 2.0]})
    lazy = zd.from_pandas(frame, npartitions=1)
    with pytest.raises(UsageError, match=r"categorize\(columns=\['kind'\]\)"):
        lazy.pivot_table(index="day", columns="kind", values="v")
    with pytest.raises(UsageError, match="known categories"):
        lazy.astype({"kind": "category"}).pivot_table(index="day", columns="kind", values="v")
    known = lazy.categorize(columns=["kind"])
    with pytest.raises(UsageError, match="aggfunc"):
        known.pivot_table(index="day", columns="kind", values="v", aggfunc="median")
    with pytest.raises(UsageError, match="values="):
        known.pivot_table(index="day", columns="kind", values="nope")


def test_repartition_by_frequency_and_by_size() -> None:
    index = pd.date_range("2024-01-01", periods=3000, freq="37min")
    frame = pd.DataFrame({"x": np.arange(3000.0), "s": ["abc" * 10] * 3000}, index=index)
    lazy = zd.from_pandas(frame, npartitions=3)
    daily = lazy.repartition(freq="1D")
    assert daily.divisions[0] == index[0] and daily.divisions[-1] == index[-1]
    assert all(b - a <= pd.Timedelta("1D") for a, b in zip(daily.divisions, daily.divisions[1:], strict=False))
    assert daily.npartitions == len(pd.date_range(index[0], index[-1], freq="1D"))
    pd.testing.assert_frame_equal(daily.compute(), frame)
    total = int(frame.memory_usage(deep=True).sum())
    sized = lazy.repartition(partition_size=total // 5 + 1)
    assert sized.npartitions == 5
    pd.testing.assert_frame_equal(sized.compute(), frame)
    assert lazy.repartition(partition_size="1GB").npartitions == 1
    with pytest.raises(UsageError, match="one of npartitions"):
        lazy.repartition(npartitions=2, freq="1D")
    with pytest.raises(UsageError, match="datetime index"):
        lazy.reset_index().repartition(freq="1D")
    with pytest.raises(UsageError, match="partition_size"):
        lazy.repartition(partition_size="lots")


def test_eval_per_partition_and_sort_values_takes_na_position() -> None:
    pdf = pd.DataFrame({"x": [3.0, np.nan, 1.0, 5.0, np.nan, 2.0, 8.0, 0.0], "y": np.arange(8) % 3})
    df = zd.from_pandas(pdf, npartitions=3)
    pd.testing.assert_frame_equal(df.eval("z = x + y * 2").compute(), pdf.eval("z = x + y * 2"))
    pd.testing.assert_series_equal(df.eval("x > y").compute(), pdf.eval("x > y"))
    with pytest.raises(UsageError, match="inplace=True"):
        df.eval("z = x", inplace=True)
    pd.testing.assert_frame_equal(df.sort_values("x", na_position="last").compute(), pdf.sort_values("x"))
    pd.testing.assert_series_equal(df.x.sort_values(na_position="last").compute(), pdf.x.sort_values())
    with pytest.raises(UsageError, match="na_position must be 'first' or 'last', got 'middle'"):
        df.sort_values("x", na_position="middle")


def test_str_cat_joins_all_values_across_partitions_or_aligns_other_series() -> None:
    values = pd.Series(["x", "y", None, "z", "", "w", "v", None], name="s")
    lazy = zd.from_pandas(values, npartitions=3)
    for options in ({"sep": ","}, {}, {"sep": "-", "na_rep": "?"}):
        assert lazy.str.cat(**options).compute() == values.str.cat(**options)
    other = pd.Series(list("abcdefgh"))
    lazy_other = zd.from_pandas(other, npartitions=2)
    pd.testing.assert_series_equal(lazy.str.cat(lazy_other, sep="|").compute(), values.str.cat(other, sep="|"))
    pd.testing.assert_series_equal(
        lazy.str.cat([lazy_other, other], sep="|", na_rep="-").compute(),
        values.str.cat([other, other], sep="|", na_rep="-"),
    )
    with pytest.raises(UsageError, match="other Series"):
        lazy.str.cat(list("abcdefgh"))


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_map_overlap_gives_each_partition_its_neighbours_rows(npartitions: int) -> None:
    index = pd.date_range("2000-01-01", periods=200, freq="17min")
    frame = pd.DataFrame({"x": np.sin(np.arange(200.0)), "y": np.arange(200)}, index=index)
    lazy = zd.from_pandas(frame, npartitions=npartitions)
    _same(lazy.map_overlap(lambda d: d.rolling(5).sum(), 4, 0).compute(), frame.rolling(5).sum())
    centered = lazy.x.map_overlap(lambda s: s.rolling(7, center=True).mean(), 3, 3)
    _same(centered.compute(), frame.x.rolling(7, center=True).mean())
    _same(lazy.map_overlap(lambda d: d.rolling("3h").max(), "3h", 0).compute(), frame.rolling("3h").max())
    # A reach longer than a partition, an extra argument, and partitions a filter emptied.
    _same(zd.map_overlap(lambda d, k: d.diff(k), lazy, 30, 0, 30).compute(), frame.diff(30))
    kept = lazy[(lazy.y < 40) | (lazy.y > 150)]
    _same(kept.map_overlap(lambda d: d.shift(-2), 0, 2).compute(), frame[(frame.y < 40) | (frame.y > 150)].shift(-2))
    assert centered.divisions == lazy.divisions


def test_map_overlap_refuses_what_it_cannot_do() -> None:
    _, lazy = _pairs(4)
    with pytest.raises(UsageError, match="one row per row"):
        lazy.map_overlap(lambda d: d[d.x > 0], 1, 1).compute()
    with pytest.raises(UsageError, match="must not be negative"):
        lazy.map_overlap(lambda d: d, -1, 1)
    with pytest.raises(UsageError, match="datetime index"):
        lazy.map_overlap(lambda d: d, "1h", 0)
    with pytest.raises(UsageError, match="one collection"):
        lazy.map_overlap(lambda d, other: d, 1, 1, lazy)
    with pytest.raises(UsageError, match="meta="):
        lazy.map_overlap(lambda d: d.no_such_column, 1, 1)


def test_scans_of_booleans_count_in_integers() -> None:
    values = pd.Series([True, False, True, True, False, True] * 5, name="b")
    lazy = zd.from_pandas(values, npartitions=4)
    for method in ("cumsum", "cumprod", "cummax"):
        _same(getattr(lazy, method)().compute(), getattr(values, method)())
    frame = pd.DataFrame({"b": values, "x": np.arange(30.0)})
    _same(zd.from_pandas(frame, npartitions=3).cumsum().compute(), frame.cumsum())


def test_callable_selections_and_sums_with_min_count() -> None:
    frame, lazy = _pairs(4)
    _same(lazy[lambda d: d.x > 0].compute(), frame[lambda d: d.x > 0])
    _same(lazy.loc[lambda d: d.i > 10, ["x", "s"]].compute(), frame.loc[lambda d: d.i > 10, ["x", "s"]])
    _same(lazy.x[lambda s: s < 0].compute(), frame.x[lambda s: s < 0])
    sparse = pd.DataFrame({"x": [1.0, np.nan, np.nan, 4.0, np.nan, np.nan], "y": np.nan, "z": range(6)})
    lazy_sparse = zd.from_pandas(sparse, npartitions=3)
    for min_count in (1, 2, 3):
        _same(lazy_sparse.sum(min_count=min_count).compute(), sparse.sum(min_count=min_count))
        _same(lazy_sparse.y.sum(min_count=min_count).compute(), sparse.y.sum(min_count=min_count))
    assert lazy_sparse.z.sum(min_count=2).compute() == 15


def test_get_dummies_of_known_categories_match_pandas() -> None:
    frame = pd.DataFrame({"k": list("abcab" * 4), "j": list("xyxyy" * 4), "v": np.arange(20)})
    lazy = zd.from_pandas(frame, npartitions=3)
    with pytest.raises(UsageError, match="categorize"):
        zd.get_dummies(lazy)
    known = lazy.categorize()
    categorical = frame.astype({"k": "category", "j": "category"})
    _same(zd.get_dummies(known).compute(), pd.get_dummies(categorical))
    _same(
        zd.get_dummies(known, columns=["k"], drop_first=True, dtype=int).compute(),
        pd.get_dummies(categorical, columns=["k"], drop_first=True, dtype=int),
    )
    _same(zd.get_dummies(known.k, prefix="kk").compute(), pd.get_dummies(categorical.k, prefix="kk"))
    # Partitions without some categories still make every column.
    _same(zd.get_dummies(known[known.v < 3]).compute(), pd.get_dummies(categorical[categorical.v < 3]))


def test_index_methods_giving_one_value_per_label_cover_every_partition() -> None:
    pdf = pd.DataFrame({"x": np.arange(100.0)}, index=pd.date_range("2021-01-01", periods=100, freq="7h"))
    lazy = zd.from_pandas(pdf, npartitions=4)
    wanted = pdf.index[::3]
    for name, value in [
        ("date", lambda i: i.date),
        ("isin", lambda i: i.isin(wanted)),
        ("isna", lambda i: i.isna()),
        ("notna", lambda i: i.notna()),
        ("is_month_start", lambda i: i.is_month_start),
    ]:
        got = value(lazy.index).compute()
        assert isinstance(got, pd.Index) and len(got) == len(pdf), name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(value(pdf.index)))
    pd.testing.assert_frame_equal(lazy[lazy.index.isin(wanted)].compute(), pdf[pdf.index.isin(wanted)])
    pd.testing.assert_series_equal(
        lazy.groupby(lazy.index.date).x.sum().compute(), pdf.groupby(pdf.index.date).x.sum()
    )


@pytest.mark.parametrize("name", ["values", "is_unique", "tolist", "duplicated", "to_numpy"])
def test_index_attributes_that_need_the_whole_index_say_so(name: str) -> None:
    lazy = zd.from_pandas(pd.DataFrame({"x": range(10)}), npartitions=3)
    with pytest.raises(UsageError, match=f"index.{name} needs the whole index"):
        value = getattr(lazy.index, name)
        if callable(value):
            value()


def test_assigning_several_columns_at_once_pairs_them_as_pandas_does() -> None:
    pdf = pd.DataFrame({"a": range(10), "b": np.arange(10) * 0.5})
    lazy, expected = zd.from_pandas(pdf, npartitions=3), pdf.copy()
    lazy[["p", "q"]] = lazy[["a", "b"]]
    expected[["p", "q"]] = expected[["a", "b"]]
    lazy[["r", "s"]] = 1
    expected[["r", "s"]] = 1
    lazy[["a", "t"]] = [5, "x"]
    expected[["a", "t"]] = [5, "x"]
    pd.testing.assert_frame_equal(lazy.compute(), expected)
    with pytest.raises(UsageError, match="frame of 3 columns"):
        lazy[["u", "v", "w"]] = lazy[["a", "b"]]


def test_assigning_an_array_of_values_is_refused_before_computing() -> None:
    pdf = pd.DataFrame({"a": range(10)})
    lazy = zd.from_pandas(pdf, npartitions=3)
    for values in (np.arange(10), list(range(10)), pd.Index(range(10))):
        with pytest.raises(UsageError, match="make it a lazy Series"):
            lazy.assign(p=values)
    by_label = pd.Series(np.arange(10) * 2, index=pdf.index)
    pd.testing.assert_frame_equal(lazy.assign(p=by_label).compute(), pdf.assign(p=by_label))
    pd.testing.assert_frame_equal(lazy.assign(p=np.int64(3)).compute(), pdf.assign(p=np.int64(3)))


def test_loc_by_date_strings_without_known_divisions() -> None:
    index = pd.date_range("2000-01-01", periods=20, freq="12h")
    pdf = pd.DataFrame({"x": np.arange(20.0)}, index=index)
    lazy = zd.from_pandas(pdf, npartitions=3).clear_divisions()
    for key in ("2000-01-03", "2000-01-03 12:00", "2000-01", pd.Timestamp("2000-01-03")):
        expected = pdf.loc[[key]] if isinstance(key, pd.Timestamp) else pdf.loc[key]
        expected = expected.to_frame().T if isinstance(expected, pd.Series) else expected
        pd.testing.assert_frame_equal(lazy.loc[key].compute(), expected, check_freq=False)
    eastern = pdf.tz_localize("UTC").tz_convert("US/Eastern")
    lazy_eastern = zd.from_pandas(eastern, npartitions=3).clear_divisions()
    pd.testing.assert_frame_equal(lazy_eastern.loc["2000-01-03"].compute(), eastern.loc["2000-01-03"], check_freq=False)


def test_index_drop_duplicates() -> None:
    pdf = pd.DataFrame({"v": range(6)}, index=[1, 1, 2, 2, 3, 3])
    got = zd.from_pandas(pdf, npartitions=2).index.drop_duplicates().compute()
    assert got.tolist() == pdf.index.drop_duplicates().tolist()
