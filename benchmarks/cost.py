"""Where the time goes: CPU time per task in each process, next to the bare-pyzmq floor.

For sequential round trips and for a large map + gather on a local cluster of two
single-threaded workers, prints the wall-clock figure and the CPU time (user + system, all
threads, ZeroMQ's I/O threads included) that the client, the broker and each worker spend
per task.  The same is printed for the bare-pyzmq floor (``floor.py``: the same four hops, no
framework), and both again with every process on one CPU, which removes the cost of waking
threads on another CPU.  The sum of CPU per task bounds throughput: with ``C`` CPUs and ``S``
seconds of CPU per task, no schedule runs more than ``C / S`` tasks per second.

    python benchmarks/cost.py [--roundtrips 3000] [--map-tasks 100000] [--repeats 3]

Linux only (CPU times come from ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import floor
import workloads

from zmqdask import Client


def cluster_pids(client: Client, info: dict[str, object]) -> dict[str, int]:
    """The client's, the broker's and each worker's process id, by role."""
    assert client.cluster is not None and client.cluster.broker_pid is not None
    pids = {"client": os.getpid(), "broker": client.cluster.broker_pid}
    workers = info["workers"]
    assert isinstance(workers, dict)
    for index, worker in enumerate(sorted(workers.values(), key=lambda w: str(w["name"]))):
        pids[f"worker {index}"] = int(worker["pid"])
    return pids


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process."""
    return {name: floor.process_cpu_seconds(pid) for name, pid in pids.items()}


def per_task_us(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Microseconds of CPU per task in each process between two readings."""
    return {name: (after[name] - before[name]) / count * 1e6 for name in after}


def describe(cpu_us: dict[str, float]) -> str:
    """One line: each process's CPU per task, then their sum."""
    parts = [f"{name} {value:.1f}" for name, value in cpu_us.items()]
    return ", ".join(parts) + f"; sum {sum(cpu_us.values()):.1f} us"


@contextmanager
def on_one_cpu(enabled: bool) -> Iterator[None]:
    """Run this process, and every process it starts meanwhile, on its first allowed CPU."""
    if not enabled:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


async def round_trips(count: int, one_cpu: bool) -> None:
    """Sequential ``await client.submit(inc, i, pure=False)``: latency and CPU per round trip."""
    with on_one_cpu(one_cpu):
        async with Client(asynchronous=True, n_workers=2, threads_per_worker=1) as client:
            await client.wait_for_workers(2, timeout=60)
            pids = cluster_pids(client, await client.scheduler_info())
            for i in range(count // 10):  # warm up: imports, caches, the quick-function path
                await client.submit(workloads.inc, i, pure=False)
            latencies = []
            before = cpu_seconds(pids)
            for i in range(count):
                start = time.perf_counter()
                await client.submit(workloads.inc, i, pure=False)
                latencies.append(time.perf_counter() - start)
            after = cpu_seconds(pids)
    where = "all processes on one CPU" if one_cpu else "processes placed by the OS"
    print(f"zmqdask round trip ({where}): p50 {statistics.median(latencies) * 1e3:.3f} ms")
    print(f"  CPU per round trip: {describe(per_task_us(before, after, count))}")


async def maps(count: int, repeats: int) -> None:
    """``gather(map(inc, range(count)))`` repeated: throughput and CPU per task."""
    async with Client(asynchronous=True, n_workers=2, threads_per_worker=1) as client:
        await client.wait_for_workers(2, timeout=60)
        pids = cluster_pids(client, await client.scheduler_info())
        await client.gather(client.map(workloads.inc, range(1000)))
        ncpus = len(os.sched_getaffinity(0))
        for repeat in range(repeats):
            first = repeat * count
            before = cpu_seconds(pids)
            start = time.perf_counter()
            futures = client.map(workloads.inc, range(first, first + count))
            results = await client.gather(futures)
            elapsed = time.perf_counter() - start
            after = cpu_seconds(pids)
            if results != [i + 1 for i in range(first, first + count)]:
                raise RuntimeError("wrong results")
            del futures, results
            cpu_us = per_task_us(before, after, count)
            total_us = sum(cpu_us.values())
            # /proc counts CPU time in clock ticks (10 ms): a short run may read as none.
            if total_us > 0:
                bound = f"{ncpus} CPUs bound it at {ncpus / (total_us / 1e6):,.0f} tasks/s"
            else:
                bound = f"too short to measure: CPU times tick every {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms"
            note = " (the previous repeat's releases overlap this one)" if repeat else " (fresh cluster)"
            print(f"zmqdask map + gather of {count:,}, repeat {repeat + 1}{note}: {count / elapsed:,.0f} tasks/s")
            print(f"  CPU per task: {describe(cpu_us)}; {bound}")


def print_floor(count: int, one_cpu: bool) -> None:
    """The bare-pyzmq floor: latency and CPU per round trip."""
    result = floor.measure_floor(count, "ipc", one_cpu=one_cpu)
    where = "all processes on one CPU" if one_cpu else "processes placed by the OS"
    print(f"bare pyzmq floor over a Unix socket ({where}): p50 {result.p50_ms:.3f} ms")
    if result.cpu_us:
        print(f"  CPU per round trip: {describe(result.cpu_us)}")


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print one line (and a CPU line) for each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roundtrips", type=int, default=3000, help="sequential round trips per measurement")
    parser.add_argument("--map-tasks", type=int, default=100_000, help="tasks in one map call")
    parser.add_argument("--repeats", type=int, default=3, help="map + gather repeats")
    args = parser.parse_args(argv)
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        print("cost.py reads CPU times from /proc: Linux only", file=sys.stderr)
        return 2
    for one_cpu in (False, True):
        print_floor(args.roundtrips, one_cpu)
        asyncio.run(round_trips(args.roundtrips, one_cpu))
    asyncio.run(maps(args.map_tasks, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
