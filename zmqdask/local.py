"""The embedded local cluster: a broker and a worker pool as child processes of the client."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Generator
from typing import IO, Any

import zmq

from zmqdask.errors import CommunicationError, UsageError

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"zmqdask-broker listening on (tcp://\S+)")
_STOP_GRACE_S = 5.0
_MAX_IPC_PATH_BYTES = 100
"""Longest Unix socket path used (the kernel's limit is a little above 100 bytes)."""


class LocalCluster:
    """Starts ``zmqdask-broker`` and ``zmqdask-worker`` on this machine and stops them.

    ``Client()`` with no address creates one; it can also be used directly, as in Dask::

        cluster = LocalCluster(n_workers=2)      # started here
        client = Client(cluster)                 # or Client(cluster.scheduler_address)

        cluster = await LocalCluster(asynchronous=True)   # started without blocking the loop
        async with LocalCluster(asynchronous=True) as cluster: ...
    """

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "WARNING",
        memory_limit: int | str | None = None,
        dashboard_address: Any = None,
        silence_logs: Any = None,
        asynchronous: bool = False,
    ) -> None:
        """``memory_limit`` (bytes, or a string such as ``"4GB"``) is each worker's, as reported
        to the broker; ``dashboard_address`` and ``silence_logs`` are accepted for Dask's sake
        (there is no dashboard; the children log at ``log_level``).

        The cluster starts here, as Dask's does, unless ``asynchronous``: then it starts when
        awaited (``await LocalCluster(asynchronous=True)``, ``async with``) or by the first
        ``Client`` given it.
        """
        if n_workers is None:
            n_workers = os.cpu_count() or 1
        if not isinstance(n_workers, int) or n_workers < 0:
            raise UsageError(f"n_workers must be a non-negative int, got {n_workers!r}")
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise UsageError(f"threads_per_worker must be a positive int, got {threads_per_worker!r}")
        if not processes:
            # Worker processes are what keep tasks from sharing one GIL; with processes=False
            # one worker process runs all the threads instead.
            threads_per_worker = threads_per_worker * max(n_workers, 1)
            n_workers = 1 if n_workers else 0
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.host = host
        self.port = port
        self.log_level = log_level
        self.memory_limit = parse_bytes(memory_limit) if memory_limit not in (None, "auto") else None
        self.address: str | None = None
        """The broker's TCP address, for any client (set by :meth:`start`)."""
        self.local_address: str | None = None
        """The address the pool uses and ``Client()`` connects to: a Unix socket where the
        platform has them (a message through it skips the TCP stack), else :attr:`address`."""
        self.asynchronous = asynchronous
        self._start_lock = threading.RLock()
        """Held while children start or stop: starts, scale() and close() come one at a time."""
        self._closed = False
        self._ipc_dir: str | None = None
        self._broker: subprocess.Popen[bytes] | None = None
        self._pools: list[tuple[subprocess.Popen[bytes], int]] = []
        """Worker pools started, oldest first, with their number of workers."""
        self._env: dict[str, str] = {}
        self._finalizer: weakref.finalize | None = None
        self._watchdog: threading.Thread | None = None
        if not asynchronous:
            self.start()

    def start(self, timeout: float = 30.0) -> str:
        """Start the broker and the worker pool; returns the broker address.

        With ``port=0`` a free port is chosen here, so the pool (whose start takes longer
        than the broker's) starts at the same time as the broker instead of after it; if the
        port is taken in between, the broker picks one itself and the pool follows it.
        """
        # One start at a time: an asynchronous cluster may be awaited and given to clients at
        # once, each starting it in a thread of its own; the later ones wait for the first.
        with self._start_lock:
            if self._closed:
                raise UsageError("this LocalCluster is closed; make a new one")
            if self.address is not None:
                return self.address
            return self._start(timeout)

    def _start(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        env = self._env = _child_environment()
        if self._ipc_dir is None and os.name == "posix" and zmq.has("ipc"):
            # A private directory: nobody else can connect to (or squat on) the socket path.
            self._ipc_dir = tempfile.mkdtemp(prefix="zmqdask-")
            path = self._ipc_path()
            if path is not None and len(os.fsencode(path)) > _MAX_IPC_PATH_BYTES:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)  # too long for a Unix socket: TCP
                self._ipc_dir = None
        port = _free_port(self.host) if self.port == 0 and self.n_workers else None
        if port is not None and self._start_broker(port, env, deadline, early_pool=True):
            return self._started()
        if self._pools or self._broker is not None:
            self._stop_children()
        if not self._start_broker(self.port, env, deadline, early_pool=False):
            code = self._broker.poll() if self._broker is not None else None
            self._stop_children()
            raise CommunicationError(
                f"the local broker did not start within {timeout} s"
                + (f" (it exited with code {code}; see its error output above)" if code is not None else "")
            )
        if self.n_workers and self.address is not None:
            self._start_pool(self._pool_address(self.address), env, self.n_workers)
        return self._started()

    def _ipc_path(self) -> str | None:
        return os.path.join(self._ipc_dir, "broker.sock") if self._ipc_dir is not None else None

    def _pool_address(self, tcp_address: str) -> str:
        path = self._ipc_path()
        return f"ipc://{path}" if path is not None else tcp_address

    def _start_broker(self, port: int, env: dict[str, str], deadline: float, *, early_pool: bool) -> bool:
        """Start the broker on ``port`` (and the pool at once if ``early_pool``); True once it listens."""
        self._broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "--host",
                self.host,
                "--port",
                str(port),
                "--log-level",
                self.log_level,
                *(["--ipc", path] if (path := self._ipc_path()) is not None else []),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._finalizer = weakref.finalize(self, _stop_children, [self._broker], self._ipc_dir)
        if early_pool:
            # The pool's workers keep trying to connect until the broker listens.
            self._start_pool(self._pool_address(f"tcp://{_local_host(self.host)}:{port}"), env, self.n_workers)
        line = _read_line_matching(self._broker, _LISTENING, deadline)
        if line is None:
            return False
        self.address = line
        self.local_address = self._pool_address(line)
        return True

    def _start_pool(self, address: str, env: dict[str, str], nworkers: int) -> None:
        pool = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zmqdask.pool",
                address,
                "--nworkers",
                str(nworkers),
                "--nthreads",
                str(self.threads_per_worker),
                "--log-level",
                self.log_level,
                "--quiet",
                *(["--memory-limit", str(self.memory_limit)] if self.memory_limit is not None else []),
                # Workers serve large values to clients on this host over Unix sockets of their own.
                *(["--data-address", f"ipc://{self._ipc_dir}"] if self._ipc_dir is not None else []),
            ],
            # Inherited, as with Dask's local cluster: what tasks print shows up where this
            # process prints (the terminal, or the one running the notebook server).
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._pools.append((pool, nworkers))
        self._watch_children()
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=_watch_pools, args=(weakref.ref(self),), name="zmqdask-local-pools", daemon=True
            )
            self._watchdog.start()

    def _restart_dead_pools(self) -> None:
        """Start again each pool that exited on its own (killed, say): its workers' tasks
        were requeued by the broker, and new workers take them."""
        with self._start_lock:
            if self._closed or self._broker is None or self.address is None or self._broker.poll() is not None:
                return  # stopping, or the broker itself is gone: nothing to serve
            for index, (pool, nworkers) in enumerate(list(self._pools)):
                code = pool.poll()
                if code is None:
                    continue
                logger.warning("a worker pool of the local cluster exited (code %s); starting it again", code)
                self._pools.pop(index)
                self._start_pool(self._pool_address(self.address), self._env, nworkers)
                return  # the list changed: the others are looked at next time

    def _children(self) -> list[subprocess.Popen[bytes]]:
        """The running children in the order they stop: pools, newest first, then the broker."""
        pools = [pool for pool, _ in reversed(self._pools)]
        return pools + ([self._broker] if self._broker is not None else [])

    def _watch_children(self) -> None:
        # Whoever forgets to close the cluster, its children stop when it is collected.
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop_children, self._children(), self._ipc_dir)

    def scale(self, n: int) -> None:
        """Run ``n`` workers from now on (Dask's ``cluster.scale(n)``).

        More workers come in a new pool; fewer are had by stopping the newest pools whole
        (and starting one of the difference if that stopped too many).  Values held only by
        stopped workers are computed again when needed; scattered ones are sent again by the
        clients holding them.  ``client.wait_for_workers(n)`` waits for new ones.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UsageError(f"scale takes a non-negative number of workers, got {n!r}")
        with self._start_lock:
            if self._closed:
                raise UsageError("this LocalCluster is closed; make a new one")
            if self._broker is None:
                self.n_workers = n  # not started yet: the count it starts with
                return
            while self.n_workers > n and self._pools:
                pool, count = self._pools.pop()
                _terminate([pool])
                self.n_workers -= count
            if self.n_workers < n and self.address is not None:
                self._start_pool(self._pool_address(self.address), self._env, n - self.n_workers)
                self.n_workers = n
            self._watch_children()

    @property
    def workers(self) -> dict[str, Any]:
        """Not kept here: the broker knows the workers (``client.scheduler_info()["workers"]``)."""
        raise AttributeError(
            "LocalCluster does not track its workers; ask the broker through a client: "
            "client.scheduler_info()['workers'] or client.nthreads(); n_workers is the number started"
        )

    @property
    def scheduler_address(self) -> str | None:
        """The broker's address (Dask's name for it): what ``Client(address)`` takes."""
        return self.address

    @property
    def dashboard_link(self) -> None:
        """None: zmqdask has no dashboard."""
        return None

    @property
    def status(self) -> str:
        """``"running"`` once started and until closed, else ``"created"`` or ``"closed"``."""
        if self._closed:
            return "closed"
        return "running" if self._broker is not None else "created"

    @property
    def broker_pid(self) -> int | None:
        """Process id of the broker, None when it is not running."""
        return self._broker.pid if self._broker is not None else None

    def _started(self) -> str:
        address = self.address or ""
        logger.info("local cluster at %s with %d workers", address, self.n_workers)
        return address

    def close(self, timeout: float = _STOP_GRACE_S) -> Any:
        """Stop the pools, then the broker (SIGTERM, then SIGKILL after ``timeout``).

        Returns an awaitable, for ``await cluster.close()`` as in Dask.  Called on a running
        event loop, an asynchronous cluster stops in a thread, awaited or not (the loop goes
        on meanwhile; the awaitable is done once it has stopped); otherwise the cluster has
        stopped when this returns.
        """
        self._closed = True
        if self.asynchronous:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                # Handed to a thread now, not when awaited: a close never awaited still happens.
                return loop.run_in_executor(None, self._stop_children, timeout)
        self._stop_children(timeout)
        return _Done()

    def _stop_children(self, timeout: float = _STOP_GRACE_S) -> None:
        with self._start_lock:  # after a start in progress, never during it
            processes = self._children()
            self._pools = []
            self._broker = None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            _terminate(processes, timeout)
            if self._ipc_dir is not None:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)
                self._ipc_dir = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __await__(self) -> Generator[Any, None, LocalCluster]:
        return self._started_in_thread().__await__()

    async def _started_in_thread(self) -> LocalCluster:
        # Starting takes about half a second of waiting on children: not on the event loop.
        await asyncio.to_thread(self.start)
        return self

    async def __aenter__(self) -> LocalCluster:
        return await self._started_in_thread()

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        await asyncio.to_thread(self._stop_children)

    def __repr__(self) -> str:
        return f"LocalCluster({self.address!r}, workers={self.n_workers}, threads={self.threads_per_worker})"


class _Done:
    """An awaitable with nothing left to wait for."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


