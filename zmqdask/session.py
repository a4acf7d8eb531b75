"""The client's session with the broker: socket, batching, liveness, and result bookkeeping.

Frame flow (client side)::

    submit/map/submit_graph ──▶ _ops (ordered, under _lock) ──flush on next loop tick──▶ DEALER ─▶ broker
    DEALER ◀── REPORT / WELCOME / HEARTBEAT / INFO_REPLY ◀── broker
       └─ _drain() on the loop: updates FutureStates, wakes waiters, runs done callbacks

Everything here runs on the session's event loop thread, except the few methods that say
otherwise (``_schedule_flush``, ``_retain``, ``_release``), which take ``_lock`` because
synchronous callers submit from their own threads.  :class:`zmqdask.client.Client` builds
the user-facing API on top.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import zmq

from zmqdask import protocol as proto
from zmqdask.batches import BATCH_TARGET_SECONDS, BatchResult, ElementError, succeeded_type
from zmqdask.config import (
    FUNCTION_BYTES_KEPT_MAX,
    FUNCTIONS_KEPT_MAX,
    HEARTBEAT_INTERVAL_S,
    IPC_BUFFER_BYTES,
    LIVENESS_TIMEOUT_S,
    MAX_KILLED_ATTEMPTS,
    MAX_MESSAGE_BYTES,
    PYTHON_VERSION,
    optional_seconds,
    seconds,
)
from zmqdask.direct import DirectFetcher
from zmqdask.errors import (
    BrokerLostError,
    ClosedClientError,
    ConnectTimeoutError,
    FutureCancelledError,
    KilledWorker,
    LostDataError,
    ProtocolError,
    SerializationError,
    SyncInAsyncError,
    UsageError,
)
from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError
from zmqdask.future import (
    CANCELLED,
    ERROR,
    FINISHED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    LOST,
    PENDING,
    TERMINAL_FAILURES,
    DoneAndNotDoneFutures,
    Future,
    FutureState,
    failure_of,
)
from zmqdask.runs import Answer, RunWaiter
from zmqdask.security import HandshakeMonitor, Security
from zmqdask.serialize import dumps, loads, loads_error, traceback_from_text
from zmqdask.sync import LoopThread

logger = logging.getLogger(__name__)

_NO_FRAMES: list[Any] = []
_BaseSocket = zmq.backend.Socket
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

_MAX_TASKS_PER_MESSAGE = 1000
_MAX_KEYS_PER_RELEASE = 1000
_DRAIN_BATCH = 256

RELEASE_DELAY_S = 0.02
"""How long a RELEASE waits for companions: releases are not on anybody's critical path, and
one message for many keys spares the broker and workers a wake-up per dropped future."""
RELEASE_BATCH_KEYS = 10_000
"""Pending releases that are sent at once, without waiting for :data:`RELEASE_DELAY_S`."""
_BROKER_ERRORS: dict[str, type[Exception]] = {
    "KilledWorker": KilledWorker,
    "LostDataError": LostDataError,
    "FutureCancelledError": FutureCancelledError,
    "ProtocolError": ProtocolError,
}


_BATCH_FAILED_NOTE = (
    "The call ran in a map batch, which failed as a whole: client.retry(futures) runs each "
    "failed call alone, and map(..., batch_size=1) gives every call a task of its own."
)


class ClientStatus(str, enum.Enum):
    """Lifecycle of a client; each compares equal to its name (``client.status == "running"``)."""

    NEW = "new"
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


class BrokerSession:
    """One registered connection to a broker and the state of every key it knows."""

    def __init__(
        self, address: str | None, timeout: float, reconnect_timeout: float, name: str, security: Security | None = None
    ) -> None:
        self.address = address
        self._connect_address: str | None = None
        """Where the socket connects when not :attr:`address` (a local cluster's Unix socket)."""
        self.security = security
        """CURVE keys to connect with, or None for a broker without keys."""
        self._handshake_monitor: HandshakeMonitor | None = None
        self.timeout = seconds(timeout, "timeout")
        self.reconnect_timeout = seconds(reconnect_timeout, "reconnect_timeout")
        self.name = name
        self.status = ClientStatus.NEW
        self.asynchronous = False
        self.malformed = 0
        self.max_message_bytes = MAX_MESSAGE_BYTES
        """The broker's limit on one message, learnt at registration."""
        self._identity = os.urandom(16)
        self._lock = threading.RLock()
        self._futures: dict[str, FutureState] = {}
        self._ops: list[tuple[Any, ...]] = []
        # The cancel clock's count at each key cancelled here whose CANCEL the broker has not
        # answered yet, oldest first: a CANCELLED report for a state born at or after the
        # first is about that key as it was before it was submitted again (see _on_report).
        self._cancels_unanswered: collections.deque[int] = collections.deque()
        # States passed to fire_and_forget, by key, until they finish.
        self._kept: dict[str, FutureState] = {}
        self._flush_scheduled = False
        self._flush_timer: asyncio.TimerHandle | None = None
        # Keys whose last Future was dropped, not yet told to the broker (see _release).
        self._releases: dict[str, None] = {}
        self._seconds_per_call: dict[bytes, float] = {}
        """Measured run time of one call of a function in a map batch, by function hash."""
        self._bytes_per_call: dict[bytes, float] = {}
        """Measured size of one call's result in a map batch, by function hash."""
        self._releases_due = False
        self._release_timer_armed = False
        # Functions the broker has from us, by hash, with their sizes, oldest first.
        self._functions_sent: dict[bytes, int] = {}
        self._functions_sent_bytes = 0
        self.functions_kept_max = FUNCTIONS_KEPT_MAX
        """How many sent functions this client names by hash alone (see FUNCTIONS_KEPT_MAX)."""
        self.function_bytes_kept_max = FUNCTION_BYTES_KEPT_MAX
        """The same bound on their total size (see FUNCTION_BYTES_KEPT_MAX)."""
        self._epoch = ""
        self._welcome: asyncio.Future[None] | None = None
        self._info_requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._runs: dict[int, RunWaiter] = {}
        self._session_token = uuid.uuid4().hex
        self._graph_id = 0
        """Non-zero while ``submit_graph`` queues one graph's tasks (under ``_lock``)."""
        self._graph_start = 0
        """Where in ``_ops`` that graph's operations begin."""
        self._setups: dict[str, list[Any]] = {}
        """Worker set-ups sent (by name, as pickled calls): sent again to a new broker."""
        self._restarts: dict[int, asyncio.Future[list[bytes]]] = {}
        self._unanswered: dict[int, list[Any]] = {}
        self._unanswered_after_tasks: dict[int, list[Any]] = {}
        self._abandoned: dict[int, Callable[[dict[str, Any]], None]] = {}
        """Waiting requests given up here (cancelled): what to undo when their answer comes
        after all (a lease granted, a queue's items handed over)."""
        """Requests (DATASETS) sent again after re-registering only once the tasks are."""
        """INFO, WHO_HAS and RESTART requests not answered yet, sent again after re-registering."""
        """``Client.restart`` calls waiting for the broker's RESTARTING, by request id."""
        """``Client.run`` calls waiting for their answers, by request id."""
        self._goodbye_answered: asyncio.Future[None] | None = None
        self._next_request = 0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._lost_since: float | None = None
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._context: zmq.Context[Any] | None = None
        self._socket: zmq.Socket[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: LoopThread | None = None
        self._loop_thread_id: int | None = None
        self._direct: DirectFetcher | None = None
        """Fetches large values from the workers holding them (made at the first ELSEWHERE)."""
        self._callback_thread: concurrent.futures.ThreadPoolExecutor | None = None
        """Runs the callbacks given to ``Future.add_done_callback``, one at a time, in order."""
        self._direct_fetches: set[asyncio.Task[None]] = set()
        self._placing: dict[str, list[Any]] = {}
        """Frames of scattered values sent (or about to be sent) to a worker directly, kept
        until the broker confirms them: sent again through the broker if that fails."""
        self._placing_sent: dict[str, tuple[str, asyncio.TimerHandle]] = {}
        """Key sent to a worker's data socket -> (that socket's address, the timer that falls
        back to the broker if the broker does not answer for it in time)."""
        self._place_ops: list[tuple[str, list[Any]]] = []
        """Large task arguments to scatter with PLACE at the next flush, ahead of the tasks
        naming them (see Client._place_argument)."""

    def _check_open(self) -> None:
        if self.status in (ClientStatus.CLOSED, ClientStatus.CLOSING):
            raise ClosedClientError("this client is closed; create a new Client to go on")
        if self.status == ClientStatus.NEW:
            raise UsageError(
                "this asynchronous client is not started yet; use `client = await Client(asynchronous=True)`"
            )

    def _connect_socket(self) -> None:
        assert self._context is not None and self._loop is not None
        assert self.address is not None
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if (self._connect_address or "").startswith("ipc://"):
            sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
            sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
        if self.security is not None:
            self.security.configure(sock)
        if self.status == ClientStatus.CONNECTING:
            # Attached before connecting, so that the first refused handshake is seen too.
            self._handshake_monitor = HandshakeMonitor(sock, keyed=self.security is not None)
        address = self._connect_address or self.address
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            # Closed here: a socket left open would keep the context (and the process) alive.
            if self._handshake_monitor is not None:
                self._handshake_monitor.close()
                self._handshake_monitor = None
            sock.close(linger=0)
            raise UsageError(
                f"cannot connect to {address!r}: {exc} (expected tcp://HOST:PORT, or ipc://PATH)"
            ) from None
        self._socket = sock
        # The zmq FD only signals edges; _drain() reads until EVENTS says none waits.
        self._loop.add_reader(sock.FD, self._drain)

    def _close_socket(self, linger_ms: int = 0) -> None:
        sock = self._socket
        self._socket = None
        if self._handshake_monitor is not None:
            self._handshake_monitor.close()
            self._handshake_monitor = None
        if sock is not None:
            try:
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(sock.FD)
            except Exception:
                pass
            sock.close(linger=linger_ms)

    async def _handshake(self, deadline: float) -> None:
        assert self._loop is not None
        self._welcome = self._loop.create_future()
        while True:
            # A refused handshake (CURVE keys) is final: say so now rather than at the deadline.
            refused = self._handshake_monitor.failure() if self._handshake_monitor is not None else None
            if refused is not None:
                raise ConnectTimeoutError(f"no service from the zmqdask broker at {self.address}: {refused}")
            self._send_hello()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectTimeoutError(
                    f"no zmqdask broker answered at {self.address} within {self.timeout} s; "
                    "check the address and that `zmqdask-broker` is running"
                    + (" with --curve-keys" if self.security is not None else "")
                )
            try:
                await asyncio.wait_for(asyncio.shield(self._welcome), min(remaining, HEARTBEAT_INTERVAL_S))
                if self._handshake_monitor is not None:
                    self._handshake_monitor.close()
                    self._handshake_monitor = None
                return
            except asyncio.TimeoutError:
                continue

    # --- loop plumbing ---------------------------------------------------------------------

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread_id

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._in_loop_thread():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _blocking(self, coro: Any, timeout: Any, alternative: str, what: str = "") -> Any:
        """Run one of the core's coroutines to completion from synchronous code."""
        try:
            timeout = optional_seconds(timeout)
        except UsageError:
            coro.close()
            raise
        if self.asynchronous:
            coro.close()
            if self._in_loop_thread():
                raise SyncInAsyncError(
                    f"this call blocks, and the asynchronous client's event loop is running in this "
                    f"thread; use `{alternative}` instead"
                )
            raise SyncInAsyncError(f"an asynchronous client cannot block; use `{alternative}` in its event loop")
        if self._loop_thread is None or self.status == ClientStatus.CLOSED:
            coro.close()
            raise ClosedClientError("this client is closed; create a new Client to go on")
        if self._in_loop_thread():
            coro.close()
            raise SyncInAsyncError(f"a blocking call from a callback on the client's own loop; use `{alternative}`")
        try:
            return self._loop_thread.run(coro, timeout)
        except ZmqdaskTimeoutError:
            if timeout is None:
                raise  # the coroutine's own timeout, with its own message
            raise ZmqdaskTimeoutError(f"{what or 'operation'} did not finish within {timeout} s") from None

    def _loop_runs_in_another_thread(self) -> bool:
        """Whether an asynchronous client's loop runs, in a thread other than the caller's."""
        loop = self._loop
        return loop is not None and loop.is_running() and not self._in_loop_thread()

    def _run_or_await(self, coro: Any, alternative: str, timeout: Any = None, what: str = "") -> Any:
        """A public method's answer: on a synchronous client, ``coro``'s result; on an
        asynchronous one, ``coro`` to await, or its result when called from another thread
        than the one running the client's loop (``asyncio.to_thread``, a done callback's
        thread), where nothing could await it: Dask blocks there too."""
        if self.asynchronous:
            if self._loop_runs_in_another_thread():
                return self._wait_from_another_thread(coro, optional_seconds(timeout), what or alternative)
            return coro if timeout is None else self._awaitable_within(coro, timeout, what or alternative)
        return self._blocking(coro, timeout, alternative, what)

    def _wait_from_another_thread(self, coro: Any, timeout: float | None, what: str) -> Any:
        """Run ``coro`` on an asynchronous client's loop and block this thread for its result
        (a done callback's thread, say), as Dask's ``result()`` does there."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise ClosedClientError("this client is closed; create a new Client to go on")
        # Bounded by timeout if given, else by the task's own end: a closing client fails
        # every pending future, and a stopping loop cancels the coroutine.
        return asyncio.run_coroutine_threadsafe(self._awaitable_within(coro, timeout, what), loop).result()

    async def _awaitable_within(self, coro: Any, timeout: Any, what: str) -> Any:
        """Await ``coro`` on an asynchronous client, bounded by ``timeout`` seconds if given."""
        try:
            timeout = optional_seconds(timeout)
        except UsageError:
            coro.close()
            raise
        if timeout is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise ZmqdaskTimeoutError(f"{what} did not finish within {timeout} s") from None

    def _send(self, frames: list[Any]) -> None:
        sock = self._socket
        if sock is None:
            return
        try:
            # Never block the event loop: with an unlimited high-water mark a send only fails
            # when ZeroMQ dropped the connection for good (a refused CURVE handshake).
            proto.send_frames(sock, frames, _NOBLOCK)
        except zmq.Again:
            logger.warning("the connection to the broker at %s was dropped; reconnecting", self.address)
            if self.status == ClientStatus.RUNNING:
                # Whatever this message carried is re-sent after re-registration.
                self._begin_reconnect(time.monotonic())
            return
        self._last_sent = time.monotonic()
        # Any socket operation can consume the FD's edge for messages that arrived
        # meanwhile; if some are readable now, nobody would wake us for them.
        if self._readable() and self._loop is not None:
            self._loop.call_soon(self._drain)

    def _schedule_flush(self) -> None:
        # Called with self._lock held.  One flush per loop tick collects every submission
        # made before it runs, from this thread or any other.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            if self._in_loop_thread():
                # A timer due now runs on the next turn, like call_soon; unlike a ready callback,
                # once cancelled (a coroutine awaiting the task flushes at once, see
                # _wait_value) it costs the loop no turn of its own.
                self._flush_timer = loop.call_at(loop.time(), self._flush)
            else:
                loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()  # this is that turn, or it came early: nothing left for it to do
        with self._lock:
            if self._socket is None or self.status == ClientStatus.RECONNECTING:
                self._flush_scheduled = False
                return  # everything stays queued, releases too
            ops, self._ops = self._ops, []
            places, self._place_ops = self._place_ops, []
            self._flush_scheduled = False
            # Taken together with the operations: each of these keys was submitted before it
            # was dropped, so its SUBMIT is in ``ops`` (or went out earlier) and precedes this.
            released = self._take_releases() if self._releases_due else []
        if places:
            # First: the tasks of this flush may name them.  Only new scattered keys are
            # here, so no earlier operation of this flush concerns them.
            for key, frames in places:
                self._placing[key] = frames
            entries = [[key, sum(proto.frame_nbytes(frame) for frame in frames)] for key, frames in places]
            self._send(proto.encode(proto.PLACE, [entries]))
        self._send_ops(ops)
        self._send_releases(released)

    def _take_releases(self) -> list[str]:
        """The pending releases, now due; called with ``_lock`` held."""
        keys = list(self._releases)
        self._releases = {}
        self._releases_due = False
        return keys

    def _send_releases(self, keys: list[str]) -> None:
        # Several modest messages rather than one huge one: the broker handles each as it
        # comes, between the messages of work still running.
        for start in range(0, len(keys), _MAX_KEYS_PER_RELEASE):
            self._send(proto.encode(proto.RELEASE, [keys[start : start + _MAX_KEYS_PER_RELEASE]]))

    def _send_ops(self, ops: list[tuple[Any, ...]]) -> None:
        # Consecutive operations of one kind share a message; the order between kinds is
        # kept, because a RELEASE followed by a re-SUBMIT of the same key must stay in order.
        # Long runs of tasks are cut into several messages, but never inside one graph
        # (ops[3] is its id, 0 for a lone task): the broker forgets an unwanted key with no
        # dependents as soon as it is computed, so a graph must arrive whole.
        index = 0
        while index < len(ops):
            kind = ops[index][0]
            end = index
            while end < len(ops) and ops[end][0] == kind:
                if (
                    end - index >= _MAX_TASKS_PER_MESSAGE
                    and (kind != "task" or ops[end][3] == 0 or ops[end][3] != ops[end - 1][3])
                ):
                    break
                end += 1
            group = ops[index:end]
            index = end
            if kind == "task":
                self._send_submit(group)
            elif kind == "releases":
                for op in group:
                    self._send_releases(op[1])
            elif kind == "scatter":
                entries: list[list[Any]] = []
                frames: list[Any] = []
                for _, state in group:
                    value_frames = dumps(state.value)
                    entries.append([state.key, len(value_frames)])
                    frames.extend(value_frames)
                self._send(proto.encode(proto.SCATTER, [entries, False], frames))
            else:
                keys = [op[1] for op in group]
                command = {
                    "release": proto.RELEASE,
                    "gather": proto.GATHER,
                    "relay_gather": proto.RELAY_GATHER,
                    "cancel": proto.CANCEL,
                    "keep": proto.KEEP,
                    "want": proto.WANT,
                }[kind]
                self._send(proto.encode(command, [keys]))

    def _send_submit(self, group: list[tuple[Any, ...]]) -> None:
        functions: list[bytes] = []
        function_frames: list[Any] = []
        entries: list[list[Any]] = []
        task_frames: list[Any] = []
        # Stay well inside the broker's limit: it refuses an oversized message whole.
        budget = self.max_message_bytes * 3 // 4
        size = 0
        sent = self._functions_sent
        if len(sent) > self.functions_kept_max or self._functions_sent_bytes > self.function_bytes_kept_max:
            self._forget_old_functions()
        for _, state, fn_payload, _graph in group:
            state.unsent = False
            entry = state.entry
            fn_hash = entry[1]
            inline = entry[6]
            if type(inline) is bytes:  # the usual small payload: its one frame is in the entry
                task_size = len(inline) + len(fn_payload)
            else:
                task_size = sum(proto.frame_nbytes(frame) for frame in state.frames) + len(fn_payload)
            if task_size > budget:
                failure = UsageError(
                    f"task {entry[0]} carries {task_size} bytes of arguments, more than the broker's message "
                    f"limit allows ({self.max_message_bytes} bytes); scatter large data first "
                    "(client.scatter) or start the broker with a larger --max-message-bytes"
                )
                self._set_failed(state, ERROR, failure, None)
                continue
            if entries and size + task_size > budget:
                self._send(proto.encode(proto.SUBMIT, [functions, entries], function_frames + task_frames))
                functions, function_frames, entries, task_frames, size = [], [], [], [], 0
            size += task_size
            if fn_hash not in sent:
                sent[fn_hash] = len(fn_payload)
                self._functions_sent_bytes += len(fn_payload)
                functions.append(fn_hash)
                function_frames.append(fn_payload)
            entries.append(entry)
            if type(inline) is not bytes:
                task_frames.extend(state.frames)
        if entries or functions:
            self._send(proto.encode(proto.SUBMIT, [functions, entries], function_frames + task_frames))

    def _forget_old_functions(self) -> None:
        """Tell the broker to forget the older half of the functions it has from us.

        Sent before the SUBMIT being built: a function forgotten here is not in
        ``_functions_sent`` any more, so that SUBMIT (and any later one) carries it again,
        and the broker reads the two messages in order.
        """
        sent = self._functions_sent
        keep_count = self.functions_kept_max // 2
        keep_bytes = self.function_bytes_kept_max // 2
        forgotten: list[bytes] = []
        for fn_hash in list(sent):
            if len(sent) <= keep_count and self._functions_sent_bytes <= keep_bytes:
                break
            self._functions_sent_bytes -= sent.pop(fn_hash)
            forgotten.append(fn_hash)
        if forgotten:
            self._send(proto.encode(proto.FORGET_FUNCTIONS, [forgotten]))

    def _schedule_heartbeat(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._heartbeat_handle = self._loop.call_later(HEARTBEAT_INTERVAL_S / 2, self._heartbeat)

    def _heartbeat(self) -> None:
        if self.status not in (ClientStatus.RUNNING, ClientStatus.RECONNECTING):
            return
        now = time.monotonic()
        if self.status == ClientStatus.RUNNING and now - self._last_heard > LIVENESS_TIMEOUT_S:
            # The silence may be this process's own: a long synchronous call (a map of a
            # million tasks) kept the loop from reading.  What the broker sent meanwhile is
            # waiting in the socket; read it before judging.
            self._drain()
        try:
            if self.status == ClientStatus.RUNNING and now - self._last_heard > LIVENESS_TIMEOUT_S:
                logger.warning("broker at %s silent for %.1f s; reconnecting", self.address, now - self._last_heard)
                self._begin_reconnect(now)
            elif self.status == ClientStatus.RECONNECTING:
                assert self._lost_since is not None
                if now - self._lost_since > self.reconnect_timeout:
                    self._fail_pending(
                        BrokerLostError(
                            f"the broker at {self.address} has been unreachable for "
                            f"{self.reconnect_timeout} s; pending work is lost"
                        ),
                        LOST,
                    )
                    self._lost_since = now
                self._send_hello()
            elif now - self._last_sent >= HEARTBEAT_INTERVAL_S:
                self._send(proto.encode(proto.HEARTBEAT, [self._epoch]))
        except zmq.ZMQError as exc:
            logger.debug("heartbeat send failed: %s", exc)
        self._schedule_heartbeat()

    def _begin_reconnect(self, now: float) -> None:
        self.status = ClientStatus.RECONNECTING
        self._lost_since = now
        self._close_socket()
        self._connect_socket()
        self._send_hello()

    def _send_hello(self) -> None:
        sock = self._socket
        if sock is not None and not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
            # No connection to send on: ZeroMQ dropped it for good after a refused handshake
            # (CURVE keys), and a DEALER without one would block this thread in send.
            return
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "direct": True,
            "python": PYTHON_VERSION,
            # The same all this session long: a HELLO repeated (queued during an outage)
            # is not taken for a new client that dropped what this one holds.
            "session": self._session_token,
        }
        self._send(proto.encode(proto.HELLO, [proto.ROLE_CLIENT, info]))

    # --- receiving -------------------------------------------------------------------------

    def _readable(self) -> bool:
        """Whether a message from the broker waits (a handler may have closed the socket)."""
        sock = self._socket
        if sock is None:
            return False
        try:
            return bool(cast(int, _BaseSocket.get(sock, _EVENTS)) & _POLLIN)
        except zmq.ZMQError:
            return False

    def _drain(self) -> None:
        sock = self._socket
        if sock is None:
            return
        recv = _BaseSocket.recv
        for turn in range(_DRAIN_BATCH):
            # After a message, asking whether another waits is cheaper than a receive that
            # fails (an exception): one fewer costly step before the loop waits again.  A
            # handler may have replaced the socket (reconnecting): the new one has its own
            # reader, and asking it here could take the edge that reader waits for.
            if turn and (self._socket is not sock or not self._readable()):
                return
            try:
                frame = recv(sock, _NOBLOCK, False)
                frames = [frame]
                while frame.more:
                    frame = recv(sock, _NOBLOCK, False)
                    frames.append(frame)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            self._last_heard = time.monotonic()
            try:
                message = proto.decode(frames)
            except ProtocolError as exc:
                self.malformed += 1
                if self.malformed == 1:
                    logger.warning("dropped a malformed message from the broker: %s", exc)
                continue
            handler = self._handlers.get(message.command)
            if handler is None:
                self.malformed += 1
                continue
            try:
                handler(self, message)
            except Exception:
                logger.exception("error while handling %s from the broker", message.name)
        # More may be queued: continue on the next tick so other callbacks get a turn.
        if self._loop is not None:
            self._loop.call_soon(self._drain)

    def _on_welcome(self, message: proto.Message) -> None:
        epoch, info = message.header
        limit = info.get("max_message_bytes")
        if isinstance(limit, int) and limit > 0:
            self.max_message_bytes = limit
        others = [v for v in info.get("worker_pythons", ()) if isinstance(v, str) and v != PYTHON_VERSION]
        if others:
            logger.warning(
                "this client runs Python %s and workers of broker %s run Python %s: functions defined here "
                "(in a notebook or script) cannot run there; use the same Python version everywhere",
                PYTHON_VERSION,
                self.address,
                ", ".join(sorted(set(others))),
            )
        reconnected = self.status == ClientStatus.RECONNECTING
        changed = bool(self._epoch) and epoch != self._epoch
        self._epoch = epoch
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_result(None)
        if reconnected or changed:
            logger.info("re-registered with broker %s (epoch %s)", self.address, epoch)
            if changed:
                # A new broker: it keeps none of the set-ups its workers must run.
                self._resend_setups()
            # The broker that answers now does not know our runs (a new one, or the same one
            # that declared us gone): no answer will come for them.
            self._fail_runs(
                BrokerLostError(
                    f"the connection to the broker at {self.address} was lost during client.run: the function "
                    "may or may not have run on each worker; run it again if it is safe to"
                )
            )
            # Requests the broker of before may never have answered go to this one.
            for request in list(self._unanswered.values()):
                self._send(request)
            self.status = ClientStatus.RUNNING
            self._lost_since = None
            self._resubmit_all()
            self._flush()
            for request in list(self._unanswered_after_tasks.values()):
                self._send(request)

    def _on_unknown_peer(self, message: proto.Message) -> None:
        # The broker restarted (or declared us dead): register again, then re-send work.
        if self.status == ClientStatus.RUNNING:
            self.status = ClientStatus.RECONNECTING
            self._lost_since = time.monotonic()
        self._send_hello()

    def _on_goodbye(self, message: proto.Message) -> None:
        if self.status == ClientStatus.CLOSING:
            # The answer to our own GOODBYE (or the broker stopping as we close): either way
            # the broker has nothing more to do for us.
            if self._goodbye_answered is not None and not self._goodbye_answered.done():
                self._goodbye_answered.set_result(None)
            return
        logger.warning("broker at %s is leaving: %s", self.address, message.header[0])
        if self.status == ClientStatus.RUNNING:
            self.status = ClientStatus.RECONNECTING
            self._lost_since = time.monotonic()

    def _on_heartbeat(self, message: proto.Message) -> None:
        epoch = message.header[0]
        if self._epoch and epoch and epoch != self._epoch and self.status == ClientStatus.RUNNING:
            self.status = ClientStatus.RECONNECTING
            self._lost_since = time.monotonic()
            self._send_hello()

    def _on_error(self, message: proto.Message) -> None:
        code, text, refs = message.header
        logger.error("broker refused a message (%s): %s", code, text)
        failure = UsageError(f"the broker refused a request ({code}): {text}")
        for key in refs:
            state = self._futures.get(key) if isinstance(key, str) else None
            if state is not None and state.status == PENDING:
                self._set_failed(state, ERROR, failure, None)

    def _on_info_reply(self, message: proto.Message) -> None:
        request_id, info = message.header
        waiter = self._info_requests.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(info)
            if self._abandoned:
                self._abandoned.pop(request_id, None)  # taken by its caller: nothing to undo
            return
        # Nobody waits for this answer any more: its caller was cancelled or timed out, maybe
        # an instant ago (its waiter is cancelled at once, the coroutine unwinds later).
        undo = self._abandoned.pop(request_id, None) if self._abandoned else None
        if undo is not None:
            try:
                undo(info)
            except Exception:
                logger.exception("could not undo the late answer to request %d", request_id)

    def _on_running(self, message: proto.Message) -> None:
        request_id, targets = message.header
        waiter = self._runs.get(request_id)
        if waiter is not None:
            waiter.running(targets)

    def _on_ran(self, message: proto.Message) -> None:
        request_id, identity, code, detail, field = message.header
        waiter = self._runs.get(request_id)
        if waiter is not None:
            frames, _ = proto.entry_payload(field, message.payload, 0)
            waiter.answered(identity, (code, detail, frames))

    def _on_restarting(self, message: proto.Message) -> None:
        request_id, replaced = message.header
        waiter = self._restarts.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(replaced)

    async def _request_restart(self, reason: str) -> list[bytes]:
        """Cancel every future here, have the broker end every client's work and its pools
        replace their workers; returns the identities of the workers being replaced."""
        assert self._loop is not None
        self._next_request += 1
        request_id = self._next_request
        waiter: asyncio.Future[list[bytes]] = self._loop.create_future()
        self._restarts[request_id] = waiter
        self._unanswered[request_id] = proto.encode(proto.RESTART, [request_id])
        self._flush()  # what was submitted before goes first, and is dropped with the rest
        with self._lock:
            self._kept.clear()
            states = [s for s in self._futures.values() if s.status in (PENDING, FINISHED)]
        for state in states:
            if state.status not in (PENDING, FINISHED):
                continue  # a batch failed with an earlier one
            state.value = None
            state.has_value = False
            state.status = PENDING  # so that it can fail
            error = FutureCancelledError(f"{state.key} was cancelled: {reason}", state.key)
            self._set_failed(state, CANCELLED, error, None)
        self._send(proto.encode(proto.RESTART, [request_id]))
        limit = max(self.timeout, self.reconnect_timeout)
        try:
            return await asyncio.wait_for(waiter, limit)
        except asyncio.TimeoutError:
            raise ZmqdaskTimeoutError(f"the broker did not answer a restart within {limit} s") from None
        finally:
            self._restarts.pop(request_id, None)
            self._unanswered.pop(request_id, None)

    def _resend_setups(self) -> None:
        for name, frames in self._setups.items():
            self._next_request += 1  # no waiter: the answers are dropped
            field = proto.payload_field(frames)
            payload = frames if type(field) is not bytes else ()
            self._send(proto.encode(proto.SETUP, [self._next_request, name, field], payload))

    def _fail_runs(self, error: BaseException) -> None:
        runs, self._runs = self._runs, {}
        for waiter in runs.values():
            waiter.fail(error)

    async def _run_on(
        self, targets: list[bytes] | None, frames: list[Any], wait: bool, setup: str | None = None
    ) -> dict[bytes, Answer] | None:
        """Send a pickled call to the workers ``targets`` (all if None); with ``wait``, return
        each worker's answer once all have answered (each is answered: see broker.runs).
        ``setup`` names a call the broker keeps for the workers that register later."""
        assert self._loop is not None
        self._next_request += 1
        request_id = self._next_request
        field = proto.payload_field(frames)
        waiter = None
        if wait:
            waiter = self._runs[request_id] = RunWaiter(self._loop)
        self._flush()  # the tasks submitted before the call reach the broker first
        payload = frames if type(field) is not bytes else ()
        if setup is None:
            self._send(proto.encode(proto.RUN, [request_id, targets, field], payload))
        else:
            self._setups.pop(setup, None)
            self._setups[setup] = frames
            self._send(proto.encode(proto.SETUP, [request_id, setup, field], payload))
        if waiter is None:
            return None
        try:
            return await waiter.done
        finally:
            self._runs.pop(request_id, None)

    def _on_report(self, message: proto.Message) -> None:
        payload = message.payload
        position = 0
        futures = self._futures
        frames: list[Any]
        elsewhere: dict[str, list[tuple[FutureState, str, int]]] | None = None
        for key, code, detail, nframes in message.header[0]:
            if type(nframes) is bytes:
                frames = [nframes]  # inline payload
            elif nframes:
                frames = payload[position : position + nframes]
                position += nframes
            else:
                frames = _NO_FRAMES
            if self._placing and key in self._placing:
                if code == proto.ELSEWHERE:
                    self._place(key, detail[2], detail[1])
                    continue
                self._placed(key)
            if code == proto.CANCELS_SEEN:
                unanswered = self._cancels_unanswered
                for _ in range(min(detail, len(unanswered))):
                    unanswered.popleft()
                continue
            state = futures.get(key)
            if state is None or state.status == CANCELLED:
                continue
            if code == proto.FINISHED:
                self._finished(state, detail[0], detail[1], frames)
            elif code == proto.ELSEWHERE:
                if state.has_value and state.entry is None and not detail[2]:
                    # Scattered data whose direct transfer the broker could not confirm.
                    self._placing[key] = dumps(state.value)
                    self._place(key, "", detail[1])
                elif not state.has_value:
                    if elsewhere is None:
                        elsewhere = {}
                    elsewhere.setdefault(detail[2], []).append((state, detail[0], detail[1]))
            elif code == proto.ERRED:
                error, text = self._rebuild_error(key, detail, frames)
                self._set_failed(state, ERROR, error, text)
            elif code == proto.CANCELLED:
                unanswered = self._cancels_unanswered
                if unanswered and state.born >= unanswered[0]:
                    # Cancelled before this state was submitted again: the broker handles our
                    # messages in order, so the new one was not known to it then.
                    continue
                self._set_failed(state, CANCELLED, FutureCancelledError(f"{key} was cancelled: {detail}", key), None)
            elif code == proto.LOST:
                self._set_failed(state, LOST, LostDataError(f"the data of {key} is lost: {detail}", key), None)
        if elsewhere is not None:
            for address, wanted in elsewhere.items():
                self._fetch_from_holder(address, wanted)

    def _finished(self, state: FutureState, type_name: str, nbytes: int, frames: list[Any]) -> None:
        """``state``'s task finished; ``frames`` hold its value if it came along."""
        state.type_name = type_name
        if frames and not state.has_value:
            try:
                state.value = loads(frames)
                state.has_value = True
            except Exception as exc:
                failure = SerializationError(
                    f"the result of {state.key} ({type_name}) could not be deserialized here: "
                    f"{type(exc).__name__}: {exc}"
                )
                self._set_failed(state, ERROR, failure, None)
                return
        if state.status == PENDING or state.status == LOST:
            state.status = FINISHED
            self._fire_callbacks(state)
        state.notify()
        if state.members is not None:
            self._distribute(state, nbytes)

    def _fetch_from_holder(self, address: str, wanted: list[tuple[FutureState, str, int]]) -> None:
        """The broker says these large values are held at ``address``: fetch them from there
        (see :mod:`zmqdask.direct`), or through the broker if that is not possible."""
        if self._direct is None and self._context is not None:
            self._direct = DirectFetcher(self._context)
        if self._direct is None or self._loop is None or not self._direct.usable(address):
            self._relay_gather([state.key for state, _, _ in wanted])
            return
        task = self._loop.create_task(self._fetch_direct(self._direct, address, wanted))
        self._direct_fetches.add(task)
        task.add_done_callback(self._direct_fetches.discard)

    async def _fetch_direct(
        self, fetcher: DirectFetcher, address: str, wanted: list[tuple[FutureState, str, int]]
    ) -> None:
        keys = [state.key for state, _, _ in wanted]
        try:
            answer = await fetcher.fetch(address, keys, sum(nbytes for _, _, nbytes in wanted))
        except Exception:
            # Whatever went wrong here, the broker can still serve them.
            logger.exception("a direct fetch from %s failed; asking the broker", address)
            answer = None
        if answer is None:
            self._relay_gather(keys)
            return
        values, missing = answer
        again = list(missing)
        for state, type_name, nbytes in wanted:
            frames = values.get(state.key)
            if frames is None:
                if state.key not in missing:
                    again.append(state.key)
            elif self._futures.get(state.key) is state and state.status != CANCELLED:
                self._finished(state, type_name, nbytes, frames)
        if again:
            # Moved, released or lost meanwhile: the broker knows what became of them.
            self._relay_gather(again)

    def _place(self, key: str, address: str, nbytes: int) -> None:
        """Send the scattered value ``key`` to the worker at ``address``, as the broker said
        (through the broker when ``address`` is "", or when that worker cannot be reached)."""
        frames = self._placing.get(key)
        if frames is None:
            return
        if address and self._direct is None and self._context is not None:
            self._direct = DirectFetcher(self._context)
        fetcher = self._direct
        if not address or fetcher is None or self._loop is None or not fetcher.usable(address):
            self._scatter_through_broker(key)
            return

        async def put() -> None:
            try:
                wait_s = await fetcher.put(address, key, frames)
            except Exception:
                logger.exception("a direct transfer to %s failed; sending through the broker", address)
                wait_s = None
            if wait_s is None:
                self._scatter_through_broker(key)
            elif key in self._placing and self._loop is not None:
                timer = self._loop.call_later(wait_s, self._placement_overdue, key, address)
                self._placing_sent[key] = (address, timer)

        task = self._loop.create_task(put())
        self._direct_fetches.add(task)
        task.add_done_callback(self._direct_fetches.discard)

    def _placement_overdue(self, key: str, address: str) -> None:
        if key not in self._placing:
            return
        if key not in self._futures:
            # Released before the broker confirmed it: nobody here waits for that any more.
            self._placed(key)
            return
        if self._direct is not None:
            self._direct.give_up(address, "a value sent there was not confirmed in time")
        self._scatter_through_broker(key)

    def _placed(self, key: str) -> None:
        """The broker answered for the scattered ``key``: its frames are not needed any more."""
        self._placing.pop(key, None)
        sent = self._placing_sent.pop(key, None)
        if sent is not None:
            address, timer = sent
            timer.cancel()  # a no-op when it is the one firing
            if self._direct is not None:
                self._direct.put_settled(address, key)

    def _placed_if_released(self, key: str) -> None:
        # Queued by _release from any thread: by now the key may be held again, and placed again.
        if key not in self._futures:
            self._placed(key)

    def _scatter_through_broker(self, key: str) -> None:
        frames = self._placing.get(key)
        self._placed(key)
        if frames is None:
            return
        field = proto.payload_field(frames)
        self._flush()
        self._send(proto.encode(proto.SCATTER, [[[key, field]], False], frames if type(field) is not bytes else []))

    def _relay_gather(self, keys: list[str]) -> None:
        with self._lock:
            self._ops.extend(("relay_gather", key) for key in keys)
            self._schedule_flush()

    def _close_direct(self) -> None:
        """Stop direct fetches and close their sockets (on the loop, before the context ends)."""
        for task in list(self._direct_fetches):
            task.cancel()
        self._direct_fetches.clear()
        for key in list(self._placing):
            self._placed(key)
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def _rebuild_error(self, key: str, detail: list[Any], frames: list[Any]) -> tuple[BaseException, str | None]:
        type_name, text, origin = detail
        broker_error = _BROKER_ERRORS.get(type_name)
        if not frames and broker_error is not None:
            if broker_error is KilledWorker:
                return KilledWorker(text, origin, attempts=MAX_KILLED_ATTEMPTS), None
            if issubclass(broker_error, (LostDataError, FutureCancelledError)):
                return broker_error(text, origin), None
            return broker_error(text), None
        exc, remote_tb = loads_error(detail, frames)  # a new object each time: noted once
        if remote_tb:
            # As in Dask, the task's own frames come last in the traceback of the exception
            # raised here (a debugger's post-mortem lands in them); frames that cannot be
            # rebuilt go into a note instead.
            remote_frames = traceback_from_text(remote_tb)
            if remote_frames is not None and exc.__traceback__ is None:
                exc = exc.with_traceback(remote_frames)
            elif hasattr(exc, "add_note"):
                exc.add_note(f"Remote traceback of task {origin}:\n{remote_tb.rstrip()}")
        return exc, remote_tb

    _handlers: dict[int, Callable[[BrokerSession, proto.Message], None]] = {
        proto.WELCOME: _on_welcome,
        proto.UNKNOWN_PEER: _on_unknown_peer,
        proto.GOODBYE: _on_goodbye,
        proto.HEARTBEAT: _on_heartbeat,
        proto.ERROR: _on_error,
        proto.INFO_REPLY: _on_info_reply,
        proto.REPORT: _on_report,
        proto.RUNNING: _on_running,
        proto.RAN: _on_ran,
        proto.RESTARTING: _on_restarting,
    }

    def _set_failed(self, state: FutureState, status: str, exc: BaseException, text: str | None) -> None:
        if state.status in TERMINAL_FAILURES and state.exception is not None:
            return
        state.status = status
        state.exception = exc
        state.traceback = text
        self._fire_callbacks(state)
        state.notify()
        members = state.members
        if members is not None and status == ERROR and isinstance(exc, KilledWorker) and self._run_calls_alone(state):
            return  # its calls run again, each alone: only a call that kills its worker fails
        if members is not None:
            # A batch that failed as a whole (its result could not travel, say) fails each
            # of its calls still waiting, the same way; later maps of the function give each
            # call a task of its own.
            if status == ERROR:
                # (One exception object may fail several batches: note it once.)
                if hasattr(exc, "add_note") and _BATCH_FAILED_NOTE not in getattr(exc, "__notes__", ()):
                    exc.add_note(_BATCH_FAILED_NOTE)
                if state.entry is not None:
                    self._seconds_per_call[state.entry[1]] = BATCH_TARGET_SECONDS
            for member in members:
                if member.batch is state and not member.has_value and member.status != CANCELLED:
                    member.status = PENDING if member.status == FINISHED else member.status
                    self._set_failed(member, status, exc, text)

    def _run_calls_alone(self, batch: FutureState) -> bool:
        """Submit each waiting call of ``batch`` again as a task of its own (the client's
        part); False if there is nothing to split."""
        return False

    def _distribute(self, batch: FutureState, nbytes: int) -> None:
        """Give each call of a finished map batch its value or error (loop thread);
        ``nbytes`` is the size of the batch's result, as its worker measured it."""
        result = batch.value
        if batch.has_value and result is None:
            return  # given out already (the batch was reported again, e.g. recomputed)
        members = batch.members
        if batch.entry is not None and members:
            # Later batches of this function stay under BATCH_MAX_BYTES of results.
            self._bytes_per_call[batch.entry[1]] = nbytes / len(members)
        if not batch.has_value or type(result) is not BatchResult:
            # Finished, its value not sent along (not asked for, or too large to come with
            # the notice).  If some calls failed, which they were is in the value: fetch it.
            # Otherwise the calls are finished; their values come when one is asked for
            # (_request_data), or with the answer to a request already made.
            succeeded, value_type = succeeded_type(batch.type_name)
            if not succeeded:
                self._request_data(batch)
                return
            for member in members or ():
                if member.batch is batch and member.status == PENDING:
                    member.type_name = value_type
                    member.status = FINISHED
                    self._fire_callbacks(member)
                    member.notify()
            return
        values = result.values
        for member in members or ():
            if member.batch is not batch or member.has_value or member.status == CANCELLED:
                continue
            value = values[member.index]
            if type(value) is ElementError:
                value.detail[2] = member.key
                error, text = self._rebuild_error(member.key, value.detail, [value.frame])
                member.status = PENDING if member.status == FINISHED else member.status
                self._set_failed(member, ERROR, error, text)
                continue
            member.value = value
            member.has_value = True
            member.type_name = type(value).__name__
            if member.status == PENDING or member.status == LOST:
                member.status = FINISHED
                self._fire_callbacks(member)
            member.notify()
        # The calls hold their values now; the batch's copy would only keep released ones.
        batch.value = None
        entry = batch.entry
        if entry is not None and values:
            measured = result.seconds / len(values)
            known = self._seconds_per_call.get(entry[1])
            self._seconds_per_call[entry[1]] = measured if known is None else (known + measured) / 2

    def _fail_pending(self, exc: BaseException, status: str) -> None:
        self._fail_runs(exc)
        self._abandoned.clear()  # the broker that would have answered them is gone
        for waiter in list(self._info_requests.values()):
            # Requests without a bound of their own (a lock acquire) end here too.
            if not waiter.done():
                waiter.set_exception(exc)
        for state in list(self._futures.values()):
            # Not yet confirmed (a scatter the client holds the value of too: the call that
            # waits for it must not wait for ever), or finished without the value here.
            if state.status == PENDING or (state.status == FINISHED and not state.has_value):
                state.status = PENDING  # let _set_failed record the failure
                self._set_failed(state, status, exc, None)

    def _fire_callbacks(self, state: FutureState) -> None:
        callbacks = state.callbacks
        if not callbacks:
            return
        state.callbacks = None
        for future, fn in callbacks:
            try:
                fn(future)
            except Exception:
                logger.exception("a done callback of %s raised", state.key)

    def _resubmit_all(self) -> None:
        """After re-registering, send again every task whose value we do not hold yet."""
        self._functions_sent.clear()
        self._functions_sent_bytes = 0
        seen: set[str] = set()
        order: list[FutureState] = []

        def visit(state: FutureState) -> None:
            if state.key in seen:
                return
            seen.add(state.key)
            for dep in state.deps or ():
                visit(dep)
            order.append(state)

        # Values being placed with workers directly go again with the scatters below.
        for key in list(self._placing):
            self._placed(key)
        with self._lock:
            # CANCELs the old broker got will not be answered; those still queued go to the
            # new one, and are the latest cancellations.
            queued = sum(1 for op in self._ops if op[0] == "cancel")
            while len(self._cancels_unanswered) > queued:
                self._cancels_unanswered.popleft()
            for state in list(self._futures.values()):
                if state.status not in (PENDING, FINISHED):
                    continue
                if not state.has_value or (state.entry is None and state.batch is None):
                    # Tasks without their value yet, and every value scattered from here (the
                    # new broker has none of them; one may still be on its way).
                    visit(state)
            released: list[str] = []
            # Ahead of what was queued while the broker was away (a GATHER, a RELEASE, a
            # CANCEL of these keys): the new broker must know a key before hearing of it.
            resent: list[tuple[Any, ...]] = []
            for state in order:
                if state.entry is None and state.batch is not None:
                    continue  # a call of a map batch: its batch goes again
                if state.named:
                    # A future of a task submitted elsewhere: the broker says again what it knows.
                    if state.key in self._futures:
                        if not state.has_value:
                            state.status = PENDING
                        resent.append(("want", state.key))
                    continue
                if state.entry is None and state.has_value:
                    # Scattered data: the client still holds the value, so it is sent again,
                    # ahead of the tasks that need it (``order`` puts inputs first).
                    resent.append(("scatter", state))
                    if state.key not in self._futures:
                        released.append(state.key)  # only a task needs it, no future does
                    continue
                if state.entry is None:
                    if state.key in self._futures and not state.has_value:
                        self._set_failed(
                            state,
                            LOST,
                            LostDataError(f"scattered data {state.key} was lost when the broker restarted", state.key),
                            None,
                        )
                    continue
                wanted = state.key in self._futures
                state.entry[5] = (proto.FLAG_WANTED if wanted else 0) | (
                    proto.FLAG_PUSH_RESULT if wanted and state.data_requested else 0
                )
                if state.status == FINISHED:
                    state.status = PENDING
                state.unsent = True
                resent.append(("task", state, state.fn_payload, -1))  # one unsplittable batch
            resent.extend(("release", key) for key in released)
            for key, state in list(self._kept.items()):
                if state.done():
                    del self._kept[key]
                else:
                    resent.append(("keep", key))
            self._ops[:0] = resent

    # --- futures bookkeeping ---------------------------------------------------------------

    def _state_by_name(self, key: str) -> FutureState:
        """The state behind ``Future(key)``: the one this client has, or a new one whose
        outcome the broker is asked for (WANT), as a future of a task submitted elsewhere."""
        with self._lock:
            state = self._futures.get(key)
            if state is not None:
                return state
            if self._releases:
                # The broker still counts the last future's interest, which this one takes
                # over: the release must not follow the WANT.
                self._take_back_release(key, True)
            state = self._futures[key] = FutureState(key)
            state.named = True
            self._ops.append(("want", key))
            if not self._flush_scheduled:
                self._schedule_flush()
            return state

    def _retain(self, state: FutureState) -> None:
        with self._lock:
            state.refcount += 1

    def _release(self, state: FutureState) -> None:
        with self._lock:
            state.refcount -= 1
            if state.refcount > 0:
                return
            in_batch = state.batch is not None
            if in_batch:
                self._detach(state)
            if self._futures.get(state.key) is not state:
                return
            del self._futures[state.key]
            if self._placing and state.key in self._placing:
                # Nobody here waits for the broker to confirm it any more.
                self._call_in_loop(self._placed_if_released, state.key)
            if in_batch and state.entry is None:
                return  # the broker never heard of this call, only of its batch
            if self.status in (ClientStatus.CLOSED, ClientStatus.CLOSING):
                return
            if state.status == CANCELLED:
                return
            if state.entry is not None and state.entry[5] & proto.FLAG_WANTED == 0:
                return
            # Releases wait a little for companions (see RELEASE_DELAY_S); a key used again
            # before they go out is taken back from them by _take_back_release.
            releases = self._releases
            releases[state.key] = None
            if len(releases) >= RELEASE_BATCH_KEYS:
                # Due at the end of the next flush: an operation queued here would split the
                # run of submissions around it into separate messages.
                self._releases_due = True
                self._schedule_flush()
            elif not self._release_timer_armed:
                self._release_timer_armed = True
                self._call_in_loop(self._arm_release_timer)

    def _detach(self, member: FutureState) -> None:
        """A call of a map batch is released or cancelled (``_lock`` held): once no call of
        the batch is left, the batch task is released too (the broker cancels it if it has
        not run)."""
        batch = member.batch
        if batch is None:
            return
        member.batch = None
        batch.alive -= 1
        if batch.alive == 0:
            batch.members = None
            self._release(batch)

    def _arm_release_timer(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_later(RELEASE_DELAY_S, self._release_timer_fired)

    def _release_timer_fired(self) -> None:
        with self._lock:
            self._release_timer_armed = False
            if self._releases:
                self._releases_due = True
                self._schedule_flush()

    def _take_back_release(self, key: str, wanted: bool) -> None:
        """``key`` is about to be submitted or scattered again: settle a release still pending.

        Called with ``_lock`` held, before the submission is queued.  When the new
        submission is wanted the release is dropped: the broker never heard of it, so it
        still counts this client's interest, which is what a RELEASE followed by the new
        submission would have left in place.  An unwanted submission (an inner task of a
        graph) must not inherit that interest, so the pending releases go out first.
        """
        if key in self._releases:
            if wanted:
                del self._releases[key]
            elif self._graph_id:
                # Ahead of the graph's tasks queued so far, not among them: a graph must
                # reach the broker in one SUBMIT (see _send_ops), and none of those tasks
                # has a key released here (its own submission would have settled it).
                self._ops.insert(self._graph_start, ("releases", self._take_releases()))
                self._graph_start += 1
            else:
                self._ops.append(("releases", self._take_releases()))

    def _keep(self, future: Future) -> None:
        """Ask the broker to run ``future``'s task to the end even once no client wants it
        (``fire_and_forget``): this client may close before it finishes."""
        state = future._state
        with self._lock:
            if state.done():
                return
            # A call of a map batch runs in its batch task.
            kept = state.batch if state.entry is None and state.batch is not None else state
            self._kept[kept.key] = kept  # asked again of a broker restarted meanwhile
            self._ops.append(("keep", kept.key))
            self._schedule_flush()
        self._add_done_callback(future, lambda _: self._kept.pop(kept.key, None))

    def _add_done_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        state = future._state

        def attach() -> None:
            if state.done():
                try:
                    fn(future)
                except Exception:
                    logger.exception("a done callback of %s raised", state.key)
            else:
                if state.callbacks is None:
                    state.callbacks = []
                state.callbacks.append((future, fn))

        loop = self._loop
        if loop is None or loop.is_closed() or self._in_loop_thread():
            attach()  # no loop any more (the client closed): its futures are all done
        else:
            loop.call_soon_threadsafe(attach)

    def _add_user_callback(self, future: Future, fn: Callable[[Future], Any]) -> None:
        """``fn(future)`` once done, in a thread of this client's, as Dask runs done callbacks:
        a callback may block (``other.result()``) without stalling the client's loop."""

        def hand_over(done: Future) -> None:
            if self.status == ClientStatus.CLOSED:
                self._run_user_callback(fn, done)  # nothing else will come: no thread needed
                return
            with self._lock:
                if self._callback_thread is None:
                    self._callback_thread = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="zmqdask-callback"
                    )
                runner = self._callback_thread
            try:
                runner.submit(self._run_user_callback, fn, done)
            except RuntimeError:  # shut down: the client closed, and nothing else will come
                self._run_user_callback(fn, done)

        self._add_done_callback(future, hand_over)

    @staticmethod
    def _run_user_callback(fn: Callable[[Future], Any], future: Future) -> None:
        try:
            fn(future)
        except Exception:
            logger.exception("a done callback of %s raised", future.key)

    def _stop_callback_thread(self) -> None:
        # Callbacks already handed over still run; the thread ends after the last one.
        with self._lock:
            runner, self._callback_thread = self._callback_thread, None
        if runner is not None:
            runner.shutdown(wait=False)

    def _request_data(self, state: FutureState) -> None:
        # Called on the loop thread.  A task not yet flushed just gets its push flag set.
        with self._lock:
            if state.data_requested:
                return
            state.data_requested = True
            if state.batch is not None and state.entry is None:
                self._request_data(state.batch)  # a call of a map batch: its batch's value
                return
            entry = state.entry
            if entry is not None and state.unsent:
                entry[5] |= proto.FLAG_PUSH_RESULT
                return
            self._ops.append(("gather", state.key))
            self._schedule_flush()

    async def _wait_value(self, state: FutureState) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            if state.has_value:
                return state.value
            if state.status in TERMINAL_FAILURES:
                raise failure_of(state)
            self._check_open()
            if not state.data_requested:
                self._request_data(state)
            if state.unsent and self._flush_scheduled:
                # This coroutine is about to wait for it: send now rather than one loop turn
                # later (everything queued so far goes in the same batch anyway).  Sending can
                # settle the state at once (a task refused for its size): look again first.
                self._flush()
                continue
            waiter = loop.create_future()
            if state.waiters is None:
                state.waiters = []
            state.waiters.append(waiter)
            await waiter

    async def _wait_done(self, state: FutureState) -> None:
        loop = asyncio.get_running_loop()
        while state.status == PENDING:
            self._check_open()
            waiter = loop.create_future()
            if state.waiters is None:
                state.waiters = []
            state.waiters.append(waiter)
            await waiter

    async def _wait_many(self, futures: list[Future], timeout: float | None, return_when: str) -> DoneAndNotDoneFutures:
        async def until_condition() -> None:
            # One done-callback per pending future, counting down: waiting for n futures costs
            # O(n), however they finish (waking on each completion to re-examine all of them
            # would cost O(n) per wake-up).
            total = len({id(f._state) for f in futures})
            pending = {id(f._state): f for f in futures if not f.done()}
            progress = {"left": len(pending), "failed": any(f.status in TERMINAL_FAILURES for f in futures)}

            def met() -> bool:
                if progress["left"] == 0:
                    return True
                if return_when == FIRST_COMPLETED:
                    return progress["left"] < total
                return return_when == FIRST_EXCEPTION and bool(progress["failed"])

            if met():
                return
            loop = asyncio.get_running_loop()
            settled: asyncio.Future[None] = loop.create_future()

            def settle(future: Future) -> None:
                progress["left"] -= 1
                if future.status in TERMINAL_FAILURES:
                    progress["failed"] = True
                if met() and not settled.done():
                    settled.set_result(None)

            def on_done(future: Future) -> None:
                # On the loop of the future's own client: a future of another client (in
                # its own thread) hands over to this loop.
                if future._client is self:
                    settle(future)
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(settle, future)

            for future in pending.values():
                future._client._add_done_callback(future, on_done)
            await settled

        try:
            await asyncio.wait_for(until_condition(), timeout)
        except asyncio.TimeoutError:
            raise ZmqdaskTimeoutError(
                f"{sum(not f.done() for f in futures)} futures not done within {timeout} s"
            ) from None
        done = {f for f in futures if f.done()}
        return DoneAndNotDoneFutures(done, set(futures) - done)

    async def _info(self, who_has: list[str] | bool | None = False) -> dict[str, Any]:
        """The broker's INFO map; with ``who_has`` (keys, or None for all), its WHO_HAS map."""
        if who_has is False:
            return await self._ask(lambda request_id: proto.encode(proto.INFO, [request_id]), "an info request")
        return await self._ask(lambda request_id: proto.encode(proto.WHO_HAS, [request_id, who_has]), "an info request")

    async def _datasets(
        self, op: str, name: str = "", keys: list[str] | None = None, override: bool = False, value: bytes = b""
    ) -> dict[str, Any]:
        """One DATASETS request (see broker.datasets); the broker's answer map."""
        field, payload = _one_frame(value if op == "put" else None)

        def build(request_id: int) -> list[Any]:
            return proto.encode(proto.DATASETS, [request_id, op, name, keys or [], override, field], payload)

        # After re-registering these go again once the tasks are submitted again: a dataset
        # names keys the broker must know first.
        return await self._ask(build, f"a dataset request ({op})", after_tasks=True)

    async def _coordinate(
        self,
        kind: str,
        op: str,
        name: str,
        args: dict[str, Any],
        value: bytes | None,
        timeout: float | None,
        on_abandon: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """One COORDINATE request (see broker.coordination); the broker's answer map.

        ``timeout`` bounds an operation that waits (the broker answers when it ends); None
        waits as long as it takes, bounded by the broker's liveness.  ``on_abandon`` is called
        with the answer if it comes after the caller stopped waiting (cancelled).
        """
        field, payload = _one_frame(value)
        args = {**args, "timeout": timeout}
        sent: list[int] = []

        def build(request_id: int) -> list[Any]:
            sent.append(request_id)
            return proto.encode(proto.COORDINATE, [request_id, kind, op, name, args, field], payload)

        # The broker answers a wait when its timeout ends: allow for the trip on top of it.
        limit: float | None = None if timeout is None else timeout + self.timeout
        what = f"a {kind} {op}"
        try:
            return await self._ask(build, what, after_tasks=True, limit=limit, waits=True, on_abandon=on_abandon)
        except (asyncio.CancelledError, asyncio.TimeoutError, ZmqdaskTimeoutError):
            if on_abandon is not None and sent and self._socket is not None:
                # The broker would keep the request waiting: it may drop it now.
                self._coordinate_forget(kind, "abandon", name, {"request": sent[-1]}, None)
            raise

    def _coordinate_forget(self, kind: str, op: str, name: str, args: dict[str, Any], value: bytes | None) -> None:
        """Send a COORDINATE request whose answer nobody waits for (undoing a late answer)."""
        self._next_request += 1
        request_id = self._next_request
        self._abandoned[request_id] = _ignore_answer
        field, payload = _one_frame(value)
        header = [request_id, kind, op, name, {**args, "timeout": None}, field]
        self._send(proto.encode(proto.COORDINATE, header, payload))

    def _coordinate_release(self, keys: list[str]) -> None:
        """Drop the interest the broker gave this client in ``keys`` with values it never took
        (undoing a late answer), except in keys a future here still holds."""
        with self._lock:
            unheld = [key for key in keys if key not in self._futures]
        if unheld:
            self._send(proto.encode(proto.RELEASE, [unheld]))

    async def _ask(
        self,
        build: Callable[[int], list[Any]],
        what: str,
        after_tasks: bool = False,
        limit: float | None = None,
        waits: bool = False,
        on_abandon: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send the request ``build(request_id)`` makes, after every operation queued so far,
        and wait for the broker's INFO_REPLY to it: bounded by the client's timeout, or, for
        a request that ``waits`` on the broker, by ``limit`` (None: by the broker's liveness,
        through the reconnect timeout)."""
        assert self._loop is not None
        self._next_request += 1
        request_id = self._next_request
        waiter: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._info_requests[request_id] = waiter
        if on_abandon is not None:
            # Registered before waiting: an answer that arrives once the caller has given up,
            # however soon after, is undone (see _on_info_reply).
            self._abandoned[request_id] = on_abandon
        if after_tasks and self._releases:
            # Releases of keys this request may hand back (a queue's item, a dataset) go first:
            # arriving after it, they would drop what it gives.
            with self._lock:
                self._releases_due = True
        self._flush()  # so the answer reflects every submission made before this request
        request = build(request_id)
        unanswered = self._unanswered_after_tasks if after_tasks else self._unanswered
        unanswered[request_id] = request
        self._send(request)
        # Bounded by the client's timeout, and by the reconnect timeout while the broker is
        # away (a request sent then goes again to the broker this client registers with).
        if not waits:
            limit = self.timeout
            if self.status == ClientStatus.RECONNECTING:
                limit = max(self.timeout, self.reconnect_timeout)
        try:
            return await asyncio.wait_for(waiter, limit)
        except asyncio.CancelledError:
            if on_abandon is not None and waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                on_abandon(waiter.result())  # answered just as the caller gave up
            raise
        except asyncio.TimeoutError:
            if self.status == ClientStatus.RECONNECTING:
                raise BrokerLostError(
                    f"the broker at {self.address} is unreachable; try again once it is back"
                ) from None
            raise ZmqdaskTimeoutError(f"the broker did not answer {what} within {limit} s") from None
        finally:
            self._info_requests.pop(request_id, None)
            unanswered.pop(request_id, None)


def _ignore_answer(_answer: dict[str, Any]) -> None:
    """The answer to a request sent only for its effect."""


def _one_frame(value: bytes | None) -> tuple[Any, list[Any]]:
    """An entry's last field and payload for one optional pickle: inline when small."""
    if value is None:
        return 0, []
    field = proto.payload_field([value])
    return field, [] if type(field) is bytes else [value]
