"""The per-host pool manager that starts and supervises worker processes, and its CLI.

``zmqdask-worker tcp://broker:8786 --nworkers 4`` (or ``python -m zmqdask.pool ...``) starts
four worker processes and one pool manager, all connected to the broker::

    pool manager ──HELLO pool / HEARTBEAT / WORKER_DIED / GOODBYE──▶ broker
      │ watches each child's process sentinel; reads its running slots when it dies
      ├── worker <pool>-w0-g0 ──HELLO worker ...──▶ broker
      └── worker <pool>-w1-g0 ──...──▶ broker       (a replacement is <pool>-w1-g1, ...)

A child that dies unexpectedly is reported at once (with the keys it was running, so the
broker can count a strike against a task that kills workers) and replaced.  A child whose
resident memory passes :data:`MEMORY_TERMINATE_FRACTION` of its memory limit is killed the
same way (as Dask's nanny does): a task that exhausts memory fails with KilledWorker after
three workers, instead of the kernel's OOM killer choosing a victim, perhaps the user's own
process.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from zmqdask.config import HEARTBEAT_INTERVAL_S, LIVENESS_TIMEOUT_S, broker_address_problem
from zmqdask.direct import check_data_address
from zmqdask.errors import ProtocolError, UsageError
from zmqdask.executor import clear_slots, read_slots, slots_nbytes, slots_view
from zmqdask.local import format_bytes
from zmqdask.protocol import RESTART, ROLE_POOL, ROLE_WORKER, WORKER_DIED, decode
from zmqdask.runs import UPLOAD_ROOT_VARIABLE
from zmqdask.security import Security
from zmqdask.worker import (
    CONTROL_COMMANDS,
    EXIT_BROKER_UNREACHABLE,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    BrokerLink,
    LinkEvent,
    SignalWakeup,
    run_worker,
)

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
"""Bad command-line arguments."""

TERMINATE_GRACE_S = 3.0
"""How long stopping children get after SIGTERM before they are killed."""
KILL_WAIT_S = 1.0
"""How long to wait for a killed child to be reaped."""
CRASH_LOOP_UPTIME_S = 10.0
"""A child that dies sooner than this after its start counts as crash-looping."""
RESTART_BACKOFF_BASE_S = 0.5
"""Delay before restarting a child after its second quick death; doubles with each more."""
RESTART_BACKOFF_MAX_S = 10.0
"""Longest delay before restarting a crash-looping child."""
WATCH_INTERVAL_S = 1.0
"""How often the pool checks that the process named by ``ZMQDASK_PARENT_PID`` is alive."""
PARENT_PID_ENV = "ZMQDASK_PARENT_PID"
"""Environment variable naming a process whose exit stops the pool (set by LocalCluster)."""
MEMORY_TERMINATE_FRACTION = 0.95
"""A worker using more than this share of its memory limit (resident set) is killed and replaced."""
MEMORY_CHECK_INTERVAL_S = 0.1
"""How often the pool reads its workers' resident memory when they have a limit."""
LOG_FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s"
"""Log line format of the pool manager and its workers."""


