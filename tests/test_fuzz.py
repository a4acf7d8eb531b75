"""Protocol fuzzing of the real broker: a flood of malformed messages beside a well-behaved job.

Raw DEALER sockets send at least 100,000 malformed multipart messages, unregistered and after
registering as a client and as a worker.  ``zmqdask.protocol.decode`` (the wire contract) is
the oracle for which of them the broker must count as malformed.  The broker must stay up,
answer INFO, keep its memory bounded and serve the well-behaved client without an error.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from daemons import Cluster, held_tasks, running_cluster, wait_all

from zmqdask import Client, Future
from zmqdask import protocol as proto
from zmqdask.config import PROTOCOL_VERSION
from zmqdask.errors import ProtocolError

logger = logging.getLogger(__name__)

FUZZ_MESSAGES = 100_000
"""Malformed messages to send, at least (valid but meaningless ones come on top)."""
BURST = 200
"""Messages sent before the replies are drained."""
SEND_TIMEOUT_MS = 10_000
"""A send blocked this long means the broker stopped reading: fail instead of hanging."""
REPLY_TIMEOUT_S = 10.0
"""Longest wait for a WELCOME or an INFO_REPLY."""
COUNT_TIMEOUT_S = 60.0
"""Longest wait, after the flood, for the broker's count to reach every malformed message
sent: on a loaded machine it may still be reading the last bursts."""
INFO_EVERY = 5_000
"""Messages between two INFO requests checking that the broker still answers."""
RSS_GROWTH_LIMIT_BYTES = 32 * 1024 * 1024
"""Allowed growth of the broker's resident memory over the whole flood (about 10 MiB is
usual: the first messages of each kind warm up allocator pools, then it stays flat)."""
MUTE_MESSAGES = 400_000
"""Messages the peer that never reads sends."""
MUTE_CHECKPOINT = 100_000
"""When the mute peer's test first measures the broker's memory."""
MUTE_GROWTH_LIMIT_BYTES = 20 * 1024 * 1024
"""Allowed growth between the checkpoint and the end of the mute peer's messages: refusals
answered at about 120 bytes each would grow the broker by some 35 MiB meanwhile (52 MiB was
measured before replies were rate-limited).  Bounded growth measured 6.7 MiB on a quiet
machine and 13.4 MiB with a second test run competing for the cores: the allocator keeps
what a larger transient receive backlog needed."""
FUZZ_WORKER_CREDIT = 1
"""Task slots a fuzzing "worker" grants: tasks the broker sends it are never answered."""
JOB_BATCH = 20
"""Tasks per batch of the well-behaved client."""
JOB_STALL_S = 30.0
"""A batch of the well-behaved job not done after this long is a failure."""

_COMMANDS = sorted(proto.COMMAND_NAMES)
_UNKNOWN_COMMANDS = [c for c in range(256) if c not in proto.COMMAND_NAMES]
_SAFE_VALID = frozenset(
    {proto.HEARTBEAT, proto.INFO, proto.RELEASE, proto.CANCEL, proto.GATHER, proto.DONE, proto.DATA, proto.FETCH}
)
"""Commands a fuzzing peer may send when a generated message happens to be valid.

Valid HELLO and GOODBYE would change the fuzzing peer's own registration, and valid SUBMIT,
SCATTER or STORE would make real workers unpickle random bytes, which is not what is tested
here (only authenticated peers may send payloads at all).  Commands other peers send (COMPUTE,
REPORT, ...) are refused by role and stay in."""
_ALWAYS_REFUSED = frozenset(
    {
        proto.WELCOME,
        proto.UNKNOWN_PEER,
        proto.ERROR,
        proto.INFO_REPLY,
        proto.REPORT,
        proto.COMPUTE,
        proto.STORE,
        proto.GET,
        proto.DELETE,
        proto.CANCEL_TASKS,
        proto.WORKER_DIED,
        proto.RUNNING,
        proto.RESTARTING,
    }
)
"""Commands no client or worker may send: the broker refuses them by role."""


def mul(i: int, salt: int) -> int:
    """The well-behaved job's task."""
    return i * salt


