"""CURVE security: key files, the broker's allow-lists and HELLO guard, and encrypted traffic.

The broker runs in a thread (spoken to by raw DEALER sockets) or as ``python -m broker
--curve-keys`` with a ``python -m zmqdask.pool --curve-keys`` pool, all on 127.0.0.1.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from broker.server import BrokerServer
from zmqdask import Client
from zmqdask import protocol as P
from zmqdask.errors import ConnectTimeoutError, UsageError
from zmqdask.keys import main as keys_main
from zmqdask.pool import main as pool_main
from zmqdask.protocol import Message, decode, encode
from zmqdask.security import BrokerSecurity, HandshakeMonitor, Security, create_keys, read_key_file

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TIMEOUT_S = 5.0
"""Longest wait for one expected message or condition."""
START_TIMEOUT_S = 30.0
"""Longest a daemon may take to start on a loaded machine."""
STOP_GRACE_S = 5.0
LISTENING_PREFIX = "zmqdask-broker listening on "

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")


# --- helpers -------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(0.02)


class Dealers:
    """DEALER sockets with or without keys, all closed at teardown."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []
        self.monitors: list[HandshakeMonitor] = []

    def connect(
        self, address: str, identity: bytes, security: Security | None
    ) -> tuple[zmq.Socket[Any], HandshakeMonitor]:
        sock = self.context.socket(zmq.DEALER)
        self.sockets.append(sock)
        sock.linger = 0
        sock.identity = identity
        if security is not None:
            security.configure(sock)
        monitor = HandshakeMonitor(sock, keyed=security is not None)
        self.monitors.append(monitor)
        sock.connect(address)
        return sock, monitor

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


def send(sock: zmq.Socket[Any], command: int, header: list[Any]) -> None:
    sock.send_multipart(encode(command, header))


def expect(sock: zmq.Socket[Any], command: int, timeout_s: float = TIMEOUT_S) -> Message:
    """The next message with ``command`` (heartbeats are skipped) within a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
            raise AssertionError(f"no {P.COMMAND_NAMES[command]} within {timeout_s} s")
        message = decode(sock.recv_multipart())
        if message.command == command:
            return message
        if message.command != P.HEARTBEAT:
            raise AssertionError(f"expected {P.COMMAND_NAMES[command]}, got {message.name} {message.header}")


WORKER_INFO = {"nthreads": 1, "credit": 2, "name": "w", "pid": os.getpid()}
POOL_INFO = {"pool": "p", "host": "h", "nworkers": 1}
CLIENT_INFO = {"name": "c", "pid": os.getpid()}


class Relay:
    """A TCP relay between peers and the broker that keeps a copy of every byte it forwards."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = (HOST, upstream_port)
        self._listener = socket.create_server((HOST, 0))
        self._listener.setblocking(False)
        self.address = f"tcp://{HOST}:{self._listener.getsockname()[1]}"
        self._captured = bytearray()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="test-relay", daemon=True)
        self._thread.start()

    def captured(self) -> bytes:
        """Every byte relayed so far, both directions."""
        with self._lock:
            return bytes(self._captured)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        partner: dict[socket.socket, socket.socket] = {}
        try:
            while True:
                for key, _ in selector.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        downstream, _ = self._listener.accept()
                        upstream = socket.create_connection(self._upstream, timeout=TIMEOUT_S)
                        partner[downstream], partner[upstream] = upstream, downstream
                        for end in (downstream, upstream):
                            selector.register(end, selectors.EVENT_READ)
                        continue
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    other = partner.get(sock)
                    if not data or other is None:
                        for closing in (sock, other):
                            if closing is not None and closing in partner:
                                selector.unregister(closing)
                                partner.pop(closing, None)
                                closing.close()
                        continue
                    with self._lock:
                        self._captured += data
                    other.sendall(data)
        finally:
            for end in partner:
                end.close()
            selector.close()

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._wake_w.send(b"x")
        self._thread.join(TIMEOUT_S)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()


