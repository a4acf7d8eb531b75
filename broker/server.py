"""The broker's socket loop: one ZeroMQ ROUTER socket feeding the sans-I/O :class:`BrokerState`."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from broker.outbox import Outgoing
from broker.state import BrokerState
from zmqdask.config import (
    HEARTBEAT_INTERVAL_S,
    IPC_BUFFER_BYTES,
    LIVENESS_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ZERO_COPY_THRESHOLD_BYTES,
)
from zmqdask.errors import CommunicationError
from zmqdask.protocol import HELLO, send_frames
from zmqdask.security import BrokerSecurity, CurveServer

logger = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.1
"""How often the state machine's tick (heartbeats, liveness) runs."""

MAX_MESSAGES_PER_ROUND = 2000
"""Messages drained per poll round before pending sends and ticks get their turn."""

MAX_BYTES_PER_ROUND = 128 * 1024
"""Bytes drained per poll round: a round is one step of the state machine, and dispatching
the tasks of one large SUBMIT before reading the next keeps the workers busy meanwhile."""

LINGER_MS = 500
"""How long closing the socket may wait for queued messages (the shutdown GOODBYEs)."""

SHUTDOWN_REASON = "broker shutting down"

WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", ""})
"""Bind addresses meaning "every interface"."""


def advertised_host(host: str) -> str:
    """The host name peers should connect to when the broker binds ``host``.

    For a wildcard bind this is the machine's host name when it resolves (so that other hosts
    can use the printed address), else 127.0.0.1; any other host is returned unchanged.
    """
    if host not in WILDCARD_HOSTS:
        return host
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
    except OSError:
        return "127.0.0.1"
    return name


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the broker reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BrokerServer:
    """Runs a :class:`BrokerState` behind one ROUTER socket bound to ``tcp://host:port``.

    Usage: ``server.bind()`` (returns the address to advertise; port 0 picks a free port),
    then ``server.serve_forever()`` in the calling thread or ``server.start_thread()``;
    ``server.stop()`` from any thread (or a signal handler) makes the loop say GOODBYE to
    every peer, close the socket and return within about :data:`TICK_INTERVAL_S`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        context: zmq.Context[Any] | None = None,
        security: BrokerSecurity | None = None,
        ipc_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.address = ""
        """``tcp://host:port`` to give to clients and workers (set by :meth:`bind`)."""
        self.ipc_path = ipc_path
        """A Unix socket path the same socket also listens on, for peers on this host: a
        message through it skips the TCP stack (a round trip is about 0.05 ms shorter)."""
        self._heartbeat_interval_s = heartbeat_interval_s
        self._liveness_timeout_s = liveness_timeout_s
        self._max_message_bytes = max_message_bytes
        self._own_context = context is None
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self.state: BrokerState | None = None
        self._stop = threading.Event()
        self._backlog: dict[bytes, deque[list[Any]]] = {}
        self._pending: deque[tuple[bytes, list[Any]]] = deque()
        self._emitting = False
        # Peers a send found unreachable; they are declared dead after the next read.
        self._unreachable_ids: dict[bytes, None] = {}
        self._thread: threading.Thread | None = None
        self._security = security
        self._curve: CurveServer | None = None
        """With CURVE keys: the authenticator and the HELLO guard (None without keys)."""

    # --- lifecycle --------------------------------------------------------------------

    def bind(self) -> str:
        """Create and bind the socket; raises :class:`CommunicationError` if binding fails."""
        if self._socket is not None:
            return self.address
        sock = self._context.socket(zmq.ROUTER)
        # Refuse to drop: an unroutable identity raises EHOSTUNREACH instead of vanishing, and
        # with no high-water marks flow control is left to the workers' credit.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A peer reconnecting under the same identity (a client or worker re-registering
        # after a network blip) takes over at once instead of being ignored until the old
        # connection times out.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        host = self.host
        zmq_host = "*" if host in WILDCARD_HOSTS else host
        if ":" in zmq_host:
            sock.setsockopt(zmq.IPV6, 1)
            zmq_host = f"[{zmq_host}]"
        endpoint = f"tcp://{zmq_host}:{self.port if self.port else '*'}"
        curve: CurveServer | None = None
        if self._security is not None:
            # The ZAP handler must be answering before the first peer can connect.
            try:
                curve = CurveServer(self._security, self._context)
            except CommunicationError:
                sock.close(linger=0)
                raise
            curve.configure(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            if curve is not None:
                curve.close()
            raise CommunicationError(f"cannot listen on tcp://{host}:{self.port}: {exc.strerror}") from exc
        self.port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rstrip("\0").rsplit(":", 1)[1])
        if self.ipc_path is not None:
            if _unix_socket_in_use(self.ipc_path):
                sock.close(linger=0)
                if curve is not None:
                    curve.close()
                raise CommunicationError(
                    f"cannot listen on ipc://{self.ipc_path}: another process listens there "
                    "(another broker?); give this one another --ipc path"
                )
            try:
                # Applies to the TCP connections too: 4 MiB is what TCP on loopback grows to.
                sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
                sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
                sock.bind(f"ipc://{self.ipc_path}")
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                if curve is not None:
                    curve.close()
                raise CommunicationError(f"cannot listen on ipc://{self.ipc_path}: {exc.strerror}") from exc
        self._curve = curve
        advertised = advertised_host(host)
        if ":" in advertised:
            advertised = f"[{advertised}]"
        self.address = f"tcp://{advertised}:{self.port}"
        self._socket = sock
        self.state = BrokerState(
            epoch=uuid.uuid4().hex,
            now=time.monotonic(),
            address=self.address,
            heartbeat_interval_s=self._heartbeat_interval_s,
            liveness_timeout_s=self._liveness_timeout_s,
            max_message_bytes=self._max_message_bytes,
        )
        logger.info(
            "broker listening on tcp://%s:%d (advertised as %s, epoch %s)",
            host or "*",
            self.port,
            self.address,
            self.state.epoch,
        )
        if self.ipc_path is not None:
            logger.info("broker also listening on ipc://%s", self.ipc_path)
        if self._security is not None:
            logger.info("CURVE keys required: %s", self._security.describe())
        elif not is_loopback(host):
            logger.warning(
                "NO AUTHENTICATION: the broker listens on %s, which is reachable from other machines, "
                "without CURVE keys. Task payloads are pickles and unpickling runs code: anyone who can "
                "connect can run code on every worker and client. Use --curve-keys DIR, or bind 127.0.0.1 "
                "or an interface of a network where every host is trusted.",
                host or "every interface",
            )
        return self.address

    @property
    def stopped(self) -> threading.Event:
        """Set once :meth:`stop` was requested."""
        return self._stop

    def stop(self) -> None:
        """Ask the loop to stop (thread- and signal-safe); it says GOODBYE and closes the socket."""
        self._stop.set()

    def start_thread(self) -> threading.Thread:
        """Bind if needed and run :meth:`serve_forever` in a daemon thread."""
        self.bind()
        thread = threading.Thread(target=self.serve_forever, name="zmqdask-broker", daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loop, wait for it, and release the socket and context."""
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                # The socket belongs to that thread until it returns: leave it alone.
                logger.warning("broker loop did not stop within %.1f s", timeout_s)
                return
        if self._socket is not None and not self._socket.closed:
            self._socket.close(linger=0)
            if self.ipc_path is not None:
                _remove_unix_socket(self.ipc_path)
        if self._curve is not None:
            self._curve.close()  # its ZAP socket would keep the context from terminating
            self._curve = None
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> BrokerServer:
        self.bind()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the loop ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Run until :meth:`stop`; then GOODBYE to every peer and close the socket.

        Frame flow (one ROUTER socket for clients, workers and pools)::

            peer DEALER ── [cmd | header | payload...] ──▶ ROUTER prepends [identity]
              recv_multipart(NOBLOCK, copy=False), drained while EVENTS says more wait (bounded per round)
              frames below ZERO_COPY_THRESHOLD_BYTES become bytes; larger stay zmq.Frame
              state.handle(identity, frames, now) ──▶ [(identity, frames), ...]
            ROUTER.send(identity | frames, NOBLOCK; copy=False for large frames) ──▶ peer
              EHOSTUNREACH → after the next read, state.peer_unreachable(identity) → more
              EAGAIN       → per-peer backlog, retried on POLLOUT, never dropped
            every TICK_INTERVAL_S: state.tick(now) → heartbeats, dead peers
        """
        sock = self._socket
        state = self.state
        if sock is None or state is None:
            raise CommunicationError("bind() the broker before serving")
        poller = zmq.Poller()
        poller.register(sock, _POLLIN)
        polling_out = False
        next_tick = time.monotonic() + TICK_INTERVAL_S
        try:
            while not self._stop.is_set():
                # Waiting work (releases piled up) is done between messages: do not sleep.
                idle_work = state.pending_work
                # A peer that left says GOODBYE before its connection closes, but a send to it
                # may fail before that message is read: unreachable peers found so far are
                # declared dead only after one more read, which takes a GOODBYE first.
                unreachable = self._take_unreachable() if self._unreachable_ids else None
                timeout_ms = (
                    0
                    if idle_work or unreachable
                    else max(0, math.ceil((next_tick - time.monotonic()) * 1000.0))
                )
                events = dict(poller.poll(timeout_ms))
                flags = events.get(sock, 0)
                # Plain ints: an operator on pyzmq's flag enums runs Python code each turn.
                if flags & _POLLOUT:
                    self._retry_backlog()
                if flags & _POLLIN:
                    self._drain(sock, state)
                elif idle_work:
                    self._emit(state.work(time.monotonic()))
                if unreachable:
                    self._declare_unreachable(unreachable)
                now = time.monotonic()
                if now >= next_tick:
                    self._emit(state.tick(now))
                    next_tick = now + TICK_INTERVAL_S
                want_out = bool(self._backlog)
                if want_out is not polling_out:
                    poller.modify(sock, _POLLIN | _POLLOUT if want_out else _POLLIN)
                    polling_out = want_out
        finally:
            self._say_goodbye(state)
            sock.close(linger=LINGER_MS)
            if self.ipc_path is not None:
                _remove_unix_socket(self.ipc_path)
            logger.info("broker stopped")

    def _drain(self, sock: zmq.Socket[Any], state: BrokerState) -> None:
        threshold = ZERO_COPY_THRESHOLD_BYTES
        curve = self._curve
        # Everything drained in one round is handled as one step of the state machine, so
        # what it produces for a peer leaves in as few messages as possible.
        received: list[tuple[bytes, list[Any]]] = []
        try:
            self._receive(sock, state, received, threshold, curve)
        finally:
            if received:
                self._emit(state.handle_many(received, time.monotonic()))

    def _receive(
        self,
        sock: zmq.Socket[Any],
        state: BrokerState,
        received: list[tuple[bytes, list[Any]]],
        threshold: int,
        curve: CurveServer | None,
    ) -> None:
        budget = MAX_BYTES_PER_ROUND
        recv = _BaseSocket.recv  # the Cython method: pyzmq's Python wrappers cost more than the call
        events = cast("Callable[[zmq.Socket[Any], int], int]", _BaseSocket.get)  # EVENTS is an int
        for turn in range(MAX_MESSAGES_PER_ROUND):
            if budget <= 0:
                return
            # After a message, asking whether another waits is cheaper than a receive that
            # fails (an exception): the step that answers it starts sooner.
            if turn and not events(sock, _EVENTS) & _POLLIN:
                return
            try:
                frame = recv(sock, _NOBLOCK, False)
            except zmq.Again:
                return
            frames = [frame]
            while frame.more:
                frame = recv(sock, _NOBLOCK, False)
                frames.append(frame)
            identity = frames[0].bytes
            if curve is not None:
                if received and len(frames) > 1 and frames[1].bytes == _HELLO_HEAD:
                    # The HELLO guard reads the peer registry: bring it up to date first.
                    self._emit(state.handle_many(received, time.monotonic()))
                    received.clear()
                # The key's User-Id property is only on the received zmq.Frame objects.
                refusal = curve.check(identity, frames, state.peers)
                if refusal is not None:
                    self._emit(refusal)
                    continue
            # Small frames are cheaper as bytes (headers, tiny pickles); large ones are kept as
            # the received zmq.Frame and forwarded without ever being copied.
            body = [frame.bytes if len(frame) < threshold else frame for frame in frames[1:]]
            received.append((identity, body))
            for frame in frames:
                budget -= len(frame)

    def _emit(self, out: Outgoing) -> None:
        # Sending can discover dead peers, whose removal produces more messages; a queue keeps
        # that iterative and preserves the order of everything produced.
        self._pending.extend(out)
        if self._emitting:
            return
        self._emitting = True
        try:
            pending = self._pending
            backlog = self._backlog
            while pending:
                identity, frames = pending.popleft()
                queue = backlog.get(identity)
                if queue is not None:
                    queue.append(frames)  # keep per-peer order behind what is already waiting
                    continue
                result = self._send(identity, frames)
                if result is _AGAIN:
                    backlog[identity] = deque([frames])
                elif result is _UNREACHABLE:
                    self._unreachable(identity)
        finally:
            self._emitting = False

    def _send(self, identity: bytes, frames: list[Any]) -> object:
        sock = self._socket
        if sock is None:
            return _UNREACHABLE
        # The Cython method itself for a real socket: pyzmq's Python wrapper costs more than
        # the call (any other object, such as a test double, is called through its method).
        send = _BaseSocket.send if isinstance(sock, _BaseSocket) else _send_through_method
        try:
            send(sock, identity, _SNDMORE_NOBLOCK, True, False)
        except zmq.Again:
            return _AGAIN
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return _UNREACHABLE
            raise
        # Once the identity frame is accepted the rest of the message cannot be refused.
        send_frames(sock, frames)
        return _SENT

    def _unreachable(self, identity: bytes) -> None:
        self._backlog.pop(identity, None)
        self._unreachable_ids[identity] = None

    def _take_unreachable(self) -> list[bytes]:
        identities = list(self._unreachable_ids)
        self._unreachable_ids.clear()
        return identities

    def _declare_unreachable(self, identities: list[bytes]) -> None:
        state = self.state
        if state is not None:
            for identity in identities:
                self._emit(state.peer_unreachable(identity, time.monotonic()))

    def _retry_backlog(self) -> None:
        for identity in list(self._backlog):
            queue = self._backlog.get(identity)
            if queue is None:
                continue  # dropped while an earlier peer's death was handled
            while queue:
                result = self._send(identity, queue[0])
                if result is _AGAIN:
                    break
                queue.popleft()
                if result is _UNREACHABLE:
                    self._unreachable(identity)
                    break
            else:
                del self._backlog[identity]

    def _say_goodbye(self, state: BrokerState) -> None:
        sock = self._socket
        if sock is None or sock.closed:
            return
        for identity, frames in state.shutdown(SHUTDOWN_REASON):
            try:
                sock.send(identity, zmq.SNDMORE | zmq.NOBLOCK)
                sock.send_multipart(frames)
            except zmq.ZMQError:
                continue  # best effort: the peer is gone or its pipe is full


def _unix_socket_in_use(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (binding there
    would silently take the path over; a file nobody listens on is a leftover)."""
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _remove_unix_socket(path: str) -> None:
    """Remove the socket file this broker listened on (ZeroMQ leaves it behind)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _send_through_method(sock: Any, data: Any, flags: int, copy: bool, track: bool) -> None:
    sock.send(data, flags, copy=copy)


_HELLO_HEAD = bytes((PROTOCOL_VERSION, HELLO))
_BaseSocket = zmq.backend.Socket
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_SNDMORE = int(zmq.SNDMORE)
_SNDMORE_NOBLOCK = _SNDMORE | _NOBLOCK
_SENT = object()
_AGAIN = object()
_UNREACHABLE = object()