# --- message generation ---------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, sometimes nested."""
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind == 0:
        return rng.randrange(-(1 << 63), 1 << 64)
    if kind == 1:
        return rng.choice([0, 1, -1, 2, 1 << 31, (1 << 31) + 1, -(1 << 31) - 1, (1 << 32), 255, 256])
    if kind == 2:
        return "".join(rng.choice("abc-xyz_é☃\x00") for _ in range(rng.randrange(0, 12)))
    if kind == 3:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 4:
        return None
    if kind == 5:
        return rng.random() * 1e6
    if kind == 6:
        return rng.choice([True, False])
    if kind == 7:
        return "x" * rng.choice([257, 300, 1000])  # longer than any key may be
    if kind == 8:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(1, 5))]
    if kind == 9:
        return {str(i): _random_value(rng, depth + 1) for i in range(rng.randrange(0, 4))}
    return [[_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 8))]]


def _fuzz_key(rng: random.Random) -> str:
    return f"fuzz-{rng.getrandbits(64):x}"


def _plausible_header(rng: random.Random, command: int) -> list[Any]:
    """A header shaped like the command's layout, with random (mostly valid-typed) contents."""
    key = _fuzz_key(rng)
    count = rng.randrange(0, 4)
    fn_hash = rng.randbytes(16)
    if command == proto.HELLO:
        return [rng.choice(["client", "worker", "pool", "admin"]), {"name": "fuzz", "nthreads": 1}]
    if command in (proto.WELCOME, proto.INFO_REPLY):
        return [rng.randrange(0, 100), {"x": 1}]
    if command in (proto.HEARTBEAT, proto.UNKNOWN_PEER, proto.GOODBYE):
        return [uuid.uuid4().hex]
    if command == proto.ERROR:
        return ["malformed", "text", []]
    if command in (proto.SUBMIT, proto.COMPUTE):
        task = [key, fn_hash, [], 0, 0, 1, count] if command == proto.SUBMIT else [key, fn_hash, [], 1, count]
        return [[fn_hash], [task]]
    if command in (proto.SCATTER, proto.STORE):
        entries = [[key, count]]
        return [entries, False] if command == proto.SCATTER else [entries]
    if command in (proto.RELEASE, proto.CANCEL, proto.GATHER, proto.DELETE, proto.CANCEL_TASKS):
        return [[_fuzz_key(rng) for _ in range(count)]]
    if command == proto.INFO:
        return [rng.randrange(0, 1 << 31)]
    if command in (proto.REPORT, proto.DONE):
        code = rng.choice([proto.FINISHED, proto.ERRED, proto.CANCELLED, proto.LOST, proto.MISSING_DEPS, 9])
        detail: Any = {
            proto.FINISHED: ["int", 8],
            proto.ERRED: ["ValueError", "boom", key],
            proto.MISSING_DEPS: [_fuzz_key(rng)],
        }.get(code, "why")
        return [[[key, code, detail, count]]]
    if command == proto.GET:
        return [rng.randrange(0, 1000), [key]]
    if command == proto.DATA:
        return [rng.randrange(0, 1000), [[key, count]], []]
    if command == proto.FETCH:
        return [rng.randrange(0, 1000), rng.randbytes(rng.randrange(1, 20)), [key]]
    return [proto.encode(proto.WORKER_DIED, [])[0], [key], -9]  # WORKER_DIED


def _mutate(rng: random.Random, value: Any) -> Any:
    """Replace one leaf or field somewhere in ``value`` by a random value of any type."""
    if isinstance(value, list) and value and rng.random() < 0.8:
        copy = list(value)
        index = rng.randrange(len(copy))
        copy[index] = _mutate(rng, copy[index])
        if rng.random() < 0.1:
            copy.append(_random_value(rng))
        if rng.random() < 0.1 and copy:
            copy.pop()
        return copy
    return _random_value(rng)


def _absurd_header(rng: random.Random) -> bytes:
    """Raw msgpack whose announced lengths or nesting are absurd."""
    return rng.choice(
        [
            b"\xdd\xff\xff\xff\xff",  # array of 4 billion elements, none present
            b"\xdf\xff\xff\xff\xff",  # map of 4 billion pairs
            b"\x91\xdb\xff\xff\xff\xff",  # [str of 4 GiB]
            b"\x91\xc6\x7f\xff\xff\xff",  # [bin of 2 GiB]
            b"\x91" * 5000 + b"\xc0",  # nesting far beyond any stack
            b"\x92\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x90",  # [2**64-1, []]
            b"\xc1",  # the one byte msgpack never uses
            b"\xd4\x01\x00",  # an ext type
            b"\x92\x90\x91\xdd\x7f\xff\xff\xff",  # [[], [array of 2**31 elements]]
        ]
    )


