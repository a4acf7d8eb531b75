"""Failure tests against the real daemons: workers, a poisonous task, clients and brokers killed.

Every test starts its own ``python -m broker`` and ``python -m zmqdask.pool`` processes on
127.0.0.1 (random ports) so that it can kill them, and stops whatever is left in ``finally``
(see :mod:`daemons`).  Payloads that cannot travel are tested in test_payload_failures.py.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import (
    MARGIN_S,
    Cluster,
    Daemon,
    held_tasks,
    running_cluster,
    wait_all,
)

import zmqdask
from zmqdask import Client, LocalCluster
from zmqdask.config import LIVENESS_TIMEOUT_S, MAX_KILLED_ATTEMPTS
from zmqdask.errors import BrokerLostError, KilledWorker
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """This test's daemons; every one is stopped (and its group killed) at the end."""
    with running_cluster(tmp_path) as daemons:
        yield daemons


# --- task functions (imported by the workers from this module) ------------------------------


def logged_square(i: int, log: str, delay: float) -> int:
    """Square ``i`` after ``delay`` seconds, appending ``i`` to ``log`` once per execution."""
    time.sleep(delay)
    with open(log, "a") as handle:
        handle.write(f"{i}\n")
    return i * i


def salted(i: int, salt: int) -> int:
    """A leaf value that depends on the test's salt, so no earlier result can be reused."""
    return (i * 7919 + salt) % 1_000_003


def add(a: int, b: int) -> int:
    """Sum of two values."""
    return a + b


def slow_add(a: Any, b: Any, delay: float) -> Any:
    """``a + b`` after ``delay`` seconds."""
    time.sleep(delay)
    return a + b


def inc(x: int) -> int:
    """``x + 1``."""
    return x + 1


def slow_inc(x: int, delay: float) -> int:
    """``x + 1`` after ``delay`` seconds."""
    time.sleep(delay)
    return x + 1


def die_with_mark(log: str) -> int:
    """Append a line to ``log``, then kill this worker process without any cleanup."""
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    os._exit(17)