class Daemon:
    """``python -m ...`` in its own process group, output in a log file; stopped by :meth:`stop`."""

    def __init__(self, argv: list[str], log_path: Path, read_address: bool = False) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # closed in stop()
        env = dict(os.environ, ZMQDASK_PARENT_PID=str(os.getpid()))
        self.process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if read_address else self._log,
            stderr=self._log,
            env=env,
            cwd=str(REPO),
            start_new_session=True,
        )
        self.address = self._read_address() if read_address else ""

    def _read_address(self) -> str:
        stream = self.process.stdout
        assert stream is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            while time.monotonic() < deadline and self.process.poll() is None:
                if not selector.select(timeout=0.1):
                    continue
                buffer += os.read(stream.fileno(), 4096)
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(LISTENING_PREFIX):
                        return line[len(LISTENING_PREFIX) :].strip()
        self.stop()
        raise AssertionError(f"the broker did not start:\n{self.log()}")

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the whole group; reap and close everything."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, 9)  # stragglers: the pool's fork server and workers
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(STOP_GRACE_S)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory with the broker's pair, one client and one worker key."""
    directory = tmp_path_factory.mktemp("keys")
    create_keys(directory, clients=1, workers=1)
    return directory


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    """A key directory with the right broker key but client and worker keys the broker does not know."""
    directory = tmp_path_factory.mktemp("stranger")
    create_keys(directory, clients=1, workers=1)
    (directory / "broker.key").write_bytes((keys / "broker.key").read_bytes())
    return directory


@pytest.fixture
def dealers() -> Iterator[Dealers]:
    factory = Dealers()
    yield factory
    factory.close()


@pytest.fixture
def secure_server(keys: Path) -> Iterator[BrokerServer]:
    """A broker in a thread that requires the keys of ``keys``."""
    server = BrokerServer(HOST, 0, liveness_timeout_s=30.0, security=BrokerSecurity.from_directory(keys))
    server.start_thread()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secure_cluster(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """``python -m broker --curve-keys`` and a one-worker pool with the worker key; yields the broker."""
    logs = tmp_path_factory.mktemp("logs")
    broker = Daemon(
        ["broker", "--host", HOST, "--port", "0", "--curve-keys", str(keys), "--log-level", "WARNING"],
        logs / "broker.log",
        read_address=True,
    )
    pool: Daemon | None = None
    try:
        pool = Daemon(
            ["zmqdask.pool", broker.address, "--nworkers", "1", "--curve-keys", str(keys), "--log-level", "WARNING"],
            logs / "pool.log",
        )
        yield broker
    finally:
        if pool is not None:
            pool.stop()
        broker.stop()


def client_keys(keys: Path) -> Security:
    return Security.from_directory(keys, "client")


def worker_keys(keys: Path) -> Security:
    return Security.from_directory(keys, "worker")


# --- key files -----------------------------------------------------------------------------


def test_keys_command_writes_the_layout_and_keeps_existing_pairs(tmp_path: Path, capsys: Any) -> None:
    directory = tmp_path / "k"
    assert keys_main([str(directory), "--clients", "2", "--workers", "1"]) == 0
    expected = {
        "broker.key",
        "broker.key_secret",
        "clients/client-1.key",
        "clients/client-1.key_secret",
        "clients/client-2.key",
        "clients/client-2.key_secret",
        "workers/worker-1.key",
        "workers/worker-1.key_secret",
    }
    found = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    assert found == expected
    for name in expected:
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        if name.endswith("_secret"):
            assert mode & 0o077 == 0, f"{name} is readable by others ({oct(mode)})"
        public, secret = read_key_file(directory / name, secret=False)
        assert (secret is not None) == name.endswith("_secret")
        if secret is not None:
            assert zmq.curve_public(secret) == public  # the pair belongs together
    assert len({read_key_file(directory / n, secret=False)[0] for n in expected if n.endswith(".key")}) == 4
    printed = capsys.readouterr().out
    assert "broker.key_secret  (secret: the broker host only)" in printed

    before = (directory / "clients/client-1.key_secret").read_bytes()
    assert keys_main([str(directory), "--clients", "3", "--workers", "1"]) == 0
    assert (directory / "clients/client-1.key_secret").read_bytes() == before
    assert (directory / "clients/client-3.key_secret").exists()
    assert "client-3.key " in capsys.readouterr().out


def test_python_dash_m_zmqdask_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqdask.keys", str(tmp_path / "k"), "--clients", "0", "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=str(REPO),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "broker.key_secret").exists()
    assert not list((tmp_path / "k" / "clients").iterdir())


