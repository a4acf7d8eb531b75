"""Calls of a function on workers outside their tasks (``Client.run``), relayed by the broker.

The broker never reads the call or its answers: the client's payload frames go to each target
worker as they came, and each worker's answer goes back to the client as it came::

    client ──RUN [request_id, targets, n]──▶ broker ──RUN [run_id, None, n]──▶ each target
    client ◀──RUNNING [request_id, targets]── broker
    client ◀──RAN [request_id, worker, code, ...]── broker ◀──RAN [run_id, worker, ...]── worker

Every target is answered exactly once: by its worker, or by the broker with LOST when the
target is not connected or dies before answering.  So a client waiting for a run waits at
most as long as its workers live (or the function runs), never for a message that cannot
come.  Answers for a client that left are dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from broker.outbox import Outbox
from broker.peers import ClientPeer, WorkerPeer
from zmqdask.protocol import LOST, RAN, RUN, RUNNING, Message


class RunRelay:
    """The runs in flight: which client asked, under which request id, and which worker runs it."""

    __slots__ = ("_by_worker", "_ids", "_outbox", "_runs")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._runs: dict[int, tuple[ClientPeer, int, bytes]] = {}
        """Broker-side run id -> (client, the client's request id, target identity)."""
        self._by_worker: dict[bytes, set[int]] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._runs)

    def start(
        self,
        client: ClientPeer,
        request_id: int,
        targets: list[bytes] | None,
        workers: Mapping[bytes, WorkerPeer],
        field: int | bytes,
        frames: list[Any],
    ) -> None:
        """Send the call to each target (every registered worker if ``targets`` is None)."""
        chosen = list(workers) if targets is None else list(dict.fromkeys(targets))
        # RUNNING first: the client learns how many answers to wait for before any comes.
        self._outbox.send(client.identity, RUNNING, [request_id, chosen])
        for identity in chosen:
            if identity not in workers:
                self._outbox.send(client.identity, RAN, [request_id, identity, LOST, "no such worker is connected", 0])
                continue
            run_id = next(self._ids)
            self._runs[run_id] = (client, request_id, identity)
            self._by_worker.setdefault(identity, set()).add(run_id)
            # The same frames to every target, untouched (as a broadcast SCATTER's).
            self._outbox.send(identity, RUN, [run_id, None, field], frames)

    def answered(self, worker: WorkerPeer, message: Message) -> None:
        """A worker's RAN: pass it on to the client that asked, if it is still here."""
        run_id, _, code, detail, field = message.header
        entry = self._runs.get(run_id)
        if entry is None or entry[2] != worker.identity:
            return  # its client left (forgotten then), or not a run of this worker's
        del self._runs[run_id]
        self._forget(worker.identity, run_id)
        client, request_id, identity = entry
        if client.alive:
            self._outbox.send(client.identity, RAN, [request_id, identity, code, detail, field], message.payload)

    def worker_gone(self, worker: WorkerPeer, reason: str) -> None:
        """Answer LOST for each run the worker had not answered."""
        for run_id in sorted(self._by_worker.pop(worker.identity, ())):
            client, request_id, identity = self._runs.pop(run_id)
            if client.alive:
                text = f"{worker.label()} left before answering ({reason})"
                self._outbox.send(client.identity, RAN, [request_id, identity, LOST, text, 0])

    def client_gone(self, client: ClientPeer) -> None:
        """Forget the client's runs: their answers will be dropped."""
        for run_id in [rid for rid, entry in self._runs.items() if entry[0] is client]:
            _, _, identity = self._runs.pop(run_id)
            self._forget(identity, run_id)

    def audit(self, workers: Mapping[bytes, WorkerPeer]) -> list[str]:
        """Violations of the relay's invariants (empty when all is well)."""
        problems = []
        for run_id, (client, _, identity) in self._runs.items():
            if identity not in workers:
                problems.append(f"run {run_id} waits for {identity.hex()}, which is not registered")
            if not client.alive:
                problems.append(f"run {run_id} is kept for a client that left")
            if run_id not in self._by_worker.get(identity, ()):
                problems.append(f"run {run_id} is missing from its worker's runs")
        return problems

    def _forget(self, identity: bytes, run_id: int) -> None:
        runs = self._by_worker.get(identity)
        if runs is not None:
            runs.discard(run_id)
            if not runs:
                del self._by_worker[identity]
