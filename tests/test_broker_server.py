"""Tests of the real broker loop over TCP, spoken to by raw DEALER sockets, and of its CLI."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.cli import EXIT_BIND_FAILED, EXIT_OK
from broker.server import BrokerServer
from broker.state import BrokerState
from zmqdask import protocol as P
from zmqdask.protocol import Message, decode, encode

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 5.0
LISTENING = re.compile(r"^zmqdask-broker listening on tcp://127\.0\.0\.1:(\d+)$")


class Dealers:
    """Creates DEALER sockets and closes every one of them at teardown (no leaked sockets)."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []

    def connect(self, address: str, identity: bytes) -> zmq.Socket[Any]:
        sock = self.context.socket(zmq.DEALER)
        self.sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(address)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def dealers() -> Iterator[Dealers]:
    factory = Dealers()
    yield factory
    factory.close()


@pytest.fixture
def server() -> Iterator[BrokerServer]:
    srv = BrokerServer("127.0.0.1", 0, heartbeat_interval_s=0.05, liveness_timeout_s=30.0)
    srv.start_thread()
    yield srv
    srv.close()


def send(sock: zmq.Socket[Any], command: int, header: list[Any], payload: list[Any] | None = None) -> None:
    sock.send_multipart(encode(command, header, payload or []))