def test_security_from_directory_explains_what_is_missing(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Security.from_directory(tmp_path / "missing")
    create_keys(tmp_path / "two", clients=2, workers=0)
    with pytest.raises(UsageError, match=r"several client keys .*client-1, client-2"):
        Security.from_directory(tmp_path / "two")
    chosen = Security.from_directory(tmp_path / "two", name="client-2")
    assert chosen.public_key == read_key_file(tmp_path / "two/clients/client-2.key", secret=False)[0]
    assert "secret_key" not in repr(chosen) and chosen.secret_key.decode() not in repr(chosen)
    with pytest.raises(UsageError, match="no worker key pair"):
        Security.from_directory(tmp_path / "two", "worker")
    other = client_keys(keys)
    with pytest.raises(UsageError, match="do not belong together"):
        Security(broker_public_key=other.broker_public_key, public_key=other.public_key, secret_key=chosen.secret_key)
    with pytest.raises(UsageError, match="Z85"):
        Security(broker_public_key=b"short", public_key=other.public_key, secret_key=other.secret_key)


def test_key_paths_may_start_with_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    create_keys("~/k", clients=1, workers=1)
    assert (tmp_path / "k" / "broker.key_secret").exists()
    expected = read_key_file(tmp_path / "k/clients/client-1.key", secret=False)[0]
    assert Security.from_directory("~/k").public_key == expected
    assert Security.from_files("~/k/clients/client-1.key_secret", "~/k/broker.key").public_key == expected
    assert BrokerSecurity.from_directory("~/k").clients == ((expected, "client-1"),)


def test_broker_needs_at_least_one_allowed_key(tmp_path: Path) -> None:
    create_keys(tmp_path, clients=0, workers=0)
    with pytest.raises(UsageError, match="nobody could connect"):
        BrokerSecurity.from_directory(tmp_path)


def test_cli_option_errors_are_usage_errors(tmp_path: Path, keys: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        pool_main(["tcp://127.0.0.1:1", "--key", str(keys / "workers/worker-1.key_secret")])
    assert exited.value.code == 2
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--host", HOST, "--port", "0", "--curve-keys", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=str(REPO),
    )
    assert result.returncode == 2
    assert "--curve-keys" in result.stderr and "does not exist" in result.stderr


# --- the broker's allow-lists and HELLO guard (broker in a thread) ------------------------------


def test_each_key_registers_only_in_the_roles_of_its_list(
    secure_server: BrokerServer, dealers: Dealers, keys: Path
) -> None:
    state = secure_server.state
    assert state is not None
    client, _ = dealers.connect(secure_server.address, b"c-1", client_keys(keys))
    for role, info in (("worker", WORKER_INFO), ("pool", POOL_INFO)):
        send(client, P.HELLO, [role, info])
        error = expect(client, P.ERROR)
        assert error.header[0] == P.ERR_NOT_ALLOWED
        assert f"may not register as a {role}" in error.header[1] and "clients/client-1" in error.header[1]
    assert not state.peers  # refused before the broker's state saw anything
    send(client, P.HELLO, ["client", CLIENT_INFO])
    expect(client, P.WELCOME)
    assert set(state.clients) == {b"c-1"}

    worker, _ = dealers.connect(secure_server.address, b"w-1", worker_keys(keys))
    send(worker, P.HELLO, ["client", CLIENT_INFO])
    assert expect(worker, P.ERROR).header[0] == P.ERR_NOT_ALLOWED
    send(worker, P.HELLO, ["worker", WORKER_INFO])
    expect(worker, P.WELCOME)
    pool, _ = dealers.connect(secure_server.address, b"p-1", worker_keys(keys))
    send(pool, P.HELLO, ["pool", POOL_INFO])
    expect(pool, P.WELCOME)
    assert set(state.workers) == {b"w-1"} and set(state.peers) == {b"c-1", b"w-1", b"p-1"}


def test_unknown_or_missing_keys_get_no_service(secure_server: BrokerServer, dealers: Dealers, stranger: Path) -> None:
    unknown, unknown_monitor = dealers.connect(secure_server.address, b"x-1", client_keys(stranger))
    send(unknown, P.HELLO, ["client", CLIENT_INFO])
    plain, plain_monitor = dealers.connect(secure_server.address, b"x-2", None)
    send(plain, P.HELLO, ["client", CLIENT_INFO])
    wait_for(lambda: unknown_monitor.failure() is not None, what="the unknown key's refusal")
    wait_for(lambda: plain_monitor.failure() is not None, what="the key-less peer's refusal")
    assert "not in the broker's clients/ directory" in str(unknown_monitor.failure())
    assert "requires CURVE keys" in str(plain_monitor.failure())
    assert not unknown.poll(0) and not plain.poll(0)
    assert secure_server.state is not None and not secure_server.state.peers


def test_a_key_cannot_speak_for_an_identity_registered_with_another(
    secure_server: BrokerServer, dealers: Dealers, keys: Path
) -> None:
    state = secure_server.state
    assert state is not None
    victim, _ = dealers.connect(secure_server.address, b"victim", worker_keys(keys))
    send(victim, P.HELLO, ["worker", WORKER_INFO])
    expect(victim, P.WELCOME)
    # The ROUTER hands the identity over to the newest connection; the key stays the victim's.
    hijacker, _ = dealers.connect(secure_server.address, b"victim", client_keys(keys))
    send(hijacker, P.DONE, [[["k", P.FINISHED, ["int", 1], 0]]])
    error = expect(hijacker, P.ERROR)
    assert error.header[0] == P.ERR_NOT_ALLOWED and "registered with another key" in error.header[1]
    send(hijacker, P.HELLO, ["client", CLIENT_INFO])
    assert "registered with another key" in expect(hijacker, P.ERROR).header[1]
    assert set(state.workers) == {b"victim"} and not state.clients


def test_client_without_keys_is_told_the_broker_requires_them(secure_server: BrokerServer) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectTimeoutError, match="requires CURVE keys"):
        Client(secure_server.address, timeout=TIMEOUT_S, set_as_default=False)
    assert time.monotonic() - started < TIMEOUT_S  # told at once, not at the deadline


