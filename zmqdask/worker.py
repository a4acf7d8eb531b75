"""One worker process: its broker connection, data store and task dispatch (see run_worker).

The main thread owns every socket and never runs user code::

    broker ──COMPUTE/STORE/GET/DATA/DELETE/CANCEL_TASKS──▶ DEALER ─┐
                                                                   ▼
        ┌────────────── main thread: zmq.Poller loop ─────────────────────────────┐
        │ decode → handler → Executor.submit(task) / FETCH / DATA                 │
        │ Executor.drain() → store results → one DONE per loop turn               │
        └─────────────────────────────────────────────────────────────────────────┘
                          ▲ wake-up (inproc)          │ SimpleQueue
                          └──── executor threads ◀────┘

FORGET_FUNCTIONS arrives the same way: functions no task of this worker runs any more.

``BrokerLink`` (registration, heartbeats, liveness) and ``SignalWakeup`` are shared with the
pool manager (:mod:`zmqdask.pool`).
"""

from __future__ import annotations

import enum
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import zmq

from zmqdask import protocol, serialize
from zmqdask.batches import BatchResult, without_unpicklable
from zmqdask.config import (
    DIRECT_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    INLINE_RESULT_MAX_BYTES,
    IPC_BUFFER_BYTES,
    LIVENESS_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    PYTHON_VERSION,
)
from zmqdask.direct import (
    FAILED_COOLDOWN_S,
    bind_data_socket,
    connect_data_socket,
    reachable,
    send_to,
    transfer_deadline_s,
)
from zmqdask.errors import ProtocolError, SerializationError, UsageError
from zmqdask.executor import (
    STATE_CANCELLED,
    STATE_RUNNING,
    STATE_WAITING,
    Executor,
    FunctionCache,
    QuickFunctions,
    Task,
    clear_slot,
    error_detail,
    execute,
    inline_limit,
    measure,
    slots_nbytes,
    slots_view,
    write_slot,
)
from zmqdask.protocol import (
    CANCEL_TASKS,
    CANCELLED,
    COMPUTE,
    DATA,
    DELETE,
    DONE,
    ERRED,
    ERROR,
    FETCH,
    FETCH_FROM,
    FINISHED,
    FORGET_FUNCTIONS,
    GET,
    GOODBYE,
    HEARTBEAT,
    HELLO,
    MISSING_DEPS,
    RAN,
    RELAY_FETCH,
    ROLE_WORKER,
    RUN,
    SECEDE,
    SETUP,
    STORE,
    UNKNOWN_PEER,
    WELCOME,
    Message,
    entry_payload,
    payload_field,
)
from zmqdask.runs import WorkerRuns
from zmqdask.security import HandshakeMonitor, Security

logger = logging.getLogger(__name__)

EXIT_OK = 0
"""The worker stopped on request."""
EXIT_INTERNAL_ERROR = 1
"""The worker itself failed (a bug); the log has the traceback."""
EXIT_BROKER_UNREACHABLE = 3
"""No broker answered for the death timeout."""
EXIT_PARENT_GONE = 4
"""The pool manager that started the worker is gone."""

GOODBYE_LINGER_S = 1.0
"""How long a leaving peer lets its last messages go out before dropping them."""
MAX_MESSAGES_PER_TURN = 1000

_SERVED_DIRECTLY = frozenset({GET, STORE})
"""What a worker's data socket takes from clients and other workers."""
_ANSWERS = frozenset({DATA})
"""What comes back from another worker's data socket."""

MAX_PEER_SOCKETS = 16
"""Most connections a worker keeps to other workers' data sockets (see _close_idle_peers)."""
"""Broker messages handled before finished results get their turn again."""
EXECUTOR_STOP_TIMEOUT_S = 0.2
"""How long a stopping worker waits for executor threads to finish their current task."""
PARENT_CHECK_INTERVAL_S = 1.0
"""How often a worker without a parent sentinel checks that its parent process is alive."""
DONE_FLUSH_BYTES = 8 * INLINE_RESULT_MAX_BYTES
"""Pending DONE payload size at which the batch is sent before the loop turn ends."""

_ABSENT = object()


class LinkEvent(enum.Enum):
    """What a :class:`BrokerLink` noticed that its owner must act on."""

    NOTHING = "nothing"
    WELCOMED = "welcomed"
    FORGOTTEN = "forgotten"
    """The broker no longer knows this peer: drop its state and call ``reconnect``."""
    GAVE_UP = "gave-up"
    """No broker answered for the death timeout."""


CONTROL_COMMANDS = frozenset({WELCOME, HEARTBEAT, UNKNOWN_PEER, GOODBYE, ERROR})
"""Commands handled by :meth:`BrokerLink.handle` rather than by the link's owner."""


