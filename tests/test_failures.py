"""Failure tests against the real daemons: killed workers, clients and brokers, and bad payloads.

Every test starts its own ``python -m broker`` and ``python -m zmqdask.pool`` processes on
127.0.0.1 (random ports) so that it can kill them, and stops whatever is left in ``finally``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import zmqdask
from zmqdask import Client, Future, wait
from zmqdask.config import LIVENESS_TIMEOUT_S, MAX_KILLED_ATTEMPTS
from zmqdask.errors import BrokerLostError, KilledWorker, SerializationError, ZmqdaskError
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
HOST = "127.0.0.1"
LISTENING_PREFIX = "zmqdask-broker listening on "
START_TIMEOUT_S = 30.0
"""Longest a daemon may take to start (a loaded 2-core machine is slow to import numpy)."""
STOP_GRACE_S = 6.0
"""How long a daemon gets after SIGTERM before its whole process group is killed."""
MARGIN_S = 4.0
"""Slack on top of protocol timeouts for scheduling delays on a loaded machine."""
LOG_TAIL_CHARS = 4000


# --- daemons ---------------------------------------------------------------------------------


def child_environment() -> dict[str, str]:
    """Environment for daemons and helper processes: our import path and our pid.

    The workers import this module to run its functions, so they need the tests directory on
    their path; ``ZMQDASK_PARENT_PID`` makes the daemons exit if this process dies without
    cleaning up.
    """
    paths = [str(TESTS_DIR), str(REPO_ROOT)] + [os.path.abspath(p) for p in sys.path if p]
    env = dict(os.environ, ZMQDASK_PARENT_PID=str(os.getpid()))
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


LIMITED_BROKER_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from broker.server import BrokerServer
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    server = BrokerServer(sys.argv[1], int(sys.argv[2]), max_message_bytes=int(sys.argv[3]))
    print("zmqdask-broker listening on " + server.bind(), flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    """
)
"""The broker with a message size limit: ``BrokerServer`` takes one, the CLI has no option."""


class Daemon:
    """One subprocess in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, stdout_pipe: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            env=child_environment(),
            cwd=str(REPO_ROOT),
            # A group of its own: the pool's workers are grandchildren (forked by the
            # multiprocessing fork server), and killing the group reaches all of them.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.process.poll() is None

    def read_line(self, prefix: str, timeout: float) -> str:
        """Read stdout until a line starts with ``prefix``; returns the rest of that line."""
        stream = self.process.stdout
        if stream is None:
            raise ZmqdaskError(f"{self.name} has no stdout pipe")
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.1):
                    if self.process.poll() is not None:
                        break
                    continue
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")  # the last piece may be half a line
                for raw in complete:
                    line = raw.decode(errors="replace")
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
        raise AssertionError(f"{self.name} did not print {prefix!r} within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the process itself (not its group) and reap it."""
        if self.alive():
            self.process.kill()
        self.process.wait(STOP_GRACE_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole process group; reap and close everything."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.1f s; killing its group", self.name, STOP_GRACE_S)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers: fork server, workers
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(STOP_GRACE_S)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def log_tail(self) -> str:
        """The end of the process's output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:]


class Cluster:
    """Starts brokers and pools for one test and stops every one of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []
        self.broker: Daemon | None = None
        self.pool: Daemon | None = None
        self.address = ""
        self.port = 0

    def start_broker(self, port: int = 0, max_message_bytes: int | None = None) -> str:
        """Start a broker (on ``port``, 0 for a free one); returns its address."""
        if max_message_bytes is None:
            argv = [sys.executable, "-m", "broker", "--host", HOST, "--port", str(port), "--log-level", "WARNING"]
        else:
            argv = [sys.executable, "-c", LIMITED_BROKER_SCRIPT, HOST, str(port), str(max_message_bytes)]
        index = len(self.daemons)
        broker = Daemon(f"broker#{index}", argv, self.log_dir / f"broker-{index}.log", stdout_pipe=True)
        self.daemons.append(broker)
        self.address = broker.read_line(LISTENING_PREFIX, START_TIMEOUT_S)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.broker = broker
        return self.address

    def restart_broker(self) -> str:
        """Start a new broker on the port of the previous one."""
        address = self.start_broker(self.port)
        return address

    def start_pool(self, nworkers: int, nthreads: int = 1, death_timeout_s: float = 60.0) -> Daemon:
        """Start ``python -m zmqdask.pool`` for the current broker."""
        index = len(self.daemons)
        argv = [
            sys.executable,
            "-m",
            "zmqdask.pool",
            self.address,
            "--nworkers",
            str(nworkers),
            "--nthreads",
            str(nthreads),
            "--death-timeout",
            str(death_timeout_s),
            "--log-level",
            "WARNING",
        ]
        pool = Daemon(f"pool#{index}", argv, self.log_dir / f"pool-{index}.log")
        self.daemons.append(pool)
        self.pool = pool
        return pool

    def worker_pids(self, info: dict[str, Any]) -> list[int]:
        """Pids of live, registered workers that belong to our pool's process group."""
        if self.pool is None:
            return []
        pids = []
        for details in info["workers"].values():
            pid = details.get("pid", 0)
            if pid and _in_group(pid, self.pool.pid):
                pids.append(pid)
        return sorted(pids)

    def close(self) -> None:
        """Stop pools first (their workers say goodbye), then brokers."""
        for daemon in sorted(self.daemons, key=lambda d: not d.name.startswith("pool")):
            try:
                daemon.stop()
            except Exception:
                logger.exception("could not stop %s", daemon.name)

    def logs(self) -> str:
        """Tails of every daemon's output."""
        return "\n".join(f"--- {d.name} (pid {d.pid}) ---\n{d.log_tail()}" for d in self.daemons)


