"""The Client against a real broker and worker processes over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import operator
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np
import pytest

import zmqdask
from zmqdask import Client, Future, LocalCluster, as_completed, wait
from zmqdask.errors import (
    ClosedClientError,
    ConnectTimeoutError,
    FutureCancelledError,
    KilledWorker,
    SerializationError,
    SyncInAsyncError,
    UsageError,
)
from zmqdask.serialize import TaskRef


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def slow_inc(x: int, delay: float = 0.2) -> int:
    time.sleep(delay)
    return x + 1


class Boom(ValueError):
    """A user exception type the client must re-raise unchanged."""


def explode(x: int) -> int:
    raise Boom(f"bad value {x}")


def die(_: int) -> int:
    os._exit(13)


def tasks_held(client: Client) -> int:
    info = client.scheduler_info()
    return sum(count for state, count in info["tasks"].items() if state != "forgotten")


def test_submit_result_and_repr(client: Client) -> None:
    future = client.submit(inc, 10)
    assert re.fullmatch(r"<Future: (pending|finished.*), key: inc-[0-9a-f]{32}>", repr(future))
    assert future.result(timeout=30) == 11
    assert future.status == "finished"
    assert future.done()
    assert repr(future) == f"<Future: finished, type: int, key: {future.key}>"
    assert "inc-" in future._repr_html_()
    assert {future: 1}[future] == 1  # hashable


def test_pure_keys_are_shared_and_impure_keys_unique(client: Client) -> None:
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    c, d = client.submit(inc, 1, pure=False), client.submit(inc, 1, pure=False)
    assert a.key == b.key
    assert c.key != d.key and c.key != a.key
    assert client.gather([a, b, c, d]) == [2, 2, 2, 2]
    assert client.submit(inc, 2).key != a.key


def test_map_and_nested_gather(client: Client) -> None:
    futures = client.map(add, range(100), range(100, 200))
    assert client.gather(futures) == [x + y for x, y in zip(range(100), range(100, 200), strict=True)]
    nested = {"a": futures[:2], "b": (futures[2], {"c": futures[3]}), "d": 5}
    assert client.gather(nested) == {"a": [100, 102], "b": (104, {"c": 106}), "d": 5}


def test_dependencies_stay_on_the_cluster(client: Client) -> None:
    x = client.submit(inc, 1)
    y = client.submit(inc, x)
    z = client.submit(add, x, y=[y, 1][0])
    chain = z
    for _ in range(50):
        chain = client.submit(inc, chain)
    assert z.result(timeout=30) == 2 + 3
    assert chain.result(timeout=30) == 55
    total = client.submit(sum, [client.submit(inc, i) for i in range(20)])
    assert total.result(timeout=30) == sum(range(1, 21))


def test_task_exception_is_reraised_with_remote_traceback(client: Client) -> None:
    bad = client.submit(explode, 3)
    with pytest.raises(Boom, match="bad value 3") as raised:
        bad.result(timeout=30)
    # As in Dask, the task's own frames end the traceback (where a post-mortem debugger lands).
    raised_names = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert raised_names[-1] == "explode" and "test_task_exception_is_reraised_with_remote_traceback" in raised_names
    for _ in range(2):  # raising it again does not stack the frames of earlier raises
        with pytest.raises(Boom) as again:
            bad.result(timeout=30)
        names_again = [frame.name for frame in traceback.extract_tb(again.value.__traceback__)]
        assert names_again.count("explode") == 1 and names_again.count("_blocking") == 0
    assert bad.status == "error"
    assert isinstance(bad.exception(), Boom)
    remote_tb = bad.traceback()
    assert remote_tb is not None
    names = [frame.name for frame in traceback.extract_tb(remote_tb)]
    assert names[-1] == "explode" and "execute" not in names  # the task's frames, not the worker's
    assert "explode" in "".join(traceback.format_tb(remote_tb))
    assert client.submit(inc, 1).traceback(timeout=30) is None
    dependent = client.submit(inc, bad)
    with pytest.raises(Boom):
        dependent.result(timeout=30)
    assert client.gather([client.submit(inc, 1), bad], errors="skip") == [2]
    assert client.submit(inc, 41).result(timeout=30) == 42  # the client goes on working


def test_unpicklable_function_and_argument_raise_at_submit(client: Client) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        client.submit(inc, lock)
    with pytest.raises(SerializationError):
        client.submit(lock.acquire)
    assert client.submit(inc, 1).result(timeout=30) == 2


def make_lock(_: int) -> object:
    return threading.Lock()


def test_unpicklable_result_fails_only_that_future(client: Client) -> None:
    bad = client.submit(make_lock, 1)
    good = client.submit(inc, 5)
    with pytest.raises(Exception, match=r"(?i)lock|serializ|pickle"):
        bad.result(timeout=30)
    assert good.result(timeout=30) == 6


def test_lambdas_and_closures_run(client: Client) -> None:
    offset = 7
    assert client.submit(lambda v: v + offset, 1).result(timeout=30) == 8
    assert client.submit(lambda v: v * 2, 4).key.startswith("lambda-")


def test_as_completed_and_wait(client: Client) -> None:
    futures = [client.submit(slow_inc, i, 0.05 * (5 - i), pure=False) for i in range(5)]
    seen = [f.result() for f in as_completed(futures)]
    assert sorted(seen) == [1, 2, 3, 4, 5]
    ac = as_completed([client.submit(inc, 100)], with_results=True)
    ac.add(client.submit(inc, 200))
    assert ac.count() == 2
    assert sorted(result for _, result in ac) == [101, 201]
    slow = client.submit(slow_inc, 1, 3.0, pure=False)
    fast = client.submit(inc, 1000)
    done, not_done = wait([slow, fast], return_when="FIRST_COMPLETED", timeout=30)
    assert fast in done and slow in not_done
    done, not_done = wait([slow, fast], timeout=30)
    assert not not_done


def test_done_callbacks(client: Client) -> None:
    called: list[str] = []
    event = threading.Event()
    future = client.submit(inc, 3)

    def callback(f: Future) -> None:
        called.append(f.key)
        event.set()

    future.add_done_callback(callback)
    assert event.wait(30)
    assert called == [future.key]


def test_done_callbacks_run_in_a_thread_of_their_own_and_may_block(client: Client) -> None:
    # As in Dask: a callback may wait for another future, which a callback on the client's
    # event loop could not do.
    seen: list[tuple[str, int]] = []
    done = threading.Event()
    slow = client.submit(slow_inc, 1, 0.3, pure=False)

    def callback(f: Future) -> None:
        seen.append((threading.current_thread().name, f.result() + slow.result(timeout=30)))
        done.set()

    client.submit(inc, 10, pure=False).add_done_callback(callback)
    assert done.wait(30)
    assert seen[0][0].startswith("zmqdask-callback") and seen[0][1] == 13


def test_a_done_callback_added_after_the_client_closed_still_runs() -> None:
    with Client(n_workers=1) as local:
        future = local.submit(inc, 1)
        assert future.result(timeout=30) == 2
    seen: list[str] = []
    future.add_done_callback(lambda f: seen.append(f.status))
    assert seen == ["finished"]


def test_done_callbacks_of_an_asynchronous_client_get_values_from_result(client: Client) -> None:
    # In the callback's thread, result() and exception() block and return, as in Dask.
    async def main() -> list[Any]:
        async with Client(client.address, asynchronous=True) as aclient:
            seen: list[Any] = []
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            other = aclient.submit(slow_inc, 1, 0.3, pure=False)

            def callback(f: Future) -> None:
                seen.extend([f.result(), other.result(timeout=30), f.exception()])
                loop.call_soon_threadsafe(done.set)

            aclient.submit(inc, 10, pure=False).add_done_callback(callback)
            await asyncio.wait_for(done.wait(), 30)
            return seen

    assert asyncio.run(main()) == [11, 2, None]


def test_scatter(client: Client) -> None:
    array = np.arange(1_000_000, dtype="float64")
    [remote] = client.scatter([array])
    assert client.submit(np.sum, remote).result(timeout=30) == array.sum()
    named = client.scatter({"a": 1, "b": 2})
    assert client.submit(add, named["a"], named["b"]).result(timeout=30) == 3
    single = client.scatter(42, broadcast=True)
    assert single.result(timeout=30) == 42
    assert client.submit(inc, single).result(timeout=30) == 43


def test_scattered_keys_follow_the_content_also_when_hashed_in_chunks(client: Client) -> None:
    from zmqdask.client import HASH_CHUNK_BYTES

    large = np.arange(HASH_CHUNK_BYTES // 8 * 2 + 1000, dtype="float64")  # hashed in chunks
    altered = large.copy()
    altered[len(altered) // 2] += 1  # one value in the middle of the second chunk
    first, again, other = client.scatter([large, large.copy(), altered])
    assert first.key == again.key and first.key != other.key
    small_a, small_b = client.scatter([np.arange(10.0), np.arange(10.0) + 1])
    assert small_a.key != small_b.key
    assert client.submit(np.sum, other).result(timeout=30) == altered.sum()


def test_large_result_round_trip(client: Client) -> None:
    future = client.submit(np.ones, 5_000_000)
    result = future.result(timeout=60)
    assert result.shape == (5_000_000,) and result.sum() == 5_000_000


def test_cancel(client: Client) -> None:
    blocker = [client.submit(slow_inc, i, 1.0, pure=False) for i in range(4)]
    victim = client.submit(slow_inc, 99, 1.0, pure=False)
    dependent = client.submit(inc, victim)
    client.cancel([victim])
    assert victim.cancelled()
    with pytest.raises(FutureCancelledError):
        victim.result(timeout=30)
    with pytest.raises(FutureCancelledError):
        dependent.result(timeout=30)
    assert client.gather(blocker) == [1, 2, 3, 4]


def test_a_key_cancelled_and_submitted_again_at_once_runs(client: Client) -> None:
    # The broker answers the CANCEL after the new SUBMIT has left: its report must not
    # cancel the new future.
    for i in range(20):
        first = client.submit(slow_inc, i % 3, 0.01)
        client.cancel([first])
        again = client.submit(slow_inc, i % 3, 0.01)
        assert first.cancelled()
        assert again.result(timeout=30) == i % 3 + 1
    # An input and its dependent, both cancelled and both submitted again.
    for i in range(10):
        x = client.submit(slow_inc, 100 + i, 0.01)
        y = client.submit(inc, x)
        client.cancel([y])
        client.cancel([x])
        x2 = client.submit(slow_inc, 100 + i, 0.01)
        y2 = client.submit(inc, x2)
        assert y2.key == y.key
        assert y2.result(timeout=30) == 102 + i


def test_a_key_cancelled_and_submitted_again_runs_on_an_async_client(run_async) -> None:  # type: ignore[no-untyped-def]
    async def body(c: Client) -> list[int]:
        results = []
        for i in range(20):
            first = c.submit(slow_inc, i, 0.01)
            await c.cancel([first])
            results.append(await c.submit(slow_inc, i, 0.01))
        return results

    assert run_async(body) == list(range(1, 21))


class Wrapped(Exception):
    """An exception whose __init__ reworks its argument, as many libraries' do."""

    def __init__(self, inner: str) -> None:
        super().__init__(f"wrapped: {inner}")
        self.inner = inner


