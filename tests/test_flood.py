"""A flood of a million tiny tasks submitted without reading results, then gathered."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from zmqdask import Client, LocalCluster

FLOOD_TASKS = int(os.environ.get("ZMQDASK_FLOOD_TASKS", "1000000"))
"""How many tasks the flood submits (an environment variable shrinks it for quick runs)."""

BROKER_BYTES_PER_TASK = 2048
"""A bound on the broker's peak memory growth per task (records of queued, running and
finished tasks, plus the messages in flight): generous, so that it catches leaks rather than
measuring; the test prints the figure."""


def inc(x: int) -> int:
    return x + 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class PeakSampler:
    """Samples a process's resident memory in the background and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_million_tasks_flood_then_gather() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    cluster.start(timeout=60)
    try:
        assert cluster._broker is not None
        broker_pid = cluster._broker.pid
        # The first info request waits behind the whole flood in the broker: allow for it.
        with Client(cluster.address, timeout=300) as client:
            client.wait_for_workers(2, timeout=60)
            client.gather(client.map(inc, range(100)))  # warm up the workers
            credit = {wid: w["credit"] for wid, w in client.scheduler_info()["workers"].items()}
            assert len(credit) == 2
            broker_before = rss_bytes(broker_pid)
            client_before = rss_bytes(os.getpid())
            sampler = PeakSampler(broker_pid)
            start = time.monotonic()
            # One task per call (map would otherwise batch them): a million tasks for the
            # broker's flow control and memory.
            futures = client.map(inc, range(FLOOD_TASKS), pure=False, batch_size=1)
            submitted_s = time.monotonic() - start
            # The workers never hold more than their credit: sample while the flood drains.
            most_processing = 0
            while True:
                info = client.scheduler_info()
                for wid, worker in info["workers"].items():
                    assert worker["processing"] <= worker["credit"] == credit[wid], "a worker was replaced"
                    most_processing = max(most_processing, worker["processing"])
                pending = sum(info["tasks"].get(state, 0) for state in ("waiting", "queued", "processing"))
                if pending == 0:
                    break
                assert time.monotonic() - start < 500, f"{pending} tasks still pending"
                time.sleep(0.2)
            computed_s = time.monotonic() - start
            broker_peak = sampler.stop()
            client_after = rss_bytes(os.getpid())
            results = client.gather(futures)
            total_s = time.monotonic() - start
            assert len(results) == FLOOD_TASKS
            assert results == list(range(1, FLOOD_TASKS + 1))
            info = client.scheduler_info()
            assert info["tasks"].get("memory", 0) == FLOOD_TASKS
            assert info["tasks"].get("erred", 0) == 0
            broker_growth = broker_peak - broker_before
            client_growth = client_after - client_before
            print(
                f"flood: {FLOOD_TASKS} tasks submitted in {submitted_s:.1f} s, computed by {computed_s:.1f} s, "
                f"gathered by {total_s:.1f} s; broker RSS peak +{broker_growth / FLOOD_TASKS:.0f} B/task, "
                f"client RSS +{client_growth / FLOOD_TASKS:.0f} B/task (futures held), "
                f"most tasks processing on one worker: {most_processing} (credit {max(credit.values())})"
            )
            assert broker_growth < BROKER_BYTES_PER_TASK * FLOOD_TASKS
            del futures, results
    finally:
        cluster.close()
