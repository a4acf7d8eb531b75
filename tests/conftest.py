"""Shared fixtures: a real local cluster (broker + worker pool processes) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zmqdask import Client, LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A broker and a pool of two single-threaded worker processes, shared by a module."""
    local = LocalCluster(n_workers=2, threads_per_worker=1)
    local.start(timeout=60)
    try:
        yield local
    finally:
        local.close()


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    """A synchronous client connected to the module's cluster."""
    with Client(cluster.address, timeout=30) as c:
        c.wait_for_workers(2, timeout=60)
        yield c
    gc.collect()


@pytest.fixture
def run_async(cluster: LocalCluster) -> Callable[..., Any]:
    """Run ``await body(client)`` with an asynchronous client on a fresh event loop."""

    def runner(body: Callable[[Client], Any], timeout: float = 60.0) -> Any:
        async def main() -> Any:
            async with Client(cluster.address, asynchronous=True, timeout=30) as c:
                await c.wait_for_workers(2, timeout=60)
                return await asyncio.wait_for(body(c), timeout)

        return asyncio.run(main())

    return runner


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(condition, timeout)``: poll until it holds, fail the test after timeout."""
    return _wait_until