def raise_wrapped(x: int) -> int:
    raise Wrapped(f"boom {x}")


def test_an_exception_whose_init_reworks_its_arguments_comes_back_as_raised(client: Client) -> None:
    future = client.submit(raise_wrapped, 1)
    for _ in range(2):  # raised twice: each a copy, none reworked
        with pytest.raises(Wrapped) as info:
            future.result(timeout=30)
        assert str(info.value) == "wrapped: boom 1" and info.value.inner == "boom 1"
        assert vars(info.value) == {"inner": "boom 1"}
    assert str(future.exception(timeout=30)) == "wrapped: boom 1"


def test_a_key_given_again_to_another_call_while_its_cancelled_run_goes_on(
    client: Client, wait_until: Any
) -> None:
    first = client.submit(slow_inc, 1, 1.0, key="reused-key")
    # Running: the cancel cannot stop it.
    wait_until(lambda: any(w["processing"] for w in client.scheduler_info()["workers"].values()), timeout=20)
    client.cancel([first])
    assert client.submit(slow_inc, 100, 0.1, key="reused-key").result(timeout=30) == 101


class Scaler:
    """A model whose state changes between calls, as a notebook's fitted models do."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def predict(self, x: int) -> int:
        return x * self.factor


def test_each_call_sends_the_callable_as_it_is_now(client: Client) -> None:
    model = Scaler(2)
    assert client.submit(model.predict, 3).result(timeout=30) == 6
    model.factor = 10  # fitted again: the next calls see it, pure or not, one by one or mapped
    assert client.submit(model.predict, 3).result(timeout=30) == 30
    assert client.submit(model.predict, 4, pure=False).result(timeout=30) == 40
    assert client.gather(client.map(model.predict, [1, 2])) == [10, 20]
    box = [5]
    assert client.submit(lambda x: x * box[0], 2).result(timeout=30) == 10
    box[0] = 7
    assert client.submit(lambda x: x * box[0], 2).result(timeout=30) == 14


def test_map_key_is_a_prefix_not_a_numbering(client: Client) -> None:
    first = client.map(inc, [1, 2], key="step")
    assert client.gather(first) == [2, 3] and all(f.key.startswith("step-") for f in first)
    # The same prefix for other calls: other keys, so other results.
    assert client.gather(client.map(add, [10, 20], [1, 1], key="step")) == [11, 21]
    assert client.gather(client.map(inc, [100, 200, 300], key="step")) == [101, 201, 301]


def test_cancel_reaches_dependents_and_finished_futures(client: Client) -> None:
    for i in range(5):
        a = client.submit(slow_inc, 50 + i, 0.3)
        b = client.submit(inc, a)
        client.cancel([a])
        assert b.cancelled()  # at once, not when the broker says so
        a2 = client.submit(slow_inc, 50 + i, 0.3)
        b2 = client.submit(inc, a2)
        assert b2.key == b.key and b2.result(timeout=30) == 52 + i
    # Through a graph's inner key, which no future holds: the output is cancelled too.
    for i in range(3):
        x = client.submit(slow_inc, 70 + i, 0.3)
        graph = {f"inner-{i}": (inc, (x,), {}), f"out-{i}": (inc, (TaskRef(f"inner-{i}"),), {})}
        (out,) = client.submit_graph(graph, [f"out-{i}"])
        client.cancel([x])
        assert out.cancelled()
        x2 = client.submit(slow_inc, 70 + i, 0.3)
        graph = {f"inner-{i}": (inc, (x2,), {}), f"out-{i}": (inc, (TaskRef(f"inner-{i}"),), {})}
        (out2,) = client.submit_graph(graph, [f"out-{i}"])
        assert out2.result(timeout=30) == 73 + i
    done = client.submit(inc, 1000)
    assert done.result(timeout=30) == 1001
    client.cancel([done])
    assert done.cancelled()
    with pytest.raises(FutureCancelledError):
        done.result(timeout=5)


def test_gather_of_an_iterator_gives_an_iterator_of_values(client: Client) -> None:
    futures = client.map(inc, range(3))
    gathered = client.gather(f for f in futures)
    assert not isinstance(gathered, list) and list(gathered) == [1, 2, 3]
    twice = list(as_completed([futures[0], futures[0], futures[1]]))
    assert twice.count(futures[0]) == 2 and len(twice) == 3


def test_fire_and_forget_tasks_run_after_their_client_closed(
    cluster: LocalCluster, tmp_path: Any, wait_until: Any
) -> None:
    marks = [tmp_path / f"mark-{i}" for i in range(4)]
    with Client(cluster.address, timeout=30) as c:
        c.wait_for_workers(2, timeout=60)
        zmqdask.fire_and_forget([c.submit(touch_after, str(mark), 0.3, pure=False) for mark in marks])
    # Two workers, four tasks of 0.3 s: most had not started when the client left.
    wait_until(lambda: all(mark.exists() for mark in marks), timeout=30)


def touch_after(path: str, delay: float) -> str:
    time.sleep(delay)
    with open(path, "w") as handle:
        handle.write("done")
    return path


def test_released_futures_free_the_cluster(client: Client, wait_until) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    futures = client.map(inc, range(200, 300), batch_size=1)  # one task per call
    client.gather(futures)
    assert tasks_held(client) >= 100
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    # Batched calls: a batch's result stays on the cluster until its last call is released.
    futures = client.map(inc, range(300, 400), batch_size=10)
    assert client.gather(futures) == list(range(301, 401))
    assert tasks_held(client) == 10
    del futures[:95]
    gc.collect()
    wait_until(lambda: tasks_held(client) == 1, timeout=20)
    assert client.gather(futures) == list(range(396, 401))
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)


def test_a_released_future_says_so(client: Client, wait_until) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    future = client.submit(inc, 41, pure=False)
    assert future.result(timeout=30) == 42
    future.release()
    future.release()  # twice is harmless
    assert future.status == "lost" and future.done()
    with pytest.raises(UsageError, match=r"was released \(Future.release\(\)\)"):
        future.result(timeout=5)
    with pytest.raises(UsageError, match="was released"):
        client.submit(inc, future)
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    del future
    gc.collect()


def test_failed_futures_whose_errors_were_raised_are_still_released(
    client: Client, wait_until
) -> None:  # type: ignore[no-untyped-def]
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    futures = client.map(explode, range(40), pure=False, batch_size=1)
    assert client.gather(futures, errors="skip") == []
    try:
        futures[0].result(timeout=30)
    except ValueError:
        pass
    assert tasks_held(client) == 40
    # The raised errors' tracebacks went through frames holding these futures: dropping
    # the futures must still release every task (the errors kept are not the ones raised).
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)


def test_futures_dropped_before_their_batch_is_sent_are_released_after_it(
    run_async, wait_until, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import zmqdask.session

    # Releases become due after a few keys, while the chain's submissions still wait for
    # their flush: the SUBMIT of every key must reach the broker before its RELEASE.
    monkeypatch.setattr(zmqdask.session, "RELEASE_BATCH_KEYS", 5)

    async def body(c: Client) -> tuple[int, int]:
        x = c.submit(inc, 0, pure=False)
        for _ in range(99):
            x = c.submit(inc, x, pure=False)  # each earlier future is dropped here
        value = await x
        del x
        gc.collect()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = await c.scheduler_info()
            held = sum(info["tasks"].get(state, 0) for state in ("waiting", "queued", "processing", "memory"))
            if held == 0:
                break
            await asyncio.sleep(0.05)
        return value, held

    assert run_async(body) == (100, 0)


def test_scheduler_info_and_nthreads(client: Client) -> None:
    info = client.scheduler_info()
    assert len(info["workers"]) == 2
    assert sorted(client.nthreads().values()) == [1, 1]
    client.wait_for_workers(2, timeout=10)
    with pytest.raises(zmqdask.TimeoutError):
        client.wait_for_workers(5, timeout=0.5)


def test_retries(client: Client, tmp_path: object) -> None:
    marker = str(tmp_path) + "/attempts"

    def flaky(path: str) -> str:
        with open(path, "a") as handle:
            handle.write("x")
        with open(path) as handle:
            attempts = len(handle.read())
        if attempts < 3:
            raise RuntimeError(f"attempt {attempts}")
        return f"ok after {attempts}"

    assert client.submit(flaky, marker, retries=3, pure=False).result(timeout=30) == "ok after 3"
    with pytest.raises(RuntimeError):
        client.submit(flaky, marker + "2", retries=1, pure=False).result(timeout=30)


def test_poison_task_fails_with_killed_worker_and_cluster_survives(client: Client) -> None:
    poison = client.submit(die, 1, pure=False)
    with pytest.raises(KilledWorker) as info:
        poison.result(timeout=90)
    assert poison.key in str(info.value)
    client.wait_for_workers(2, timeout=60)
    assert client.gather(client.map(inc, range(20))) == list(range(1, 21))


def test_closed_client_is_a_clear_error(cluster: object) -> None:
    c = Client(cluster.address, timeout=30)  # type: ignore[attr-defined]
    c.close()
    with pytest.raises(ClosedClientError, match="closed"):
        c.submit(inc, 1)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://127.0.0.1:8790/", "tcp://127.0.0.1:abc"])
def test_a_malformed_address_is_refused_at_once_and_the_process_can_exit(address: str) -> None:
    # In a process of its own: a socket left open would keep it from ever exiting.
    script = (
        "import asyncio, sys\n"
        "from zmqdask import Client\n"
        "from zmqdask.errors import UsageError\n"
        "try:\n"
        f"    Client({address!r}, timeout='3s')\n"
        "except UsageError as exc:\n"
        "    print('refused:', exc)\n"
        "async def main():\n"
        "    try:\n"
        f"        await Client({address!r}, asynchronous=True, timeout=3)\n"
        "    except UsageError as exc:\n"
        "        print('refused:', exc)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("refused:") == 2 and "tcp://HOST:PORT" in done.stdout


def test_a_port_out_of_range_is_refused_at_once() -> None:
    with pytest.raises(UsageError, match="port 99999 is out of range"):
        Client("tcp://127.0.0.1:99999", timeout=30)
    done = subprocess.run(
        [sys.executable, "-m", "zmqdask.pool", "tcp://127.0.0.1:99999"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "out of range" in done.stderr


def test_timeouts_take_durations_as_dask_does() -> None:
    from zmqdask.session import seconds

    assert [seconds(v, "timeout") for v in (3, "2s", "500ms", "1min")] == [3.0, 2.0, 0.5, 60.0]
    with pytest.raises(UsageError, match="duration"):
        Client("tcp://127.0.0.1:9", timeout="soon")


def test_unreachable_broker_times_out() -> None:
    start = time.monotonic()
    with pytest.raises(ConnectTimeoutError, match=re.escape("tcp://127.0.0.1:9")):
        Client("tcp://127.0.0.1:9", timeout=1.0)
    assert time.monotonic() - start < 10


def test_async_client(run_async) -> None:  # type: ignore[no-untyped-def]
    async def body(c: Client) -> None:
        future = c.submit(inc, 10)
        assert await future == 11
        assert await c.gather(c.map(inc, range(10))) == list(range(1, 11))
        # As in Dask, result(), exception() and traceback() are awaitables here.
        pending = c.submit(slow_inc, 99, 0.05)
        assert await pending.result() == 100
        # No one else holds the Future here: the awaitable must.
        assert await c.submit(slow_inc, 7, 0.05, pure=False).result() == 8
        assert await pending.result(timeout=5) == 100  # once finished too
        assert await pending.exception() is None and await pending.traceback() is None
        failing = c.submit(explode, 2)
        with pytest.raises(Boom):
            await failing.result()
        assert isinstance(await failing.exception(), Boom)
        assert "explode" in "".join(traceback.format_tb(await failing.traceback()))
        with pytest.raises(zmqdask.TimeoutError, match=r"did not finish within 0\.05 s"):
            await c.submit(slow_inc, 1, 2.0, pure=False).result(timeout=0.05)
        # Waiting synchronously would block the loop: the error names the awaitable form.
        with pytest.raises(SyncInAsyncError, match="async for"):
            for _ in as_completed([c.submit(slow_inc, 5, 0.5, pure=False)]):
                pass
        results = []
        async for _future, value in as_completed(c.map(inc, range(5)), with_results=True):
            results.append(value)
        assert sorted(results) == [1, 2, 3, 4, 5]
        done, _ = await wait(c.map(inc, range(3)))
        assert len(done) == 3
        [remote] = await c.scatter([5])
        assert await c.submit(inc, remote) == 6
        info = await c.scheduler_info()
        assert len(info["workers"]) == 2
        with pytest.raises(Boom):
            await c.submit(explode, 1)

    run_async(body)


def test_async_client_never_blocks_the_loop(run_async) -> None:  # type: ignore[no-untyped-def]
    async def body(c: Client) -> None:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.ensure_future(ticker())
        assert await c.submit(slow_inc, 1, 0.5, pure=False) == 2
        stop = True
        await task
        assert ticks >= 20  # the loop kept running while the task was computed

    run_async(body)


def test_embedded_local_cluster_async() -> None:
    async def main() -> int:
        async with Client(asynchronous=True, n_workers=1) as c:
            return await c.submit(operator.add, 2, 3)

    assert asyncio.run(main()) == 5


def test_embedded_local_cluster_sync() -> None:
    with Client(n_workers=1) as c:
        assert c.submit(inc, 1).result(timeout=30) == 2
        assert zmqdask.default_client() is c
    assert zmqdask.default_client() is not c


def test_graphs_from_a_synchronous_client_arrive_whole(client: Client) -> None:
    from zmqdask.serialize import TaskRef

    for round_ in range(30):
        salt = f"{round_}-{time.monotonic_ns()}"
        graph = {f"leaf-{salt}-{i}": (inc, (i,), {}) for i in range(20)}
        graph[f"mid-{salt}-a"] = (sum, ([TaskRef(f"leaf-{salt}-{i}") for i in range(10)],), {})
        graph[f"mid-{salt}-b"] = (sum, ([TaskRef(f"leaf-{salt}-{i}") for i in range(10, 20)],), {})
        graph[f"top-{salt}"] = (add, (TaskRef(f"mid-{salt}-a"), TaskRef(f"mid-{salt}-b")), {})
        [top] = client.submit_graph(graph, [f"top-{salt}"])
        assert top.result(timeout=30) == sum(range(1, 21))


def test_submitting_from_many_threads(client: Client) -> None:
    results: dict[int, list[int]] = {}

    def worker(offset: int) -> None:
        futures = [client.submit(add, offset, i, pure=False) for i in range(300)]
        results[offset] = client.gather(futures)

    threads = [threading.Thread(target=worker, args=(1000 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {offset: values for offset, values in results.items()} == {
        1000 * n: [1000 * n + i for i in range(300)] for n in range(4)
    }


CTRL_C_SCRIPT = """
import sys, time
from zmqdask import Client