def test_client_with_keys_is_told_the_broker_has_none(dealers: Dealers, keys: Path) -> None:
    with BrokerServer(HOST, 0) as plain:
        plain.start_thread()
        with pytest.raises(ConnectTimeoutError, match=r"does not use (CURVE )?keys"):
            Client(plain.address, timeout=TIMEOUT_S, security=keys, set_as_default=False)


# --- real daemons ----------------------------------------------------------------------------


def test_client_with_its_key_is_served_end_to_end(secure_cluster: Daemon, keys: Path) -> None:
    with Client(secure_cluster.address, security=keys, timeout=TIMEOUT_S, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=START_TIMEOUT_S)
        futures = client.map(pow, range(20), [3] * 20)
        assert client.gather(futures) == [i**3 for i in range(20)]
    with Client(
        secure_cluster.address, security=Security.from_directory(keys), timeout=TIMEOUT_S, set_as_default=False
    ) as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=TIMEOUT_S) == 6


def test_unknown_client_key_gets_a_clear_error(secure_cluster: Daemon, stranger: Path) -> None:
    with pytest.raises(ConnectTimeoutError, match="refused this client's CURVE key"):
        Client(secure_cluster.address, security=stranger, timeout=TIMEOUT_S, set_as_default=False)


def test_pool_with_a_client_key_is_refused(secure_cluster: Daemon, keys: Path, tmp_path: Path) -> None:
    impostor = Daemon(
        [
            "zmqdask.pool",
            secure_cluster.address,
            "--nworkers",
            "1",
            "--key",
            str(keys / "clients/client-1.key_secret"),
            "--broker-key",
            str(keys / "broker.key"),
            "--log-level",
            "WARNING",
        ],
        tmp_path / "impostor.log",
    )
    try:
        wait_for(
            lambda: "may not register as a pool" in secure_cluster.log(),
            START_TIMEOUT_S,
            "the broker's refusal of the pool",
        )
        wait_for(
            lambda: "may not register as a worker" in secure_cluster.log(),
            START_TIMEOUT_S,
            "the broker's refusal of its worker",
        )
        with Client(secure_cluster.address, security=keys, timeout=TIMEOUT_S, set_as_default=False) as client:
            pools = {details["pool"] for details in client.scheduler_info()["workers"].values()}
            assert len(pools) == 1 and not any(p.endswith(f"-{impostor.process.pid}") for p in pools)
    finally:
        impostor.stop()


def test_traffic_is_encrypted_with_keys_and_plain_without(secure_cluster: Daemon, keys: Path) -> None:
    marker = f"zmqdask-marker-{uuid.uuid4().hex}"
    # Control: without keys the marker crosses the wire as it is (no workers needed to see it).
    with BrokerServer(HOST, 0) as plain:
        plain.start_thread()
        relay = Relay(plain.port)
        try:
            with Client(relay.address, timeout=TIMEOUT_S, set_as_default=False) as client:
                future = client.submit(str.upper, marker)
                wait_for(lambda: marker.encode() in relay.captured(), what="the marker in plain traffic")
                del future
        finally:
            relay.close()

    port = int(secure_cluster.address.rsplit(":", 1)[1])
    relay = Relay(port)
    try:
        with Client(relay.address, security=keys, timeout=TIMEOUT_S, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=START_TIMEOUT_S)
            assert client.submit(str.upper, marker).result(timeout=TIMEOUT_S) == marker.upper()
        captured = relay.captured()
    finally:
        relay.close()
    assert len(captured) > 2 * len(marker)  # the task and its result did go through the relay
    assert marker.encode() not in captured and marker.upper().encode() not in captured