def count_lines(path: Path) -> collections.Counter[str]:
    """How often each line occurs in ``path`` (empty if it does not exist)."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(path.read_text().split())


# --- 1. workers killed at random ------------------------------------------------------------


class WorkerKiller:
    """A thread that SIGKILLs a random registered worker of the pool every ``interval_s``.

    It stops by itself after ``max_kills``: killing faster than the pool's crash-loop window
    for ever would only measure the pool's restart back-off.
    """

    def __init__(self, cluster: Cluster, monitor: Client, interval_s: float, max_kills: int, seed: int) -> None:
        self._cluster = cluster
        self._monitor = monitor
        self._interval_s = interval_s
        self._max_kills = max_kills
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self.killed: list[int] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="worker-killer", daemon=True)

    def start(self) -> None:
        """Start killing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop killing and re-raise whatever went wrong in the thread."""
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while len(self.killed) < self._max_kills and not self._stop.wait(self._interval_s):
                candidates = [
                    pid for pid in self._cluster.worker_pids(self._monitor.scheduler_info()) if pid not in self.killed
                ]
                if not candidates:
                    continue
                pid = self._random.choice(candidates)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed.append(pid)
        except BaseException as exc:  # reported by stop()
            self.error = exc


NTASKS = 3000
TASK_DELAY_S = 0.005
NWORKERS = 4
KILL_INTERVAL_S = 0.3
MIN_KILLS = 5
MAX_KILLS = 8
TREE_LEAVES = 256


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_random_worker_kills_lose_nothing(cluster: Cluster, tmp_path: Path, wait_until: Callable[..., None]) -> None:
    """Thousands of tasks and a reduction tree survive workers SIGKILLed every 0.3 s."""
    address = cluster.start_broker()
    pool = cluster.start_pool(NWORKERS)
    log = tmp_path / "executions.log"
    salt = random.randrange(1_000_000)
    with Client(address, timeout=30) as client, Client(address, timeout=30) as monitor:
        client.wait_for_workers(NWORKERS, timeout=60)
        killer = WorkerKiller(cluster, monitor, KILL_INTERVAL_S, MAX_KILLS, seed=salt)
        squares = client.map(logged_square, range(NTASKS), log=str(log), delay=TASK_DELAY_S)
        # A reduction tree: intermediate sums live on whichever worker computed them and
        # must be recomputed from their lineage when that worker is killed.
        level = client.map(salted, range(TREE_LEAVES), salt=salt)
        while len(level) > 1:
            level = [client.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
        [root] = level
        killer.start()
        try:
            wait_all([*squares, root], timeout=100)
        finally:
            killer.stop()
        assert client.gather(squares) == [i * i for i in range(NTASKS)]
        assert root.result(timeout=30) == sum(salted(i, salt) for i in range(TREE_LEAVES))
        executions = count_lines(log)
        assert set(executions) == {str(i) for i in range(NTASKS)}
        assert len(killer.killed) >= MIN_KILLS, f"the job ended after {len(killer.killed)} kills; make it longer"

        # The pool replaces every killed child: all positions are back with new processes.
        def replaced() -> bool:
            pids = cluster.worker_pids(monitor.scheduler_info())
            return len(pids) == NWORKERS and not set(pids) & set(killer.killed)

        wait_until(replaced, timeout=60)
        assert pool.alive()

        # Keys held only by killed workers are recomputed from their specs: compute, kill
        # every worker holding results, then ask for the values.
        log2 = tmp_path / "recomputed.log"
        held = client.map(logged_square, range(64), log=str(log2), delay=0.0)
        wait_all(held, timeout=60)
        assert sum(count_lines(log2).values()) == 64
        victims = cluster.worker_pids(monitor.scheduler_info())
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not set(cluster.worker_pids(monitor.scheduler_info())) & set(victims), timeout=60)
        total = client.submit(sum, held)
        assert total.result(timeout=60) == sum(i * i for i in range(64))
        assert client.gather(held) == [i * i for i in range(64)]
        recomputed = count_lines(log2)
        assert recomputed == collections.Counter({str(i): 2 for i in range(64)})
        print(
            f"random kills: {len(killer.killed)} workers killed, then {len(victims)} more; "
            f"{sum(executions.values())} executions for {NTASKS} tasks "
            f"({sum(executions.values()) - NTASKS} re-run), {NTASKS + 1 + 64 + 1} results checked"
        )


# --- 2. a task that kills every worker it runs on -------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_poison_task_fails_with_killed_worker_and_spares_the_rest(cluster: Cluster, tmp_path: Path) -> None:
    """A task that always kills its worker fails after 3 attempts; its companions all finish."""
    address = cluster.start_broker()
    pool = cluster.start_pool(2)
    marks = tmp_path / "poison-attempts.log"
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        before = client.map(slow_inc, range(100), delay=0.01)
        poison = client.submit(die_with_mark, str(marks), pure=False)
        after = client.map(slow_inc, range(100, 200), delay=0.01)
        wait_all([*before, poison, *after], timeout=90)
        with pytest.raises(KilledWorker) as info:
            poison.result(timeout=5)
        error = info.value
        assert poison.key in str(error)
        assert error.key == poison.key
        attempts = count_lines(marks)
        # Each attempt ran in a different worker process, and there were exactly three.
        assert sum(attempts.values()) == MAX_KILLED_ATTEMPTS and len(attempts) == MAX_KILLED_ATTEMPTS
        assert client.gather(before + after) == [i + 1 for i in range(200)]
        # The cluster keeps serving: the pool replaced its children and new work runs.
        client.wait_for_workers(2, timeout=60)
        assert client.gather(client.map(inc, range(1000, 1050))) == list(range(1001, 1051))
        assert pool.alive()
        print(f"poison: {sum(attempts.values())} workers killed, 250 results checked")


def inc_or_die(x: int, fatal: int) -> int:
    """``x + 1``, except for ``fatal``, which kills its worker process."""
    if x == fatal:
        os._exit(17)
    return x + 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_map_call_that_kills_its_worker_fails_alone(cluster: Cluster) -> None:
    """Calls of a map run in batches; a batch that kills its workers runs its calls again
    one by one, so the other calls of that batch finish."""
    address = cluster.start_broker()
    cluster.start_pool(2)
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        futures = client.map(inc_or_die, range(100), fatal=37, batch_size=10)
        wait_all(futures, timeout=100)
        failed = [i for i, future in enumerate(futures) if future.status == "error"]
        assert failed == [37]
        with pytest.raises(KilledWorker) as info:
            futures[37].result(timeout=5)
        assert info.value.key == futures[37].key
        assert client.gather(futures[:37] + futures[38:]) == [i + 1 for i in range(100) if i != 37]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_local_cluster_starts_a_killed_worker_pool_again() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1) as local, Client(local, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        futures = client.map(slow_inc, range(20), delay=0.2)
        (pool, _), = local._pools
        os.kill(pool.pid, signal.SIGKILL)
        wait_all(futures, timeout=90)
        assert client.gather(futures) == list(range(1, 21))
        assert client.submit(inc, 99).result(timeout=30) == 100


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_worker_reports_its_attempts(cluster: Cluster, tmp_path: Path) -> None:
    """``KilledWorker.attempts`` says how many workers the task killed (errors.py's contract)."""
    address = cluster.start_broker()
    cluster.start_pool(1)
    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        poison = client.submit(die_with_mark, str(tmp_path / "marks.log"), pure=False)
        with pytest.raises(KilledWorker) as info:
            poison.result(timeout=90)
        assert info.value.attempts == sum(count_lines(tmp_path / "marks.log").values()) == MAX_KILLED_ATTEMPTS


# --- 3. a client killed mid-job ---------------------------------------------------------------

DOOMED_CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from zmqdask import Client

    def slow(i, delay, log):
        time.sleep(delay)
        with open(log, "a") as handle:
            handle.write(f"{i}\\n")
        return i

    address, ntasks, delay, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    client = Client(address, timeout=30)
    futures = client.map(slow, range(ntasks), delay=delay, log=log, pure=False, batch_size=1)  # a task each
    scattered = client.scatter([bytes([i]) * 1000 for i in range(20)])
    # Ready once the broker holds everything and some results sit on the workers.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = client.scheduler_info()
        if sum(info["tasks"].values()) >= ntasks + 20 and info["tasks"].get("memory", 0) > 20:
            break
        time.sleep(0.05)
    print("READY", sum(info["tasks"].values()), flush=True)
    threading.Event().wait()  # hold every future until killed
    """
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killed_client_is_forgotten_within_the_liveness_timeout(
    cluster: Cluster, wait_until: Callable[..., None]
) -> None:
    """A SIGKILLed client's queued and running tasks are dropped and its data released."""
    address = cluster.start_broker()
    cluster.start_pool(2)
    ntasks, delay = 400, 0.25
    log = cluster.log_dir / "doomed-executions.log"
    with Client(address, timeout=30) as other:
        other.wait_for_workers(2, timeout=60)
        doomed = Daemon(
            "doomed-client",
            [sys.executable, "-c", DOOMED_CLIENT_SCRIPT, address, str(ntasks), str(delay), str(log)],
            cluster.log_dir / "doomed-client.log",
            stdout_pipe=True,
        )
        cluster.daemons.append(doomed)
        held_by_doomed = int(doomed.read_line("READY", 60))
        assert held_by_doomed >= ntasks + 20
        # Queued behind the doomed client's 400 x 0.25 s of work (50 s on two workers).
        mine = other.map(slow_inc, range(20), delay=0.01)
        doomed.kill()
        killed_at = time.monotonic()
        deadline_s = LIVENESS_TIMEOUT_S + MARGIN_S
        wait_all(mine, timeout=deadline_s)
        assert other.gather(mine) == list(range(1, 21))
        served_after = time.monotonic() - killed_at
        del mine
        gc.collect()

        def released() -> bool:
            info = other.scheduler_info()
            return held_tasks(info) == 0 and all(
                w["nkeys"] == 0 and w["processing"] == 0 for w in info["workers"].values()
            )

        wait_until(released, timeout=max(0.5, deadline_s - (time.monotonic() - killed_at)))
        forgotten_after = time.monotonic() - killed_at
        ran_at_release = sum(count_lines(log).values())
        info = other.scheduler_info()
        assert info["nclients"] == 1
        # The doomed tasks prefetched by the workers were cancelled there too: work queued
        # behind them on every worker finishes without any more of them running (the ones
        # running at the time of the kill cannot be interrupted, one per worker thread).
        assert other.gather(other.map(slow_inc, range(40), delay=0.01)) == list(range(1, 41))
        ran_later = sum(count_lines(log).values()) - ran_at_release
        assert ran_later <= 2, f"{ran_later} tasks of the dead client ran after it was forgotten"
        print(
            f"killed client: {held_by_doomed} records dropped {forgotten_after:.1f} s after the kill "
            f"({ran_at_release + ran_later} of its tasks ran); "
            f"the other client's 20 tasks done after {served_after:.1f} s"
        )


# --- 4. and 5. the broker killed ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_broker_restarted_on_the_same_port_mid_job(cluster: Cluster, wait_until: Callable[..., None]) -> None:
    """Clients and workers re-register with a new broker epoch; the job completes correctly."""
    address = cluster.start_broker()
    pool = cluster.start_pool(2)
    salt = random.randrange(1_000_000)
    with Client(address, timeout=30, reconnect_timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        old_epoch = client.scheduler_info()["id"]
        squares = client.map(slow_inc, range(300), delay=0.02)
        # A chain whose links live on the workers of the old broker.
        chain = client.submit(salted, 0, salt)
        links = [chain]
        for _ in range(30):
            chain = client.submit(slow_inc, chain, 0.01)
            links.append(chain)
        # A graph whose intermediate keys no client future holds: only the specs kept as
        # lineage of the wanted output let the client send it again.
        graph: dict[str, Any] = {f"leaf-{salt}-{i}": (salted, (i, salt), {}) for i in range(16)}
        graph[f"mid-{salt}-a"] = (sum, ([TaskRef(f"leaf-{salt}-{i}") for i in range(8)],), {})
        graph[f"mid-{salt}-b"] = (sum, ([TaskRef(f"leaf-{salt}-{i}") for i in range(8, 16)],), {})
        graph[f"top-{salt}"] = (slow_add, (TaskRef(f"mid-{salt}-a"), TaskRef(f"mid-{salt}-b"), 2.0), {})
        [top] = client.submit_graph(graph, [f"top-{salt}"])
        held = client.gather(squares[:5])  # values the client holds survive without a resend
        wait_until(lambda: sum(f.done() for f in squares) >= 60, timeout=60)
        assert not all(f.done() for f in squares), "the job finished before the broker was killed"
        old_broker = cluster.broker
        assert old_broker is not None
        old_broker.kill()
        killed_at = time.monotonic()
        new_address = cluster.restart_broker()
        assert new_address == address
        wait_all([*squares, *links, top], timeout=90)
        recovered_after = time.monotonic() - killed_at
        assert client.gather(squares) == [i + 1 for i in range(300)]
        assert held == [1, 2, 3, 4, 5]
        expected = salted(0, salt)
        assert client.gather(links) == [expected + n for n in range(31)]
        assert top.result(timeout=5) == sum(salted(i, salt) for i in range(16))
        info = client.scheduler_info()
        assert info["id"] != old_epoch
        assert len(cluster.worker_pids(info)) == 2
        assert client.status == zmqdask.ClientStatus.RUNNING
        assert pool.alive()
        # Work submitted after the restart runs as usual.
        assert client.gather(client.map(inc, range(2000, 2020))) == list(range(2001, 2021))
        print(f"broker restart: 332 + 20 results checked, job complete {recovered_after:.1f} s after the kill")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_gather_right_after_a_broker_outage_gets_every_result(
    cluster: Cluster, wait_until: Callable[..., None]
) -> None:
    """The broker stops, the client keeps saying HELLO for seconds (its socket queues them),
    then a new broker comes up and the client gathers at once: the work it sends again goes
    ahead of the request for its results, and the HELLOs queued during the outage do not
    register it anew (which would drop that work)."""
    address = cluster.start_broker()
    cluster.start_pool(2)
    with Client(address, timeout=30, reconnect_timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        futures = client.map(slow_inc, range(200), delay=0.02, batch_size=1)
        old_broker = cluster.broker
        assert old_broker is not None
        old_broker.stop()
        wait_until(lambda: client.status != zmqdask.ClientStatus.RUNNING, timeout=30)  # its GOODBYE came
        time.sleep(3.0)  # the outage lasts some seconds: several HELLOs queue meanwhile
        cluster.restart_broker()
        assert client.gather(futures) == [i + 1 for i in range(200)]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_workers_killed_by_tasks_come_back_without_a_crash_loop_back_off(cluster: Cluster, tmp_path: Path) -> None:
    """Tasks that kill their worker one after another, soon after it started: each death is
    the task's (the broker counts it), not a worker that cannot start, so the pool starts the
    replacement at once every time instead of backing off."""
    address = cluster.start_broker()
    pool = cluster.start_pool(1)
    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        doomed = [client.submit(die_with_mark, str(tmp_path / f"mark-{i}"), pure=False) for i in range(3)]
        for future in doomed:
            with pytest.raises(KilledWorker):
                future.result(timeout=60)
        assert client.submit(inc, 1).result(timeout=60) == 2
    assert "keeps dying" not in pool.log_tail()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_request_made_while_the_broker_is_away_is_answered_by_the_next_one(
    cluster: Cluster, wait_until: Callable[..., None]
) -> None:
    address = cluster.start_broker()
    cluster.start_pool(1)
    with Client(address, timeout=10, reconnect_timeout=60) as client:
        client.wait_for_workers(1, timeout=60)
        broker = cluster.broker
        assert broker is not None
        broker.stop()
        wait_until(lambda: client.status != zmqdask.ClientStatus.RUNNING, timeout=30)
        answers: list[object] = []
        asking = threading.Thread(target=lambda: answers.append(client.scheduler_info()))
        asking.start()
        time.sleep(2.0)  # the outage goes on while the request waits
        cluster.restart_broker()
        asking.join(60)
        assert len(answers) == 1 and "workers" in answers[0]  # type: ignore[operator]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_scatter_while_the_broker_is_gone_fails_after_the_reconnect_timeout(
    cluster: Cluster, wait_until: Callable[..., None]
) -> None:
    address = cluster.start_broker()
    cluster.start_pool(1)
    with Client(address, timeout=30, reconnect_timeout=2) as client:
        client.wait_for_workers(1, timeout=60)
        broker = cluster.broker
        assert broker is not None
        broker.stop()
        wait_until(lambda: client.status != zmqdask.ClientStatus.RUNNING, timeout=30)
        with pytest.raises(BrokerLostError, match="unreachable"):
            client.scatter([1, 2, 3])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_broker_restart_resends_scattered_inputs(cluster: Cluster) -> None:
    """A task whose input was scattered still completes after a broker restart.

    The client holds the scattered value (its future is finished and keeps it), so it can send
    it again along with the tasks that need it, as it does for every other input.
    """
    address = cluster.start_broker()
    cluster.start_pool(2)
    with Client(address, timeout=30, reconnect_timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        [data] = client.scatter([list(range(1000))])
        # Finished on a worker, value never fetched (a list: only small scalars come along
        # with their completion).
        computed = client.submit(sorted, data)
        wait_all([computed], timeout=30)
        running = client.submit(slow_add, data, [0], 3.0)  # still running at the kill
        assert not running.done()
        old_broker = cluster.broker
        assert old_broker is not None
        old_broker.kill()
        cluster.restart_broker()
        wait_all([computed, running], timeout=60)
        assert data.result(timeout=5) == list(range(1000))
        assert computed.result(timeout=5) == list(range(1000))
        assert running.result(timeout=5) == [*range(1000), 0]
        # Held but needed by no task at the kill: sent again all the same, so it can still be used.
        [spare] = client.scatter([list(range(50))])
        wait_all([spare], timeout=30)
        cluster.broker.kill()
        cluster.restart_broker()
        assert client.submit(sum, spare).result(timeout=60) == sum(range(50))


RECONNECT_TIMEOUT_S = 3.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_broker_gone_for_good_fails_pending_futures(cluster: Cluster) -> None:
    """Past ``reconnect_timeout`` every pending future fails with BrokerLostError, sync and async."""
    address = cluster.start_broker()
    cluster.start_pool(2)
    # Silence noticed after the liveness timeout, then reconnect_timeout of trying.
    give_up_s = LIVENESS_TIMEOUT_S + RECONNECT_TIMEOUT_S + MARGIN_S
    with Client(address, timeout=30, reconnect_timeout=RECONNECT_TIMEOUT_S) as client:
        client.wait_for_workers(2, timeout=60)
        finished = client.submit(inc, 1)
        assert finished.result(timeout=30) == 2
        computed = client.submit(sorted, [3, 1, 2])  # a list: held on a worker, never fetched
        wait_all([computed], timeout=30)
        # One task per call: the broker holds each of them (counted below).
        pending = client.map(slow_inc, range(40), delay=1.0, pure=False, batch_size=1)

        async def async_side() -> None:
            async with Client(address, asynchronous=True, timeout=30, reconnect_timeout=RECONNECT_TIMEOUT_S) as aclient:
                apending = aclient.map(slow_inc, range(100, 140), delay=1.0, pure=False, batch_size=1)
                deadline = time.monotonic() + 30
                while held_tasks(await aclient.scheduler_info()) < 80:
                    assert time.monotonic() < deadline, "the broker never held both clients' tasks"
                    await asyncio.sleep(0.02)
                broker = cluster.broker
                assert broker is not None
                broker.kill()
                killed_at = time.monotonic()
                for future in apending:
                    with pytest.raises(BrokerLostError, match="unreachable"):
                        await asyncio.wait_for(future, give_up_s)
                assert time.monotonic() - killed_at < give_up_s

        asyncio.run(async_side())
        killed_at = time.monotonic()  # the sync client's clock started no later than this
        for future in pending:
            with pytest.raises(BrokerLostError, match="unreachable"):
                future.result(timeout=give_up_s)
        with pytest.raises(BrokerLostError):
            computed.result(timeout=give_up_s)
        with pytest.raises(BrokerLostError):
            client.gather(pending)
        assert time.monotonic() - killed_at < give_up_s
        assert finished.result(timeout=1) == 2  # a value already held is not lost
        print("broker gone: 81 pending futures failed with BrokerLostError")