class BrokerLink:
    """A DEALER connection to the broker: registration, heartbeats, liveness and epoch.

    It does no waiting: the owner polls ``socket``, passes control messages to
    :meth:`handle`, calls :meth:`tick` each loop turn and sleeps at most until
    :meth:`deadline`.  The link keeps its current socket registered in the owner's
    ``poller``: :meth:`reconnect` (also called by :meth:`tick`) replaces ``socket``.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        poller: zmq.Poller,
        address: str,
        identity: bytes,
        role: str,
        info: dict[str, Any],
        *,
        death_timeout_s: float,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        security: Security | None = None,
    ) -> None:
        self.address = address
        self.identity = identity
        self.max_message_bytes = MAX_MESSAGE_BYTES  # the broker's, learnt from WELCOME
        self.security = security
        """CURVE keys to connect with, or None for a broker without keys."""
        self._monitor: HandshakeMonitor | None = None
        self._refusal_logged: str | None = None
        self.role = role
        self.info = info
        self.death_timeout_s = death_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.registered = False
        self.epoch = ""
        self._context = context
        self._poller = poller
        now = time.monotonic()
        self._last_recv = now  # the death timeout counts from startup until the first answer
        self._last_send = -math.inf
        self._last_hello = -math.inf
        self.descriptor = -1
        """The file descriptor of :attr:`socket` that the worker's poller watches."""
        self.socket = self._connect()
        self.send_hello()

    def _connect(self) -> zmq.Socket[Any]:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.linger = 0
        # Flow control is by credit, not by high-water marks: a full pipe must never block the
        # loop that sends heartbeats.
        sock.sndhwm = 0
        sock.rcvhwm = 0
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.address.startswith("ipc://"):
            sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
            sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
        if self.security is not None:
            self.security.configure(sock)
            self._monitor = HandshakeMonitor(sock, self.role)  # only failed handshakes: silent when healthy
        sock.connect(self.address)
        self._poller.register(sock, zmq.POLLIN)
        self.descriptor = sock.FD
        return sock

    def _report_refusal(self) -> None:
        """Log once why the broker refuses this peer's CURVE handshake, if it does."""
        refusal = self._monitor.failure() if self._monitor is not None else None
        if refusal is not None and refusal != self._refusal_logged:
            self._refusal_logged = refusal
            logger.error("%s: no service from the broker at %s: %s", self._who(), self.address, refusal)

    def _drop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None

    def send(self, command: int, header: Sequence[Any], payload: Sequence[Any] = ()) -> None:
        """Send one message (large payload frames without copying)."""
        protocol.send_frames(self.socket, protocol.encode(command, header, payload))
        self._last_send = time.monotonic()

    def send_hello(self) -> None:
        """Announce this peer; repeated by :meth:`tick` until the broker welcomes it."""
        self.send(HELLO, [self.role, self.info])
        self._last_hello = self._last_send

    def received(self, now: float) -> None:
        """Note that a message arrived from the broker (any message proves it is alive)."""
        self._last_recv = now

    def handle(self, message: Message) -> LinkEvent:
        """React to a control message (see :data:`CONTROL_COMMANDS`)."""
        command = message.command
        if command == WELCOME:
            epoch = message.header[0]
            if self.registered and epoch != self.epoch:
                logger.warning("%s: the broker restarted (epoch %s, was %s)", self._who(), epoch, self.epoch)
                return LinkEvent.FORGOTTEN
            if self.registered:
                return LinkEvent.NOTHING  # an answer to a HELLO that crossed the first WELCOME
            self.registered = True
            self.epoch = epoch
            limit = message.header[1].get("max_message_bytes")
            if isinstance(limit, int) and limit >= 1024:
                self.max_message_bytes = limit
                inline_limit.follow(limit)
            logger.info("%s: registered with the broker at %s (epoch %s)", self._who(), self.address, epoch)
            return LinkEvent.WELCOMED
        if command == HEARTBEAT:
            epoch = message.header[0]
            if self.registered and epoch and epoch != self.epoch:
                logger.warning("%s: heartbeat from a new broker epoch %s", self._who(), epoch)
                return LinkEvent.FORGOTTEN
            return LinkEvent.NOTHING
        if command == UNKNOWN_PEER:
            if self.registered:
                logger.warning("%s: the broker does not know this peer any more", self._who())
                return LinkEvent.FORGOTTEN
            self.send_hello()
            return LinkEvent.NOTHING
        if command == GOODBYE:
            logger.warning("%s: the broker is leaving (%s)", self._who(), message.header[0])
            return LinkEvent.FORGOTTEN if self.registered else LinkEvent.NOTHING
        if command == ERROR:
            code, text, refs = message.header
            logger.warning("%s: the broker refused a message: %s: %s %s", self._who(), code, text, refs[:5])
            return LinkEvent.NOTHING
        logger.debug("%s: ignoring unexpected %s", self._who(), message.name)
        return LinkEvent.NOTHING

    def tick(self, now: float) -> LinkEvent:
        """Send a due heartbeat or HELLO; report a silent or unreachable broker."""
        silence = now - self._last_recv
        if silence >= self.death_timeout_s:
            return LinkEvent.GAVE_UP
        if self.registered:
            # Messages waiting in the socket count as heard: the silence may be our own (a
            # long call on the main thread kept the loop from reading).
            if silence >= self.liveness_timeout_s and not _readable(self.socket):
                logger.warning("%s: nothing heard from the broker for %.1f s", self._who(), silence)
                return LinkEvent.FORGOTTEN
            self.heartbeat_if_due(now)
        elif now - self._last_hello >= self.heartbeat_interval_s:
            # An unanswered HELLO is repeated on a fresh connection, not queued behind the
            # first one: a broker coming up later then sees one HELLO instead of a backlog
            # of them, and a connection the broker's ROUTER refused (it still held this
            # identity for the previous connection) is replaced instead of staying mute.
            logger.debug("%s: no WELCOME yet; saying HELLO on a fresh connection", self._who())
            self._report_refusal()
            self.reconnect()
        return LinkEvent.NOTHING

    def heartbeat_if_due(self, now: float) -> None:
        """Send a HEARTBEAT if registered and nothing was sent for a heartbeat interval."""
        if self.registered and now - self._last_send >= self.heartbeat_interval_s:
            self.send(HEARTBEAT, [self.epoch])

    def deadline(self) -> float:
        """The monotonic time by which :meth:`tick` must be called again."""
        if self.registered:
            due = min(self._last_send + self.heartbeat_interval_s, self._last_recv + self.liveness_timeout_s)
        else:
            due = self._last_hello + self.heartbeat_interval_s
        return min(due, self._last_recv + self.death_timeout_s)

    def reconnect(self) -> None:
        """Drop the socket and everything queued in it, connect again and send HELLO."""
        self._poller.unregister(self.socket)
        self._drop_monitor()
        self.socket.close(linger=0)
        self.registered = False
        self.epoch = ""
        self.socket = self._connect()
        self.send_hello()

    def close(self, goodbye: str | None = None, linger_s: float = GOODBYE_LINGER_S) -> None:
        """Close the socket, first sending GOODBYE with ``goodbye`` as the reason if given.

        GOODBYE is only sent to a broker that welcomed this peer: nobody else would read it,
        and waiting ``linger_s`` for an unreachable broker would only delay the exit.
        """
        if self.socket.closed:
            return
        self._poller.unregister(self.socket)
        self._drop_monitor()
        linger_ms = 0
        if goodbye is not None and self.registered:
            try:
                self.send(GOODBYE, [goodbye])
                linger_ms = int(linger_s * 1000)
            except zmq.ZMQError as exc:
                logger.debug("%s: could not say goodbye: %s", self._who(), exc)
        self.socket.close(linger=linger_ms)

    def _who(self) -> str:
        return self.identity.decode("utf-8", "replace")


class SignalWakeup:
    """Turns termination signals into a callback plus a readable fd for a poller.

    A Python signal handler only runs between bytecodes, and a blocking ``zmq_poll`` is
    retried after it; the wake-up fd makes the poll itself return.  Main thread only.
    """

    def __init__(self, on_signal: Callable[[int], None], signals: Sequence[int], ignore: Sequence[int] = ()) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous: dict[int, Any] = {}
        for signum in signals:
            self._previous[signum] = signal.signal(signum, lambda received, _frame: on_signal(received))
        for signum in ignore:
            self._previous[signum] = signal.signal(signum, signal.SIG_IGN)

    @property
    def fd(self) -> int:
        """The fd that becomes readable when a signal arrives."""
        return self._reader.fileno()

    def drain(self) -> None:
        """Consume pending wake-up bytes."""
        try:
            while self._reader.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        """Restore the previous handlers and wake-up fd."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()


MAX_PREFETCH_PER_THREAD = 1024
"""Queued tasks per executor thread a worker accepts by default.  The broker starts by sending
``DEFAULT_PREFETCH_PER_THREAD`` and fills more only while the worker's pace shows they take
little time (see ``broker.peers.WorkerPeer``): tiny tasks need deep queues to keep a worker
busy across broker round trips."""


def default_credit(nthreads: int) -> int:
    """Task slots a worker grants by default: one running plus the largest prefetch, per thread."""
    return nthreads + nthreads * MAX_PREFETCH_PER_THREAD


HANDOVER_WAIT_S = 0.001
"""How long an executor thread waits for the socket lock to send its results itself before
leaving them to the main thread (which holds the lock while it handles messages)."""

INLINE_WATCH_INTERVAL_S = 0.1
"""How often the watch thread looks whether a call on the main thread has run this long."""

INLINE_SERVE_INTERVAL_S = 0.005
"""How often the watch thread does the loop's work while such a call goes on."""