def sleepy(x):
    time.sleep(x)
    return x

client = Client(sys.argv[1], timeout=30)
future = client.submit(sleepy, 3, pure=False)
try:
    print("waiting", flush=True)
    future.result()
except KeyboardInterrupt:
    print("interrupted", flush=True)
print(client.submit(sum, [1, 2, 3]).result(timeout=30), flush=True)
client.close()
"""


def test_ctrl_c_interrupts_a_blocking_wait(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys

    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), cluster.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "waiting"
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        assert out.split() == ["interrupted", "6"]
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_wait_accepts_persisted_collections(client: Client) -> None:
    import pandas as pd

    import zmqdask.dataframe as zdf

    pdf = pd.DataFrame({"x": range(100), "y": range(100, 200)})
    persisted = zdf.from_pandas(pdf, npartitions=4).persist()
    done, not_done = wait(persisted, timeout=30)
    assert len(done) == 4 and not not_done
    assert all(future.status == "finished" for future in done)
    assert persisted.x.sum().compute() == pdf.x.sum()


def test_local_cluster_starts_when_the_port_it_chose_is_taken_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import zmqdask.local

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # The broker cannot bind the port chosen for it: the cluster falls back to a port of
        # the broker's own choosing, and its pool follows that one.
        monkeypatch.setattr(zmqdask.local, "_free_port", lambda host: taken)
        with LocalCluster(n_workers=1, threads_per_worker=1) as local:
            assert local.address is not None and not local.address.endswith(f":{taken}")
            with Client(local.address, timeout=30) as c:
                c.wait_for_workers(1, timeout=30)
                assert c.submit(inc, 1, pure=False).result(timeout=30) == 2


def test_the_clients_own_cluster_is_reached_over_a_unix_socket_and_tcp_stays_open(
    tmp_path, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    import tempfile

    with Client(n_workers=1, threads_per_worker=1, timeout=30) as own:
        local = own.cluster
        assert local is not None and local.local_address is not None and local.address is not None
        assert local.local_address.startswith("ipc://") and local.address.startswith("tcp://")
        socket_dir = os.path.dirname(local.local_address[len("ipc://") :])
        assert os.path.exists(local.local_address[len("ipc://") :])
        assert own.submit(inc, 1, pure=False).result(timeout=30) == 2
        with Client(local.address, timeout=30) as other:  # another client, over TCP
            assert other.submit(inc, 2, pure=False).result(timeout=30) == 3
    assert not os.path.exists(socket_dir)  # removed with the cluster

    # A temporary directory too deep for a Unix socket path: TCP all the way.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        assert cluster.local_address == cluster.address
        with Client(cluster.address, timeout=30) as c:
            c.wait_for_workers(1, timeout=30)
            assert c.submit(inc, 3, pure=False).result(timeout=30) == 4
    assert list(deep.iterdir()) == []


KILLED_OWNER_SCRIPT = """
import threading
from zmqdask import Client

