"""Resampling and rolling windows: the partition kernels, then lazy operations against pandas."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.groupby import finalize, make_plan
from zmqdask.dataframe.timeseries_ops import (
    bin_label,
    data_extent,
    merge_extents,
    resample_chunk,
    resample_layout,
    resample_output,
    rolling_apply,
    rolling_carry,
    rolling_lead,
)
from zmqdask.errors import UsageError


def _series_frame(seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2000-01-01 00:13", periods=400, freq="7min")
    frame = pd.DataFrame({"x": rng.integers(0, 10, 400), "y": rng.normal(size=400)}, index=index)
    frame.loc[frame.index[::5], "y"] = np.nan
    return frame.drop(frame.index[100:160])  # a gap of several hours


def _cuts(frame: pd.DataFrame) -> tuple[list[pd.DataFrame], list[pd.Timestamp]]:
    """Uneven partitions (one tiny, one empty) and loose divisions around them."""
    cuts = [0, 3, 4, 100, 100, 200, len(frame)]
    pieces = [frame.iloc[a:b] for a, b in itertools.pairwise(cuts)]
    divisions = [pd.Timestamp("1999-12-31 22:00"), *(frame.index[c] for c in cuts[1:-1]), pd.Timestamp("2000-01-03")]
    return pieces, divisions


def _assert_same(got: Any, expected: Any) -> None:
    if isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, check_freq=False)
    else:
        pd.testing.assert_frame_equal(got, expected, check_freq=False)


@pytest.mark.parametrize("rule", ["1h", "15min", "2h", "1D", "ME"])
@pytest.mark.parametrize(
    "spec", ["sum", "mean", "count", "min", "max", "first", "last", "std", ["size", "var"]], ids=str
)
@pytest.mark.parametrize("closed", [None, "right"])
def test_resample_kernels_match_pandas(rule: str, spec: Any, closed: str | None) -> None:
    frame = _series_frame()
    pieces, divisions = _cuts(frame)
    label = closed
    origin = divisions[0].normalize()
    plan = make_plan(spec, ["x", "y"])
    partials = [resample_chunk(piece, rule, origin, closed, label, plan) for piece in pieces]
    extent = merge_extents([data_extent(partial) for partial in partials])
    empty = finalize(resample_chunk(frame.iloc[:0], rule, origin, closed, label, plan), plan)
    layout = resample_layout(divisions, len(pieces), rule, origin, closed, label)
    outputs = [
        resample_output([partials[j] for j in readers], plan, rule, low, high, extent, empty)
        for readers, low, high in layout
    ]
    kwargs = {} if closed is None else {"closed": closed, "label": label}
    _assert_same(pd.concat(outputs), frame.resample(rule, **kwargs).agg(spec))


def test_bin_labels_follow_pandas() -> None:
    origin = pd.Timestamp("2000-01-01")
    assert bin_label(pd.Timestamp("2000-01-01 01:59"), "1h", origin, None, None) == pd.Timestamp("2000-01-01 01:00")
    assert bin_label(pd.Timestamp("2000-01-01 02:00"), "1h", origin, "right", "right") == pd.Timestamp(
        "2000-01-01 02:00"
    )
    assert bin_label(pd.Timestamp("2000-02-10"), "ME", origin, None, None) == pd.Timestamp("2000-02-29")


@pytest.mark.parametrize("window", [1, 3, 10, "1h", "30min"])
@pytest.mark.parametrize("method", ["sum", "mean", "count", "min", "max", "std", "var"])
def test_rolling_kernels_match_pandas(window: Any, method: str) -> None:
    frame = _series_frame()
    pieces, _ = _cuts(frame)
    previous = None
    outputs = []
    for piece in pieces:
        outputs.append(rolling_apply(previous, piece, window, None, method, {}))
        previous = rolling_carry(previous, piece, window)
    _assert_same(pd.concat(outputs), getattr(frame.rolling(window), method)())


def test_rolling_carry_is_bounded() -> None:
    frame = _series_frame()
    assert len(rolling_carry(None, frame, 4)) == 3
    assert len(rolling_carry(None, frame, 1)) == 0
    # Short partitions: the carry accumulates across them up to window - 1 rows.
    carry = rolling_carry(rolling_carry(None, frame.iloc[:5], 12), frame.iloc[5:9], 12)
    pd.testing.assert_frame_equal(carry, frame.iloc[:9])
    carried = rolling_carry(None, frame, "1h")
    assert carried.index[0] > frame.index[-1] - pd.Timedelta("1h")


# --------------------------------------------------------------------------------------------
# Lazy operations
# --------------------------------------------------------------------------------------------


def _lazy(npartitions: int) -> tuple[pd.DataFrame, Any]:
    frame = _series_frame()
    return frame, zd.from_pandas(frame, npartitions=npartitions)


@pytest.mark.parametrize("npartitions", [1, 7])
@pytest.mark.parametrize("rule", ["1h", "45min", "1D"])
@pytest.mark.parametrize("method", ["sum", "mean", "count", "min", "max", "first", "last", "std", "var", "size"])
def test_lazy_resample_matches_pandas(npartitions: int, rule: str, method: str) -> None:
    frame, lazy = _lazy(npartitions)
    got = getattr(lazy.resample(rule), method)()
    _assert_same(got.compute(), getattr(frame.resample(rule), method)())


@pytest.mark.parametrize("rule", ["2D", "3D", "5D", "36h", "W"])
def test_lazy_resample_by_several_days_bins_every_partition_from_one_origin(rule: str) -> None:
    # Partitions start on other days than the data: each must still bin from its first day.
    index = pd.date_range("2000-01-01 05:00", periods=20 * 24, freq="h")
    frame = pd.DataFrame({"x": np.arange(len(index)) % 17}, index=index)
    lazy = zd.from_pandas(frame, npartitions=7)
    _assert_same(lazy.x.resample(rule).sum().compute(), frame.x.resample(rule).sum())
    _assert_same(lazy.resample(rule).count().compute(), frame.resample(rule).count())


@pytest.mark.parametrize("rule", ["2W", "3W-MON", "2ME", "2MS", "2B"])
def test_resample_by_several_calendar_periods_is_refused(rule: str) -> None:
    _, lazy = _lazy(3)
    with pytest.raises(UsageError, match="several calendar periods"):
        lazy.resample(rule)


def test_resample_of_a_timezone_aware_index_bins_days_as_pandas_without_warnings() -> None:
    index = pd.date_range("2000-01-01 05:00", periods=400, freq="3h", tz="US/Eastern")
    frame = pd.DataFrame({"x": np.arange(400)}, index=index)
    lazy = zd.from_pandas(frame, npartitions=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rule in ("1D", "6h"):
            _assert_same(lazy.x.resample(rule).sum().compute(), frame.x.resample(rule).sum())
            expected = frame.x.resample(rule, origin="epoch").sum() if rule == "6h" else None
            got = lazy.x.resample(rule, origin="epoch").sum().compute()
            if expected is not None:
                _assert_same(got, expected)
    with pytest.raises(UsageError, match="timezone-aware index by '2D'"):
        lazy.resample("2D")


@pytest.mark.parametrize("rule", ["W", "W-MON", "ME", "MS", "B", "QE", "BME", "SME"])
def test_resample_by_one_calendar_period_matches_pandas(rule: str) -> None:
    index = pd.date_range("2000-01-03 05:00", periods=400, freq="7h")
    frame = pd.DataFrame({"x": np.arange(400)}, index=index)
    lazy = zd.from_pandas(frame, npartitions=7)
    _assert_same(lazy.x.resample(rule).sum().compute(), frame.x.resample(rule).sum())


def test_lazy_resample_agg_series_and_divisions() -> None:
    frame, lazy = _lazy(6)
    got = lazy.resample("2h").agg({"x": ["sum", "max"], "y": "mean"})
    _assert_same(got.compute(), frame.resample("2h").agg({"x": ["sum", "max"], "y": "mean"}))
    series = lazy.y.resample("30min").mean()
    assert series.known_divisions
    parts = [series.get_partition(i).compute() for i in range(series.npartitions)]
    for i, part in enumerate(parts):
        if len(part):
            assert series.divisions[i] <= part.index[0]
            assert part.index[-1] <= series.divisions[i + 1]
    _assert_same(series.compute(), frame.y.resample("30min").mean())


def test_lazy_resample_with_empty_partitions() -> None:
    frame, lazy = _lazy(6)
    kept = frame[frame.x > 7]
    got = lazy[lazy.x > 7].resample("1h").agg(["sum", "count"])
    _assert_same(got.compute(), kept.resample("1h").agg(["sum", "count"]))


def _spread(values: pd.Series) -> float:
    return float(values.max() - values.min()) if len(values) else -1.0


WHOLE_BIN_CALLS: list[tuple[str, Any]] = [
    ("median", lambda r: r.median()),
    ("prod", lambda r: r.prod()),
    ("prod-min-count", lambda r: r.prod(min_count=1)),
    ("apply", lambda r: r.apply(_spread)),
    ("agg-func", lambda r: r.agg(_spread)),
    ("agg-list", lambda r: r.agg(["sum", "median"])),
]


@pytest.mark.parametrize("rule", ["1h", "45min", "1D", "ME"])
@pytest.mark.parametrize(("name", "call"), WHOLE_BIN_CALLS, ids=[name for name, _ in WHOLE_BIN_CALLS])
def test_lazy_resample_over_whole_bins_matches_pandas(rule: str, name: str, call: Any) -> None:
    frame = _series_frame()
    frame = frame.assign(x=frame.x % 3 + 1)  # products that stay integers
    lazy = zd.from_pandas(frame, npartitions=1)
    # Bins straddle partition boundaries, a partition is empty and one boundary falls in
    # the gap of several hours (empty bins at the edges of outputs).
    cuts = [frame.index[3], frame.index[4], frame.index[99] + pd.Timedelta("2h"), frame.index[200]]
    spread = lazy.repartition(divisions=[frame.index[0], *cuts, frame.index[-1]])
    many = zd.from_pandas(frame, npartitions=40)
    for pieces in (lazy, spread, many):
        _assert_same(call(pieces.resample(rule)).compute(), call(frame.resample(rule)))
        _assert_same(call(pieces.y.resample(rule)).compute(), call(frame.y.resample(rule)))
    _assert_same(
        call(spread.resample(rule, closed="right", label="right")).compute(),
        call(frame.resample(rule, closed="right", label="right")),
    )


def test_resample_needs_datetime_index_and_known_divisions() -> None:
    frame, lazy = _lazy(3)
    with pytest.raises(UsageError):
        zd.from_pandas(frame.reset_index(), npartitions=2).resample("1h")
    with pytest.raises(UsageError):
        zd.from_pandas(frame, npartitions=2, sort=False).resample("1h")
    with pytest.raises(KeyError):
        lazy.resample("1h")["nope"]


def test_lazy_resample_results_keep_pandas_frequency() -> None:
    frame, lazy = _lazy(5)
    pd.testing.assert_series_equal(lazy.y.resample("1h").mean().compute(), frame.y.resample("1h").mean())
    pd.testing.assert_frame_equal(lazy.resample("3h").max().compute(), frame.resample("3h").max())


@pytest.mark.parametrize("npartitions", [1, 6])
def test_lazy_resample_nunique_and_column_selection(npartitions: int) -> None:
    frame, lazy = _lazy(npartitions)
    _assert_same(lazy.resample("1h").nunique().compute(), frame.resample("1h").nunique())
    _assert_same(lazy.x.resample("2h").agg("nunique").compute(), frame.x.resample("2h").nunique())
    _assert_same(lazy.resample("1h").x.mean().compute(), frame.resample("1h").x.mean())
    _assert_same(lazy.resample("1h")[["x", "y"]].sum().compute(), frame.resample("1h")[["x", "y"]].sum())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"closed": "right"},
        {"closed": "right", "label": "right"},
        {"label": "right"},
        {"origin": "start"},
        {"origin": "epoch"},
        {"origin": pd.Timestamp("1999-12-31 23:50")},
    ],
    ids=str,
)
def test_lazy_resample_passes_closed_label_origin(kwargs: dict[str, Any]) -> None:
    frame, lazy = _lazy(5)
    _assert_same(lazy.resample("45min", **kwargs).sum().compute(), frame.resample("45min", **kwargs).sum())
    got = lazy.y.resample("2h", **kwargs).agg(["mean", "count"])
    _assert_same(got.compute(), frame.y.resample("2h", **kwargs).agg(["mean", "count"]))


@pytest.mark.parametrize("npartitions", [1, 9])
def test_lazy_rolling_column_selection(npartitions: int) -> None:
    frame, lazy = _lazy(npartitions)
    _assert_same(lazy.rolling("30min").y.mean().compute(), frame.rolling("30min").y.mean())
    _assert_same(lazy.rolling(5)["x"].sum().compute(), frame.rolling(5)["x"].sum())
    _assert_same(lazy.rolling("1h")[["y", "x"]].max().compute(), frame.rolling("1h")[["y", "x"]].max())
    with pytest.raises(AttributeError):
        lazy.rolling(3).nope  # noqa: B018


@pytest.mark.parametrize("window", [4, "1h"])
@pytest.mark.parametrize("method", ["sum", "mean", "count", "min", "max", "std", "var", "skew", "kurt", "sem"])
def test_lazy_rolling_matches_pandas(window: Any, method: str) -> None:
    frame, lazy = _lazy(9)
    _assert_same(getattr(lazy.rolling(window), method)().compute(), getattr(frame.rolling(window), method)())
    got = getattr(lazy.y.rolling(window, min_periods=2), method)()
    _assert_same(got.compute(), getattr(frame.y.rolling(window, min_periods=2), method)())


@pytest.mark.parametrize("window", [6, "2h"])
def test_lazy_rolling_quantile_and_aggregations_match_pandas(window: Any) -> None:
    frame, lazy = _lazy(9)
    _assert_same(lazy.rolling(window).quantile(0.3).compute(), frame.rolling(window).quantile(0.3))
    _assert_same(lazy.rolling(window).agg(["sum", "mean"]).compute(), frame.rolling(window).agg(["sum", "mean"]))
    spec = {"x": "max", "y": ["min", "std"]}
    _assert_same(lazy.rolling(window).agg(spec).compute(), frame.rolling(window).agg(spec))
    _assert_same(lazy.y.rolling(window).agg(["count", "max"]).compute(), frame.y.rolling(window).agg(["count", "max"]))
    for wrong in ("nope", ["sum", "quantile"], {"nope": "sum"}, []):
        with pytest.raises(UsageError, match="rolling aggregation"):
            lazy.rolling(3).agg(wrong)
    with pytest.raises(UsageError, match="between 0 and 1"):
        lazy.rolling(3).quantile(1.5)


def test_lazy_rolling_windows_span_many_partitions() -> None:
    frame, lazy = _lazy(40)
    _assert_same(lazy.rolling(25).sum().compute(), frame.rolling(25).sum())
    _assert_same(lazy.rolling("6h").mean().compute(), frame.rolling("6h").mean())
    assert lazy.rolling(3).sum().divisions == lazy.divisions


def test_lazy_rolling_projection_moves_below() -> None:
    frame, lazy = _lazy(4)
    got = lazy.rolling(3).max()["x"]
    _assert_same(got.compute(), frame.rolling(3).max()["x"])


@pytest.mark.parametrize("window", [3, "1h"])
def test_lazy_rolling_aggregation_columns_are_selected_after_it(window: Any) -> None:
    # .agg names (column, method) pairs, or only the columns of its dict: a selection of
    # them cannot move below the rolling step.
    frame, lazy = _lazy(7)
    names = ["sum", "mean"]
    got = lazy.rolling(window).agg(names)[("x", "sum")]
    _assert_same(got.compute(), frame.rolling(window).agg(names)[("x", "sum")])
    pairs = [("x", "sum"), ("y", "mean")]
    _assert_same(lazy.rolling(window).agg(names)[pairs].compute(), frame.rolling(window).agg(names)[pairs])
    spec = {"x": "max", "y": "min"}
    _assert_same(lazy.rolling(window).agg(spec)[["x"]].compute(), frame.rolling(window).agg(spec)[["x"]])


@pytest.mark.parametrize("npartitions", [1, 7])
@pytest.mark.parametrize("window", [2, 5, 40, "30min", "3h"])
def test_lazy_centered_rolling_matches_pandas(npartitions: int, window: Any) -> None:
    # A window of 40 rows reaches across several partitions both ways.
    frame, lazy = _lazy(npartitions)
    for method in ("sum", "mean", "count", "max"):
        got = getattr(lazy.rolling(window, center=True), method)()
        _assert_same(got.compute(), getattr(frame.rolling(window, center=True), method)())
    got = lazy.y.rolling(window, center=True, min_periods=1).apply(window_range, raw=True)
    _assert_same(got.compute(), frame.y.rolling(window, center=True, min_periods=1).apply(window_range, raw=True))


def test_rolling_lead_is_bounded_and_other_windows_are_refused() -> None:
    frame = _series_frame()
    assert len(rolling_lead(frame.iloc[:2], frame.iloc[2:10], 5)) == 4
    lead = rolling_lead(frame, None, "1h")
    assert lead.index[-1] < frame.index[0] + pd.Timedelta("1h") <= frame.index[len(lead)]
    with pytest.raises(UsageError, match=r"win_type.*map_overlap"):
        zd.from_pandas(frame, npartitions=2).rolling(3, win_type="triang")


def window_range(window: Any, scale: float = 1.0) -> float:
    return float(window.max() - window.min()) * scale


def test_lazy_rolling_apply_matches_pandas() -> None:
    frame, lazy = _lazy(7)
    expected = frame.x.rolling(5).apply(window_range, raw=True)
    _assert_same(lazy.x.rolling(5).apply(window_range, raw=True).compute(), expected)
    got = lazy.rolling("45min", min_periods=2).apply(window_range, args=(2.0,))
    _assert_same(got.compute(), frame.rolling("45min", min_periods=2).apply(window_range, args=(2.0,)))
    with pytest.raises(UsageError, match="takes a function"):
        lazy.x.rolling(3).apply("max")


def test_rolling_rejects_bad_windows() -> None:
    frame, lazy = _lazy(2)
    with pytest.raises(UsageError):
        lazy.rolling("not a window")
    with pytest.raises(UsageError):
        zd.from_pandas(frame.reset_index(drop=True), npartitions=2).rolling("1h")


def test_resample_ohlc_of_a_series_and_of_a_frame() -> None:
    rng = np.random.default_rng(0)
    index = pd.date_range("2021-01-01", periods=200, freq="17min")
    pdf = pd.DataFrame({"x": rng.normal(size=200), "y": np.arange(200.0)}, index=index)
    lazy = zd.from_pandas(pdf, npartitions=4)
    pd.testing.assert_frame_equal(lazy.x.resample("1h").ohlc().compute(), pdf.x.resample("1h").ohlc())
    pd.testing.assert_frame_equal(lazy.resample("2h").ohlc().compute(), pdf.resample("2h").ohlc())