def expect(sock: zmq.Socket[Any], command: int, timeout_s: float = TIMEOUT_S) -> Message:
    """The next message with ``command`` (heartbeats and others are skipped) within a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
            raise AssertionError(f"no {P.COMMAND_NAMES[command]} within {timeout_s} s")
        message = decode(sock.recv_multipart())
        if message.command == command:
            return message


def register(sock: zmq.Socket[Any], role: str, info: dict[str, Any]) -> Message:
    send(sock, P.HELLO, [role, info])
    return expect(sock, P.WELCOME)


def test_task_round_trip_over_tcp(server: BrokerServer, dealers: Dealers) -> None:
    worker = dealers.connect(server.address, b"worker-1")
    client = dealers.connect(server.address, b"client-1")
    welcome = register(worker, "worker", {"nthreads": 1, "credit": 2, "name": "w", "pid": os.getpid()})
    assert server.state is not None and welcome.header[0] == server.state.epoch
    assert welcome.header[1]["address"] == server.address
    register(client, "client", {"name": "c", "pid": os.getpid()})

    args = os.urandom(300_000)  # above the zero-copy threshold: forwarded as a zmq.Frame
    fn_hash, fn_frame = b"hash-inc", b"<pickled function>"
    send(
        client,
        P.SUBMIT,
        [[fn_hash], [["inc-1", fn_hash, [], 0, 0, P.FLAG_WANTED | P.FLAG_PUSH_RESULT, 1]]],
        [fn_frame, args],
    )
    compute = expect(worker, P.COMPUTE)
    assert compute.header == [[fn_hash], [["inc-1", fn_hash, [], P.FLAG_PUSH_RESULT, 1]]]
    assert compute.payload == [fn_frame, args]

    value = os.urandom(200_000)
    send(worker, P.DONE, [[["inc-1", P.FINISHED, ["bytes", len(value)], 1]]], [value])
    report = expect(client, P.REPORT)
    assert report.header == [[["inc-1", P.FINISHED, ["bytes", len(value)], 1]]]
    assert report.payload == [value]

    send(client, P.INFO, [42])
    reply = expect(client, P.INFO_REPLY)
    assert reply.header[0] == 42
    info = reply.header[1]
    assert list(info["workers"]) == [b"worker-1".hex()] and info["tasks"]["memory"] == 1


def test_malformed_message_over_tcp_gets_an_error(server: BrokerServer, dealers: Dealers) -> None:
    client = dealers.connect(server.address, b"client-bad")
    client.send_multipart([b"\x01\x0e", b"\xc1"])
    error = expect(client, P.ERROR)
    assert error.header[0] == P.ERR_MALFORMED
    send(client, P.GATHER, [["x"]])  # well formed but unregistered
    assert expect(client, P.UNKNOWN_PEER).header[0] == server.state.epoch  # type: ignore[union-attr]


def test_disconnected_peer_is_found_unreachable(server: BrokerServer, dealers: Dealers) -> None:
    worker = dealers.connect(server.address, b"worker-gone")
    register(worker, "worker", {"nthreads": 1, "credit": 1})
    client = dealers.connect(server.address, b"client-2")
    register(client, "client", {"name": "c"})
    worker.close(linger=0)
    # Liveness is 30 s: only a heartbeat failing with EHOSTUNREACH can remove the worker now.
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        send(client, P.INFO, [1])
        if expect(client, P.INFO_REPLY).header[1]["workers"] == {}:
            break
        assert time.monotonic() < deadline, "the broker never noticed the closed worker"
        client.poll(50)


def test_stop_says_goodbye_to_peers(dealers: Dealers) -> None:
    srv = BrokerServer("127.0.0.1", 0)
    srv.start_thread()
    try:
        client = dealers.connect(srv.address, b"client-3")
        register(client, "client", {"name": "c"})
        srv.stop()
        assert expect(client, P.GOODBYE).header == ["broker shutting down"]
    finally:
        srv.close()


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the broker printed nothing"
    return proc.stdout.readline().rstrip("\n")


def test_cli_prints_its_address_and_stops_on_sigterm(dealers: Dealers) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, 20.0)
        match = LISTENING.match(line)
        assert match, line
        port = int(match.group(1))
        assert port > 0
        client = dealers.connect(f"tcp://127.0.0.1:{port}", b"cli-client")
        register(client, "client", {"name": "c"})
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert expect(client, P.GOODBYE).header == ["broker shutting down"]
        assert proc.wait(timeout=TIMEOUT_S) == EXIT_OK
        assert time.monotonic() - started < TIMEOUT_S
        assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_cli_also_listens_on_a_unix_socket_when_asked(dealers: Dealers, tmp_path: Path) -> None:
    path = tmp_path / "broker.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0", "--ipc", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        match = LISTENING.match(_read_line(proc, 20.0))
        assert match  # the TCP address is still the one printed
        # A second broker may not take the path over while the first listens there.
        second = subprocess.run(
            [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0", "--ipc", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == EXIT_BIND_FAILED
        assert "another process listens there" in second.stderr and str(path) in second.stderr
        local = dealers.connect(f"ipc://{path}", b"ipc-client")
        remote = dealers.connect(f"tcp://127.0.0.1:{match.group(1)}", b"tcp-client")
        register(local, "client", {"name": "local"})
        register(remote, "client", {"name": "remote"})
        proc.send_signal(signal.SIGTERM)
        for client in (local, remote):
            assert expect(client, P.GOODBYE).header == ["broker shutting down"]
        assert proc.wait(timeout=TIMEOUT_S) == EXIT_OK
        assert not path.exists()  # the socket file goes with the broker
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_reports_a_port_in_use_with_a_named_exit_code() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == EXIT_BIND_FAILED
    assert result.stdout == ""
    assert "cannot listen" in result.stderr and str(port) in result.stderr


class FakeRouter:
    """Stands in for the ROUTER socket: refuses some identities with EAGAIN or EHOSTUNREACH."""

    closed = False

    def __init__(self, again: dict[bytes, int], unreachable: set[bytes]) -> None:
        self.again = again
        self.unreachable = unreachable
        self.sent: list[list[bytes]] = []
        self._partial: list[bytes] = []

    def send(self, data: Any, flags: int = 0, copy: bool = True) -> None:
        if not self._partial and flags & zmq.NOBLOCK:  # the identity frame decides routing
            if data in self.unreachable:
                raise zmq.ZMQError(zmq.EHOSTUNREACH)
            if self.again.get(data, 0) > 0:
                self.again[data] -= 1
                raise zmq.Again()
        self._partial.append(bytes(data))
        if not flags & zmq.SNDMORE:
            self.sent.append(self._partial)
            self._partial = []

    def close(self, linger: int | None = None) -> None:
        self.closed = True


def test_send_path_keeps_a_backlog_on_eagain_and_reports_unreachable_peers() -> None:
    server = BrokerServer("127.0.0.1", 0)
    try:
        server.state = BrokerState(epoch="e", now=time.monotonic())
        server.state.handle(b"gone", encode(P.HELLO, ["worker", {"nthreads": 1, "credit": 1}]), time.monotonic())
        fake = FakeRouter(again={b"slow": 1}, unreachable={b"gone"})
        server._socket = fake  # type: ignore[assignment]
        server._emit([(b"slow", [b"1"]), (b"fast", [b"a"]), (b"slow", [b"2", b"3"]), (b"gone", [b"x"])])
        # "slow" refused once: its messages wait, in order, behind the first; others go on.
        assert fake.sent == [[b"fast", b"a"]]
        # Found unreachable on send, declared dead only after the next read (which would
        # have taken its GOODBYE, had it said one).
        assert "gone" in {w.decode() for w in server.state.workers}
        server._declare_unreachable(server._take_unreachable())
        assert "gone" not in {w.decode() for w in server.state.workers}
        server._retry_backlog()
        assert fake.sent == [[b"fast", b"a"], [b"slow", b"1"], [b"slow", b"2", b"3"]]
        assert server._backlog == {}
    finally:
        server.close()
