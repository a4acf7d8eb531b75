"""``Client.restart`` on a real broker and worker pool: work cancelled, processes replaced."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest

from zmqdask import Client, LocalCluster
from zmqdask.errors import FutureCancelledError, UsageError


def _inc(x: int) -> int:
    return x + 1


def _stay(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_restart_cancels_the_futures_and_replaces_every_worker_process(client: Client) -> None:
    before = client.run(os.getpid)
    done = client.submit(_inc, 1)
    assert done.result(timeout=30) == 2
    running = client.submit(_stay, 60)  # far longer than the test may take: it must not wait for it
    client.restart()
    assert done.status == "cancelled" and running.status == "cancelled"
    with pytest.raises(FutureCancelledError, match="restarted"):
        done.result(timeout=5)
    after = client.run(os.getpid)
    assert len(after) == len(before) == 2
    assert set(after).isdisjoint(before) and set(after.values()).isdisjoint(before.values())
    # The same key again is new work, computed afresh.
    assert client.submit(_inc, 1).result(timeout=30) == 2
    assert client.gather(client.map(_inc, range(100))) == list(range(1, 101))


def test_restart_cancels_the_work_of_the_other_clients_too(
    cluster: LocalCluster, client: Client, wait_until: Callable[..., None]
) -> None:
    with Client(cluster.address, timeout=30) as other:
        theirs = other.submit(_stay, 60)
        held = other.scatter(list(range(10)))
        client.restart()

        def all_cancelled() -> bool:
            return theirs.status == "cancelled" and all(f.status == "cancelled" for f in held)

        wait_until(all_cancelled, timeout=30)
        assert other.submit(_inc, 41).result(timeout=30) == 42


def test_restart_without_waiting_and_with_a_duration_or_a_bad_timeout(client: Client) -> None:
    with pytest.raises(UsageError, match="timeout"):
        client.restart(timeout="soon")
    assert client.restart(wait_for_workers=False) is None
    client.wait_for_workers(2, timeout=60)
    client.restart(timeout="60s")
    assert client.submit(_inc, 2).result(timeout=30) == 3


def test_restart_on_an_asynchronous_client(cluster: LocalCluster) -> None:
    async def main() -> tuple[str, int]:
        async with Client(cluster.address, asynchronous=True, timeout=30) as c:
            await c.wait_for_workers(2, timeout=60)
            future = c.submit(_stay, 60)
            await c.restart()
            return future.status, await c.submit(_inc, 9)

    assert asyncio.run(asyncio.wait_for(main(), 90)) == ("cancelled", 10)
