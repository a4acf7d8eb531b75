"""Where a round trip's time goes: the critical path of ``await client.submit(inc, i)``.

Runs a broker and one worker in processes of their own, and a client in this one, with a
timestamp taken at the boundaries of each step of their loops.  All three read the same clock
(``CLOCK_MONOTONIC`` is one clock for every process of a Linux machine), so the marks of one
round trip can be put in time order.  The most common order is kept and the median time
between consecutive marks printed:

- between two marks of one process: that process's Python work, or its send call (which
  wakes the process's own ZeroMQ I/O thread, and often waits while that thread runs);
- between marks of two processes: a ZeroMQ hop (I/O thread to socket, the receiver's I/O
  thread, then its main thread waking up).

    python benchmarks/critical_path.py [--roundtrips 3000]

Linux only.  The marks cost about a microsecond each; the round trip printed with them is
that much slower than an unmarked one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import workloads

START_TIMEOUT_S = 30.0
"""How long the broker and the worker get to start and register."""

_marks: list[tuple[int, str]] = []


def mark(name: str) -> None:
    """Note that this process reached ``name`` now."""
    _marks.append((time.monotonic_ns(), name))


def _instrument(owner: Any, attribute: str, before: str | None, after: str | None) -> None:
    """Wrap ``owner.attribute`` (a function) so that it marks ``before`` and ``after`` itself."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def marked(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            if after is not None:
                mark(after)

    setattr(owner, attribute, marked)


def _write_marks(path: str) -> None:
    with open(path, "w") as out:
        out.writelines(f"{stamp} {name}\n" for stamp, name in _marks)


def _read_marks(path: str) -> list[tuple[int, str]]:
    with open(path) as marks:
        return [(int(stamp), name) for stamp, name in (line.rstrip("\n").split(" ", 1) for line in marks)]


def _run_broker(ipc_path: str, ready: Any, marks_path: str) -> None:
    from broker import server
    from broker.state import BrokerState

    _instrument(server.BrokerServer, "_drain", "broker: read", None)
    _instrument(BrokerState, "handle_many", "broker: step", "broker: stepped")
    _instrument(server.BrokerServer, "_send", "broker: send", None)
    _instrument(server.BrokerServer, "_emit", None, "broker: sent")
    broker = server.BrokerServer(ipc_path=ipc_path)
    broker.bind()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: broker.stop())
    ready.put(f"ipc://{ipc_path}")
    broker.serve_forever()
    _write_marks(marks_path)


def _run_worker(address: str, marks_path: str) -> None:
    from zmqdask import worker

    _instrument(worker.Worker, "_drain_broker", "worker: read", None)
    _instrument(worker, "execute", "worker: task", "worker: ran")
    _instrument(worker.BrokerLink, "send", "worker: send", "worker: sent")
    # Stops on SIGTERM: the worker handles it itself, says goodbye and returns.
    worker.Worker(address, identity=b"critical-path-worker", nthreads=1).run()
    _write_marks(marks_path)


async def _round_trips(address: str, count: int) -> list[float]:
    from zmqdask import Client, session

    _instrument(session.BrokerSession, "_send", "client: send", "client: sent")
    _instrument(session.BrokerSession, "_drain", "client: read", None)
    async with Client(address, asynchronous=True) as client:
        await client.wait_for_workers(1, timeout=START_TIMEOUT_S)
        for i in range(max(100, count // 10)):  # warm up: imports, caches, the quick-function path
            await client.submit(workloads.inc, i, pure=False)
        _marks.clear()
        latencies = []
        for i in range(count):
            start = time.perf_counter()
            mark("client: submit")
            await client.submit(workloads.inc, i, pure=False)
            mark("client: result")
            latencies.append(time.perf_counter() - start)
    return latencies


def critical_path(marks: list[tuple[int, str]]) -> tuple[list[str], list[list[int]], int]:
    """The most common order of marks from ``client: submit`` to ``client: result``, the
    nanoseconds between each pair of consecutive marks in the round trips that followed it,
    and how many round trips there were in all."""
    windows: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    for stamp, name in sorted(marks):
        if name == "client: submit":
            current = [(stamp, name)]
        elif current is not None:
            current.append((stamp, name))
            if name == "client: result":
                windows.append(current)
                current = None
    if not windows:
        return [], [], 0
    orders = collections.Counter(tuple(name for _, name in window) for window in windows)
    order = list(orders.most_common(1)[0][0])
    gaps: list[list[int]] = [[] for _ in order[1:]]
    for window in windows:
        if [name for _, name in window] == order:
            for index in range(1, len(window)):
                gaps[index - 1].append(window[index][0] - window[index - 1][0])
    return order, gaps, len(windows)


def report(order: list[str], gaps: list[list[int]], total: int, latencies: list[float]) -> str:
    """The table of medians, then the sums by process and for the hops."""
    lines = [
        f"critical path of a round trip: {len(gaps[0]) if gaps else 0} of {total} sequential round trips "
        "took the most common path; medians:"
    ]
    sums: dict[str, float] = collections.defaultdict(float)
    for index, between in enumerate(gaps):
        first, second = order[index], order[index + 1]
        median_us = statistics.median(between) / 1e3
        first_process, second_process = first.split(":")[0], second.split(":")[0]
        if first_process != second_process:
            kind = "hop"
        elif first.endswith(": send") and second.endswith(": sent"):
            kind = f"{first_process} send call"
        else:
            kind = first_process
        sums[kind] += median_us
        lines.append(f"  {first:16} -> {second:16} {median_us:7.1f} us  {kind}")
    lines.append(
        f"sum of the medians {sum(sums.values()):.1f} us; median round trip {statistics.median(latencies) * 1e3:.3f} ms"
    )
    lines.append("by kind: " + ", ".join(f"{kind} {value:.1f} us" for kind, value in sorted(sums.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Start the broker and the worker, time the round trips, print the critical path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--roundtrips", type=int, default=3000, help="sequential round trips to time")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        print("critical_path.py needs one monotonic clock for all processes: Linux only", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="zmqdask-critical-path-")
    context = multiprocessing.get_context("spawn")
    ready: Any = context.Queue()
    broker_marks, worker_marks = os.path.join(directory, "broker"), os.path.join(directory, "worker")
    broker = context.Process(target=_run_broker, args=(os.path.join(directory, "broker.sock"), ready, broker_marks))
    worker: Any = None
    try:
        broker.start()
        address = ready.get(timeout=START_TIMEOUT_S)
        worker = context.Process(target=_run_worker, args=(address, worker_marks))
        worker.start()
        latencies = asyncio.run(_round_trips(address, args.roundtrips))
        client_marks = list(_marks)
        for process in (worker, broker):
            process.terminate()  # SIGTERM: each stops its loop, then writes its marks
            process.join(START_TIMEOUT_S)
        marks = client_marks + _read_marks(broker_marks) + _read_marks(worker_marks)
    finally:
        for process in (worker, broker):
            if process is not None and process.is_alive():
                process.kill()
                process.join()
        shutil.rmtree(directory, ignore_errors=True)
    order, gaps, total = critical_path(marks)
    if not gaps:
        print("no complete round trip was marked", file=sys.stderr)
        return 1
    print(report(order, gaps, total, latencies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
