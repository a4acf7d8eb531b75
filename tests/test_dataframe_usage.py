"""Dask-style usage of the DataFrame API against pandas: in process, on a cluster, sync and async.

Each case is ordinary code a Dask user writes, run on a lazy ``timeseries`` frame (with missing
values, a filter that empties partitions) and on the same data in pandas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zmqdask
import zmqdask.dataframe as zd
from zmqdask.graph import is_collection

Case = tuple[str, Callable[[Any], Any], Callable[[Any], Any] | None]

SMALL = pd.DataFrame({"name": ["Alice", "Bob", "Zelda", "Nobody"], "score": [1.0, 2.0, 3.0, 4.0]})


def _lazy_or_pandas(d: Any, lazy: Callable[[Any], Any], eager: Callable[[Any], Any]) -> Any:
    return eager(d) if isinstance(d, pd.DataFrame) else lazy(d)


def _sorted(frame: Any) -> Any:
    """Rows in a canonical order, for results whose row order no distributed plan promises."""
    if isinstance(frame, pd.Series):
        return frame.sort_index(kind="stable")
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


CASES: list[Case] = [
    ("groupby-agg-dict", lambda d: d.groupby("name").agg({"x": ["mean", "max"], "y": "sum"}), None),
    ("loc-date-strings", lambda d: d.loc["2000-01-02":"2000-01-03"], None),
    ("loc-one-day", lambda d: d.loc["2000-01-04"].x.sum(), None),
    ("resample-mean", lambda d: d.x.resample("1h").mean(), None),
    ("resample-agg", lambda d: d.resample("3h").agg({"x": "mean", "y": ["min", "max"], "id": "nunique"}), None),
    ("rolling-time", lambda d: d.rolling("10min").x.mean(), None),
    ("rolling-rows", lambda d: d[["x", "y"]].rolling(5).sum(), None),
    ("query", lambda d: d.query("x > 0.5 and y < 0"), None),
    ("assign-std", lambda d: d.assign(z=d.x * 2).z.std(), None),
    ("value-counts", lambda d: d.name.value_counts(), None),
    ("describe", lambda d: d.describe(), None),
    ("set-index", lambda d: d.set_index("x"), lambda d: d.set_index("x").sort_index(kind="stable")),
    ("sort-values-head", lambda d: d.sort_values("x").head(7, compute=False), lambda d: d.sort_values("x").head(7)),
    ("merge-small", lambda d: d.merge(SMALL, on="name"), lambda d: _sorted(d.merge(SMALL, on="name"))),
    (
        "merge-large",
        lambda d: d.reset_index().merge(d.reset_index()[["timestamp", "y"]], on="timestamp", suffixes=("", "_r")),
        None,
    ),
    (
        "map-partitions",
        lambda d: _lazy_or_pandas(d, lambda z: z.map_partitions(lambda p: p.x + p.y), lambda p: p.x + p.y),
        None,
    ),
    (
        "apply-meta",
        lambda d: _lazy_or_pandas(d, lambda z: z.x.apply(abs, meta=("x", "f8")), lambda p: p.x.apply(abs)),
        None,
    ),
    ("repartition", lambda d: _lazy_or_pandas(d, lambda z: z.repartition(npartitions=2), lambda p: p), None),
    ("index-min", lambda d: d.index.min(), None),
    ("str-accessor", lambda d: d[d.name.str.startswith("A")].name.str.upper(), None),
    ("filter-sum", lambda d: d[d.x > 0].y.sum(), None),
    ("index-filter", lambda d: d[d.index >= pd.Timestamp("2000-01-03 12:00")].id.max(), None),
    ("nan-fill-drop", lambda d: d.where(d.x > 0).fillna({"x": 0.0}).dropna(subset=["y"]), None),
    ("astype-arith", lambda d: d.id.astype("float32") / 3 + d.y, None),
    ("reductions", lambda d: d[["x", "y", "id"]].mean() + d[["x", "y", "id"]].var(), None),
    ("nunique-size", lambda d: d.name.nunique() + d.size, None),
    ("groupby-many", lambda d: d.groupby("name")[["x", "y"]].agg(["count", "min", "first", "last", "size"]), None),
    ("groupby-empty", lambda d: d[d.x > 5].groupby("name").x.mean(), None),
    ("cumsum", lambda d: d.x.cumsum(), None),
    ("shift-diff", lambda d: d[["x", "y"]].diff(2), None),
    ("drop-duplicates", lambda d: d[["name"]].drop_duplicates(), None),
    ("corr", lambda d: d[["x", "y", "id"]].corr(), None),
    ("index-attribute", lambda d: d.index.hour, None),
    ("groupby-index-hour", lambda d: d.groupby([d.index.hour, "name"]).x.agg(["mean", "count"]), None),
    ("filter-index-hour", lambda d: d[d.index.hour > 20].y.sum(), None),
    ("groupby-mixed-keys", lambda d: d.groupby(["name", d.x > 0]).y.sum(), None),
    ("row-wise", lambda d: d[["x", "y"]].mean(axis=1) + d[["x", "y", "id"]].max(axis="columns"), None),
    ("value-counts-by-label", lambda d: d.name.value_counts(sort=False).sort_index(), None),
    (
        "concat",
        lambda d: (
            zd.concat([d.loc["2000-01-01"], d.loc["2000-01-04":]])
            if not isinstance(d, pd.DataFrame)
            else pd.concat([d.loc["2000-01-01"], d.loc["2000-01-04":]])
        ),
        None,
    ),
]
"""``(id, code on the lazy frame, code on the pandas frame when it differs)``."""

_CANONICAL = {"merge-small", "merge-large"}


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, Any]:
    lazy = zmqdask.datasets.timeseries(end="2000-01-06", freq="1min", seed=11)
    lazy = lazy.assign(x=lazy.x.where(lazy.id % 10 != 3))  # missing values
    return lazy.compute(), lazy


def _expected(case: Case, pdf: pd.DataFrame) -> Any:
    _, lazy_code, pandas_code = case
    return (pandas_code or lazy_code)(pdf)


def _check(name: str, got: Any, expected: Any) -> None:
    if name in _CANONICAL:
        got, expected = _sorted(got), _sorted(expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(got, expected)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected)
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got)
    elif isinstance(expected, (float, np.floating)):
        assert got == pytest.approx(expected)
    else:
        assert got == expected


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_in_process(case: Case, frames: tuple[pd.DataFrame, Any]) -> None:
    pdf, lazy = frames
    result = case[1](lazy)
    _check(case[0], result.compute() if is_collection(result) else result, _expected(case, pdf))


_GROUPS = [CASES[i : i + 12] for i in range(0, len(CASES), 12)]


@pytest.mark.parametrize("group", range(len(_GROUPS)))
def test_on_a_cluster_with_a_sync_client(group: int, frames: tuple[pd.DataFrame, Any], client: Any) -> None:
    pdf, lazy = frames
    persisted = lazy.persist()  # the second half runs on partitions held by the workers
    for position, case in enumerate(_GROUPS[group]):
        source = persisted if position % 2 else lazy
        result = case[1](source)
        _check(case[0], result.compute() if is_collection(result) else result, _expected(case, pdf))


def test_on_a_cluster_with_an_async_client(frames: tuple[pd.DataFrame, Any], run_async: Any) -> None:
    pdf, lazy = frames
    # set_index and head/len-like calls would block; in an event loop only lazy forms are used.
    cases = [case for case in CASES if not case[0].startswith(("set-index", "nunique-size"))]
    lazies = {case[0]: case[1](lazy) for case in cases}

    async def body(client: Any) -> dict[str, Any]:
        persisted = client.persist(lazy)
        out = {}
        for name, result in lazies.items():
            out[name] = await client.compute(result) if is_collection(result) else result
        out["persisted-sum"] = await client.compute(persisted[["x", "y"]].sum())
        out["persisted-head"] = await client.compute(persisted.head(3, compute=False))
        return out

    results = run_async(body, timeout=120)
    for case in cases:
        _check(case[0], results[case[0]], _expected(case, pdf))
    _check("persisted-sum", results["persisted-sum"], pdf[["x", "y"]].sum())
    _check("persisted-head", results["persisted-head"], pdf.head(3))


def test_related_computations_one_after_another_reuse_steps_fused_differently(client: Any) -> None:
    # A step fused into its input's task in one graph is a task reading that input in the
    # next: its key is the same, its call and inputs are not.
    df = zmqdask.datasets.timeseries(start="2000-01-01", end="2000-01-05", freq="10s", seed=3)
    pdf = df.compute()
    positive = pdf[pdf.x > 0]
    assert df[df.x > 0].y.sum().compute() == pytest.approx(positive.y.sum())
    assert (df[df.x > 0].y.sum() + df.y.sum()).compute() == pytest.approx(positive.y.sum() + pdf.y.sum())
    assert (df[df.x > 0].y.count() / df.y.count()).compute() == pytest.approx(len(positive) / len(pdf))
    assert df[df.x > 0].y.sum().compute() == pytest.approx(positive.y.sum())


def test_a_graph_reaches_the_broker_whole_when_it_reuses_a_key_just_released(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The filter's output is released after each compute (the release waits a moment), and
    # the merge right after submits the filter again as an inner task of a larger graph:
    # that graph must still go out in one SUBMIT, or the broker may forget its first part's
    # inner keys before the rest arrives.
    from zmqdask import protocol

    submits: list[list[str]] = []
    send = client._send

    def recording_send(frames: list[Any]) -> None:
        message = protocol.decode(frames)
        if message.command == protocol.SUBMIT:
            submits.append([entry[0] for entry in message.header[1]])
        send(frames)

    monkeypatch.setattr(client, "_send", recording_send)
    pdf = pd.DataFrame({"a": np.arange(100) % 5, "b": np.linspace(-1, 1, 100), "s": ["x", "y"] * 50})
    expected = pdf[pdf.a > 3].merge(pdf, on="s")
    for _ in range(4):
        d = zd.from_pandas(pdf, npartitions=5)
        e = d[d.a > 3]
        assert len(e.compute()) == 20
        submits.clear()
        merged = e.merge(d, on="s").compute()
        assert merged.shape == expected.shape
        with_inputs = [keys for keys in submits if any(key.startswith("from-pandas") for key in keys)]
        assert len(with_inputs) == 1, [len(keys) for keys in submits]


def test_a_file_changed_since_an_earlier_read_is_read_again(client: Any, tmp_path: Any) -> None:
    csv, parquet = str(tmp_path / "data.csv"), str(tmp_path / "data.parquet")
    first = pd.DataFrame({"a": [1, 2, 3]})
    first.to_csv(csv, index=False)
    first.to_parquet(parquet)
    held = zd.read_csv(csv).persist()  # a result of the old contents stays on the cluster
    assert zd.read_csv(csv).compute().a.tolist() == [1, 2, 3]
    assert zd.read_parquet(parquet).compute().a.tolist() == [1, 2, 3]
    second = pd.DataFrame({"a": [10, 20, 30, 40]})
    second.to_csv(csv, index=False)
    second.to_parquet(parquet)
    assert zd.read_csv(csv).compute().a.tolist() == [10, 20, 30, 40]
    assert zd.read_parquet(parquet).compute().a.tolist() == [10, 20, 30, 40]
    assert held.compute().a.tolist() == [1, 2, 3]