class MessageFactory:
    """Random malformed (and occasionally valid but meaningless) protocol messages."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds: dict[str, int] = {}
        self._generators: list[tuple[str, float, Callable[[], list[bytes]]]] = [
            ("random-frames", 3.0, self._random_frames),
            ("wrong-version", 1.0, self._wrong_version),
            ("truncated-msgpack", 2.0, self._truncated),
            ("absurd-lengths", 1.5, self._absurd),
            ("absurd-counts", 1.5, self._absurd_counts),
            ("unknown-command", 1.0, self._unknown_command),
            ("wrong-types", 4.0, self._wrong_types),
            ("frame-count-mismatch", 1.0, self._frame_mismatch),
            ("bad-command-frame", 0.5, self._bad_command_frame),
            ("huge-frame-count", 0.02, self._huge_frame_count),
            ("large-frame", 0.02, self._large_frame),
        ]
        self._weights = [weight for _, weight, _ in self._generators]

    def next(self) -> tuple[list[bytes], bool]:
        """``(frames, malformed)``: mostly malformed, else valid but harmless (see :data:`_SAFE_VALID`).

        ``malformed`` is the verdict of the contract's ``decode``: exactly the messages the
        broker must count as malformed.
        """
        while True:
            name, _, generate = self.rng.choices(self._generators, self._weights)[0]
            frames = generate()
            try:
                message = proto.decode(frames)
            except ProtocolError:
                self.kinds[name] = self.kinds.get(name, 0) + 1
                return frames, True
            if message.command in _SAFE_VALID or message.command in _ALWAYS_REFUSED:
                self.kinds["valid"] = self.kinds.get("valid", 0) + 1
                return frames, False

    def _command(self, command: int) -> bytes:
        return bytes((PROTOCOL_VERSION, command))

    def _random_frames(self) -> list[bytes]:
        rng = self.rng
        return [rng.randbytes(rng.choice([0, 1, 2, 3, 8, 40])) for _ in range(rng.randrange(1, 5))]

    def _wrong_version(self) -> list[bytes]:
        rng = self.rng
        command = rng.choice(_COMMANDS)
        version = rng.choice([v for v in range(256) if v != PROTOCOL_VERSION])
        return [bytes((version, command)), msgpack.packb(_plausible_header(rng, command), use_bin_type=True)]

    def _truncated(self) -> list[bytes]:
        rng = self.rng
        command = rng.choice(_COMMANDS)
        header = msgpack.packb(_plausible_header(rng, command), use_bin_type=True)
        return [self._command(command), header[: rng.randrange(0, max(1, len(header)))]]

    def _absurd(self) -> list[bytes]:
        return [self._command(self.rng.choice(_COMMANDS)), _absurd_header(self.rng)]

    def _absurd_counts(self) -> list[bytes]:
        rng = self.rng
        command = rng.choice([proto.SUBMIT, proto.SCATTER, proto.DONE, proto.DATA, proto.STORE, proto.REPORT])
        header = _plausible_header(rng, command)
        absurd = rng.choice([1 << 31, (1 << 31) + 1, 1 << 40, -1, (1 << 64) - 1, 10**6])
        text = msgpack.packb(header, use_bin_type=True)
        # Put the absurd count wherever the layout keeps its frame count.
        if command == proto.SUBMIT:
            header[1][0][6] = absurd
        elif command in (proto.SCATTER, proto.STORE):
            header[0][0][1] = absurd
        elif command == proto.DATA:
            header[1][0][1] = absurd
        else:
            header[0][0][3] = absurd
        text = msgpack.packb(header, use_bin_type=True)
        return [self._command(command), text]

    def _unknown_command(self) -> list[bytes]:
        rng = self.rng
        return [self._command(rng.choice(_UNKNOWN_COMMANDS)), msgpack.packb([_random_value(rng)])]

    def _wrong_types(self) -> list[bytes]:
        rng = self.rng
        command = rng.choice(_COMMANDS)
        header: Any = _plausible_header(rng, command)
        for _ in range(rng.randrange(1, 3)):
            header = _mutate(rng, header)
        if rng.random() < 0.05:
            header = {"not": "a list"}
        frames = [self._command(command), msgpack.packb(header, use_bin_type=True)]
        frames.extend(rng.randbytes(4) for _ in range(rng.randrange(0, 3)))
        return frames

    def _frame_mismatch(self) -> list[bytes]:
        rng = self.rng
        command = rng.choice([proto.SUBMIT, proto.SCATTER, proto.DONE, proto.DATA])
        header = msgpack.packb(_plausible_header(rng, command), use_bin_type=True)
        return [self._command(command), header] + [b"p"] * rng.choice([0, 7, 20])

    def _bad_command_frame(self) -> list[bytes]:
        rng = self.rng
        head = rng.choice([b"", b"\x01", b"\x01\x0f\x00", rng.randbytes(100)])
        return [head, msgpack.packb([1])]

    def _huge_frame_count(self) -> list[bytes]:
        rng = self.rng
        header = msgpack.packb([["fuzz-k", 2]], use_bin_type=True)
        return [self._command(proto.STORE), header] + [b""] * rng.choice([1000, 5000])

    def _large_frame(self) -> list[bytes]:
        rng = self.rng
        return [self._command(rng.choice(_COMMANDS)), rng.randbytes(1 << 20)]


# --- raw peers ------------------------------------------------------------------------------


class RawPeer:
    """A raw DEALER socket talking to the broker; counts what comes back."""

    def __init__(self, context: zmq.Context[Any], address: str, name: str) -> None:
        self.name = name
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self.socket.setsockopt(zmq.IDENTITY, f"{name}-{uuid.uuid4().hex[:8]}".encode())
        self.socket.connect(address)
        self.sent = 0
        self.malformed_sent = 0
        self.replies: dict[str, int] = {}
        self.info_replies: dict[int, dict[str, Any]] = {}
        self.epoch = ""

    def send(self, frames: list[bytes], malformed: bool) -> None:
        """Send one message (blocking at most :data:`SEND_TIMEOUT_MS`)."""
        try:
            self.socket.send_multipart(frames)
        except zmq.Again:
            raise AssertionError(f"{self.name}: the broker stopped reading (send blocked)") from None
        self.sent += 1
        self.malformed_sent += malformed

    def drain(self) -> None:
        """Read every reply waiting, counting them by command."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = proto.decode(frames)
            except ProtocolError as exc:
                raise AssertionError(f"{self.name}: the broker sent a malformed message: {exc}") from None
            self.replies[message.name] = self.replies.get(message.name, 0) + 1
            if message.command == proto.WELCOME:
                self.epoch = message.header[0]
            elif message.command == proto.INFO_REPLY:
                self.info_replies[message.header[0]] = message.header[1]

    def await_reply(self, condition: Callable[[], bool], what: str) -> None:
        """Drain until ``condition`` holds; fail after :data:`REPLY_TIMEOUT_S`."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {REPLY_TIMEOUT_S} s")
            self.socket.poll(50)
            self.drain()

    def was_told_of_its_malformed_messages(self) -> bool:
        """Whether ERROR replies came back for its malformed messages.

        The broker answers refusals at a bounded rate per peer (so a peer that never reads
        cannot fill its memory): one reply at least, not one per message.
        """
        return self.replies.get("ERROR", 0) >= min(self.malformed_sent, 1)

    def register(self, role: str, info: dict[str, Any]) -> None:
        """HELLO with ``role``; wait for the WELCOME."""
        self.socket.send_multipart(proto.encode(proto.HELLO, [role, info]))
        self.await_reply(lambda: bool(self.epoch), "WELCOME")

    def info(self, request_id: int) -> dict[str, Any]:
        """Ask for INFO and wait for the answer."""
        self.socket.send_multipart(proto.encode(proto.INFO, [request_id]))
        self.await_reply(lambda: request_id in self.info_replies, "INFO_REPLY")
        return self.info_replies.pop(request_id)

    def close(self, goodbye: bool = False, linger_s: float = 0.0) -> None:
        """Close the socket, saying GOODBYE first if asked; unsent messages get ``linger_s``."""
        if goodbye:
            self.socket.send_multipart(proto.encode(proto.GOODBYE, ["fuzzing done"]))
            linger_s = max(linger_s, 1.0)
        self.socket.close(linger=int(linger_s * 1000))


def vm_rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- the well-behaved job -------------------------------------------------------------------


class Job:
    """Batches of tasks from a real client, in a thread; each value is checked, then released.

    Up to :data:`FUZZ_WORKER_CREDIT` tasks per fuzzing "worker" may sit on it unanswered
    until it leaves; every other task must finish while the flood goes on.
    """

    def __init__(self, client: Client, stuck_allowance: int) -> None:
        self.client = client
        self.stuck_allowance = stuck_allowance
        self.salt = random.randrange(2, 1_000_000)
        self.submitted = 0
        self.checked = 0
        self.pending: list[tuple[int, Future]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="well-behaved-job", daemon=True)

    def start(self) -> None:
        """Start submitting batches."""
        self._thread.start()

    def stop(self) -> None:
        """Stop submitting; re-raise whatever failed in the thread."""
        self._stop.set()
        self._thread.join(JOB_STALL_S + 10)
        if self._thread.is_alive():
            raise AssertionError("the well-behaved job thread did not stop")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                first = self.submitted
                batch = self.client.map(mul, range(first, first + JOB_BATCH), salt=self.salt)
                self.submitted += JOB_BATCH
                self.pending += zip(range(first, first + JOB_BATCH), batch, strict=True)
                deadline = time.monotonic() + JOB_STALL_S
                while sum(not f.done() for _, f in self.pending) > self.stuck_allowance:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the well-behaved job stalled after {first} tasks")
                    if self._stop.wait(0.01):
                        break
                self._check_done()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _check_done(self) -> None:
        # Checked values are dropped, so the broker's memory is not filled by the job.
        done = [(i, f) for i, f in self.pending if f.done()]
        self.pending = [(i, f) for i, f in self.pending if not f.done()]
        # One bounded wait per value: a value that never comes fails the job instead of hanging it.
        values = [f.result(timeout=JOB_STALL_S) for _, f in done]
        if values != [i * self.salt for i, _ in done]:
            raise AssertionError("the well-behaved job got wrong values")
        self.checked += len(done)

    def finish(self) -> int:
        """Wait for the tasks still pending and check them; returns how many were checked in all."""
        wait_all([f for _, f in self.pending], timeout=60)
        self._check_done()
        assert not self.pending and self.checked == self.submitted
        return self.checked


# --- the test -------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """This test's broker and pool, stopped (process groups killed) at the end."""
    with running_cluster(tmp_path) as daemons:
        yield daemons


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_survives_a_flood_of_malformed_messages(cluster: Cluster, wait_until: Callable[..., None]) -> None:
    """100,000+ malformed messages from six raw peers; the broker and a real job carry on."""
    address = cluster.start_broker()
    cluster.start_pool(2)
    broker = cluster.broker
    assert broker is not None
    factory = MessageFactory(seed=random.randrange(1 << 30))
    context: zmq.Context[Any] = zmq.Context()
    peers: list[RawPeer] = []
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            # Warm up the broker (imports, first tasks) before measuring its memory.
            wait_all(client.map(mul, range(200), salt=3), timeout=60)
            unregistered = [RawPeer(context, address, f"stranger{i}") for i in range(2)]
            clients = [RawPeer(context, address, f"fuzz-client{i}") for i in range(2)]
            workers = [RawPeer(context, address, f"fuzz-worker{i}") for i in range(2)]
            for peer in clients:
                peer.register("client", {"name": peer.name})
            for peer in workers:
                peer.register(
                    "worker", {"name": peer.name, "nthreads": 1, "credit": FUZZ_WORKER_CREDIT, "pid": os.getpid()}
                )
            peers = unregistered + clients + workers
            info_before = clients[0].info(1)
            rss_before = vm_rss_bytes(broker.pid)
            job = Job(client, stuck_allowance=FUZZ_WORKER_CREDIT * len(workers))
            job.start()
            flood_start = time.monotonic()
            malformed = sent = churned = 0
            request_id = 1
            try:
                while malformed < FUZZ_MESSAGES:
                    for _ in range(BURST):
                        frames, is_malformed = factory.next()
                        peers[sent % len(peers)].send(frames, is_malformed)
                        malformed += is_malformed
                        sent += 1
                    for peer in peers:
                        peer.drain()
                    if sent % INFO_EVERY < BURST:
                        request_id += 1
                        assert clients[request_id % 2].info(request_id)["epoch"] == info_before["epoch"]
                        # A short-lived stranger with a fresh identity, gone before any reply.
                        stranger = RawPeer(context, address, f"churn{churned}")
                        for _ in range(10):
                            frames, is_malformed = factory.next()
                            stranger.send(frames, is_malformed)
                            malformed += is_malformed
                            sent += 1
                        # Lingering lets its messages out; it is gone before the replies come.
                        stranger.close(linger_s=REPLY_TIMEOUT_S)
                        churned += 1
                    assert broker.alive(), "the broker died"
            finally:
                job.stop()
            flood_s = time.monotonic() - flood_start
            # Every message was read: the malformed counter moved by exactly what the
            # contract's decode() rejects, and each peer was told (at a bounded rate) it was refused.
            request_ids = itertools.count(request_id + 1)

            def counted() -> int:
                return int(clients[0].info(next(request_ids))["malformed"]) - int(info_before["malformed"])

            wait_until(lambda: counted() >= malformed, timeout=COUNT_TIMEOUT_S)
            assert counted() == malformed, f"{malformed} malformed messages sent, {counted()} counted"
            for peer in unregistered + clients + workers:
                peer.await_reply(peer.was_told_of_its_malformed_messages, "ERROR for its malformed messages")
            assert broker.alive()
            for peer in peers:
                peer.close(goodbye=peer in clients or peer in workers)
            peers = []
            # Only the last batch and the tasks held by the fuzzing workers may be unfinished.
            checked_during_flood = job.checked
            assert checked_during_flood >= job.submitted - JOB_BATCH - job.stuck_allowance
            checked = job.finish()
            del job
            gc.collect()
            wait_until(lambda: held_tasks(client.scheduler_info()) == 0, timeout=REPLY_TIMEOUT_S)
            info = client.scheduler_info()
            assert info["nclients"] == 1 and len(info["workers"]) == 2
            rss_after = vm_rss_bytes(broker.pid)
            growth = rss_after - rss_before
            assert growth < RSS_GROWTH_LIMIT_BYTES, f"broker RSS grew by {growth / 2**20:.1f} MiB"
            log = broker.log_path.read_text(errors="replace")
            assert "Traceback" not in log and "internal error" not in log, log[-3000:]
            print(
                f"fuzz: {sent} messages ({malformed} malformed) in {flood_s:.1f} s from {len(clients + workers)} "
                f"registered and {2 + churned} unregistered peers; kinds {sorted(factory.kinds.items())}; "
                f"broker RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB; {checked} job results checked "
                f"({checked_during_flood} during the flood)"
            )
    finally:
        for peer in peers:
            peer.close()
        context.term()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_peer_that_never_reads_cannot_grow_the_broker(cluster: Cluster, wait_until: Callable[..., None]) -> None:
    """An unregistered peer sending malformed messages without reading the refusals.

    Every refusal is answered with ERROR; if those answers queue up for a peer that never
    reads them, one anonymous peer can fill the broker's memory.  The broker's RSS must level
    off: what it grows by between 100,000 and 400,000 messages stays small.
    """
    address = cluster.start_broker()
    broker = cluster.broker
    assert broker is not None
    context: zmq.Context[Any] = zmq.Context()
    mute = context.socket(zmq.DEALER)
    try:
        # Take one reply and then stop reading, with a tiny kernel buffer: whatever the broker
        # answers from then on stays queued on the broker's side.
        mute.setsockopt(zmq.RCVHWM, 1)
        mute.setsockopt(zmq.RCVBUF, 4096)
        mute.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        mute.setsockopt(zmq.LINGER, 0)
        mute.connect(address)
        unknown = [bytes((PROTOCOL_VERSION, _UNKNOWN_COMMANDS[0])), msgpack.packb([])]
        probe = RawPeer(context, address, "probe")
        probe.register("client", {"name": "probe"})
        request_ids = itertools.count(1)

        def read_all(sent: int) -> None:
            # Separate sockets are not ordered: poll until the broker has counted them all.
            wait_until(lambda: probe.info(next(request_ids))["malformed"] >= sent, timeout=60)

        for _ in range(MUTE_CHECKPOINT):
            mute.send_multipart(unknown)
        read_all(MUTE_CHECKPOINT)
        rss_checkpoint = vm_rss_bytes(broker.pid)
        for _ in range(MUTE_MESSAGES - MUTE_CHECKPOINT):
            mute.send_multipart(unknown)
        read_all(MUTE_MESSAGES)
        rss_end = vm_rss_bytes(broker.pid)
        growth = rss_end - rss_checkpoint
        print(
            f"mute peer: {MUTE_MESSAGES} messages; broker RSS {rss_checkpoint / 2**20:.1f} MiB after "
            f"{MUTE_CHECKPOINT}, {rss_end / 2**20:.1f} MiB after {MUTE_MESSAGES}"
        )
        assert growth < MUTE_GROWTH_LIMIT_BYTES, (
            f"broker RSS grew by {growth / 2**20:.1f} MiB over {MUTE_MESSAGES - MUTE_CHECKPOINT} refused messages"
        )
        assert broker.alive()
        probe.close(goodbye=True)
    finally:
        mute.close(linger=0)
        context.destroy(linger=0)
