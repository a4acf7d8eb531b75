"""The floor under any brokered round trip on this machine: bare pyzmq, no framework.

A client DEALER sends a small message to a ROUTER in a second Python process, which
forwards it to a DEALER in a third process; that one answers at once and the answer comes
back the same way: the same four ZeroMQ hops as a zmqdask round trip, with none of its work.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import zmq

READY_TIMEOUT_MS = 10_000
"""How long the helper processes get to start and connect."""

REPLY_TIMEOUT_MS = 5_000
"""How long one round trip may take before the measurement gives up."""


def _broker(endpoint_queue: Any, ipc_path: str | None) -> None:
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


def _worker(endpoint: str) -> None:
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
    ctx = multiprocessing.get_context("spawn")
    endpoints: Any = ctx.Queue()
    socket_dir = tempfile.mkdtemp(prefix="zmqdask-floor-") if transport == "ipc" else None
    ipc_path = os.path.join(socket_dir, "floor.sock") if socket_dir is not None else None
    broker = ctx.Process(target=_broker, args=(endpoints, ipc_path), daemon=True)
    broker.start()
    worker = None
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = endpoints.get(timeout=READY_TIMEOUT_MS / 1000)
        worker = ctx.Process(target=_worker, args=(endpoint,), daemon=True)
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
        latencies = []
        for i in range(count + count // 10 + 1):
            body = i.to_bytes(8, "little")
            start = time.perf_counter()
            client.send_multipart([b"call", body])
            if not client.poll(REPLY_TIMEOUT_MS):
                raise TimeoutError("no answer from the bare worker")
            if client.recv_multipart()[1] != body:
                raise RuntimeError("wrong answer from the bare worker")
            if i > count // 10:  # the first tenth warms up
                latencies.append(time.perf_counter() - start)
        client.send_multipart([b"stop"])
        latencies.sort()
        return statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3
    finally:
        client.close()
        context.term()
        for process in (worker, broker):
            if process is not None:
                process.join(1.0)
                if process.is_alive():
                    process.kill()
                    process.join(1.0)
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
