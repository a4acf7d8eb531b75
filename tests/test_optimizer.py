"""The local optimizer as pure tests: projection, filters, fusion, culling, sharing, fixed point."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pandas.testing as tm
import pytest

import zmqdask.dataframe as zd
from zmqdask.dataframe.collection import new_collection
from zmqdask.dataframe.expr import Blockwise, Expr, Filter, Projection, Source, node, tokenize
from zmqdask.dataframe.lower import Fused, build_graph, run_fused
from zmqdask.dataframe.optimize import OptimizerError, optimize, simplify
from zmqdask.datasets import Timeseries, make_timeseries_part, timeseries
from zmqdask.graph import TaskSpec, dependencies, execute_local


def sources_of(expr: Expr, kind: type = Timeseries) -> list[Any]:
    """Every node of ``kind`` in the optimized plan, looking inside fused groups."""
    found = []
    for node_ in optimize(expr).walk():
        members = node_.members if isinstance(node_, Fused) else (node_,)
        found.extend(m for m in members if isinstance(m, kind))
    return found


def generated_columns(graph: dict[str, TaskSpec]) -> set[tuple[str, ...]]:
    """The column sets timeseries generation tasks produce, wherever they sit in the graph."""
    found: set[tuple[str, ...]] = set()

    def visit(fn: Any, args: Any) -> None:
        if fn is make_timeseries_part:
            found.add(tuple(name for name, _ in args[3]))
        elif fn is run_fused:
            for _, inner_fn, inner_args, _, _ in args[0]:
                visit(inner_fn, inner_args)

    for fn, args, _ in graph.values():
        visit(fn, args)
    return found


# -- projection ---------------------------------------------------------------------------


def test_projection_is_pushed_into_generation_and_reduction_is_fused() -> None:
    total = timeseries()[["x", "y"]].sum()
    graph, keys = total.__zmqdask_graph__()
    assert generated_columns(graph) == {("x", "y")}
    fused = [key for key, (fn, _, _) in graph.items() if fn is run_fused]
    assert len(fused) == 30  # one task per partition: generate, project, chunk-sum
    combines = len(graph) - len(fused)
    assert 1 < combines <= 6
    assert len(keys) == 1
    for key in fused:
        steps = graph[key][1][0]
        assert next(step[1] for step in steps) is make_timeseries_part
        assert not dependencies(graph[key])  # a fused chunk task needs nothing else


def test_projection_union_over_consumers() -> None:
    df = timeseries(freq="1h")
    expr = (df[df.x > 0].y + df.id).expr
    (source,) = sources_of(expr)
    assert set(source.columns) == {"x", "y", "id"}


def test_len_generates_no_columns() -> None:
    df = timeseries(freq="1h")
    graph, _ = df._length().__zmqdask_graph__()
    assert generated_columns(graph) == {()}
    assert len(df) == 30 * 24


def test_projection_moves_below_columnwise_operations() -> None:
    pdf = pd.DataFrame({"a": [1.0, -2.0, np.nan], "b": [3.0, 4.0, 5.0], "c": [7, 8, 9]})
    df = zd.from_pandas(pdf, npartitions=2)
    expr = simplify(df.fillna(0).abs()["a"].expr)
    kinds = [type(e).__name__ for e in expr.walk()]
    assert kinds.index("MapMethod") < kinds.index("FromPandas")
    (source,) = [e for e in expr.walk() if type(e).__name__ == "FromPandas"]
    assert source.columns_selected == ("a",)
    tm.assert_series_equal(new_collection(expr).compute(), pdf.fillna(0).abs()["a"])


def test_projection_skips_assigned_columns() -> None:
    df = timeseries(freq="1h")
    assigned = df.assign(z=df.x * 2)
    (source,) = sources_of(assigned[["y"]].expr)
    assert source.columns == ("y",)
    (source,) = sources_of(assigned[["z", "y"]].expr)
    assert set(source.columns) == {"x", "y"}


def test_nested_projections_collapse() -> None:
    df = timeseries(freq="1h")
    expr = simplify(df[["x", "y", "id"]][["y", "x"]]["x"].expr)
    projections = [e for e in expr.walk() if isinstance(e, Projection)]
    assert len(projections) <= 1


# -- filters ------------------------------------------------------------------------------


def test_filter_is_pushed_below_projection() -> None:
    df = timeseries(freq="1h")
    narrow = df[["x", "y"]]
    expr = simplify(narrow[narrow.x > 0].expr)
    # The filter moved below the projection, which then merged into the source.
    assert isinstance(expr, Filter)
    assert isinstance(expr.frame, Timeseries) and expr.frame.columns == ("x", "y")
    mixed = simplify(df[["y", "x"]][df.x > 0].expr)
    assert isinstance(mixed, Projection) and isinstance(mixed.frame, Filter)


@node
class FilterableSource(Source):
    """A test source that records the filters pushed into it."""

    data: Any
    filters: tuple[Any, ...] = ()
    columns: tuple[Any, ...] | None = None

    @property
    def npartitions(self) -> int:
        return 2

    @cached_property
    def _meta(self) -> Any:
        meta = self.data.iloc[:0]
        return meta if self.columns is None else meta[list(self.columns)]

    def _task(self, i: int) -> TaskSpec:
        half = len(self.data) // 2
        piece = self.data.iloc[i * half : (i + 1) * half if i == 0 else None]
        return (_apply_filters, (piece, self.filters, self.columns), {})

    def _with_filters(self, filters: list[tuple[Any, str, Any]]) -> Expr:
        return self._replace(filters=self.filters + tuple(filters))

    def _with_columns(self, columns: list[Any]) -> Expr:
        # Filters may name columns that are not in the output: they are read all the same.
        return self._replace(columns=tuple(columns))


def _apply_filters(part: pd.DataFrame, filters: tuple[Any, ...], columns: tuple[Any, ...] | None) -> pd.DataFrame:
    ops = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
    for column, op, value in filters:
        mask = part[column].isin(value) if op == "in" else getattr(part[column], ops[op])(value)
        part = part[mask]
    return part if columns is None else part[list(columns)]


def test_filters_are_pushed_into_sources_that_accept_them() -> None:
    pdf = pd.DataFrame({"a": np.arange(10), "b": np.arange(10) * 2.0, "c": list("abcdefghij")})
    df = new_collection(FilterableSource(pdf))
    query = df[(df.a > 2) & (df.c.isin(["d", "e", "h"]))][["b"]]
    expr = optimize(query.expr, fuse=False)
    assert not any(isinstance(e, Filter) for e in expr.walk())
    (source,) = [e for e in expr.walk() if isinstance(e, FilterableSource)]
    assert sorted(map(repr, source.filters)) == sorted(map(repr, [("a", ">", 2), ("c", "in", ["d", "e", "h"])]))
    tm.assert_frame_equal(query.compute(), pdf[(pdf.a > 2) & pdf.c.isin(["d", "e", "h"])][["b"]])
    # A predicate that is not a plain column comparison stays a Filter.
    other = df[df.a + df.b > 3]
    assert any(isinstance(e, Filter) for e in optimize(other.expr, fuse=False).walk())


# -- fusion -------------------------------------------------------------------------------


def test_chains_of_partition_operations_fuse_into_one_task_per_partition() -> None:
    df = timeseries(freq="1h")
    chain = ((df.x + 1) * 2).abs().round(2)[df.y > 0]
    graph, keys = chain.__zmqdask_graph__()
    assert len(graph) == df.npartitions == len(keys)
    assert all(fn is run_fused for fn, _, _ in graph.values())
    steps = graph[keys[0]][1][0]
    assert steps[0][1] is make_timeseries_part
    assert len(steps) >= 6


def test_fused_tasks_release_intermediates() -> None:
    df = zd.from_pandas(pd.DataFrame({"a": np.arange(6.0)}), npartitions=2)
    graph, keys = ((df.a + 1) * 2 - 3).__zmqdask_graph__()
    steps = graph[keys[0]][1][0]
    released = [key for step in steps for key in step[4]]
    assert sorted(released) == sorted(step[0] for step in steps[:-1])


def test_shared_input_of_two_groups_is_not_fused_twice() -> None:
    df = timeseries(freq="1h")
    base = df.x * 2
    out = base.sum() + base.max()
    graph, _ = out.__zmqdask_graph__()
    # ``base`` feeds two reductions: its tasks exist once, not inside both chunk groups.
    generation = [
        step for fn, args, _ in graph.values() if fn is run_fused for step in args[0] if step[1] is make_timeseries_part
    ]
    assert len(generation) == df.npartitions
    result = out.compute()
    pdf = df.compute()
    assert result == pytest.approx((pdf.x * 2).sum() + (pdf.x * 2).max())


# -- culling ------------------------------------------------------------------------------


def test_head_reads_only_the_first_partition() -> None:
    df = timeseries(freq="1h")
    lazy = (df.x + 1).head(3, compute=False)
    graph, _ = lazy.__zmqdask_graph__()
    assert len(graph) == 1
    (fn, args, _) = next(iter(graph.values()))
    assert fn is run_fused
    starts = [step[2][0] for step in args[0] if step[1] is make_timeseries_part]
    assert starts == [pd.Timestamp("2000-01-01")]
    pd.testing.assert_series_equal(lazy.compute(), (df.x.get_partition(0).compute() + 1).head(3))


def test_loc_uses_divisions_to_cull() -> None:
    df = timeseries(freq="1h")
    day = df.loc["2000-01-05"]
    graph, _keys = day.x.sum().__zmqdask_graph__()
    starts = {
        step[2][0]
        for fn, args, _ in graph.values()
        if fn is run_fused
        for step in args[0]
        if step[1] is make_timeseries_part
    }
    assert starts == {pd.Timestamp("2000-01-05")}
    full = df.compute()
    assert day.x.sum().compute() == pytest.approx(full.loc["2000-01-05"].x.sum())


# -- sharing and fixed point ----------------------------------------------------------------


def test_common_subexpressions_share_keys() -> None:
    df = timeseries(freq="1h")
    assert (df.x + 1).expr == (df.x + 1).expr
    assert (df.x + 1).expr._name == (df["x"] + 1).expr._name
    assert (df.x + 1).expr != (df.x + 2).expr
    total = (df.x.sum() + df.x.sum()).__zmqdask_graph__()[0]
    single = df.x.sum().__zmqdask_graph__()[0]
    assert len(total) == len(single) + 1


def test_tokens_depend_on_content() -> None:
    a = pd.DataFrame({"x": [1, 2, 3]})
    assert tokenize(a) == tokenize(a.copy())
    assert tokenize(a) != tokenize(a.assign(x=[1, 2, 4]))
    assert tokenize(a) != tokenize(a.rename(columns={"x": "y"}))
    assert tokenize([1, (2, "a")], {"k": 1.5}) == tokenize([1, (2, "a")], {"k": 1.5})
    assert tokenize(1) != tokenize(1.0) != tokenize("1")
    assert tokenize(np.arange(3)) != tokenize(np.arange(3.0))

    def adder(k: int) -> Any:
        return lambda v: v + k

    assert tokenize(adder(1)) == tokenize(adder(1))
    assert tokenize(adder(1)) != tokenize(adder(2))


def test_tokens_of_categoricals_depend_on_every_category() -> None:
    # pandas shortens a long list of categories in the dtype's repr: the middle must count.
    categories = [f"c{i}" for i in range(200)]
    other = [*categories[:100], "elsewhere", *categories[101:]]
    dtype, other_dtype = pd.CategoricalDtype(categories), pd.CategoricalDtype(other)
    assert repr(dtype) == repr(other_dtype)
    assert tokenize(dtype) == tokenize(pd.CategoricalDtype(list(categories)))
    assert tokenize(dtype) != tokenize(other_dtype)
    assert tokenize(dtype) != tokenize(pd.CategoricalDtype(categories, ordered=True))
    values = ["c0", "c1", "c0"]
    frame = pd.DataFrame({"k": pd.Series(values, dtype=dtype)})
    assert tokenize(frame) != tokenize(pd.DataFrame({"k": pd.Series(values, dtype=other_dtype)}))
    assert tokenize(frame.k) != tokenize(pd.Series(values, dtype=other_dtype, name="k"))


@node
class PingPong(Blockwise):
    """A node whose rule never settles: it flips a flag forever."""

    frame: Expr
    flag: bool

    def _function(self) -> Any:
        return _identity

    def _simplify_down(self) -> Expr | None:
        return PingPong(self.frame, not self.flag)


def _identity(part: Any) -> Any:
    return part


def test_optimizer_raises_when_rules_do_not_converge() -> None:
    df = zd.from_pandas(pd.DataFrame({"a": [1, 2]}), npartitions=1)
    with pytest.raises(OptimizerError):
        optimize(PingPong(df.expr, True))


def test_optimization_reaches_a_fixed_point() -> None:
    df = timeseries(freq="1h")
    expr = df[df.x > 0][["x", "y"]].assign(z=df.y * 2).z.sum().expr
    once = simplify(expr)
    assert simplify(once)._token == once._token
    graph, keys = build_graph(optimize(expr))
    assert execute_local(graph, keys)[0] == pytest.approx(new_collection(expr).compute())


class _FakeFuture:
    """Stands for a cluster Future: the persisted source only reads its key."""

    def __init__(self, key: str) -> None:
        self.key = key


def test_projection_is_pushed_into_persisted_partitions() -> None:
    from zmqdask.dataframe.sources import FromFutures, make_futures_source

    meta = timeseries()._meta
    futures = [_FakeFuture(f"part-{i}") for i in range(3)]
    persisted = new_collection(make_futures_source(futures, meta, (None,) * 4))
    query = persisted[persisted.x > 0].y.sum()
    (source,) = sources_of(query.expr, FromFutures)
    assert set(source.columns_selected) == {"x", "y"}
    fn, args, _ = source._task(1)
    frame = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "x": [0.5, -0.5], "y": [1.0, 2.0]})
    assert args[0] is futures[1]
    tm.assert_frame_equal(fn(frame, *args[1:]), frame[list(source.columns_selected)])
    # Different column selections are different sources; the whole frame keeps its token.
    assert source._token != make_futures_source(futures, meta, (None,) * 4)._token
    assert sources_of(persisted.expr, FromFutures)[0].columns_selected is None


def test_counting_rows_skips_nodes_that_keep_them() -> None:
    from zmqdask.dataframe.shuffle import HashShuffle, SortValues

    frame = pd.DataFrame({"a": np.arange(40) % 7, "b": np.arange(40.0)})
    lazy = zd.from_pandas(frame, npartitions=4)
    for query in (
        lazy.sort_values("b"),
        lazy.set_index("a", divisions=[0, 3, 6]),
        lazy.b.cumsum() + 1,
        lazy.assign(c=lazy.b * 2)[["c"]].abs(),
        lazy.repartition(npartitions=3),
    ):
        plan = optimize(query._length().expr)
        assert not any(isinstance(e, (SortValues, HashShuffle)) for e in plan.walk())
        assert len(query) == len(frame)
    filtered = lazy[lazy.b > 10].sort_values("b")
    assert len(filtered) == int((frame.b > 10).sum())


def test_head_of_a_sort_needs_no_shuffle() -> None:
    from zmqdask.dataframe.shuffle import SortValues

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"a": rng.integers(0, 5, 300).astype(float), "b": rng.normal(size=300)})
    frame.loc[frame.index[::9], "a"] = np.nan
    lazy = zd.from_pandas(frame, npartitions=6)
    for by, ascending in (("a", True), ("a", False), (["a", "b"], [False, True])):
        query = lazy.sort_values(by, ascending=ascending)
        expected = frame.sort_values(by, ascending=ascending, kind="stable", na_position="last")
        head = query.head(7, compute=False)
        assert not any(isinstance(e, SortValues) for e in head.optimize().expr.walk())
        for n in (4, 60, 400):
            tm.assert_frame_equal(query.head(n), expected.head(n))
            tm.assert_frame_equal(query.tail(n), expected.tail(n))
    tm.assert_series_equal(lazy.b.sort_values().head(5), frame.b.sort_values().head(5))
