"""Variable, Queue, Event, Lock and Semaphore between clients and tasks of a real cluster."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zmqdask import Client, Event, Future, LocalCluster, Lock, Queue, Semaphore, Variable
from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError
from zmqdask.errors import UsageError


def inc(x: int) -> int:
    return x + 1


def append_under_lock(lock: Lock, path: str, i: int) -> int:
    with lock:
        # Two writes that must not interleave with another task's.
        with open(path, "a") as out:
            out.write(f"start {i}\n")
            out.flush()
            out.write(f"end {i}\n")
    return i


def put_from_task(queue: Queue, i: int) -> int:
    queue.put(i * 10)
    return i


def test_a_variable_is_shared_and_holds_futures(client: Client, cluster: LocalCluster) -> None:
    variable = Variable("shared-value")
    with pytest.raises(ZmqdaskTimeoutError, match=r"was not set within 0\.2 s"):
        variable.get(timeout=0.2)
    with Client(cluster.address, timeout=30, set_as_default=False) as other:
        future = other.submit(inc, 41)
        Variable("shared-value", client=other).set(future)
    # The client that set it has gone: the variable keeps the value on the cluster.
    gc.collect()
    got = variable.get(timeout=30)
    assert isinstance(got, Future) and got.client is client
    assert got.result(timeout=30) == 42
    variable.set({"plain": [1, 2]})
    assert Variable("shared-value").get() == {"plain": [1, 2]}
    variable.delete()
    with pytest.raises(ZmqdaskTimeoutError):
        variable.get(timeout=0)


def test_a_get_waits_for_the_set(client: Client, cluster: LocalCluster) -> None:
    variable = Variable("set-later")
    with Client(cluster.address, timeout=30, set_as_default=False) as other:
        timer = threading.Timer(0.2, lambda: Variable("set-later", client=other).set("now"))
        timer.start()
        try:
            assert variable.get(timeout=30) == "now"
        finally:
            timer.join()
    variable.delete()


def test_a_queue_is_first_in_first_out_across_clients_and_tasks(client: Client) -> None:
    queue = Queue("fifo")
    queue.put(1)
    queue.put(client.submit(inc, 5))
    assert queue.qsize() == 2
    assert queue.get() == 1
    assert queue.get().result(timeout=30) == 6
    with pytest.raises(ZmqdaskTimeoutError, match=r"had no item within 0\.1 s"):
        queue.get(timeout=0.1)
    for item in range(3):
        queue.put(item)
    assert queue.get(batch=True) == [0, 1, 2]
    assert queue.get(batch=True) == []
    # Tasks put into the queue the client waits on.
    client.gather(client.map(put_from_task, [queue] * 5, range(5), pure=False))
    assert sorted(queue.get(batch=5, timeout=30)) == [0, 10, 20, 30, 40]
    with pytest.raises(UsageError, match="maxsize=0"):
        Queue("bounded", maxsize=3)
    with pytest.raises(UsageError, match="batch must be"):
        queue.get(batch=0)


def test_events(client: Client, cluster: LocalCluster) -> None:
    event = Event("go")
    assert event.is_set() is False
    assert event.wait(timeout=0.1) is False
    with Client(cluster.address, timeout=30, set_as_default=False) as other:
        timer = threading.Timer(0.2, lambda: Event("go", client=other).set())
        timer.start()
        try:
            assert event.wait(timeout=30) is True
        finally:
            timer.join()
    assert event.is_set() is True and event.wait() is True
    event.clear()
    assert event.is_set() is False


def test_locks_exclude_each_other_across_tasks(client: Client, tmp_path: Path) -> None:
    lock = Lock("files")
    path = str(tmp_path / "log")
    futures = client.map(append_under_lock, [lock] * 20, [path] * 20, range(20), pure=False)
    assert sorted(client.gather(futures)) == list(range(20))
    lines = Path(path).read_text().split("\n")[:-1]
    # Every start is followed by its own end: no task wrote while another held the lock.
    assert len(lines) == 40
    for start, end in zip(lines[0::2], lines[1::2], strict=True):
        assert start.split()[1] == end.split()[1] and start.startswith("start") and end.startswith("end")


def test_lock_and_semaphore_leases(client: Client, cluster: LocalCluster) -> None:
    lock = Lock("one-at-a-time")
    assert lock.acquire() is True
    assert lock.locked() is True
    assert Lock("one-at-a-time").acquire(blocking=False) is False
    assert Lock("one-at-a-time").acquire(timeout=0.1) is False
    with pytest.raises(ValueError, match="can't specify a timeout"):
        lock.acquire(blocking=False, timeout=1)
    lock.release()
    assert lock.locked() is False
    with pytest.raises(ValueError, match="is not acquired"):
        lock.release()
    with Lock("context"):
        assert Lock("context").locked() is True
    assert Lock("context").locked() is False
    semaphore = Semaphore(2, name="pair")
    assert semaphore.acquire() and semaphore.acquire()
    assert Semaphore(2, name="pair").acquire(timeout=0.1) is False
    assert semaphore.get_value() == 2
    with pytest.raises(RuntimeError, match="has 2 leases, not 3"):
        Semaphore(3, name="pair").acquire(timeout=0)
    semaphore.release()
    semaphore.release()
    # A client that leaves gives its leases back: the next waiter gets the lock.
    with Client(cluster.address, timeout=30, set_as_default=False) as other:
        assert Lock("left-behind", client=other).acquire() is True
    assert Lock("left-behind").acquire(timeout=30) is True
    with pytest.raises(UsageError, match="positive int"):
        Semaphore(0)


def test_coordination_from_an_asynchronous_client(run_async: Callable[..., Any]) -> None:
    async def body(c: Client) -> None:
        lock = Lock("async-lock", client=c)
        assert await lock.acquire() is True
        assert await Lock("async-lock", client=c).acquire(timeout=0.1) is False
        await lock.release()
        async with Lock("async-lock", client=c):
            assert await Lock("async-lock", client=c).locked() is True
        with pytest.raises(UsageError, match="async with"):
            with Lock("async-lock", client=c):
                pass
        queue = Queue("async-queue", client=c)
        # A get abandoned while it waits does not swallow the item that reaches it later.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(queue.get(), 0.2)
        await queue.put("kept")
        assert await queue.get(timeout=30) == "kept"
        # An acquire abandoned while it waits gives back the lease it gets later.
        holder = Lock("async-busy", client=c)
        await holder.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(Lock("async-busy", client=c).acquire(), 0.2)
        await holder.release()
        assert await Lock("async-busy", client=c).acquire(timeout=30) is True
        event = Event("async-event", client=c)
        assert await event.wait(timeout=0.05) is False
        await event.set()
        assert await event.wait() is True
        variable = Variable("async-variable", client=c)
        await variable.set(c.submit(inc, 1))
        assert await (await variable.get()) == 2
        await variable.delete()

    run_async(body)


def test_the_objects_travel_to_tasks_by_name(client: Client) -> None:
    def read(variable: Variable) -> Any:
        return (variable.name, variable.get(timeout=30), os.getpid() != parent)

    parent = os.getpid()
    variable = Variable("to-tasks")
    variable.set("hello")
    assert client.submit(read, variable).result(timeout=30) == ("to-tasks", "hello", True)
    variable.delete()


def test_abandoned_waits_leave_nothing_held_and_bad_timeouts_are_refused(run_async: Callable[..., Any]) -> None:
    async def body(c: Client) -> None:
        variable = Variable("given-up", client=c)
        # A get given up while it waits: the broker drops it, so a later set gives it nothing.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(variable.get(), 0.2)
        future = c.submit(inc, 1, pure=False)
        key = future.key
        await variable.set(future)
        await variable.delete()
        del future
        gc.collect()

        async def held() -> bool:
            return any(key in keys for keys in (await c.has_what()).values())

        deadline = asyncio.get_running_loop().time() + 10
        while await held() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # releases reach the broker within a few tens of ms
        assert not await held()
        for bad in (-1, float("nan"), float("inf")):
            with pytest.raises(UsageError, match="timeout must be None or a number of seconds >= 0"):
                await Lock("bad-timeouts", client=c).acquire(timeout=bad)
        with pytest.raises(UsageError, match="timeout must be"):
            await Event("bad-timeouts", client=c).wait(-0.5)

    run_async(body)
