"""Large values straight between a client and the worker holding them, in one hop.

Through the broker, a value crosses two sockets, each a full copy through the kernel, one
after the other.  A worker started with a *data address* therefore also binds a ROUTER
socket of its own and announces where in its HELLO.  When a client asks for a value of at
least :data:`~zmqdask.config.DIRECT_MIN_BYTES` held by such a worker, the broker answers with
an ELSEWHERE report naming that address instead of relaying the bytes, and the client sends
the holder a GET itself::

    client ──GATHER──▶ broker ──REPORT ELSEWHERE [type, nbytes, address]──▶ client
    client ──GET [request_id, keys]──▶ worker's data socket ──DATA──▶ client

The broker's ledger stays the only truth: the worker answers from what it holds, and a key it
no longer holds, a worker that does not answer in time or an address this host cannot reach
make the client ask the broker again with RELAY_GATHER, which is never answered ELSEWHERE.

A data address is ``ipc://DIRECTORY`` (each worker binds a Unix socket in it, named after
its identity: the local cluster's choice) or ``tcp://HOST`` (each worker binds a free port on
HOST).  Workers with CURVE keys do not bind one: the data socket would be unencrypted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from zmqdask import protocol
from zmqdask.config import DIRECT_MIN_BYTES_PER_S, DIRECT_TIMEOUT_S, IPC_BUFFER_BYTES
from zmqdask.errors import ProtocolError, UsageError

logger = logging.getLogger(__name__)

_WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", "[::]"})

_MAX_CHANNELS = 16
"""Most data sockets of other workers a peer keeps connected; the least recently used one
is closed past that (workers that died leave theirs behind)."""

FAILED_COOLDOWN_S = 30.0
"""How long a peer uses the broker instead of a data socket that failed it (not answering
in time, refusing the connection) before it tries that socket again."""

_RECONNECT_IVL_MAX_MS = 5000
"""Longest wait between ZeroMQ's attempts to reconnect a data socket whose peer went away."""

_MAX_IPC_PATH = 100
"""Longest Unix socket path bound (the system limit is 107 or 108 bytes)."""


def check_data_address(spec: str) -> str:
    """Validate a data address given to a pool; returns it, or raises :class:`UsageError`."""
    if spec.startswith("ipc://"):
        directory = spec[len("ipc://") :]
        if not directory or not os.path.isdir(directory):
            raise UsageError(f"data address {spec!r}: {directory!r} is not a directory (expected ipc://DIRECTORY)")
        return spec
    if spec.startswith("tcp://"):
        host = spec[len("tcp://") :]
        if not host or re.fullmatch(r".*[^:]:\d+", host):
            raise UsageError(
                f"data address {spec!r}: expected tcp://HOST, without a port (each worker takes a free one)"
            )
        if host in _WILDCARD_HOSTS:
            # Workers announce the address they bound: it must be one that others can reach.
            raise UsageError(
                f"data address {spec!r}: give an address of this host that clients and other workers can "
                "reach (its IP address or host name), not a wildcard"
            )
        return spec
    raise UsageError(f"data address {spec!r}: expected ipc://DIRECTORY or tcp://HOST")


def bind_data_socket(context: zmq.Context[Any], spec: str, identity: bytes) -> tuple[zmq.Socket[Any], str] | None:
    """Bind a worker's data socket as ``spec`` says; returns it and the address clients use.

    None (logged) when it cannot be bound: the worker then serves everything through the
    broker, which is slower but complete.
    """
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if spec.startswith("ipc://"):
            # Named by a digest: identities can be long, and the path must stay short.
            path = os.path.join(spec[len("ipc://") :], hashlib.blake2b(identity, digest_size=10).hexdigest() + ".sock")
            if len(path.encode()) > _MAX_IPC_PATH:
                raise UsageError(f"the socket path {path!r} is too long for a Unix socket")
            sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
            sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
            address = f"ipc://{path}"
            sock.bind(address)
        else:
            host = spec[len("tcp://") :]
            port = sock.bind_to_random_port(f"tcp://{host}")
            address = f"tcp://{host}:{port}"
    except (zmq.ZMQError, UsageError) as exc:
        sock.close(linger=0)
        logger.warning("cannot listen for direct transfers at %s (%s): values go through the broker", spec, exc)
        return None
    return sock, address


_SocketT = TypeVar("_SocketT", bound=zmq.Socket[Any])


