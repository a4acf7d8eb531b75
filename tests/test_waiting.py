"""Waiting on futures from every kind of caller: other event loops, done callbacks, durations."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from zmqdask import Client, as_completed, wait
from zmqdask.errors import UsageError


def _inc(x: int) -> int:
    return x + 1


def test_timeouts_take_durations_everywhere(client: Client) -> None:
    future = client.submit(_inc, 1)
    assert future.result(timeout="30s") == 2
    assert future.exception(timeout="30s") is None
    done, not_done = wait([future], timeout="30s")
    assert done == {future} and not not_done
    assert [f.result() for f in as_completed([future], timeout="30s")] == [2]
    client.wait_for_workers(1, timeout="30s")
    with pytest.raises(UsageError, match="duration such as"):
        future.result(timeout="soon")
    with pytest.raises(UsageError, match="duration such as"):
        wait([future], timeout="soon")


def test_a_synchronous_clients_future_can_be_awaited_on_another_event_loop(client: Client) -> None:
    # A script that keeps a synchronous client and awaits its futures inside asyncio.run.
    async def main() -> tuple[int, list[int]]:
        value = await client.submit(_inc, 5, pure=False)
        seen = [await f async for f in as_completed(client.map(_inc, range(3), pure=False))]
        return value, sorted(seen)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == (6, [1, 2, 3])


def test_as_completed_works_inside_a_done_callback_and_past_a_blocked_one(client: Client) -> None:
    results: list[object] = []
    finished = threading.Event()

    def callback(_: object) -> None:
        try:
            results.extend(f.result() for f in as_completed(client.map(_inc, range(3), pure=False), timeout=30))
        except Exception as exc:  # reported below
            results.append(exc)
        finished.set()

    client.submit(_inc, 100, pure=False).add_done_callback(callback)
    assert finished.wait(60)
    assert sorted(results) == [1, 2, 3]  # type: ignore[type-var]

    # A done callback that blocks holds up later callbacks, not as_completed.
    release = threading.Event()
    blocked = client.submit(_inc, 1, pure=False)
    blocked.add_done_callback(lambda _: release.wait(60))
    try:
        assert [f.result() for f in as_completed([client.submit(_inc, 2, pure=False)], timeout=30)] == [3]
    finally:
        release.set()


def test_wait_until_done_from_several_threads(client: Client, wait_until: Callable[..., None]) -> None:
    outcomes: list[int] = []

    def waiter(x: int) -> None:
        outcomes.append(client.submit(_inc, x, pure=False).result(timeout="60s"))

    threads = [threading.Thread(target=waiter, args=(x,)) for x in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == [1, 2, 3, 4]


async def _async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_async_def_functions_run_as_tasks(client: Client) -> None:
    assert client.submit(_async_double, 21).result(timeout=30) == 42
    assert client.gather(client.map(_async_double, range(50))) == [2 * x for x in range(50)]
    assert client.gather(client.map(_async_double, range(3), batch_size=1)) == [0, 2, 4]


def test_dask_keywords_port_unchanged(client: Client) -> None:
    assert client.submit(_inc, 1, retries=None, priority=1.5).result(timeout=30) == 2
    assert client.gather(client.map(_inc, [1, 2], retries=None, priority=-0.5)) == [2, 3]
    with pytest.raises(UsageError, match="priority must be a number"):
        client.submit(_inc, 1, priority="high")
    assert client.scatter([1, 2], direct=True, timeout="30s")[0].result(timeout=30) == 1
    assert len(client.scheduler_info(n_workers=1)["workers"]) == 1
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2


def test_as_completed_batches_readiness_and_clear(client: Client, wait_until: Callable[..., None]) -> None:
    futures = client.map(_inc, range(4), pure=False)
    client.gather(futures)
    completed = as_completed(futures)
    wait_until(completed.has_ready, timeout=30)
    seen = completed.next_batch(block=False)
    assert seen
    while batch := completed.next_batch():
        seen.extend(batch)
    assert sorted(f.result() for f in seen) == [1, 2, 3, 4]
    assert completed.next_batch() == [] and not completed.has_ready() and completed.is_empty()
    cleared = as_completed(client.map(_inc, range(4), pure=False))
    cleared.clear()
    assert cleared.is_empty() and list(cleared) == []


def test_compute_of_a_container_computes_the_collections_in_it(client: Client) -> None:
    from zmqdask import delayed

    a, b = delayed(_inc)(1), delayed(_inc)(2)
    assert client.compute({"a": a, "b": b}).result(timeout=30) == {"a": 2, "b": 3}
    first, rest = client.compute([a, [b]])
    assert client.gather([first, rest]) == [2, [3]]
    assert client.compute([a, [b]], traverse=False)[1] == [b]


class _DaskStyleCollection:
    """What dask's own collections look like to the client: a ``__dask_graph__``."""

    def __dask_graph__(self) -> dict[str, object]:
        return {"x": 1}


