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

A SETUP is a RUN that the broker also keeps, by name, and sends to every worker that
registers later, right after its WELCOME and so before any task (``upload_file``,
``register_worker_callbacks``).  Nobody waits for those later answers; a failure is logged.
At most :data:`MAX_SETUPS` calls of at most :data:`MAX_SETUP_BYTES` in all are kept, the
oldest dropped first (with a warning).  A set-up that was running on
:data:`~zmqdask.config.MAX_KILLED_ATTEMPTS` workers when they died is dropped too (with an
error in the log), as a task that kills its workers fails: else every worker started
afterwards would die the same way, and the tasks held back behind it would never run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

from broker.outbox import Outbox, payload_nbytes
from broker.peers import ClientPeer, WorkerPeer
from zmqdask.config import MAX_KILLED_ATTEMPTS
from zmqdask.protocol import ERRED, LOST, RAN, RUN, RUNNING, SETUP, Message

logger = logging.getLogger(__name__)

MAX_SETUPS = 64
"""Most set-up calls kept for workers that register later."""

MAX_SETUP_BYTES = 512 * 1024 * 1024
"""Most bytes of set-up calls kept (an uploaded package counts whole)."""


class RunRelay:
    """The runs in flight: which client asked, under which request id, and which worker runs it."""

    __slots__ = ("_by_worker", "_excused", "_ids", "_outbox", "_runs", "_setup_deaths", "_setups")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._runs: dict[int, tuple[ClientPeer | None, int, bytes, str | None]] = {}
        """Broker-side run id -> (client, the client's request id, target identity, set-up
        name or None); no client for a kept set-up sent to a worker that registered later."""
        self._setup_deaths: dict[str, int] = {}
        """Workers that died while running each kept set-up."""
        self._excused: set[bytes] = set()
        """Workers stopped on purpose (a restart): their deaths are not a set-up's doing."""
        self._setups: dict[str, tuple[int | bytes, list[Any]]] = {}
        """Kept set-up calls by name, oldest first: (payload field, frames)."""
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
        setup: str | None = None,
    ) -> None:
        """Send the call to each target (every registered worker if ``targets`` is None);
        ``setup`` names a SETUP, kept for the workers that register later."""
        if setup is not None:
            self._keep(setup, field, frames)
        chosen = list(workers) if targets is None else list(dict.fromkeys(targets))
        # RUNNING first: the client learns how many answers to wait for before any comes.
        self._outbox.send(client.identity, RUNNING, [request_id, chosen])
        for identity in chosen:
            if identity not in workers:
                self._outbox.send(client.identity, RAN, [request_id, identity, LOST, "no such worker is connected", 0])
                continue
            run_id = next(self._ids)
            self._runs[run_id] = (client, request_id, identity, setup)
            self._by_worker.setdefault(identity, set()).add(run_id)
            # The same frames to every target, untouched (as a broadcast SCATTER's).
            if setup is None:
                self._outbox.send(identity, RUN, [run_id, None, field], frames)
            else:
                self._outbox.send(identity, SETUP, [run_id, setup, field], frames)

    def worker_joined(self, worker: WorkerPeer) -> None:
        """Send a newly registered worker every kept set-up (before anything else: the
        outbox sends these unbatched messages ahead of its STORE and COMPUTE batches)."""
        for name, (field, frames) in self._setups.items():
            run_id = next(self._ids)
            self._runs[run_id] = (None, 0, worker.identity, name)
            self._by_worker.setdefault(worker.identity, set()).add(run_id)
            self._outbox.send(worker.identity, SETUP, [run_id, name, field], frames)

    def _keep(self, name: str, field: int | bytes, frames: list[Any]) -> None:
        self._setups.pop(name, None)  # the same name again replaces it, and becomes newest
        self._setups[name] = (field, frames)
        self._setup_deaths.pop(name, None)
        total = sum(_size(entry) for entry in self._setups.values())
        while len(self._setups) > 1 and (len(self._setups) > MAX_SETUPS or total > MAX_SETUP_BYTES):
            oldest = next(iter(self._setups))
            total -= _size(self._setups.pop(oldest))
            logger.warning("dropped the oldest worker set-up %r: workers that register later will not run it", oldest)

    def answered(self, worker: WorkerPeer, message: Message) -> None:
        """A worker's RAN: pass it on to the client that asked, if it is still here."""
        run_id, _, code, detail, field = message.header
        entry = self._runs.get(run_id)
        if entry is None or entry[2] != worker.identity:
            return  # its client left (forgotten then), or not a run of this worker's
        del self._runs[run_id]
        self._forget(worker.identity, run_id)
        client, request_id, identity, _ = entry
        if client is None:
            if code == ERRED:
                logger.warning("a worker set-up failed on %s: %s: %s", worker.label(), detail[0], detail[1])
            return
        if client.alive:
            self._outbox.send(client.identity, RAN, [request_id, identity, code, detail, field], message.payload)

    def excuse(self, identities: list[bytes]) -> None:
        """These workers are being stopped on purpose (a restart)."""
        self._excused.update(identities)

    def worker_gone(self, worker: WorkerPeer, reason: str, departed: bool = False) -> None:
        """Answer LOST for each run the worker had not answered; ``departed``: it said goodbye."""
        excused = departed or worker.identity in self._excused
        self._excused.discard(worker.identity)
        for run_id in sorted(self._by_worker.pop(worker.identity, ())):
            client, request_id, identity, setup = self._runs.pop(run_id)
            if setup is not None and setup in self._setups and not excused:
                deaths = self._setup_deaths[setup] = self._setup_deaths.get(setup, 0) + 1
                if deaths >= MAX_KILLED_ATTEMPTS:
                    del self._setups[setup]
                    del self._setup_deaths[setup]
                    logger.error(
                        "the worker set-up %r was running when %d workers died: dropped, workers start without it",
                        setup,
                        deaths,
                    )
            if client is not None and client.alive:
                text = f"{worker.label()} left before answering ({reason})"
                self._outbox.send(client.identity, RAN, [request_id, identity, LOST, text, 0])

    def client_gone(self, client: ClientPeer) -> None:
        """Forget the client's runs: their answers will be dropped."""
        for run_id in [rid for rid, entry in self._runs.items() if entry[0] is client]:
            identity = self._runs.pop(run_id)[2]
            self._forget(identity, run_id)

    def audit(self, workers: Mapping[bytes, WorkerPeer]) -> list[str]:
        """Violations of the relay's invariants (empty when all is well)."""
        problems = []
        for run_id, (client, _, identity, _setup) in self._runs.items():
            if identity not in workers:
                problems.append(f"run {run_id} waits for {identity.hex()}, which is not registered")
            if client is not None and not client.alive:
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


def _size(entry: tuple[int | bytes, list[Any]]) -> int:
    field, frames = entry
    return len(field) if type(field) is bytes else payload_nbytes(frames)
