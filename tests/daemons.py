"""The real daemons for failure tests: brokers and worker pools as child processes, and helpers.

Each test starts its own ``python -m broker`` and ``python -m zmqdask.pool`` processes on
127.0.0.1 (random ports) through a :class:`Cluster`, so that it can kill them, and stops
whatever is left at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

import zmqdask
from zmqdask import Client, Future, wait
from zmqdask.errors import ZmqdaskError

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

    The workers import the test modules to run their functions, so they need the tests
    directory on their path; ``ZMQDASK_PARENT_PID`` makes the daemons exit if this process dies without
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

    def start_pool(
        self, nworkers: int, nthreads: int = 1, death_timeout_s: float = 60.0, options: Sequence[str] = ()
    ) -> Daemon:
        """Start ``python -m zmqdask.pool`` for the current broker, with extra ``options``."""
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
            *options,
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


@contextlib.contextmanager
def running_cluster(path: Path, nworkers: int = 0, max_message_bytes: int | None = None) -> Iterator[Cluster]:
    """A :class:`Cluster` in ``path``, with a broker and ``nworkers`` workers already running if
    ``nworkers``; every daemon is stopped (its process group killed) at the end, and their
    output printed (pytest shows it only when the test failed)."""
    daemons = Cluster(path)
    try:
        if nworkers:
            daemons.start_broker(max_message_bytes=max_message_bytes)
            daemons.start_pool(nworkers)
        yield daemons
    finally:
        daemons.close()
        print(daemons.logs())


@contextlib.contextmanager
def connected_client(daemons: Cluster, nworkers: int = 2) -> Iterator[Client]:
    """A client of ``daemons`` once ``nworkers`` workers are connected; closed at the end."""
    with Client(daemons.address, timeout=30) as client:
        client.wait_for_workers(nworkers, timeout=60)
        yield client
    gc.collect()
