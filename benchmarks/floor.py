"""The floor under any brokered round trip on this machine: bare pyzmq, no framework.

A client DEALER sends a small message to a ROUTER in a second Python process, which
forwards it to a DEALER in a third process; that one answers at once and the answer comes
back the same way: the same four ZeroMQ hops as a zmqdask round trip, with none of its work.

:func:`measure_floor` also reports the CPU time each of the three processes spends per round
trip (Linux), and can place all three on one CPU: on a virtual machine, waking a thread on
another virtual CPU costs far more than a switch on the same one, and the difference shows
how much of the floor is those wake-ups.

:func:`bare_transfer` is the floor under a scatter: one large array sent as one message,
without copies in Python, from this process to a second one over a Unix socket.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from zmqdask.config import IPC_BUFFER_BYTES

READY_TIMEOUT_MS = 10_000
"""How long the helper processes get to start and connect."""

REPLY_TIMEOUT_MS = 5_000
"""How long one round trip may take before the measurement gives up."""


@dataclass(frozen=True)
class FloorResult:
    """Latency of bare round trips, and the CPU each process spent on one (microseconds)."""

    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, all its threads (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(cpu: int | None) -> None:
    # Before the context exists: ZeroMQ's I/O thread inherits the placement when it starts.
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _broker(endpoint_queue: Any, ipc_path: str | None, cpu: int | None = None) -> None:
    _pin(cpu)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    if ipc_path is None:
        endpoint_queue.put(f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}")
    else:
        router.bind(f"ipc://{ipc_path}")
        endpoint_queue.put(f"ipc://{ipc_path}")
    worker = None
    while True:
        if not router.poll(READY_TIMEOUT_MS * 6):
            return  # the parent is gone
        sender, kind, *rest = router.recv_multipart()
        if kind == b"worker":
            worker = sender
        elif kind == b"stop":
            return
        elif kind == b"reply":
            router.send_multipart([rest[0], b"reply", rest[1]])
        elif worker is not None:
            router.send_multipart([worker, b"task", sender, rest[0]])


def _worker(endpoint: str, cpu: int | None = None) -> None:
    _pin(cpu)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart([b"worker"])
    while dealer.poll(READY_TIMEOUT_MS * 6):
        _, client, body = dealer.recv_multipart()
        dealer.send_multipart([b"reply", client, body])


def bare_round_trip(count: int, transport: str = "tcp") -> tuple[float, float]:
    """Median and 99th percentile of ``count`` sequential round trips, in milliseconds.

    ``transport`` is ``"tcp"`` (loopback) or ``"ipc"`` (a Unix socket, as the local cluster
    of ``Client()`` uses).
    """
    result = measure_floor(count, transport)
    return result.p50_ms, result.p99_ms


def measure_floor(count: int, transport: str = "tcp", one_cpu: bool = False) -> FloorResult:
    """``count`` sequential bare round trips: latency and CPU per round trip of each process.

    With ``one_cpu`` the three processes (and their ZeroMQ I/O threads) all run on the first
    CPU this process may use.  CPU times are empty where ``/proc`` is not available.
    """
    ctx = multiprocessing.get_context("spawn")
    endpoints: Any = ctx.Queue()
    socket_dir = tempfile.mkdtemp(prefix="zmqdask-floor-") if transport == "ipc" else None
    ipc_path = os.path.join(socket_dir, "floor.sock") if socket_dir is not None else None
    original_cpus = os.sched_getaffinity(0) if one_cpu else None
    cpu = min(original_cpus) if original_cpus else None
    broker = ctx.Process(target=_broker, args=(endpoints, ipc_path, cpu), daemon=True)
    broker.start()
    worker = None
    _pin(cpu)
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = endpoints.get(timeout=READY_TIMEOUT_MS / 1000)
        worker = ctx.Process(target=_worker, args=(endpoint, cpu), daemon=True)
        worker.start()
        client.connect(endpoint)
        # Calls sent before the worker registered are dropped: ask until one is answered.
        deadline = time.monotonic() + READY_TIMEOUT_MS / 1000
        while True:
            client.send_multipart([b"call", b"ready?"])
            if client.poll(100):
                client.recv_multipart()
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the bare worker did not start")
        while client.poll(100):  # answers to the earlier attempts
            client.recv_multipart()
        pids = {"client": os.getpid(), "broker": broker.pid, "worker": worker.pid}
        latencies = []
        warm_up = count // 10
        cpu_before: dict[str, float] = {}
        for i in range(count + warm_up):
            if i == warm_up:
                cpu_before = _cpu_seconds(pids)
            body = i.to_bytes(8, "little")
            start = time.perf_counter()
            client.send_multipart([b"call", body])
            if not client.poll(REPLY_TIMEOUT_MS):
                raise TimeoutError("no answer from the bare worker")
            if client.recv_multipart()[1] != body:
                raise RuntimeError("wrong answer from the bare worker")
            if i >= warm_up:
                latencies.append(time.perf_counter() - start)
        cpu_after = _cpu_seconds(pids)
        client.send_multipart([b"stop"])
        latencies.sort()
        return FloorResult(
            p50_ms=statistics.median(latencies) * 1e3,
            p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3,
            cpu_us={name: (cpu_after[name] - cpu_before[name]) / count * 1e6 for name in cpu_after},
        )
    finally:
        client.close()
        context.term()
        if original_cpus is not None:
            os.sched_setaffinity(0, original_cpus)
        for process in (worker, broker):
            if process is not None:
                process.join(1.0)
                if process.is_alive():
                    process.kill()
                    process.join(1.0)
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)


@dataclass(frozen=True)
class TransferResult:
    """Rates of bare one-message transfers of an array (GB/s): median, slowest, fastest."""

    median_gbps: float
    min_gbps: float
    max_gbps: float


def _transfer_socket(context: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    """A socket with the Unix socket buffers the local cluster asks for."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDBUF, IPC_BUFFER_BYTES)
    sock.setsockopt(zmq.RCVBUF, IPC_BUFFER_BYTES)
    return sock


