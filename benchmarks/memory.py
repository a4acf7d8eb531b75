"""Memory per queued task: a million tiny tasks submitted to a cluster with no workers yet.

Prints the resident memory each task adds to the client process and to the broker process
(Linux: read from ``/proc``), then starts a worker pool, gathers every result and checks it.
This is done twice: with one task per call (``map(..., batch_size=1)``: a million tasks in
the broker), and in batches as ``map`` makes them for a quick function (``batch_size=256``,
see ``zmqdask.batches``: a million futures in the client, 3,907 tasks in the broker).

    python benchmarks/memory.py [--tasks 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import time

import workloads

from zmqdask import Client
from zmqdask.batches import BATCH_MAX_CALLS

SETTLE_TIMEOUT_S = 300.0
"""Longest wait for the broker to hold every task, or for the results."""


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def queued(client: Client) -> int:
    """How many tasks the broker holds queued."""
    info = await client.scheduler_info()
    return int(info["tasks"]["queued"])


async def measure(tasks: int, batch_size: int) -> None:
    """Queue ``tasks`` tiny calls with no worker, report memory, then compute them all."""
    title = f"batch_size={batch_size}" + (" (one task per call)" if batch_size == 1 else " (map's batches)")
    print(f"{title}:")
    async with Client(asynchronous=True, n_workers=0) as client:
        assert client.cluster is not None and client.cluster.broker_pid is not None
        broker_pid = client.cluster.broker_pid
        gc.collect()
        client_before, broker_before = rss_bytes(os.getpid()), rss_bytes(broker_pid)
        started = time.perf_counter()
        futures = client.map(workloads.inc, range(tasks), pure=False, batch_size=batch_size)
        expected = -(-tasks // batch_size)  # the broker's tasks: one per batch
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while await queued(client) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError("the broker never held every task")
            await asyncio.sleep(0.1)
        submitted_s = time.perf_counter() - started
        gc.collect()
        client_after, broker_after = rss_bytes(os.getpid()), rss_bytes(broker_pid)
        print(f"{tasks:,} tiny tasks queued in {submitted_s:.1f} s as {expected:,} tasks of the broker, no worker yet")
        print(f"client: +{(client_after - client_before) / tasks:,.0f} B per task (futures and specs included)")
        print(f"broker: +{(broker_after - broker_before) / tasks:,.0f} B per task")
        assert client.address is not None
        # The workers import the benchmark functions by name, from this directory.
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        pool = subprocess.Popen(
            [sys.executable, "-m", "zmqdask.pool", client.address, "--nworkers", "2", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:
            started = time.perf_counter()
            results = await asyncio.wait_for(client.gather(futures), SETTLE_TIMEOUT_S)
            if results != list(range(1, tasks + 1)):
                raise RuntimeError("wrong results")
            seconds = time.perf_counter() - started
            print(f"then computed by 2 workers started afterwards in {seconds:.1f} s: all correct")
            # Released before the pool stops, so that its leaving costs nothing.
            del futures, results
            while (await client.scheduler_info())["tasks"]["memory"]:
                if time.monotonic() > deadline + SETTLE_TIMEOUT_S:
                    raise TimeoutError("the results were never released")
                await asyncio.sleep(0.05)
        finally:
            pool.terminate()
            pool.wait(30)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks to queue (default: %(default)s)")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("reads resident memory from /proc: Linux only")
    asyncio.run(measure(args.tasks, 1))
    # The batches map makes for a function it has seen to be quick (a function never seen
    # gets small batches first).
    asyncio.run(measure(args.tasks, BATCH_MAX_CALLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