POOL_CHECK_INTERVAL_S = 1.0
"""How often a local cluster looks for worker pools that exited on their own."""


def _watch_pools(cluster_ref: weakref.ref[LocalCluster]) -> None:
    # Holds the cluster only while looking: a cluster nobody refers to is still collected.
    while True:
        time.sleep(POOL_CHECK_INTERVAL_S)
        cluster = cluster_ref()
        if cluster is None or cluster._closed:
            return
        try:
            cluster._restart_dead_pools()
        except Exception:
            logger.exception("could not start a worker pool of the local cluster again")
        del cluster


def _free_port(host: str) -> int | None:
    """A TCP port free on ``host`` right now (None if that cannot be found out)."""
    bind_host = "" if host in ("0.0.0.0", "*", "", "::") else host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bind_host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
            return int(probe.getsockname()[1])
    except OSError:
        return None


def _local_host(host: str) -> str:
    """How a process on this machine reaches a broker bound to ``host``."""
    if host in ("0.0.0.0", "*", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


LARGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc tunable for the children: large allocations are backed by transparent huge pages.

The broker and the workers receive large values into fresh buffers; with 4 KiB pages,
faulting them in costs more than moving the bytes (a 200 MB array crosses two of them).
Other C libraries, and glibc versions before 2.35, ignore it."""


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a size for people to read."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def parse_bytes(value: int | float | str) -> int:
    """A size in bytes from an int or a string such as ``"4GB"``, ``"512 MiB"`` or ``"1e9"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", value.lower())
        if match and match.group(2) in _BYTE_UNITS:
            try:
                return int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])
            except ValueError:
                pass
    raise UsageError(f"memory_limit must be a number of bytes or a size such as '4GB', got {value!r}")