client = Client(n_workers=1, threads_per_worker=1)
local = client.cluster
print(local.local_address, local._broker.pid, local._pools[0][0].pid, flush=True)
threading.Event().wait()
"""


@pytest.mark.parametrize("whole_group", [False, True], ids=["SIGKILL-to-client", "SIGTERM-to-process-group"])
def test_a_killed_client_leaves_neither_its_cluster_nor_its_socket_directory(whole_group: bool, wait_until) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen(
        [sys.executable, "-c", KILLED_OWNER_SCRIPT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert owner.stdout is not None
        address, broker_pid, pool_pid = owner.stdout.readline().split()
        assert address.startswith("ipc://")
        socket_dir = os.path.dirname(address[len("ipc://") :])
        assert os.path.isdir(socket_dir)
        if whole_group:  # what `timeout`, `docker stop` and Ctrl-\ in some shells do
            os.killpg(owner.pid, signal.SIGTERM)
        else:
            owner.send_signal(signal.SIGKILL)
        owner.wait(30)

        def gone(pid: str) -> bool:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            # A zombie until its new parent reaps it: gone for our purposes.
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"

        wait_until(lambda: gone(broker_pid) and gone(pool_pid), timeout=20)
        wait_until(lambda: not os.path.exists(socket_dir), timeout=5)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(30)
        if owner.stdout is not None:
            owner.stdout.close()


QUIET_CLOSE_SCRIPT = """
import sys
from zmqdask import Client