_BaseSocket = zmq.backend.Socket
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` (this also resets its descriptor's edge)."""
    return bool(_BaseSocket.get(sock, _EVENTS) & _POLLIN)  # type: ignore[operator]  # an int for EVENTS


class _DescriptorPoller(zmq.Poller):
    """A poller that watches ZeroMQ sockets through their file descriptor only.

    Waiting on the descriptor never touches the socket itself, so another thread may use
    the socket (under the worker's lock) while the main thread waits.  The descriptor is
    edge-triggered: whoever uses the socket checks ``EVENTS`` afterwards (see Worker).
    """

    def register(self, socket: Any, flags: int = _POLLIN) -> None:
        """Watch ``socket`` (its descriptor, if it is a ZeroMQ socket) or a raw descriptor."""
        super().register(socket.FD if isinstance(socket, zmq.Socket) else socket, flags)

    def unregister(self, socket: Any) -> None:
        """Stop watching ``socket``; call it before the socket is closed."""
        super().unregister(socket.FD if isinstance(socket, zmq.Socket) else socket)


class Worker:
    """A worker's state and main loop; construct it and call :meth:`run` in the process's main thread.

    Threads and the lock::

        main thread:     [lock: tick, collect results, receive and handle, send DONE] poll fds
        executor thread: run task ... [lock: collect results, send DONE]  (else wake main)

    ``_io_lock`` guards the broker socket and every piece of worker state that handling a
    message or collecting results touches.  The main thread releases it only to wait on the
    socket's descriptor, the wake-up pipe and the signal fd, so a thread that finished a task
    while the main thread waits sends the DONE itself: the result does not wait for the main
    thread to wake up first.  A thread that cannot get the lock soon writes to the wake-up
    pipe instead, and the main thread sends the results at the end of its turn.
    """

    _context: zmq.Context[Any]
    _link: BrokerLink
    _executor: Executor
    _poller: zmq.Poller

    def __init__(
        self,
        address: str,
        *,
        identity: bytes,
        nthreads: int = 1,
        credit: int | None = None,
        name: str = "",
        pool: str = "",
        memory_limit: int = 0,
        running_slots: Any = None,
        death_timeout_s: float = 60.0,
        parent_pid: int | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        security: Security | None = None,
        data_address: str = "",
        direct_timeout_s: float = DIRECT_TIMEOUT_S,
    ) -> None:
        if nthreads < 1:
            raise UsageError(f"a worker needs at least one thread, got nthreads={nthreads}")
        if not identity:
            raise UsageError("a worker needs a non-empty identity")
        self.address = address
        self.identity = identity
        self.nthreads = nthreads
        self.credit = default_credit(nthreads) if credit is None else credit
        self.name = name or identity.decode("utf-8", "replace")
        self.pool = pool
        self.memory_limit = memory_limit
        self.death_timeout_s = death_timeout_s
        self.parent_pid = parent_pid
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.security = security
        # A data socket would carry values unencrypted past CURVE keys: none on such clusters.
        self.data_address = data_address if security is None else ""
        """Where to listen for clients' direct requests (see :mod:`zmqdask.direct`), or ""."""
        self.direct_timeout_s = direct_timeout_s
        """How long another worker's data socket may take to start answering a GET."""
        self._data_socket: zmq.Socket[Any] | None = None
        self._data_bound = ""
        self._slots = slots_view(running_slots) if running_slots is not None else None
        if self._slots is not None and len(self._slots) < slots_nbytes(nthreads):
            raise UsageError(
                f"running_slots has {len(self._slots)} bytes; {nthreads} threads need {slots_nbytes(nthreads)}"
            )
        self._functions = FunctionCache(self.name)
        self._store: dict[str, Any] = {}
        self._tasks: dict[str, Task] = {}
        """Tasks not yet reported: waiting for inputs, queued or running."""
        self._waiting_on: dict[str, list[Task]] = {}
        """Key being fetched -> tasks that need it."""
        self._local_waiting: dict[str, list[Task]] = {}
        """Key of a task here not finished yet -> tasks sent ahead that need its value."""
        self._fetches: dict[int, list[str]] = {}
        """FETCH request id -> keys asked for."""
        self._fetch_holders: dict[int, bytes] = {}
        """FETCH request id -> the worker holding the keys (for RELAY_FETCH)."""
        self._direct_deadlines: dict[int, tuple[float, str, int]] = {}
        """Request id of a GET sent to another worker's data socket -> (deadline, address,
        bytes asked for)."""
        self._peer_sockets: dict[str, zmq.Socket[Any]] = {}
        """Other workers' data sockets, by address (DEALERs, for FETCH_FROM)."""
        self._direct_fds: set[int] = set()
        """Descriptors of the data socket and the peer sockets, as the poller reports them."""
        self._direct_due = True
        """Read the data and peer sockets in the next turn (the poller saw one ready)."""
        self._direct_used = True
        """They were used since the last poll, which may have taken their descriptors' edge."""
        self._failed_peers: dict[str, float] = {}
        """Data sockets that failed this worker -> until when it uses the broker instead."""
        self._next_request = 1
        self._generation = 0
        self._done_entries: list[list[Any]] = []
        self._done_frames: list[Any] = []
        self._done_nbytes = 0
        self._stop_requested = False
        self._io_lock = threading.Lock()
        self._quick = QuickFunctions()
        self._inline: Task | None = None
        """A quick task this turn's COMPUTE left for the main thread to run itself."""
        self._inline_since: float | None = None
        """When the main thread started running a task itself (None when it is not)."""
        self._inline_watch: threading.Thread | None = None
        self._inline_watch_stop = threading.Event()
        self._broker_signalled = False
        """The last poll saw the broker socket's descriptor signal (a message likely waits)."""
        self._closed = False
        """Set under ``_io_lock`` once the worker said goodbye: executor threads send nothing."""
        self._malformed = 0
        self._parent_fd: int | None = None
        self._next_parent_check = 0.0
        self._handlers: dict[int, Callable[[Message], None]] = {
            COMPUTE: self._on_compute,
            STORE: self._on_store,
            GET: self._on_get,
            DATA: self._on_data,
            FETCH_FROM: self._on_fetch_from,
            DELETE: self._on_delete,
            CANCEL_TASKS: self._on_cancel_tasks,
            FORGET_FUNCTIONS: self._on_forget_functions,
            RUN: self._on_run,
            SETUP: self._on_setup,
        }
        self._runs = WorkerRuns(self.name, self._wake_main, lambda: self._link.max_message_bytes * 3 // 4)
        self._deferred: list[Message] = []
        """COMPUTE messages held back while a set-up runs (see :meth:`_on_setup`)."""
        self._deferring = False

    def hello_info(self) -> dict[str, Any]:
        """The ``info`` map of this worker's HELLO."""
        return {
            "nthreads": self.nthreads,
            "credit": self.credit,
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pool": self.pool,
            "memory_limit": self.memory_limit,
            "data_address": self._data_bound,
            "python": PYTHON_VERSION,
            "incarnation": self._generation,
        }

    def request_stop(self) -> None:
        """Ask the loop to say goodbye and return (safe to call from a signal handler)."""
        self._stop_requested = True

    def run(self) -> int:
        """Serve the broker until stopped; returns the exit code (``EXIT_*``)."""
        self._context = zmq.Context()
        # Executor threads wake the main thread through a pipe: no socket of theirs keeps the
        # context from terminating (which flushes GOODBYE) while a task still runs.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._executor = Executor(self.nthreads, self._wake_main, self._slots, hand_over=self._hand_over)
        global _worker_for_tasks
        _worker_for_tasks = self  # one worker per process: for secede_current_task()
        signals: SignalWakeup | None = None
        if threading.current_thread() is threading.main_thread():
            # A managed worker leaves Ctrl-C to its pool manager, which stops it in order.
            managed = self.parent_pid is not None
            signals = SignalWakeup(
                lambda _signum: self.request_stop(),
                [signal.SIGTERM] if managed else [signal.SIGTERM, signal.SIGINT],
                ignore=[signal.SIGINT] if managed else [],
            )
        code = EXIT_INTERNAL_ERROR
        try:
            self._poller = _DescriptorPoller()
            if self.data_address:
                bound = bind_data_socket(self._context, self.data_address, self.identity)
                if bound is not None:
                    self._data_socket, self._data_bound = bound
                    self._poller.register(self._data_socket, zmq.POLLIN)
                    self._direct_fds.add(self._data_socket.FD)
            self._link = BrokerLink(
                self._context,
                self._poller,
                self.address,
                self.identity,
                ROLE_WORKER,
                self.hello_info(),
                death_timeout_s=self.death_timeout_s,
                heartbeat_interval_s=self.heartbeat_interval_s,
                liveness_timeout_s=self.liveness_timeout_s,
                security=self.security,
            )
            self._poller.register(self._wake_r, zmq.POLLIN)
            if signals is not None:
                self._poller.register(signals.fd, zmq.POLLIN)
            self._parent_fd = self._parent_sentinel()
            if self._parent_fd is not None:
                self._poller.register(self._parent_fd, zmq.POLLIN)
            code = self._loop(signals)
        finally:
            self._teardown(code)
            if signals is not None:
                signals.close()
        return code

    # --- the loop ------------------------------------------------------------------------

    def _loop(self, signals: SignalWakeup | None) -> int:
        link, poller, lock, wake_r = self._link, self._poller, self._io_lock, self._wake_r
        while not self._stop_requested:
            now = time.monotonic()
            with lock:
                event = link.tick(now)
                if event is LinkEvent.GAVE_UP:
                    logger.error(
                        "worker %s: no broker answered at %s for %.1f s; exiting",
                        self.name,
                        self.address,
                        self.death_timeout_s,
                    )
                    return EXIT_BROKER_UNREACHABLE
                if event is LinkEvent.FORGOTTEN:
                    self._forget()
                    continue
                if self._parent_gone(now):
                    return self._leave("pool manager gone", EXIT_PARENT_GONE)
                if not self._exchange():
                    continue
                inline, self._inline = self._inline, None
                if inline is None:
                    self._send_results()
                    # The descriptor only signals edges, and any use of the socket (sending
                    # too) may consume one: poll only when nothing is waiting to be read.
                    if self._readable_any():
                        continue
            if inline is not None:
                # Outside the lock: the watch thread may need it to send heartbeats.
                self._run_inline(inline)
                continue
            timeout_s = link.deadline() - now
            if self._direct_deadlines:
                timeout_s = min(timeout_s, min(entry[0] for entry in self._direct_deadlines.values()) - now)
            if self.parent_pid is not None and self._parent_fd is None:
                timeout_s = min(timeout_s, PARENT_CHECK_INTERVAL_S)
            ready = dict(poller.poll(max(0, math.ceil(timeout_s * 1000))))
            self._broker_signalled = link.descriptor in ready
            if signals is not None and signals.fd in ready:
                signals.drain()
            if self._parent_fd is not None and self._parent_fd in ready:
                with lock:
                    return self._leave("pool manager gone", EXIT_PARENT_GONE)
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if self._direct_fds and not self._direct_fds.isdisjoint(ready):
                self._direct_due = True
        with lock:
            return self._leave("worker stopping", EXIT_OK)

    def secede(self) -> None:
        """The task on the calling executor thread waits for other tasks: a new thread takes
        its place, and the broker stops counting it against this worker's window and credit
        (else tasks waiting on tasks they cannot get sent here could fill both for good)."""
        key = self._executor.secede()
        if key is None:
            return
        with self._io_lock:
            if not self._closed:
                self._link.send(SECEDE, [[key]])

    def _run_inline(self, task: Task) -> None:
        """Run a quick task on this thread while the executor is idle, then send its DONE.

        The last running slot is the main thread's: it names the task for the pool manager
        even when the watch thread hands new tasks to the executor meanwhile.
        """
        if self._inline_watch is None:
            self._inline_watch = threading.Thread(target=self._watch_inline, name="zmqdask-inline-watch", daemon=True)
            self._inline_watch.start()
        slots = self._slots
        task.state = STATE_RUNNING
        if slots is not None:
            write_slot(slots, self.nthreads, task.key.encode("utf-8"))
        self._inline_since = time.monotonic()
        try:
            execute(task)
        finally:
            self._inline_since = None
            if slots is not None:
                clear_slot(slots, self.nthreads)
        with self._io_lock:
            if self._closed:
                return
            self._executor.add_finished(task)
            self._send_results()

    def _watch_inline(self) -> None:
        """Stand in for the main thread while a call it runs itself turns out to be long."""
        stop = self._inline_watch_stop
        while not stop.wait(INLINE_WATCH_INTERVAL_S):
            since = self._inline_since
            if since is None or time.monotonic() - since < INLINE_WATCH_INTERVAL_S:
                continue
            # The main thread is inside the task's code and touches nothing of the worker's
            # until it takes the lock again: under the lock, this thread does the loop's
            # turns meanwhile (heartbeats, GETs for other workers, new tasks for the idle
            # executor threads, cancellations).  It never waits on the socket itself, which
            # the main thread may use as soon as the call returns.
            while self._inline_since is not None and not stop.is_set():
                with self._io_lock:
                    if self._closed or self._inline_since is None:
                        break
                    try:
                        self._serve_turn()
                    except zmq.ZMQError as exc:
                        logger.debug("worker %s: serving during a long call failed: %s", self.name, exc)
                stop.wait(INLINE_SERVE_INTERVAL_S)

    def _serve_turn(self) -> None:
        """One non-blocking turn of the loop's work, for the watch thread (lock held)."""
        event = self._link.tick(time.monotonic())
        if event is LinkEvent.FORGOTTEN:
            self._forget()
            return
        if event is LinkEvent.GAVE_UP:
            return  # the main loop decides, once the call returns
        self._direct_due = True  # the main thread, running a call, polls nothing meanwhile
        if self._exchange():
            self._send_results()

    def _exchange(self) -> bool:
        """Collect finished tasks, then handle the broker's waiting messages (lock held).

        Finished results are taken first, so a GET or CANCEL_TASKS handled now already sees
        the values and states of tasks that have finished.  False if the broker turned out to
        have forgotten this worker (its state is dropped and it registers again).
        """
        self._collect()
        if self._drain_broker() is LinkEvent.FORGOTTEN:
            self._forget()
            return False
        if self._direct_due:
            # Only when the poller saw them ready (or they were used since): an idle socket
            # costs nothing per turn of the task loop.
            self._direct_due = False
            self._direct_used = True
            if self._data_socket is not None:
                self._drain_data(self._data_socket)
            if self._peer_sockets:
                self._drain_peers()
        if self._direct_deadlines:
            self._expire_direct(time.monotonic())
        return True

    def _readable_any(self) -> bool:
        """Whether a message waits in any socket (their descriptors only signal edges)."""
        if _readable(self._link.socket):
            return True
        if self._direct_used:
            self._direct_used = False
            if (self._data_socket is not None and _readable(self._data_socket)) or any(
                _readable(sock) for sock in self._peer_sockets.values()
            ):
                self._direct_due = True
                return True
        return False

    def _send_results(self) -> None:
        """Send DONE for every task finished so far, and RAN for every run (lock held)."""
        self._collect()
        self._flush_done()
        for run_id, code, detail, frames in self._runs.take_answers() if self._runs.answers_waiting else ():
            field = payload_field(frames)
            payload = frames if type(field) is not bytes else ()
            self._link.send(RAN, [run_id, self.identity, code, detail, field], payload)
        if self._deferring:
            if not self._runs.setups_running:
                self._admit_deferred()
            else:
                self._runs.report_long_setups(time.monotonic())

    def _wake_main(self) -> None:
        """Called by an executor thread: results wait for the main thread to collect them."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or the worker is exiting

    def _hand_over(self) -> bool:
        """Called by an executor thread with results: send them itself if the lock comes soon."""
        lock = self._io_lock
        if not lock.acquire(timeout=HANDOVER_WAIT_S):
            return False
        try:
            if self._closed:
                return True  # the worker left; nothing goes out any more
            self._send_results()
            # This send may have consumed the descriptor's edge for a message that arrived
            # meanwhile; the main thread, waiting on that edge, must be told.
            if _readable(self._link.socket):
                self._wake_main()
            return True
        except zmq.ZMQError as exc:
            logger.debug("worker %s: could not send results from an executor thread: %s", self.name, exc)
            return False
        finally:
            lock.release()

    def _drain_broker(self) -> LinkEvent:
        link = self._link
        sock = link.socket
        handlers = self._handlers
        recv = _BaseSocket.recv
        # Right after the socket's descriptor signalled, a message is most likely waiting: try
        # to receive at once.  Otherwise (back from running a task, say) ask first.
        signalled, self._broker_signalled = self._broker_signalled, False
        for turn in range(MAX_MESSAGES_PER_TURN):
            # After a message, asking whether another waits is cheaper than a receive that
            # fails (an exception), and the task it brought starts sooner.
            if (turn or not signalled) and not _readable(sock):
                break
            try:
                frame = recv(sock, _NOBLOCK, False)
            except zmq.Again:
                break
            frames = [frame]
            while frame.more:
                frame = recv(sock, _NOBLOCK, False)
                frames.append(frame)
            link.received(time.monotonic())
            try:
                message = protocol.decode(frames)
            except ProtocolError as exc:
                self._malformed += 1
                level = logging.WARNING if self._malformed == 1 else logging.DEBUG
                logger.log(level, "worker %s: dropped malformed message #%d: %s", self.name, self._malformed, exc)
                continue
            handler = handlers.get(message.command)
            if handler is None:
                if link.handle(message) is LinkEvent.FORGOTTEN:
                    return LinkEvent.FORGOTTEN
                continue
            try:
                handler(message)
            except Exception:  # one bad message must not take the worker down
                logger.exception("worker %s: failed to handle %s", self.name, message.name)
        return LinkEvent.NOTHING

    def _direct_messages(
        self, sock: zmq.Socket[Any], commands: frozenset[int], routed: bool
    ) -> Iterator[tuple[bytes, Message]]:
        """The waiting messages of a data socket (a ROUTER when ``routed``: with the
        sender's identity) whose command is one of ``commands``; others are dropped."""
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = protocol.decode(frames[1:] if routed else frames)
                if message.command not in commands:
                    raise ProtocolError(f"{message.name} is not taken on a data socket")
            except ProtocolError as exc:
                self._malformed += 1
                level = logging.WARNING if self._malformed == 1 else logging.DEBUG
                logger.log(level, "worker %s: dropped a malformed message on a data socket: %s", self.name, exc)
                continue
            yield (frames[0].bytes if routed else b""), message

    def _drain_data(self, sock: zmq.Socket[Any]) -> None:
        """Serve direct requests (lock held): GET is answered from the values held here;
        STORE is taken as from the broker, which the DONE confirming it goes to."""
        for sender, message in self._direct_messages(sock, _SERVED_DIRECTLY, routed=True):
            if message.command == STORE:
                self._on_store(message, direct=True)
                continue
            request_id, keys = message.header
            entries, payload, missing = self._values_for(keys, limit=None)
            if not send_to(sock, sender, protocol.encode(DATA, [request_id, entries, missing], payload)):
                logger.debug("worker %s: a peer cannot take a direct answer now; it will ask the broker", self.name)

    def _on_fetch_from(self, message: Message) -> None:
        request_id, address, keys, nbytes = message.header
        if request_id not in self._fetches:
            return  # answered or forgotten meanwhile
        if self._failed_peers.get(address, 0.0) > time.monotonic() or not reachable(address):
            self._relay_fetch(request_id, keys)
            return
        sock = self._peer_sockets.pop(address, None)
        try:
            if sock is None:
                self._close_idle_peers()
                sock = connect_data_socket(self._context.socket(zmq.DEALER), address)
                self._poller.register(sock, zmq.POLLIN)
                self._direct_fds.add(sock.FD)
            self._peer_sockets[address] = sock  # now the most recently used
            sock.send_multipart(protocol.encode(GET, [request_id, keys]), zmq.NOBLOCK)
            self._direct_used = True
        except zmq.ZMQError as exc:
            logger.warning("worker %s: cannot reach %s (%s); using the broker", self.name, address, exc)
            self._give_up_peer(address)
            self._relay_fetch(request_id, keys)
            return
        # The holder answers one request after another: the bytes asked of it before count.
        queued = sum(entry[2] for entry in self._direct_deadlines.values() if entry[1] == address)
        deadline = time.monotonic() + transfer_deadline_s(queued + nbytes, self.direct_timeout_s)
        self._direct_deadlines[request_id] = (deadline, address, nbytes)

    def _drain_peers(self) -> None:
        """Take other workers' DATA answering direct GETs (lock held)."""
        for sock in list(self._peer_sockets.values()):
            for _, message in self._direct_messages(sock, _ANSWERS, routed=False):
                # An answer that comes after its request was relayed is taken all the same
                # if the relayed one has not come yet (_on_data ignores the later of the two).
                request_id, entries, _ = message.header
                self._direct_deadlines.pop(request_id, None)
                keys = self._fetches.get(request_id)
                if keys is None:
                    continue
                returned = {entry[0] for entry in entries}
                absent = [key for key in keys if key not in returned]
                holder = self._fetch_holders.get(request_id)
                if absent and holder is not None:
                    # The holder does not have them (any more): the broker asks it again, and
                    # so learns where they are not, then finds them or has them recomputed.
                    self._fetches[request_id] = [key for key in keys if key in returned]
                    again = self._new_request_id()
                    self._fetches[again] = absent
                    self._fetch_holders[again] = holder
                    self._relay_fetch(again, absent)
                self._on_data(message)

    def _expire_direct(self, now: float) -> None:
        expired = [rid for rid, entry in self._direct_deadlines.items() if entry[0] <= now]
        for request_id in expired:
            _, address, _ = self._direct_deadlines.pop(request_id)
            if self._failed_peers.get(address, 0.0) <= now:
                logger.warning(
                    "worker %s: no answer from the data socket at %s; using the broker for it for %d s",
                    self.name,
                    address,
                    FAILED_COOLDOWN_S,
                )
                self._give_up_peer(address)
            keys = self._fetches.get(request_id)
            if keys is not None:
                self._relay_fetch(request_id, keys)

    def _give_up_peer(self, address: str) -> None:
        self._failed_peers[address] = time.monotonic() + FAILED_COOLDOWN_S
        self._close_peer(address)

    def _close_peer(self, address: str) -> None:
        sock = self._peer_sockets.pop(address, None)
        if sock is not None:
            self._direct_fds.discard(sock.FD)
            self._poller.unregister(sock)
            sock.close(linger=0)

    def _close_idle_peers(self) -> None:
        """Keep fewer than MAX_PEER_SOCKETS connections to other workers' data sockets:
        close the least recently used that no request waits on (workers that died leave
        theirs behind)."""
        excess = len(self._peer_sockets) + 1 - MAX_PEER_SOCKETS
        if excess <= 0:
            return
        busy = {entry[1] for entry in self._direct_deadlines.values()}
        for address in [a for a in self._peer_sockets if a not in busy][:excess]:
            self._close_peer(address)

    def _relay_fetch(self, request_id: int, keys: list[str]) -> None:
        holder = self._fetch_holders.get(request_id)
        if holder is None:
            return
        self._link.send(RELAY_FETCH, [request_id, holder, keys])

    def _forget(self) -> None:
        """The broker forgot this worker: drop all state and register again."""
        logger.warning(
            "worker %s: dropping %d values and %d tasks and registering again",
            self.name,
            len(self._store),
            len(self._tasks),
        )
        # The broker hears which tasks were running when it let go of this worker: the others
        # it had blamed for the worker's silence are not to blame (see BrokerState._on_hello).
        running = [key for key, task in self._tasks.items() if task.state == STATE_RUNNING]
        if self._inline is not None:
            running.append(self._inline.key)
        # Tasks still running finish later with the old generation and are discarded.
        self._generation += 1
        self._link.info["incarnation"] = self._generation
        self._link.info["running"] = running
        self._runs.forget()
        self._deferred.clear()  # tasks of the old registration (the set-ups go on, unanswered)
        self._inline = None
        for task in self._tasks.values():
            self._executor.cancel(task)
        self._tasks.clear()
        self._waiting_on.clear()
        self._local_waiting.clear()
        self._fetches.clear()
        self._fetch_holders.clear()
        self._direct_deadlines.clear()
        self._store.clear()
        self._done_entries.clear()
        self._done_frames.clear()
        self._done_nbytes = 0
        self._link.reconnect()

    def _leave(self, reason: str, code: int) -> int:
        logger.info("worker %s: leaving (%s)", self.name, reason)
        for task in self._tasks.values():
            self._executor.cancel(task)
        # Results already computed go out first: a pushed value still reaches its client.
        self._send_results()
        self._closed = True
        self._link.close(goodbye=reason)
        return code

    def _teardown(self, code: int) -> None:
        self._inline_watch_stop.set()
        with self._io_lock:
            self._closed = True
            if hasattr(self, "_link"):
                self._link.close()
            if self._data_socket is not None:
                self._data_socket.close(linger=0)
                self._data_socket = None
            for sock in self._peer_sockets.values():
                sock.close(linger=0)
            self._peer_sockets.clear()
        self._context.term()  # bounded by the GOODBYE linger
        stopped = self._executor.stop(EXECUTOR_STOP_TIMEOUT_S)
        if stopped:
            os.close(self._wake_r)
            os.close(self._wake_w)
        else:
            # A thread still running may write to the pipe when it finishes: leave it open.
            logger.info("worker %s: a task is still running at exit (code %d)", self.name, code)

    def _parent_sentinel(self) -> int | None:
        if self.parent_pid is None:
            return None
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid == self.parent_pid and isinstance(parent.sentinel, int):
            return parent.sentinel
        return None

    def _parent_gone(self, now: float) -> bool:
        # Used only when no parent sentinel is available (the worker was not started by
        # multiprocessing): probe the pid at a slow pace.
        if self.parent_pid is None or self._parent_fd is not None or now < self._next_parent_check:
            return False
        self._next_parent_check = now + PARENT_CHECK_INTERVAL_S
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # --- results ---------------------------------------------------------------------------

    def _collect(self) -> None:
        store, tasks, generation = self._store, self._tasks, self._generation
        local_waiting = self._local_waiting
        for task in self._executor.drain():
            if task.generation != generation:
                continue
            key = task.key
            if tasks.get(key) is task:
                del tasks[key]
            if task.seconds:
                self._quick.record(task.fn, task.seconds)
            if task.code == FINISHED:
                store[key] = task.value
            out = task.out_frames
            field = payload_field(out)
            self._done_entries.append([key, task.code, task.detail, field])
            if out and type(field) is not bytes:
                self._done_frames.extend(out)
                # Many pushed values in one turn would make one huge message: send early.
                self._done_nbytes += serialize.frames_nbytes(out)
                if self._done_nbytes >= min(DONE_FLUSH_BYTES, self._link.max_message_bytes // 4):
                    self._flush_done()
            if local_waiting:
                # Tasks sent ahead of this one learn its outcome after its own DONE entry.
                waiters = local_waiting.pop(key, None)
                if waiters is not None:
                    self._feed_local_waiters(key, task, waiters)

    def _feed_local_waiters(self, key: str, finished: Task, waiters: list[Task]) -> None:
        """Tasks sent ahead of their input ``key``, computed here: run them or give them back."""
        value = finished.value if finished.code == FINISHED else _ABSENT
        for task in waiters:
            if task.state != STATE_WAITING:
                continue  # cancelled meanwhile
            task.pending.discard(key)
            if value is _ABSENT:
                # The input failed or was cancelled: the broker decides what happens next (it
                # has failed or requeued the input already, or will on the entry just added).
                task.state = STATE_CANCELLED
                if self._tasks.get(task.key) is task:
                    del self._tasks[task.key]
                self._done(task.key, MISSING_DEPS, [key])
                continue
            if task.deps is None:
                task.deps = {}
            task.deps[key] = value
            if task.pending:
                continue
            if task.missing:  # a fetched input could not be had
                del self._tasks[task.key]
                self._done(task.key, MISSING_DEPS, task.missing)
            else:
                self._executor.submit(task)

    def _done(self, key: str, code: int, detail: Any, frames: Sequence[Any] = ()) -> None:
        field = payload_field(frames)
        self._done_entries.append([key, code, detail, field])
        if frames and type(field) is not bytes:
            self._done_frames.extend(frames)

    def _done_error(self, key: str, error: BaseException) -> None:
        detail, frames = error_detail(error, key)
        self._done(key, ERRED, detail, frames)

    def _flush_done(self) -> None:
        if not self._done_entries:
            return
        entries, frames = self._done_entries, self._done_frames
        self._done_entries, self._done_frames, self._done_nbytes = [], [], 0
        self._link.send(DONE, [entries], frames)

    # --- handlers --------------------------------------------------------------------------

    def _on_compute(self, message: Message) -> None:
        functions, entries = message.header
        payload = message.payload
        for index, fn_hash in enumerate(functions):
            self._functions.add(fn_hash, payload[index])
        position = len(functions)
        fetch_by_holder: dict[bytes, list[str]] = {}
        for key, fn_hash, deps, flags, nframes in entries:
            if type(nframes) is bytes:
                frames = [nframes]  # inline payload
            else:
                frames = payload[position : position + nframes]
                position += nframes
            if key in self._tasks:
                logger.warning("worker %s: task %r is already here; ignoring the copy", self.name, key)
                continue
            fn, fn_error = self._functions.lookup(fn_hash)
            task = Task(key, fn, frames, flags, fn_error=fn_error, generation=self._generation)
            if deps:
                self._admit_with_inputs(task, deps, fetch_by_holder)
                continue
            tasks = self._tasks
            tasks[key] = task
            if len(entries) == 1 and len(tasks) == 1 and self._inline is None and self._quick.is_quick(fn):
                # The only task here, of a function that has always been quick: this thread
                # runs it once the turn's messages are handled (no hand-over, no wake-up).
                self._inline = task
            else:
                self._executor.submit(task)
        for holder, keys in fetch_by_holder.items():
            request_id = self._new_request_id()
            self._fetches[request_id] = keys
            self._fetch_holders[request_id] = holder
            self._link.send(FETCH, [request_id, holder, keys])

    def _new_request_id(self) -> int:
        request_id = self._next_request
        self._next_request = request_id + 1 if request_id < 1 << 31 else 1
        return request_id

    def _admit_with_inputs(self, task: Task, deps: list[list[Any]], fetch_by_holder: dict[bytes, list[str]]) -> None:
        store = self._store
        values: dict[str, Any] = {}
        missing: list[str] = []
        remote: list[tuple[str, bytes]] = []
        local: list[str] = []
        for dep_key, holder in deps:
            value = store.get(dep_key, _ABSENT)
            if value is not _ABSENT:
                values[dep_key] = value
            elif holder is None or holder == self.identity:
                if dep_key in self._tasks:
                    # Sent ahead of an input that is being computed here: wait for it.
                    local.append(dep_key)
                else:
                    missing.append(dep_key)
            else:
                remote.append((dep_key, holder))
        if missing:
            self._done(task.key, MISSING_DEPS, missing)
            return
        task.deps = values
        self._tasks[task.key] = task
        for dep_key in local:
            if dep_key not in task.pending:
                task.pending.add(dep_key)
                self._local_waiting.setdefault(dep_key, []).append(task)
        if not remote:
            if not local:
                self._executor.submit(task)
            return
        for dep_key, holder in remote:
            if dep_key in task.pending:
                continue
            task.pending.add(dep_key)
            waiters = self._waiting_on.get(dep_key)
            if waiters is None:
                # The first task needing this key asks for it; later ones wait for the same DATA.
                self._waiting_on[dep_key] = [task]
                fetch_by_holder.setdefault(holder, []).append(dep_key)
            else:
                waiters.append(task)

    def _on_data(self, message: Message) -> None:
        request_id, entries, _missing = message.header
        keys = self._fetches.pop(request_id, None)
        self._fetch_holders.pop(request_id, None)
        if keys is None:
            logger.debug("worker %s: DATA for unknown request %d", self.name, request_id)
            return
        # Fetched values are handed to the tasks that asked for them and not kept in the
        # store: the broker does not count this worker as a holder of copies, so nothing
        # would ever DELETE them.
        fetched: dict[str, Any] = {}
        position = 0
        for key, nframes in entries:
            frames, position = entry_payload(nframes, message.payload, position)
            try:
                fetched[key] = serialize.loads(frames)
            except Exception as exc:
                logger.warning("worker %s: cannot load the fetched value of %r: %s", self.name, key, exc)
        for key in keys:
            waiters = self._waiting_on.pop(key, None)
            if not waiters:
                continue
            value = fetched.get(key, _ABSENT)
            for task in waiters:
                if task.state != STATE_WAITING:
                    continue  # cancelled while its inputs travelled
                task.pending.discard(key)
                if value is _ABSENT:
                    task.missing.append(key)
                else:
                    if task.deps is None:
                        task.deps = {}
                    task.deps[key] = value
                if task.pending:
                    continue
                if task.missing:
                    del self._tasks[task.key]
                    self._done(task.key, MISSING_DEPS, task.missing)
                else:
                    self._executor.submit(task)

    def _on_store(self, message: Message, direct: bool = False) -> None:
        position = 0
        for key, nframes in message.header[0]:
            frames, position = entry_payload(nframes, message.payload, position)
            if direct and key in self._tasks:
                # A task's key, sent by a peer: its DONE would pass for the task's result.
                logger.warning("worker %s: refused a direct STORE of %r, the key of a task here", self.name, key)
                continue
            try:
                value = serialize.loads(frames)
            except Exception as exc:
                error = SerializationError(f"cannot load the value scattered as {key!r}: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self._done_error(key, error)
                continue
            self._store[key] = value
            self._done(key, FINISHED, measure(value))

    def _on_get(self, message: Message) -> None:
        request_id, keys = message.header
        entries, frames, missing = self._values_for(keys, limit=self._link.max_message_bytes * 3 // 4)
        self._link.send(DATA, [request_id, entries, missing], frames)

    def _values_for(self, keys: list[str], limit: int | None) -> tuple[list[list[Any]], list[Any], list[str]]:
        """DATA entries, payload frames and missing keys answering a GET of ``keys``.

        A value that cannot be serialized, or whose frames exceed ``limit`` bytes, fails its
        key (its ERRED notice is sent first) and is listed as missing.
        """
        store = self._store
        entries: list[list[Any]] = []
        frames: list[Any] = []
        missing: list[str] = []
        for key in keys:
            value = store.get(key, _ABSENT)
            if value is _ABSENT:
                missing.append(key)
                continue
            try:
                try:
                    value_frames = serialize.dumps(value)
                except Exception:
                    if type(value) is not BatchResult:
                        raise
                    # Only the calls whose values cannot travel fail, not their batch.
                    value = store[key] = without_unpicklable(value)
                    value_frames = serialize.dumps(value)
            except Exception as exc:
                del store[key]
                type_name = serialize.type_name(value)
                error = SerializationError(
                    f"the value of {key!r} (a {type_name}) cannot be serialized: {exc}", type_name
                )
                self._done_error(key, error)
                missing.append(key)
                continue
            nbytes = serialize.frames_nbytes(value_frames)
            if limit is not None and nbytes > limit:
                # It could never reach anyone: fail the key rather than let the request hang.
                del store[key]
                self._done_error(
                    key,
                    UsageError(
                        f"the value of {key!r} ({nbytes} bytes) is too large to travel: it exceeds the broker's "
                        f"message size limit ({self._link.max_message_bytes} bytes); start the broker with a larger "
                        "--max-message-bytes, or reduce the value on the cluster before gathering"
                    ),
                )
                missing.append(key)
                continue
            field = payload_field(value_frames)
            entries.append([key, field])
            if type(field) is not bytes:
                frames.extend(value_frames)
        # The ERRED notice of an unserializable value must reach the broker before the DATA
        # listing it as missing, so the broker fails the key instead of recomputing it.
        self._flush_done()
        return entries, frames, missing

    def _on_delete(self, message: Message) -> None:
        store = self._store
        for key in message.header[0]:
            store.pop(key, None)

    def _on_forget_functions(self, message: Message) -> None:
        # The broker sends this only once no task it gave us runs these functions; it sends a
        # function again with the next task that needs it.
        for fn in self._functions.forget(message.header[0]):
            self._quick.forget(fn)

    def _on_run(self, message: Message) -> None:
        run_id, _, field = message.header
        frames, _ = entry_payload(field, message.payload, 0)
        self._runs.start(run_id, frames)

    def _on_setup(self, message: Message) -> None:
        run_id, _, field = message.header
        frames, _ = entry_payload(field, message.payload, 0)
        self._runs.start(run_id, frames, setup=True)
        # The tasks that come after it (a newly registered worker's first ones, say) wait
        # until it is done; everything else goes on.
        self._handlers[COMPUTE] = self._defer_compute
        self._deferring = True

    def _defer_compute(self, message: Message) -> None:
        self._deferred.append(message)

    def _admit_deferred(self) -> None:
        """The set-ups are done: handle the tasks held back meanwhile, in order (lock held)."""
        self._handlers[COMPUTE] = self._on_compute
        self._deferring = False
        deferred, self._deferred = self._deferred, []
        for message in deferred:
            try:
                self._on_compute(message)
            except Exception:  # one bad message must not take the worker down
                logger.exception("worker %s: failed to handle %s", self.name, message.name)

    def _on_cancel_tasks(self, message: Message) -> None:
        held = {entry[0] for deferred in self._deferred for entry in deferred.header[1]} if self._deferred else ()
        withdrawn = set()
        for key in message.header[0]:
            task = self._tasks.get(key)
            # A running task cannot be interrupted: it finishes and is reported normally.
            if task is not None and self._executor.cancel(task):
                del self._tasks[key]
                self._done(key, CANCELLED, "cancelled")
            elif key in held:
                # Held back behind a set-up: the broker gives it to another worker.
                withdrawn.add(key)
                self._done(key, CANCELLED, "cancelled")
        if withdrawn:
            self._deferred = [_without_tasks(deferred, withdrawn) for deferred in self._deferred]


def _without_tasks(message: Message, keys: set[str]) -> Message:
    """A COMPUTE message without the tasks named in ``keys`` (its functions all kept)."""
    functions, entries = message.header
    payload = message.payload
    kept_entries: list[list[Any]] = []
    kept_frames: list[Any] = list(payload[: len(functions)])
    position = len(functions)
    for entry in entries:
        frames, position = entry_payload(entry[4], payload, position)
        if entry[0] in keys:
            continue
        kept_entries.append(entry)
        if type(entry[4]) is not bytes:
            kept_frames.extend(frames)
    return Message(message.command, [functions, kept_entries], kept_frames)


_task_client_address: str | None = None
_worker_for_tasks: Worker | None = None


def secede_current_task() -> None:
    """The calling task is about to wait for other tasks: free its thread's place, and its
    place in the broker's count of this worker's tasks (see :meth:`Worker.secede`)."""
    worker = _worker_for_tasks
    if worker is not None:
        worker.secede()


def task_client_address() -> str | None:
    """The broker address for ``get_client()`` inside a task of this worker process.

    None outside a worker, and on a cluster with CURVE keys: a worker's keys are not a
    client's, so a task there must connect with ``Client(address, security=...)`` itself.
    """
    return _task_client_address


def run_worker(
    address: str,
    *,
    identity: bytes,
    nthreads: int,
    credit: int | None,
    name: str,
    pool: str,
    memory_limit: int,
    running_slots: Any,
    death_timeout_s: float,
    parent_pid: int | None,
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
    liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
    security: Security | None = None,
    data_address: str = "",
    direct_timeout_s: float = DIRECT_TIMEOUT_S,
) -> NoReturn:
    """Process entry point: run one worker, then end the process with its exit code.

    It never returns: the process exits at once when the worker stops, without waiting for
    executor threads still running a task.  Call it as a process's target (the pool manager
    does), never in a process that has other work to do.
    """
    global _task_client_address
    code = EXIT_INTERNAL_ERROR
    _task_client_address = address if security is None else None
    try:
        worker = Worker(
            address,
            identity=identity,
            nthreads=nthreads,
            credit=credit,
            name=name,
            pool=pool,
            memory_limit=memory_limit,
            running_slots=running_slots,
            death_timeout_s=death_timeout_s,
            parent_pid=parent_pid,
            heartbeat_interval_s=heartbeat_interval_s,
            liveness_timeout_s=liveness_timeout_s,
            security=security,
            data_address=data_address,
            direct_timeout_s=direct_timeout_s,
        )
        code = worker.run()
    except BaseException:
        logger.exception("worker %s failed", name or identity)
    finally:
        client_module = sys.modules.get("zmqdask.client")
        if client_module is not None:
            client_module.close_task_clients()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zmqdask.worker``: the same as ``zmqdask-worker`` (:func:`zmqdask.pool.main`)."""
    from zmqdask.pool import main as pool_main

    return pool_main(argv)


if __name__ == "__main__":
    sys.exit(main())