def _receiver(endpoint: str) -> None:
    context = zmq.Context()
    dealer = _transfer_socket(context, zmq.DEALER)
    dealer.connect(endpoint)
    dealer.send(b"ready")
    while dealer.poll(READY_TIMEOUT_MS * 6):
        # Held until the next one is announced, as a worker holds scattered data until it is
        # released: each transfer lands in memory of its own.
        frame = dealer.recv(copy=False)
        if len(frame) == 4 and frame.bytes == b"stop":
            return
        dealer.send(len(frame).to_bytes(8, "little"))
        del frame


def bare_transfer(nbytes: int, repeats: int) -> TransferResult:
    """Send an array of ``nbytes`` to a second process ``repeats`` times (after one untimed
    send), each time new contents, over a Unix socket with the buffers the local cluster
    asks for; each repeat ends when the receiver has all of it."""
    ctx = multiprocessing.get_context("spawn")
    socket_dir = tempfile.mkdtemp(prefix="zmqdask-floor-")
    endpoint = f"ipc://{os.path.join(socket_dir, 'transfer.sock')}"
    context = zmq.Context()
    router = _transfer_socket(context, zmq.ROUTER)
    router.bind(endpoint)
    receiver = ctx.Process(target=_receiver, args=(endpoint,), daemon=True)
    receiver.start()
    try:
        if not router.poll(READY_TIMEOUT_MS):
            raise TimeoutError("the bare receiver did not start")
        peer, _ = router.recv_multipart()
        array = np.arange(nbytes // 8, dtype=np.float64)
        seconds = []
        for repeat in range(-1, repeats):  # the first one untimed: the receiver's pages are new
            array[0] = float(repeat + 1)
            start = time.perf_counter()
            router.send_multipart([peer, array], copy=False)
            if not router.poll(REPLY_TIMEOUT_MS * 6):
                raise TimeoutError("the bare receiver did not confirm a transfer")
            if int.from_bytes(router.recv_multipart()[1], "little") != array.nbytes:
                raise RuntimeError("the bare receiver got a wrong size")
            if repeat >= 0:
                seconds.append(time.perf_counter() - start)
        router.send_multipart([peer, b"stop"])
        rates = sorted(array.nbytes / s / 1e9 for s in seconds)
        return TransferResult(statistics.median(rates), rates[0], rates[-1])
    finally:
        router.close()
        context.term()
        receiver.join(1.0)
        if receiver.is_alive():
            receiver.kill()
            receiver.join(1.0)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _cpu_seconds(pids: dict[str, int | None]) -> dict[str, float]:
    try:
        return {name: process_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
    except OSError:
        return {}
