"""``zmqdask.delayed``: lazy calls computed in this process and on a real cluster."""

from __future__ import annotations

import asyncio
import operator

import pandas as pd
import pytest

import zmqdask
import zmqdask.dataframe as dd
from zmqdask import Client, Delayed, delayed
from zmqdask.errors import SyncInAsyncError, UsageError


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class Boom(ValueError):
    """Raised by a delayed call."""


def explode(x: int) -> int:
    raise Boom(f"bad {x}")


def test_calls_build_a_graph_and_compute_without_a_client() -> None:
    one = delayed(inc)(1)
    two = delayed(inc)(one)
    total = delayed(add)(one, two)
    assert isinstance(total, Delayed)
    assert set(total.dask) == {one.key, two.key, total.key}
    assert total.compute() == 5
    assert zmqdask.compute(one, [two, total], 7) == (2, [3, 5], 7)


def test_decorators_purity_and_keys() -> None:
    pure_add = delayed(pure=True)(add)
    assert pure_add(1, 2).key == pure_add(1, 2).key != pure_add(2, 1).key
    assert delayed(inc)(1).key != delayed(inc)(1).key  # calls are impure by default, as in Dask
    assert delayed(inc)(1).key.startswith("inc-")
    assert delayed(inc)(1, dask_key_name="my-key").key == "my-key"

    @delayed
    def double(x: int) -> int:
        return 2 * x

    assert double(4).compute() == 8


def test_operators_items_attributes_and_unpacking() -> None:
    a = delayed(inc)(1)  # 2
    assert (a + 1).compute() == 3 and (10 - a).compute() == 8 and (a * a).compute() == 4
    assert (-a).compute() == -2 and abs(delayed(-3)).compute() == 3
    assert (a**3).compute() == 8 and (7 // a).compute() == 3 and (a / 4).compute() == 0.5
    assert (a > 1).compute() is True and (a == 2).compute() is True
    items = delayed({"x": a, "rest": [a, 5]})
    assert items.compute() == {"x": 2, "rest": [2, 5]}
    assert items["rest"][1].compute() == 5
    assert delayed("text").upper().compute() == "TEXT"
    quotient, remainder = delayed(divmod, nout=2)(7, 2)
    assert (quotient.compute(), remainder.compute()) == (3, 1)
    assert delayed(operator.add)(a, a).compute() == 4
    assert hash(a) == hash(a.key)


def test_wrapping_twice_naming_values_and_introspection() -> None:
    assert delayed(delayed(abs))(-3).compute() == 3
    five = delayed(5, name="five")
    assert five.key == "five" and (five + 1).compute() == 6
    total = delayed(add)(five, 1)
    assert set(total.__dask_graph__()) == {"five", total.key} and total.__dask_keys__() == [total.key]


def test_what_a_delayed_value_cannot_do_is_said_clearly() -> None:
    a = delayed(inc)(1)
    with pytest.raises(TypeError, match="not known until it is computed"):
        bool(a)
    with pytest.raises(TypeError, match="nout="):
        list(a)
    with pytest.raises(TypeError, match="immutable"):
        a.value = 3
    with pytest.raises(UsageError, match="nout"):
        delayed(inc, nout=-1)
    # Drawing the graph is not offered: said at once, not queued as a task named "visualize".
    with pytest.raises(UsageError, match="explain"):
        a.visualize()
    with pytest.raises(UsageError, match=r"obj\.dask"):
        zmqdask.visualize(a)
    frame = dd.from_pandas(pd.DataFrame({"x": [1, 2, 3]}), npartitions=2)
    with pytest.raises(UsageError, match="explain"):
        frame.visualize()
    assert frame.x.sum().dask and isinstance(frame.dask, dict)


def test_persist_without_a_client_computes_here_and_keeps_the_value() -> None:
    a = delayed(sum)([1, 2])
    for persisted in (a.persist(), zmqdask.persist(a)[0], zmqdask.persist(a, scheduler="sync")[0]):
        assert isinstance(persisted, Delayed) and persisted.key != a.key
        assert persisted.compute() == 3
        assert delayed(inc)(persisted).compute() == 4
    assert zmqdask.is_dask_collection(a) and zmqdask.is_dask_collection(dd.from_pandas(pd.DataFrame({"x": [1]})))
    assert not zmqdask.is_dask_collection(3) and not zmqdask.is_dask_collection(inc)


def test_delayed_on_a_cluster_with_collections_and_futures(client: Client) -> None:
    frame = dd.from_pandas(pd.DataFrame({"x": range(10)}), npartitions=3)
    parts = [delayed(inc)(i) for i in range(5)]
    total = delayed(sum)(parts)
    assert total.compute() == 15
    future = client.compute(total)
    assert future.result() == 15
    scattered = client.scatter(100)
    assert delayed(add)(scattered, parts[0]).compute() == 101
    # A lazy DataFrame as an argument arrives as the pandas object it computes to.
    assert delayed(len)(frame).compute() == 10
    assert delayed(lambda df: int(df.x.sum()))(frame[frame.x > 4]).compute() == 35
    kept = total.persist()
    assert isinstance(kept, Delayed) and (kept + 1).compute() == 16
    with pytest.raises(Boom, match="bad 3"):
        delayed(explode)(3).compute()


def test_delayed_under_an_asynchronous_client(cluster) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with Client(cluster.address, asynchronous=True) as client:
            value = delayed(add)(delayed(inc)(1), 10)
            assert await client.compute(value) == 12
            persisted = value.persist()  # returns at once, as DataFrame.persist does
            assert await client.compute(persisted * 2) == 24
            with pytest.raises(SyncInAsyncError, match=r"client\.compute"):
                value.compute()

    asyncio.run(main())


def load_part(i: int) -> pd.DataFrame:
    return pd.DataFrame({"i": [i] * 3, "x": [10 * i, 10 * i + 1, 10 * i + 2]})


def test_from_delayed_and_to_delayed_without_a_client() -> None:
    frame = dd.from_delayed([delayed(load_part)(i) for i in range(4)])
    expected = pd.concat([load_part(i) for i in range(4)])
    assert frame.npartitions == 4 and len(frame) == 12
    pd.testing.assert_frame_equal(frame.compute(), expected)
    parts = (frame.x * 2).to_delayed()
    assert len(parts) == 4 and parts[2].compute().tolist() == [40, 42, 44]
    with pytest.raises(UsageError, match="list of delayed values"):
        dd.from_delayed([load_part(0)])


def test_client_compute_returns_plain_values_as_they_are(client: Client) -> None:
    futures = client.compute([delayed(inc)(1), 3, "x"])
    assert futures[1:] == [3, "x"] and client.gather(futures) == [2, 3, "x"]
    assert client.compute(5) == 5 and client.compute({"a": 1}) == {"a": 1}
    assert client.compute([delayed(inc)(5), 7], sync=True) == [6, 7]


def test_from_delayed_and_to_delayed_on_a_cluster(client: Client) -> None:
    parts = [delayed(load_part)(i) for i in range(4)]
    frame = dd.from_delayed(parts, meta={"i": "int64", "x": "int64"})
    assert frame.groupby("i").x.sum().compute().tolist() == [3, 33, 63, 93]
    assert dd.from_delayed(parts).x.max().compute() == 32  # meta from the first partition
    pieces = frame.x.to_delayed()
    assert delayed(sum)([piece.sum() for piece in pieces]).compute() == 192