def test_compute_of_a_dask_collection_says_to_build_it_with_zmqdask(client: Client) -> None:
    with pytest.raises(UsageError, match="is a dask collection: build it with zmqdask"):
        client.compute(_DaskStyleCollection())


def test_an_asynchronous_client_used_from_another_thread_blocks_there(run_async: Callable[..., object]) -> None:
    # asyncio.to_thread (notebook helpers, web handlers): nothing in that thread could
    # await, so the calls block and return values, as Dask's do there.
    async def body(c: Client) -> object:
        def in_thread() -> tuple[object, ...]:
            futures = c.map(_inc, range(3), pure=False)
            done, _ = wait(futures, timeout="30s")
            scattered = c.scatter(41)
            return (
                c.gather(futures),
                len(done),
                c.submit(_inc, scattered).result(timeout=30),
                len(c.scheduler_info()["workers"]),
            )

        return await asyncio.to_thread(in_thread)

    assert run_async(body) == ([1, 2, 3], 3, 42, 2)


def _ident(x: object) -> object:
    return x


def test_a_name_scattered_again_holds_the_new_value(client: Client) -> None:
    old = client.scatter({"zmqdask-test-params": {"lr": 0.1}})["zmqdask-test-params"]
    new = client.scatter({"zmqdask-test-params": {"lr": 0.5}})["zmqdask-test-params"]
    assert new.result(timeout=30) == {"lr": 0.5} == old.result(timeout=30)
    assert client.submit(_ident, new, pure=False).result(timeout=30) == {"lr": 0.5}
    big = client.scatter({"zmqdask-test-array": bytes(3_000_000)})["zmqdask-test-array"]
    assert len(big.result(timeout=30)) == 3_000_000
    again = client.scatter({"zmqdask-test-array": b"short"})["zmqdask-test-array"]
    assert client.submit(len, again, pure=False).result(timeout=30) == 5


def test_changing_a_small_value_after_scattering_it_changes_no_copy(client: Client) -> None:
    settings = {"lr": 0.1, "layers": [1, 2]}
    [future] = client.scatter([settings], hash=False)
    settings["layers"].append(3)
    assert future.result(timeout=30) == {"lr": 0.1, "layers": [1, 2]}
    assert client.submit(_ident, future, pure=False).result(timeout=30) == {"lr": 0.1, "layers": [1, 2]}


def test_wait_and_as_completed_over_the_futures_of_two_clients(cluster: object, client: Client) -> None:
    with Client(cluster.address, timeout=30) as other:  # type: ignore[attr-defined]
        mine, theirs = client.submit(_inc, 1, pure=False), other.submit(_inc, 2, pure=False)
        done, not_done = wait([mine, theirs], timeout="60s")
        assert done == {mine, theirs} and not not_done
        assert sorted(f.result() for f in as_completed([mine, theirs], timeout=60)) == [2, 3]

        async def both() -> list[int]:
            return sorted([await f async for f in as_completed([mine, theirs], timeout=60)])

        assert asyncio.run(both()) == [2, 3]


def test_a_name_scattered_again_right_after_its_future_was_dropped_holds_the_new_value(client: Client) -> None:
    # The release of the dropped future is still on its way when the new value is sent.
    for i in range(10):
        dropped = client.scatter({"zmqdask-test-dropped": i})["zmqdask-test-dropped"]
        del dropped
        fresh = client.scatter({"zmqdask-test-dropped": 1000 + i})["zmqdask-test-dropped"]
        assert fresh.result(timeout=30) == 1000 + i
        assert client.submit(_ident, fresh, pure=False).result(timeout=30) == 1000 + i
        del fresh


def _compile_bad() -> None:
    compile("x = (", "module.py", "exec")


def _decode_bad() -> str:
    return b"\xff".decode("utf-8")


def test_errors_with_fields_of_their_own_keep_them(client: Client) -> None:
    with pytest.raises(SyntaxError) as syntax:
        client.submit(_compile_bad, pure=False).result(timeout=30)
    assert syntax.value.filename == "module.py" and syntax.value.lineno == 1 and syntax.value.msg
    with pytest.raises(UnicodeDecodeError, match="invalid start byte"):
        client.submit(_decode_bad, pure=False).result(timeout=30)


def _plus_one(x: int) -> int:
    return x + 1


def test_a_large_gather_gives_the_event_loop_turns(run_async: Callable[..., object]) -> None:
    async def body(c: Client) -> None:
        futures = c.map(_plus_one, range(12_000))
        await wait(futures)
        first = await c.gather(futures)  # every value is here now
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.create_task(count_turns())
        await asyncio.sleep(0)  # the counter starts
        before = turns
        values = await c.gather(futures)
        # Values already here need no wait; the other coroutine still had its turns.
        during = turns - before
        counter.cancel()
        assert values == first == list(range(1, 12_001))
        assert during >= 2

    run_async(body)