def worker_context(method: str | None = None) -> ForkServerContext | SpawnContext:
    """The multiprocessing context for worker processes: forkserver when available, else spawn.

    The fork server imports the worker modules once, so starting or replacing a worker is a
    cheap fork of an already initialised interpreter that holds no sockets or threads.
    """
    if method not in (None, "forkserver", "spawn"):
        raise UsageError(f"unsupported start method {method!r}: use 'forkserver' or 'spawn'")
    if method == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Only the worker module: preloading this module too would make the children's start-up
    # re-run it as __mp_main__ on top of an already imported copy when it is run with -m.
    context.set_forkserver_preload(["zmqdask.worker"])
    return context


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before restarting a worker that died ``quick_deaths`` times in a row soon after starting.

    The first death is answered at once; from the second on the delay doubles from
    ``RESTART_BACKOFF_BASE_S`` up to ``RESTART_BACKOFF_MAX_S``.
    """
    if quick_deaths <= 1:
        return 0.0
    return min(RESTART_BACKOFF_BASE_S * 2.0 ** (quick_deaths - 2), RESTART_BACKOFF_MAX_S)


def _child_main(log_level: int | None, options: dict[str, Any]) -> None:
    # Worker processes do not inherit the CLI's logging setup (they are not forked from it).
    if log_level is not None:
        logging.basicConfig(level=log_level, format=LOG_FORMAT)
    # Each line a task prints leaves in one write: whole, even with other workers printing to
    # the same terminal or pipe, and at once rather than when a block buffer fills.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, write_through=False)
    run_worker(**options)


def default_memory_limit(nworkers: int) -> int:
    """Physical memory divided among the workers, in bytes (0 if it cannot be determined)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0
    return max(0, total // max(1, nworkers))


class _Child:
    """One worker position of the pool; its process is replaced when it dies."""

    def __init__(self, index: int, buffer: Any) -> None:
        self.index = index
        self.buffer = buffer
        """The running-slots shared memory, kept across generations."""
        self.generation = -1
        self.identity = b""
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0
        self.quick_deaths = 0
        self.restart_at: float | None = None
        self.replacing = False
        """Killed on the broker's RESTART: to be started again at once, not as a crash."""


class PoolManager:
    """Starts ``nworkers`` worker processes, reports and replaces the ones that die.

    Call :meth:`start`, then :meth:`run` until it returns an exit code; :meth:`close`
    releases everything (also after an error).  Main thread only.  One ``zmq.Poller`` waits
    on the broker socket, every child's process sentinel and the signal wake-up fd, so a
    death is noticed the moment it happens.
    """

    def __init__(
        self,
        address: str,
        *,
        nworkers: int,
        nthreads: int = 1,
        name: str | None = None,
        memory_limit: int = 0,
        death_timeout_s: float = 60.0,
        log_level: int | None = None,
        watch_pid: int | None = None,
        start_method: str | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        security: Security | None = None,
        data_address: str = "",
    ) -> None:
        if nworkers < 1:
            raise UsageError(f"a pool needs at least one worker, got nworkers={nworkers}")
        if nthreads < 1:
            raise UsageError(f"a worker needs at least one thread, got nthreads={nthreads}")
        if not death_timeout_s > 0:
            raise UsageError(f"the death timeout must be positive, got {death_timeout_s}")
        self.address = address
        self.nworkers = nworkers
        self.nthreads = nthreads
        self.host = socket.gethostname()
        self.pool_id = f"{self.host}-{os.getpid()}"
        self.name = name or self.pool_id
        self.memory_limit = memory_limit
        self.death_timeout_s = death_timeout_s
        self.log_level = log_level
        self.watch_pid = watch_pid
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.security = security
        """CURVE keys of the pool and its workers (one worker key per host), or None."""
        self.data_address = check_data_address(data_address) if data_address else ""
        """Where each worker listens for clients' direct transfers (see :mod:`zmqdask.direct`)."""
        self._mp = worker_context(start_method)
        self._children = [
            _Child(index, self._mp.RawArray(ctypes.c_uint8, slots_nbytes(nthreads))) for index in range(nworkers)
        ]
        self._by_sentinel: dict[int, _Child] = {}
        self._context: zmq.Context[Any] | None = None
        self._link: BrokerLink | None = None
        self._poller = zmq.Poller()
        self._signals: SignalWakeup | None = None
        self._stop_requested = False
        self._stopping = False
        self._upload_root: str | None = None
        self._next_watch = 0.0
        self._next_memory_check = 0.0
        self._page_size = _page_size() if memory_limit > 0 else 0
        if memory_limit > 0 and not self._page_size:
            logger.warning("cannot read process memory on this system: the memory limit is not enforced")

    def identity_of(self, index: int, generation: int) -> bytes:
        """The socket identity of worker ``index`` in its ``generation``-th incarnation."""
        return f"{self.pool_id}-w{index}-g{generation}".encode()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT stop the pool in order (call before :meth:`start`)."""
        if self._signals is None:
            self._signals = SignalWakeup(lambda _signum: self.request_stop(), [signal.SIGTERM, signal.SIGINT])
            self._poller.register(self._signals.fd, zmq.POLLIN)

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop the children and return (safe in a signal handler)."""
        self._stop_requested = True

    def start(self) -> None:
        """Connect to the broker and start every worker process.

        Raises :class:`UsageError` if ``address`` is not a ZeroMQ address this host can connect to.
        """
        self._context = zmq.Context()
        try:
            self._link = BrokerLink(
                self._context,
                self._poller,
                self.address,
                f"{self.pool_id}-pool".encode(),
                ROLE_POOL,
                {"pool": self.pool_id, "host": self.host, "nworkers": self.nworkers},
                death_timeout_s=self.death_timeout_s,
                heartbeat_interval_s=self.heartbeat_interval_s,
                liveness_timeout_s=self.liveness_timeout_s,
                security=self.security,
            )
        except zmq.ZMQError as exc:
            raise UsageError(f"cannot connect to {self.address!r}: {exc} (expected tcp://HOST:PORT)") from exc
        # Files uploaded to the workers (Client.upload_file) go under one directory of the
        # pool's, removed when it stops: a worker killed (by a restart, a crash, the memory
        # limit) cannot clean up after itself.
        self._upload_root = tempfile.mkdtemp(prefix="zmqdask-uploads-")
        os.environ[UPLOAD_ROOT_VARIABLE] = self._upload_root
        for child in self._children:
            self._start_child(child)

    def run(self) -> int:
        """Supervise the children until stopped; returns the exit code (``EXIT_*``)."""
        link = self._link
        if link is None:
            raise UsageError("PoolManager.run() needs start() first")
        while not self._stop_requested:
            now = time.monotonic()
            event = link.tick(now)
            if event is LinkEvent.GAVE_UP:
                logger.error(
                    "no broker answered at %s for %.1f s; stopping %d workers",
                    self.address,
                    self.death_timeout_s,
                    self.nworkers,
                )
                self._shutdown("broker unreachable")
                return EXIT_BROKER_UNREACHABLE
            if event is LinkEvent.FORGOTTEN:
                link.reconnect()
                continue
            if self._watched_process_gone(now):
                logger.warning("process %s (which started this pool) is gone; stopping", self.watch_pid)
                break
            deadline = link.deadline()
            for child in self._children:
                if child.restart_at is not None and child.restart_at <= now:
                    self._restart_child(child, now)
                if child.restart_at is not None:
                    deadline = min(deadline, child.restart_at)
            if self.watch_pid is not None:
                deadline = min(deadline, self._next_watch)
            if self._page_size:
                if now >= self._next_memory_check:
                    self._next_memory_check = now + MEMORY_CHECK_INTERVAL_S
                    self._enforce_memory_limit()
                deadline = min(deadline, self._next_memory_check)
            ready = dict(self._poller.poll(max(0, math.ceil((deadline - now) * 1000))))
            if self._signals is not None and self._signals.fd in ready:
                self._signals.drain()
            for fd in [fd for fd in self._by_sentinel if fd in ready]:
                self._on_child_exit(self._by_sentinel[fd])
            if link.socket in ready:
                self._drain_broker()
        self._shutdown("pool stopping")
        return EXIT_OK

    def close(self) -> None:
        """Stop whatever is still running and release sockets and signal handlers (idempotent)."""
        if not self._stopping:
            self._shutdown("pool closing")
        if self._signals is not None:
            self._signals.close()
            self._signals = None

    # --- internals -------------------------------------------------------------------------

    def _start_child(self, child: _Child) -> None:
        child.generation += 1
        child.identity = self.identity_of(child.index, child.generation)
        child.restart_at = None
        options: dict[str, Any] = {
            "address": self.address,
            "identity": child.identity,
            "nthreads": self.nthreads,
            "credit": None,
            "name": f"{self.name}-w{child.index}",
            "pool": self.pool_id,
            "memory_limit": self.memory_limit,
            "running_slots": child.buffer,
            "death_timeout_s": self.death_timeout_s,
            "parent_pid": os.getpid(),
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "liveness_timeout_s": self.liveness_timeout_s,
            "security": self.security,
            "data_address": self.data_address,
        }
        process = self._mp.Process(
            target=_child_main, args=(self.log_level, options), name=f"zmqdask-worker-{child.index}"
        )
        process.start()
        child.process = process
        child.started_at = time.monotonic()
        self._by_sentinel[process.sentinel] = child
        self._poller.register(process.sentinel, zmq.POLLIN)
        logger.info("started worker %s (pid %s)", child.identity.decode(), process.pid)

    def _restart_child(self, child: _Child, now: float) -> None:
        try:
            self._start_child(child)
        except Exception:  # e.g. the fork server could not be reached: try again later
            child.quick_deaths += 1
            child.restart_at = now + restart_delay(max(2, child.quick_deaths))
            logger.exception("could not restart worker %d; trying again in %.1f s", child.index, child.restart_at - now)

    def _on_child_exit(self, child: _Child) -> None:
        process = child.process
        if process is None:
            return
        # The sentinel fd must leave the poller before close() frees it for reuse.
        self._poller.unregister(process.sentinel)
        del self._by_sentinel[process.sentinel]
        process.join(KILL_WAIT_S)
        exitcode = process.exitcode
        pid = process.pid
        child.process = None
        view = slots_view(child.buffer)
        running = read_slots(view)
        clear_slots(view)
        if exitcode is None:  # the sentinel fired but the process cannot be reaped
            logger.error("worker %s stopped answering but cannot be reaped; killing it", child.identity.decode())
            process.kill()
            process.join(KILL_WAIT_S)
            exitcode = process.exitcode if process.exitcode is not None else -signal.SIGKILL
        _close_process(process)
        if self._stopping:
            return
        now = time.monotonic()
        if child.replacing:
            child.replacing = False
            child.quick_deaths = 0
            child.restart_at = now
            logger.info("worker %s (pid %s) stopped for a restart of the cluster", child.identity.decode(), pid)
            if self._link is not None:
                # No running keys: the tasks were cancelled before, none is to blame.
                self._link.send(WORKER_DIED, [child.identity, [], exitcode])
            return
        logger.warning(
            "worker %s (pid %s) died with exit code %s%s",
            child.identity.decode(),
            pid,
            exitcode,
            f" while running {running}" if running else "",
        )
        if self._link is not None:
            self._link.send(WORKER_DIED, [child.identity, running, exitcode])
        if running:
            # A task took it down (the broker counts that against the task): not a worker
            # that cannot start, so no back-off for the tasks waiting on other work.
            child.quick_deaths = 1
        else:
            child.quick_deaths = child.quick_deaths + 1 if now - child.started_at < CRASH_LOOP_UPTIME_S else 1
        delay = restart_delay(child.quick_deaths)
        if delay:
            logger.warning("worker %d keeps dying; restarting it in %.1f s", child.index, delay)
        child.restart_at = now + delay

    def _drain_broker(self) -> None:
        link = self._link
        if link is None:
            return
        while True:
            try:
                frames = link.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            link.received(time.monotonic())
            try:
                message = decode(frames)
            except ProtocolError as exc:
                logger.debug("dropped a malformed message from the broker: %s", exc)
                continue
            if message.command == RESTART:
                self._replace_children()
                continue
            if message.command not in CONTROL_COMMANDS:
                logger.debug("ignoring unexpected %s from the broker", message.name)
                continue
            if link.handle(message) is LinkEvent.FORGOTTEN:
                link.reconnect()
                return

    def _replace_children(self) -> None:
        """Kill every worker process (each sentinel then starts its replacement at once)."""
        now = time.monotonic()
        for child in self._children:
            process = child.process
            if process is None:
                child.restart_at = now  # waiting out a crash back-off: start it now
                child.quick_deaths = 0
            elif process.exitcode is None:
                child.replacing = True
                process.kill()

    def _enforce_memory_limit(self) -> None:
        # Killing is enough: the sentinel then reports the death with the keys the worker
        # was running, and the child is replaced as after any other death.
        allowed = self.memory_limit * MEMORY_TERMINATE_FRACTION
        for child in self._children:
            process = child.process
            if process is None or process.pid is None or process.exitcode is not None:
                continue
            rss = _resident_bytes(process.pid, self._page_size)
            if rss is None or rss <= allowed:
                continue
            running = read_slots(slots_view(child.buffer))
            logger.warning(
                "worker %s uses %s, more than %d%% of its memory limit of %s%s: killing it (it will be restarted)",
                child.identity.decode(),
                format_bytes(rss),
                round(MEMORY_TERMINATE_FRACTION * 100),
                format_bytes(self.memory_limit),
                f", while running {running}" if running else "",
            )
            process.kill()

    def _watched_process_gone(self, now: float) -> bool:
        if self.watch_pid is None or now < self._next_watch:
            return False
        self._next_watch = now + WATCH_INTERVAL_S
        try:
            os.kill(self.watch_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _shutdown(self, reason: str) -> None:
        self._stopping = True
        processes = [c.process for c in self._children if c.process is not None]
        for process in processes:
            if process.exitcode is None:
                process.terminate()  # each worker says GOODBYE to the broker itself
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.exitcode is None:
                logger.warning("worker pid %s did not stop within %.1f s; killing it", process.pid, TERMINATE_GRACE_S)
                process.kill()
                process.join(KILL_WAIT_S)
        for child in self._children:
            if child.process is not None:
                self._by_sentinel.pop(child.process.sentinel, None)
                _close_process(child.process)
                child.process = None
        if self._link is not None:
            self._link.close(goodbye=reason)
            self._link = None
        if self._context is not None:
            self._context.term()  # bounded by the GOODBYE linger
            self._context = None
        if self._upload_root is not None:
            shutil.rmtree(self._upload_root, ignore_errors=True)
            self._upload_root = None


def _page_size() -> int:
    """The page size, if this system shows processes' memory in /proc (else 0)."""
    if not os.path.exists(f"/proc/{os.getpid()}/statm"):
        return 0
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def _resident_bytes(pid: int, page_size: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, or None if it cannot be read (it exited)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * page_size
    except (OSError, ValueError, IndexError):
        return None


def _close_process(process: multiprocessing.process.BaseProcess) -> None:
    try:
        process.close()
    except ValueError:  # still running (it could not be killed): leave it to the OS
        logger.error("worker pid %s is still running", process.pid)


def _parse_log_level(text: str) -> int:
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}")
    return level


def _parse_watch_pid(environ: Mapping[str, str]) -> int | None:
    text = environ.get(PARENT_PID_ENV, "").strip()
    if not text:
        return None
    try:
        pid = int(text)
    except ValueError:
        logger.warning("ignoring %s=%r: not a process id", PARENT_PID_ENV, text)
        return None
    return pid if pid > 0 else None


def build_parser() -> argparse.ArgumentParser:
    """The ``zmqdask-worker`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="zmqdask-worker",
        description="Start a pool of zmqdask worker processes connected to a broker.",
        epilog=f"If {PARENT_PID_ENV} is set, the pool stops when that process exits.",
    )
    parser.add_argument("address", help="the broker's address, e.g. tcp://127.0.0.1:8786")
    parser.add_argument(
        "--nworkers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPU count)"
    )
    parser.add_argument("--nthreads", type=int, default=1, help="executor threads per worker (default: 1)")
    parser.add_argument("--name", default=None, help="base name of the workers (default: <host>-<pid>)")
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        metavar="BYTES",
        help=(
            "memory each worker may use; one using more than 95%% of it is killed and replaced "
            "(default: physical memory / nworkers; 0: no limit)"
        ),
    )
    parser.add_argument(
        "--data-address",
        default="",
        metavar="ADDRESS",
        help=(
            "where each worker also listens for clients fetching large values directly, in one hop "
            "instead of two through the broker: tcp://HOST (a free port each; clients must reach HOST) "
            "or ipc://DIRECTORY (clients on this host); default: everything goes through the broker"
        ),
    )
    parser.add_argument(
        "--death-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when no broker answers for this long (default: 60)",
    )
    keys = parser.add_argument_group(
        "CURVE keys (for a broker started with --curve-keys)",
        "The pool and its workers connect with one key pair from the broker's workers/ allow-list.",
    )
    keys.add_argument(
        "--curve-keys",
        metavar="DIR",
        default=None,
        help="key directory: DIR/broker.key and the only DIR/workers/*.key_secret (unless --key names one)",
    )
    keys.add_argument("--key", metavar="FILE", default=None, help="this host's worker key pair (a .key_secret file)")
    keys.add_argument(
        "--broker-key", metavar="FILE", default=None, help="the broker's public key (default: DIR/broker.key)"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="do not print the start-up line (standard output is left to the tasks' own prints)",
    )
    parser.add_argument(
        "--log-level",
        type=_parse_log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default: INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``zmqdask-worker`` command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nworkers < 1:
        parser.error("--nworkers must be at least 1")
    if args.nthreads < 1:
        parser.error("--nthreads must be at least 1")
    if not args.death_timeout > 0:
        parser.error("--death-timeout must be positive")
    if args.memory_limit is not None and args.memory_limit < 0:
        parser.error("--memory-limit must not be negative")
    try:
        security = Security.from_options(args.curve_keys, args.key, args.broker_key, ROLE_WORKER)
    except UsageError as exc:
        parser.error(f"CURVE keys: {exc}")
    if args.data_address:
        try:
            check_data_address(args.data_address)
        except UsageError as exc:
            parser.error(str(exc))
    problem = broker_address_problem(args.address)
    if problem is not None:
        parser.error(problem)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    memory_limit = default_memory_limit(args.nworkers) if args.memory_limit is None else args.memory_limit
    pool = PoolManager(
        args.address,
        nworkers=args.nworkers,
        nthreads=args.nthreads,
        name=args.name,
        memory_limit=memory_limit,
        death_timeout_s=args.death_timeout,
        log_level=args.log_level,
        watch_pid=_parse_watch_pid(os.environ),
        security=security,
        data_address=args.data_address,
    )
    pool.install_signal_handlers()
    try:
        pool.start()
        if not args.quiet:
            print(f"zmqdask-worker started {args.nworkers} workers for {args.address}", flush=True)
        return pool.run()
    except UsageError as exc:
        print(f"zmqdask-worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        logger.exception("the worker pool failed")
        return EXIT_INTERNAL_ERROR
    finally:
        pool.close()


if __name__ == "__main__":
    sys.exit(main())