def connect_data_socket(sock: _SocketT, address: str) -> _SocketT:
    """Connect a new DEALER ``sock`` to the data socket at ``address``; returns it."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
    if address.startswith("ipc://"):
        sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
        sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
    try:
        sock.connect(address)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


def send_to(sock: zmq.Socket[Any], identity: bytes, frames: Sequence[Any]) -> bool:
    """Send one message to the peer ``identity`` of a ROUTER without blocking; False if the
    peer cannot take it now (it then times out and asks the broker instead)."""
    try:
        sock.send(identity, zmq.NOBLOCK | zmq.SNDMORE)
        protocol.send_frames(sock, frames, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def transfer_deadline_s(nbytes: int, base_s: float | None = None) -> float:
    """How long a direct transfer of ``nbytes`` may take before it counts as failed:
    ``base_s`` (default :data:`DIRECT_TIMEOUT_S`) plus the bytes at the slowest rate allowed."""
    return (DIRECT_TIMEOUT_S if base_s is None else base_s) + nbytes / DIRECT_MIN_BYTES_PER_S


def reachable(address: str) -> bool:
    """Whether this process can plausibly connect to a worker's data ``address``: a Unix
    socket must exist on this host (a local cluster on another machine has the same paths)."""
    if address.startswith("ipc://"):
        return os.path.exists(address[len("ipc://") :])
    return address.startswith("tcp://")


class DirectFetcher:
    """The client's side: one DEALER per worker data address, one request at a time on each.

    Requests to one worker wait for each other (the values come one after another over one
    connection anyway).  A request not answered in time closes its socket, so its late
    answer is never read, and the address is not tried again for :data:`FAILED_COOLDOWN_S`.
    Values sent with :meth:`put` count as outstanding on their channel until
    :meth:`put_settled`: a channel with outstanding values is never closed to make room.
    """

    def __init__(self, context: zmq.Context[Any]) -> None:
        self._context = zmq.asyncio.Context.shadow(context.underlying)
        self._channels: dict[str, tuple[zmq.asyncio.Socket, asyncio.Lock]] = {}
        self._failed: dict[str, float] = {}
        """Address -> until when it is not tried (monotonic time)."""
        self._puts: dict[str, dict[str, int]] = {}
        """Address -> keys sent there with put() and not settled yet -> their bytes."""
        self._next_request = 0
        self._closed = False

    def usable(self, address: str) -> bool:
        """Whether to try ``address`` now."""
        if self._closed or not reachable(address):
            return False
        until = self._failed.get(address)
        if until is None:
            return True
        if until > time.monotonic():
            return False
        del self._failed[address]
        return True

    def give_up(self, address: str, why: str) -> None:
        """Do not use ``address`` for a while: a transfer there failed (``why``, for the log)."""
        if address not in self._failed:
            logger.warning(
                "direct transfers with %s failed (%s); using the broker for it for %d s",
                address,
                why,
                FAILED_COOLDOWN_S,
            )
        self._failed[address] = time.monotonic() + FAILED_COOLDOWN_S
        self._puts.pop(address, None)
        self._drop(address)

    async def put(self, address: str, key: str, frames: list[Any]) -> float | None:
        """Send the value ``key`` to the worker at ``address`` (a STORE, confirmed by that
        worker to the broker, not to us).

        Returns how long to wait for that confirmation (the bytes outstanding to that worker
        count), or None if the value could not even be queued.
        """
        if not self.usable(address):
            return None
        field = protocol.payload_field(frames)
        message = protocol.encode(protocol.STORE, [[[key, field]]], frames if type(field) is not bytes else ())
        outstanding = self._puts.setdefault(address, {})
        outstanding[key] = sum(protocol.frame_nbytes(frame) for frame in frames)
        try:
            sock, _ = self._channel(address)
            # Queued without copying; ZeroMQ sends it while the loop goes on.
            await sock.send_multipart(message, copy=False)
        except zmq.ZMQError as exc:
            self.give_up(address, str(exc))
            return None
        return transfer_deadline_s(sum(outstanding.values()))

    def put_settled(self, address: str, key: str) -> None:
        """The broker answered for the value ``key`` sent to ``address``."""
        outstanding = self._puts.get(address)
        if outstanding is not None:
            outstanding.pop(key, None)
            if not outstanding:
                del self._puts[address]

    async def fetch(self, address: str, keys: list[str], nbytes: int) -> tuple[dict[str, list[Any]], list[str]] | None:
        """Ask the worker at ``address`` for ``keys`` (``nbytes`` in all).

        Returns the frames of each value it sent and the keys it does not hold, or None if
        it did not answer within :data:`DIRECT_TIMEOUT_S` plus the time the bytes take at
        :data:`DIRECT_MIN_BYTES_PER_S` (counted from when the request is sent).
        """
        if not self.usable(address):
            return None
        try:
            sock, lock = self._channel(address)
        except zmq.ZMQError as exc:
            self.give_up(address, str(exc))
            return None
        async with lock:
            if sock.closed:
                return None
            self._next_request += 1
            request_id = self._next_request
            try:
                await sock.send_multipart(protocol.encode(protocol.GET, [request_id, keys]))
                message = await asyncio.wait_for(self._answer(sock, request_id), transfer_deadline_s(nbytes))
            except (asyncio.TimeoutError, zmq.ZMQError, ProtocolError) as exc:
                self.give_up(address, "no answer in time" if isinstance(exc, asyncio.TimeoutError) else str(exc))
                return None
        entries, missing = message.header[1], message.header[2]
        values: dict[str, list[Any]] = {}
        counts = [entry[1] for entry in entries]
        for entry, frames in zip(entries, protocol.split_payload(counts, message.payload), strict=True):
            values[entry[0]] = frames
        return values, list(missing)

    @staticmethod
    async def _answer(sock: zmq.asyncio.Socket, request_id: int) -> protocol.Message:
        while True:
            frames = await sock.recv_multipart(copy=False)
            message = protocol.decode(frames)
            if message.command == protocol.DATA and message.header[0] == request_id:
                return message

    def _channel(self, address: str) -> tuple[zmq.asyncio.Socket, asyncio.Lock]:
        channels = self._channels
        channel = channels.pop(address, None)
        if channel is None:
            # Make room: close the least recently used channels nothing waits on (dicts keep
            # insertion order).  Values queued on a channel are lost if it closes, so one
            # with outstanding puts stays, even past the limit.
            idle = [a for a, (_, lock) in channels.items() if not lock.locked() and a not in self._puts]
            for other in idle[: max(0, len(channels) + 1 - _MAX_CHANNELS)]:
                self._drop(other)
            sock = connect_data_socket(self._context.socket(zmq.DEALER), address)
            channel = (sock, asyncio.Lock())
        channels[address] = channel  # now the most recently used
        return channel

    def _drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            channel[0].close(linger=0)

    def close(self) -> None:
        """Close every socket (on the loop's thread, before the context terminates)."""
        self._closed = True
        self._puts.clear()
        for address in list(self._channels):
            self._drop(address)