def _child_environment() -> dict[str, str]:
    """The children's environment: ours, plus our import path, our pid and large pages.

    Workers must import whatever modules the client's functions come from, as
    multiprocessing-started workers would; the parent pid lets the children exit when this
    process dies without closing them.  :data:`LARGE_PAGES_TUNABLE` is added unless glibc
    tunables are set already (the user's choice wins).
    """
    env = dict(os.environ, ZMQDASK_PARENT_PID=str(os.getpid()))
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("GLIBC_TUNABLES", LARGE_PAGES_TUNABLE)
    return env


def _read_line_matching(process: subprocess.Popen[bytes], pattern: re.Pattern[str], deadline: float) -> str | None:
    """Read the child's stdout until a line matches; returns the first group, or None."""
    stream = process.stdout
    assert stream is not None
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    buffer = b""
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
                if process.poll() is not None:
                    return None
                continue
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                return None
            buffer += chunk
            for raw in buffer.split(b"\n"):
                match = pattern.search(raw.decode(errors="replace"))
                if match:
                    _drain_in_background(stream)
                    return match.group(1)
    finally:
        selector.close()
    return None


def _drain_in_background(stream: IO[bytes]) -> None:
    # The child may print more; a full pipe would block it, so keep reading until it closes.
    def drain() -> None:
        try:
            while stream.read(65536):
                pass
        except (OSError, ValueError):
            pass

    threading.Thread(target=drain, name="zmqdask-local-stdout", daemon=True).start()


def _stop_children(processes: list[subprocess.Popen[bytes]], ipc_dir: str | None) -> None:
    """Stop the children of a cluster nobody closed, and remove its socket directory."""
    _terminate(processes)
    if ipc_dir is not None:
        shutil.rmtree(ipc_dir, ignore_errors=True)


def _terminate(processes: list[subprocess.Popen[bytes]], timeout: float = _STOP_GRACE_S) -> None:
    for process in processes:
        if process.poll() is None:
            try:
                process.terminate()
            except OSError:
                pass
        # Each child gets its own grace period in order: the pool first, so that the
        # workers leave before the broker they report to goes away.
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stdout is not None:
            try:
                process.stdout.close()
            except OSError:
                pass