def _in_group(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process in process group ``pgid``."""
    try:
        if os.getpgid(pid) != pgid:
            return False
        with open(f"/proc/{pid}/stat") as handle:
            # The state letter follows the parenthesised command name, which may hold spaces.
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (ProcessLookupError, PermissionError, FileNotFoundError, IndexError):
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """This test's daemons; every one is stopped (and its group killed) at the end."""
    daemons = Cluster(tmp_path)
    try:
        yield daemons
    finally:
        daemons.close()
        # Shown by pytest only when the test failed.
        print(daemons.logs())


def held_tasks(info: dict[str, Any]) -> int:
    """Records the broker still keeps, over all states."""
    return sum(info["tasks"].values())


def wait_all(futures: list[Future], timeout: float) -> None:
    """Wait until every future is done; fail the test (instead of hanging) after ``timeout``."""
    try:
        wait(futures, timeout=timeout)
    except zmqdask.TimeoutError:
        pending = [f.key for f in futures if not f.done()]
        raise AssertionError(
            f"{len(pending)} of {len(futures)} futures still pending after {timeout} s, e.g. {pending[:3]}"
        ) from None


def run_async(address: str, body: Callable[[Client], Any], timeout: float) -> Any:
    """``await body(client)`` with an asynchronous client of ``address`` on a fresh event loop.

    Submitting and awaiting in the same loop tick is what makes a worker push the value
    with its completion notice (a synchronous client asks for it separately).
    """

    async def main() -> Any:
        async with Client(address, asynchronous=True, timeout=30) as client:
            return await asyncio.wait_for(body(client), timeout)

    return asyncio.run(main())


async def async_failure(future: Future, error: type[BaseException], match: str) -> BaseException:
    """Await ``future`` and check that it fails with ``error`` matching ``match``.

    Awaited directly, not through ``asyncio.wait_for``: a future awaited in the tick it was
    submitted in asks the worker to push the value with its completion notice, and a new task
    would only start after the submission went out.  :func:`run_async` bounds the wait.
    """
    with pytest.raises(error, match=match) as info:
        await future
    return info.value


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
    futures = client.map(slow, range(ntasks), delay=delay, log=log, pure=False)
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
        pending = client.map(slow_inc, range(40), delay=1.0, pure=False)

        async def async_side() -> None:
            async with Client(address, asynchronous=True, timeout=30, reconnect_timeout=RECONNECT_TIMEOUT_S) as aclient:
                apending = aclient.map(slow_inc, range(100, 140), delay=1.0, pure=False)
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


# --- 6. payloads that cannot travel -----------------------------------------------------------

LIMIT_BYTES = 256 * 1024
"""Message size limit of the limited broker: small enough for quick tests, far above headers."""
BAD_PAYLOAD_TIMEOUT_S = 15.0
"""Every bad payload must have failed its future by then (nothing else takes that long)."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A broker and two workers shared by the payload tests of this module."""
    daemons = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        daemons.start_broker()
        daemons.start_pool(2)
        yield daemons
    finally:
        daemons.close()
        print(daemons.logs())


@pytest.fixture
def client2(shared: Cluster) -> Iterator[Client]:
    """A client of the shared cluster, with both workers connected."""
    with Client(shared.address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        yield client
    gc.collect()


class LoadFailure(Exception):
    """Raised when an object that pickles fine is unpickled."""


def fail_on_load() -> None:
    """Stands in for an object's reconstructor that fails wherever the pickle is loaded."""
    raise LoadFailure("this object cannot be rebuilt here")


class Unloadable:
    """Pickles fine; unpickling raises :class:`LoadFailure`."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (fail_on_load, ())


def make_lock(_: int) -> Any:
    """A result that cannot be pickled."""
    return threading.Lock()


def make_unloadable(_: int) -> Unloadable:
    """A result that pickles but cannot be loaded again."""
    return Unloadable()


def count_args(*values: Any) -> int:
    """How many arguments arrived."""
    return len(values)


def assert_siblings_fine(client: Client) -> None:
    """Other work on the same cluster is unaffected."""
    futures = client.map(inc, range(50))
    wait_all(futures, timeout=BAD_PAYLOAD_TIMEOUT_S)
    assert client.gather(futures) == list(range(1, 51))


def expect_failure(future: Future, error: type[BaseException], match: str) -> BaseException:
    """Wait (bounded) for ``future`` to fail with ``error`` whose text matches ``match``."""
    wait_all([future], timeout=BAD_PAYLOAD_TIMEOUT_S)
    with pytest.raises(error, match=match) as info:
        future.result(timeout=BAD_PAYLOAD_TIMEOUT_S)
    return info.value


@pytest.mark.timeout(120)
def test_unpicklable_function_and_arguments_fail_at_submit(client2: Client) -> None:
    """Nothing that cannot be pickled leaves the client; the error names the object."""
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        client2.submit(inc, lock)
    with pytest.raises(SerializationError, match="lock"):
        client2.submit(inc, x=[1, {"k": lock}])
    with pytest.raises(SerializationError):
        client2.submit(lock.acquire)
    with pytest.raises(SerializationError, match="generator"):
        client2.map(count_args, [(i for i in range(3))])
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_unpicklable_results_fail_only_their_future(shared: Cluster, client2: Client) -> None:
    """A result that cannot be pickled fails its future, whether pushed or fetched later."""

    async def pushed(client: Client) -> None:
        bad, good = client.submit(make_lock, 1), client.submit(inc, 1)
        await async_failure(bad, SerializationError, "(?i)lock")
        assert await good == 2

    run_async(shared.address, pushed, BAD_PAYLOAD_TIMEOUT_S)
    sibling = client2.submit(inc, 1)
    later = client2.submit(make_lock, 2)
    wait_all([later], timeout=BAD_PAYLOAD_TIMEOUT_S)  # kept on the worker; fetched by GATHER
    assert later.status == "finished"
    expect_failure(later, SerializationError, "(?i)lock")
    assert sibling.result(timeout=BAD_PAYLOAD_TIMEOUT_S) == 2
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_unpicklable_inputs_moved_between_workers_fail_the_dependent(client2: Client) -> None:
    """A dependent needing unpicklable values from another worker fails instead of looping."""
    locks = client2.map(make_lock, range(10, 30))
    wait_all(locks, timeout=BAD_PAYLOAD_TIMEOUT_S)
    info = client2.scheduler_info()
    assert all(w["nkeys"] > 0 for w in info["workers"].values()), "all inputs landed on one worker"
    dependent = client2.submit(count_args, *locks)
    expect_failure(dependent, SerializationError, "(?i)lock")
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_results_that_cannot_be_loaded_fail_only_their_future(shared: Cluster, client2: Client) -> None:
    """A result that pickles on the worker but cannot be unpickled here fails its future."""

    async def pushed(client: Client) -> None:
        bad, good = client.submit(make_unloadable, 1), client.submit(inc, 1)
        await async_failure(bad, SerializationError, "could not be deserialized")
        assert await good == 2

    run_async(shared.address, pushed, BAD_PAYLOAD_TIMEOUT_S)
    later = client2.submit(make_unloadable, 2)
    wait_all([later], timeout=BAD_PAYLOAD_TIMEOUT_S)
    expect_failure(later, SerializationError, "could not be deserialized")
    # The worker itself can use the value: only the trip to the client fails.
    assert client2.submit(type_name_of, later).result(timeout=BAD_PAYLOAD_TIMEOUT_S) == "Unloadable"
    assert_siblings_fine(client2)


def type_name_of(value: Any) -> str:
    """The name of the value's type."""
    return type(value).__name__


@pytest.mark.timeout(120)
def test_arguments_that_cannot_be_loaded_on_the_worker(client2: Client) -> None:
    """Arguments that pickle here but fail to unpickle on the worker fail that task only."""
    bad = client2.submit(type_name_of, Unloadable())
    error = expect_failure(bad, SerializationError, "cannot load the arguments")
    assert bad.key in str(error) and "LoadFailure" in str(error)
    dependent = client2.submit(inc, bad)
    expect_failure(dependent, SerializationError, "cannot load the arguments")
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_functions_whose_module_the_worker_cannot_import(client2: Client, tmp_path: Path) -> None:
    """A function pickled by reference to a module the worker lacks fails with its name."""
    # A module file that exists only in a directory on this process's path: the workers were
    # started before it existed and never had that directory on their path.
    name = f"zmqdask_gone_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
        assert module.triple(2) == 6
        (tmp_path / f"{name}.py").unlink()
        first = client2.submit(module.triple, 1)
        second = client2.submit(module.triple, 2)
        error = expect_failure(first, SerializationError, f"{name}.triple")
        assert "ModuleNotFoundError" in str(error)
        expect_failure(second, SerializationError, f"{name}.triple")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    # A module that exists nowhere but in this process's sys.modules.
    ghost_name = f"zmqdask_ghost_{uuid.uuid4().hex[:12]}"
    ghost = types.ModuleType(ghost_name)
    exec("def quadruple(x):\n    return 4 * x\n", ghost.__dict__)
    sys.modules[ghost_name] = ghost
    try:
        haunted = client2.submit(ghost.quadruple, 1)
        expect_failure(haunted, SerializationError, f"{ghost_name}.quadruple")
    finally:
        del sys.modules[ghost_name]
    assert_siblings_fine(client2)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A broker refusing messages over :data:`LIMIT_BYTES`, with two workers."""
    daemons = Cluster(tmp_path_factory.mktemp("limited"))
    try:
        daemons.start_broker(max_message_bytes=LIMIT_BYTES)
        daemons.start_pool(2)
        yield daemons
    finally:
        daemons.close()
        print(daemons.logs())


@pytest.fixture
def limited_client(limited: Cluster) -> Iterator[Client]:
    """A client of the size-limited broker, with both workers connected."""
    with Client(limited.address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        yield client
    gc.collect()


def make_bytes(nbytes: int) -> bytes:
    """A value of ``nbytes`` bytes."""
    return bytes(nbytes)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_results_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """A result too large for the broker fails its future with an error naming the limit.

    It is fetched together with small values, which must still arrive.
    """

    async def fetch_together(client: Client) -> None:
        futures = client.map(make_bytes, [4 * LIMIT_BYTES, 10, 11, 12])
        await wait(futures, timeout=BAD_PAYLOAD_TIMEOUT_S)  # nobody waited: values stay on the workers
        values = await client.gather(futures, errors="skip")
        assert [len(v) for v in values] == [10, 11, 12]
        await async_failure(futures[0], ZmqdaskError, "limit")

    run_async(limited.address, fetch_together, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pushed_results_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """A result pushed with its completion notice but too large for the broker fails clearly."""

    async def pushed(client: Client) -> None:
        # Awaited at once, and below the client's inline size, so the worker sends the value
        # in its DONE message, which the broker refuses.
        bad = client.submit(make_bytes, 2 * LIMIT_BYTES)
        await async_failure(bad, ZmqdaskError, "limit")

    run_async(limited.address, pushed, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_arguments_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """An argument too large for the broker fails its future with a clear error, and only that one."""

    async def one_batch(client: Client) -> None:
        # Submitted in one loop tick: both tasks travel in the same SUBMIT message.
        big, small = client.map(len, [bytes(2 * LIMIT_BYTES), b"abc"])
        await async_failure(big, ZmqdaskError, "limit")
        assert await asyncio.wait_for(small, BAD_PAYLOAD_TIMEOUT_S) == 3

    run_async(limited.address, one_batch, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_inputs_over_the_message_limit_fail_the_dependent(limited_client: Client) -> None:
    """A dependent whose input is too large to move between workers fails instead of hanging."""
    client = limited_client
    bigs = client.map(make_bytes, [2 * LIMIT_BYTES + 100 + i for i in range(8)])  # keys of no other test
    wait_all(bigs, timeout=BAD_PAYLOAD_TIMEOUT_S)
    info = client.scheduler_info()
    assert all(w["nkeys"] > 0 for w in info["workers"].values()), "all inputs landed on one worker"
    dependent = client.submit(count_args, *bigs)
    expect_failure(dependent, ZmqdaskError, "limit")
    assert_siblings_fine(client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scatter_over_the_message_limit_fails_clearly(limited_client: Client) -> None:
    """Scattering a value too large for the broker raises instead of waiting for ever."""
    client = limited_client
    outcome: list[BaseException | None] = []

    def scatter() -> None:
        try:
            client.scatter(bytes(2 * LIMIT_BYTES))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    # In a thread, so that a scatter that never returns fails the test instead of hanging it
    # (closing the client at the end releases the thread).
    thread = threading.Thread(target=scatter, name="big-scatter", daemon=True)
    thread.start()
    thread.join(BAD_PAYLOAD_TIMEOUT_S)
    assert outcome, f"scatter still waiting after {BAD_PAYLOAD_TIMEOUT_S} s"
    assert isinstance(outcome[0], ZmqdaskError) and "limit" in str(outcome[0])
    assert_siblings_fine(client)
