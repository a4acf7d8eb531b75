"""Named datasets and futures made from keys, between clients of a real broker and workers."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

import zmqdask
import zmqdask.dataframe as dd
from zmqdask import Client, Future, LocalCluster
from zmqdask.errors import LostDataError, SerializationError, UsageError


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"no good: {x}")


def test_a_published_future_is_fetched_by_another_client(client: Client, cluster: LocalCluster) -> None:
    future = client.submit(inc, 41)
    client.publish_dataset(future, name="answer")
    try:
        with Client(cluster.address, timeout=30) as other:
            fetched = other.get_dataset("answer")
            assert isinstance(fetched, Future)
            assert fetched.client is other
            assert fetched.key == future.key
            assert fetched.result(timeout=30) == 42
            assert "answer" in other.list_datasets()
    finally:
        client.unpublish_dataset("answer")


def test_published_values_outlive_the_publishing_client(cluster: LocalCluster) -> None:
    with Client(cluster.address, timeout=30) as publisher:
        futures = publisher.map(inc, range(10))
        pdf = pd.DataFrame({"x": range(100), "y": range(100, 200)})
        persisted = dd.from_pandas(pdf, npartitions=4).persist()
        publisher.publish_dataset(numbers=futures, frame=persisted)
        keys = [f.key for f in futures]
    gc.collect()
    with Client(cluster.address, timeout=30) as reader:
        numbers = reader.get_dataset("numbers")
        assert [f.key for f in numbers] == keys
        assert reader.gather(numbers) == list(range(1, 11))
        frame = reader.get_dataset("frame")
        assert frame.npartitions == 4
        pd.testing.assert_frame_equal(frame.compute(), pdf)
        assert int(frame.x.sum().compute()) == int(pdf.x.sum())
        reader.unpublish_dataset("numbers")
        reader.unpublish_dataset("frame")
        assert reader.list_datasets() == []


def test_unpublished_values_are_released_once_no_future_holds_them(
    client: Client, cluster: LocalCluster, wait_until: Callable[..., None]
) -> None:
    future = client.submit(inc, 1, pure=False)
    key = future.key
    client.publish_dataset(future, name="gone")
    del future
    gc.collect()
    # The dataset keeps the value although the publisher holds no future of it.
    with Client(cluster.address, timeout=30) as other:
        assert other.get_dataset("gone").result(timeout=30) == 2
        gc.collect()
        other.unpublish_dataset("gone")

    def released() -> bool:
        return all(key not in keys for keys in client.has_what().values())

    wait_until(released, timeout=30)


def test_a_name_is_not_replaced_unless_asked(client: Client) -> None:
    first, second = client.submit(inc, 1), client.submit(inc, 2)
    client.publish_dataset(twice=first)
    try:
        with pytest.raises(KeyError, match="already exists; pass override=True"):
            client.publish_dataset(twice=second)
        assert client.get_dataset("twice").result(timeout=30) == 2
        client.publish_dataset(twice=second, override=True)
        assert client.get_dataset("twice").result(timeout=30) == 3
        client.datasets["twice"] = first  # the mapping replaces, as Dask's does
        assert client.datasets["twice"].result(timeout=30) == 2
    finally:
        client.unpublish_dataset("twice")


def test_missing_datasets_and_bad_calls_say_what_to_do(client: Client) -> None:
    with pytest.raises(KeyError, match="Dataset 'nowhere' not found"):
        client.get_dataset("nowhere")
    assert client.get_dataset("nowhere", default=None) is None
    assert client.get_dataset("nowhere", 7) == 7
    with pytest.raises(KeyError, match="not found"):
        client.unpublish_dataset("nowhere")
    with pytest.raises(KeyError):
        del client.datasets["nowhere"]
    with pytest.raises(ValueError, match="needs name="):
        client.publish_dataset(1)
    with pytest.raises(ValueError, match="needs datasets"):
        client.publish_dataset()
    with pytest.raises(UsageError, match="non-empty string"):
        client.get_dataset("")
    with pytest.raises(SerializationError, match="cannot be pickled"):
        client.publish_dataset(lock=_Unpicklable())
    assert "lock" not in client.list_datasets()
    # Nothing above broke the client.
    assert client.submit(inc, 1).result(timeout=30) == 2


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object stays here")


def test_the_datasets_mapping(client: Client) -> None:
    client.datasets["plain"] = {"a": 1, "b": [1, 2]}
    try:
        assert client.datasets["plain"] == {"a": 1, "b": [1, 2]}
        assert "plain" in client.datasets
        assert list(client.datasets) == ["plain"]
        assert len(client.datasets) == 1
    finally:
        del client.datasets["plain"]
    assert "plain" not in client.datasets
    assert len(client.datasets) == 0


def test_calls_of_a_map_batch_can_be_published(client: Client, cluster: LocalCluster) -> None:
    # Small calls of one map travel as one batch task: each call must become a key of its own.
    futures = client.map(inc, range(50))
    client.publish_dataset(batch=futures)
    try:
        with Client(cluster.address, timeout=30) as other:
            assert other.gather(other.get_dataset("batch")) == list(range(1, 51))
    finally:
        client.unpublish_dataset("batch")


def test_a_future_made_from_a_key(client: Client, cluster: LocalCluster) -> None:
    done = client.submit(inc, 10)
    done.result(timeout=30)
    erred = client.submit(fail, 3)
    with Client(cluster.address, timeout=30) as other:
        assert Future(done.key, other).result(timeout=30) == 11
        with pytest.raises(ValueError, match="no good: 3"):
            Future(erred.key, other).result(timeout=30)
        # A key the broker never hears of: lost once the wait for it (10 s here) is over.
        lost = Future("never-submitted-here", other)
        with pytest.raises(LostDataError, match="unknown key 'never-submitted-here'"):
            lost.result(timeout=30)
        assert lost.status == "lost"
        with pytest.raises(UsageError, match="non-empty string"):
            Future("", other)
        # Named by the other client at once, while the submission may still be on its way
        # (two clients' messages are not ordered): the broker waits for the key.
        for attempt in range(20):
            slow = client.submit(_sleep_then, 0.01, attempt, pure=False)
            assert Future(slow.key, other).result(timeout=30) == attempt


def _sleep_then(seconds: float, value: int) -> int:
    import time

    time.sleep(seconds)
    return value


def test_a_future_made_from_a_key_keeps_the_value(
    client: Client, cluster: LocalCluster, wait_until: Callable[..., None]
) -> None:
    with Client(cluster.address, timeout=30) as other:
        submitted = client.submit(inc, 100, pure=False)
        key = submitted.key
        submitted.result(timeout=30)
        held = Future(key, other)
        assert held.result(timeout=30) == 101
        del submitted
        gc.collect()
        # The submitter let go; the other client's future still holds the value.
        client.who_has(None)  # a round trip: the release has reached the broker
        assert Future(key, client).result(timeout=30) == 101
        assert other.gather(held) == 101


def test_the_current_client_is_used_without_one(client: Client) -> None:
    future = client.submit(inc, 1)
    assert Future(future.key).client is zmqdask.default_client()


def test_datasets_from_an_asynchronous_client(run_async: Callable[..., Any], cluster: LocalCluster) -> None:
    async def body(c: Client) -> None:
        future = c.submit(inc, 5)
        await c.publish_dataset(five=future)
        assert await c.list_datasets() == ["five"]
        fetched = await c.get_dataset("five")
        assert await fetched == 6
        assert await (await c.datasets["five"]) == 6
        assert [name async for name in c.datasets] == ["five"]
        with pytest.raises(TypeError, match=r"await client\.publish_dataset"):
            c.datasets["six"] = future
        with pytest.raises(TypeError, match="async for"):
            list(c.datasets)
        async with Client(cluster.address, asynchronous=True, timeout=30) as other:
            assert await (await other.get_dataset("five")) == 6
            assert await Future(future.key, other) == 6
        await c.unpublish_dataset("five")
        with pytest.raises(KeyError):
            await c.get_dataset("five")

    run_async(body)
