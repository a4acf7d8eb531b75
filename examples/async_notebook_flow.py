"""The seed notebook's asynchronous flow as a script: client, submit, await, timeseries, persist, compute."""

from __future__ import annotations

import asyncio

import zmqdask
from zmqdask import Client


def inc(x: int) -> int:
    """Return ``x + 1``."""
    return x + 1


async def main() -> None:
    """Each step of the notebook, in order, printing what the notebook shows."""
    # Starts a local broker and workers; every waiting method now returns an awaitable.
    client = await Client(asynchronous=True)
    try:
        future = client.submit(inc, 10)
        print(future)  # <Future: pending, key: inc-...>
        print(await future)

        # Building the frame is lazy: nothing runs until it is persisted or computed.
        df = zmqdask.datasets.timeseries()
        print(df)

        # persist() returns at once; the partitions are computed and stay on the workers.
        df = df.persist()
        total = df[["x", "y"]].sum()  # still lazy, now reading the persisted partitions

        # In asynchronous code use client.compute and await the future: df.compute()
        # would block the event loop.
        future = client.compute(total)
        print(future)
        print(await future)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