def inc(x):
    return x + 1

with Client(n_workers=2, threads_per_worker=1) as client:
    held = client.map(inc, range(20000))
    assert client.gather(held)[-1] == 20000
    released = client.map(inc, range(20000, 40000))
    client.gather(released)
    del released
print("closed", flush=True)
"""


def test_closing_a_client_with_its_own_cluster_logs_no_warning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Workers stopping after the client left cost nobody anything: nothing alarming printed."""
    import subprocess
    import sys

    script = tmp_path / "quiet_close.py"
    script.write_text(QUIET_CLOSE_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["closed"]
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr


def test_small_results_come_with_their_completion_and_large_ones_on_request(client: Client) -> None:
    small = client.submit(inc, 1, pure=False)
    large = client.submit(np.arange, 10_000, pure=False)
    done, _ = wait([small, large], timeout=30)
    assert len(done) == 2
    # Nobody asked for either value yet: the number came along, the array stays on its worker.
    assert small._state is not None and small._state.has_value
    assert large._state is not None and not large._state.has_value
    assert small.result(timeout=30) == 2
    assert large.result(timeout=30).sum() == 49_995_000


def test_a_map_failing_part_way_raises_and_leaves_nothing_behind(client: Client, wait_until) -> None:  # type: ignore[no-untyped-def]
    """map sends its tasks a chunk at a time; an element that cannot be sent late in the
    sequence still raises at the call, and the tasks already sent are released."""
    elements: list[object] = list(range(10_000))
    elements.append(threading.Lock())
    with pytest.raises(SerializationError, match="lock"):
        client.map(inc, elements, pure=False)
    gc.collect()

    def ledger_empty() -> bool:
        tasks = client.scheduler_info()["tasks"]
        return not any(count for state, count in tasks.items() if state != "forgotten")

    wait_until(ledger_empty, timeout=30)
    assert client.gather(client.map(inc, range(5))) == [1, 2, 3, 4, 5]


def _adder(n: int) -> Any:
    def add(x: int) -> int:  # a local function: pickled by value, one pickle (and hash) per n
        return x + n

    return add


def _functions_loaded_here() -> int:
    from zmqdask import worker

    assert worker._worker_for_tasks is not None
    return len(worker._worker_for_tasks._functions)


def test_functions_are_sent_again_after_a_client_trims_them_and_dropped_when_it_leaves(
    cluster: LocalCluster, wait_until: Any
) -> None:
    with Client(cluster.address, timeout=30) as observer:
        baseline = observer.scheduler_info()["functions"]
        with Client(cluster.address, timeout=30) as c:
            c.functions_kept_max = 4
            adders = [_adder(i) for i in range(12)]
            # One at a time, so every flush may trim: the second round names functions the
            # client told the broker to forget, and must send them again.
            for _ in range(2):
                for i, add in enumerate(adders):
                    assert c.submit(add, 100, pure=False).result(timeout=30) == 100 + i
            gc.collect()
            # With no future left, the broker keeps only what the client may still name.
            wait_until(lambda: observer.scheduler_info()["functions"] <= baseline + 5, timeout=15)
            info = observer.scheduler_info()
            assert all(w["functions"] <= baseline + 5 for w in info["workers"].values())
        wait_until(lambda: observer.scheduler_info()["functions"] == baseline, timeout=15)
        # The workers dropped them too: what they load is what the broker keeps, plus the probe.
        probes = [observer.submit(_functions_loaded_here, pure=False) for _ in range(8)]
        assert max(observer.gather(probes)) <= baseline + 1


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_tasks_queued_behind_a_task_that_runs_for_long_move_to_the_idle_worker() -> None:
    with Client(n_workers=2, threads_per_worker=1, timeout=30) as c:
        # A cancelled task that keeps running (a running task cannot be interrupted) holds
        # its worker's only thread; what was queued behind it moves to the other worker.
        stuck = c.submit(sleep_for, 60.0, pure=False)
        wait_until_running = time.monotonic() + 10
        while not any(w["processing"] for w in c.scheduler_info()["workers"].values()):
            assert time.monotonic() < wait_until_running
            time.sleep(0.01)
        stuck.cancel()
        started = time.monotonic()
        assert c.gather(c.map(inc, range(40), pure=False)) == list(range(1, 41))
        # Long tasks queued on both workers: the tail is shared out as workers free up.
        assert sorted(c.gather(c.map(sleep_for, [0.3] * 6, pure=False))) == [0.3] * 6
        assert time.monotonic() - started < 30
