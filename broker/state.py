"""The broker's sans-I/O state machine: received messages and time in, messages to send out.

:class:`BrokerState` never touches a socket and never reads a payload frame: it decodes the
small msgpack header of each message, updates the peer table and the task ledger
(:mod:`broker.ledger`), dispatches queued tasks (:mod:`broker.dispatch`) and returns the
messages to send, batched per peer (:mod:`broker.outbox`).  Time is passed in by the caller,
so tests drive heartbeats and liveness without sleeping.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

from broker.audit import audit_ledger
from broker.coordination import Coordination
from broker.datasets import DatasetStore, PendingWants, dataset_value
from broker.dispatch import dispatch
from broker.functions import FunctionTable
from broker.ledger import ERRED, FORGOTTEN, MEMORY, PROCESSING, Ledger, TaskRecord, lost_data_detail
from broker.outbox import Outbox, Outgoing, Payload, payload_nbytes
from broker.peers import ClientPeer, Peer, PoolPeer, WorkerPeer
from broker.runs import RunRelay
from zmqdask import protocol
from zmqdask.config import DIRECT_MIN_BYTES, HEARTBEAT_INTERVAL_S, LIVENESS_TIMEOUT_S, MAX_MESSAGE_BYTES
from zmqdask.errors import ProtocolError
from zmqdask.protocol import (
    CANCEL,
    COORDINATE,
    DATA,
    DATASETS,
    DONE,
    ERR_MALFORMED,
    ERR_NOT_ALLOWED,
    ERR_TOO_LARGE,
    ERROR,
    FETCH,
    FETCH_FROM,
    FORGET_FUNCTIONS,
    GATHER,
    GET,
    GOODBYE,
    HEARTBEAT,
    HELLO,
    INFO,
    INFO_REPLY,
    KEEP,
    PLACE,
    RAN,
    RELAY_FETCH,
    RELAY_GATHER,
    RELEASE,
    RESTART,
    RESTARTING,
    ROLE_CLIENT,
    ROLE_POOL,
    ROLE_WORKER,
    RUN,
    SCATTER,
    SECEDE,
    SETUP,
    SUBMIT,
    UNKNOWN_PEER,
    WANT,
    WELCOME,
    WHO_HAS,
    WORKER_DIED,
    Message,
    decode,
    encode,
    frame_nbytes,
)
from zmqdask.versions import version_info

logger = logging.getLogger(__name__)

STALL_S = 1.0
"""A worker that has finished nothing for this long, with tasks queued behind the ones it
runs, gives those back when another worker has an idle thread."""

RELEASE_KEYS_PER_STEP = 500
"""Released keys applied per step when releases pile up: a client dropping a hundred thousand
futures at once must not hold up the messages of work still running for as long as
releasing them all takes.  Messages naming a key whose release waits apply the waiting
releases first, so the order of a client's messages is kept."""

MAX_WARNED_PEERS = 10_000
"""Bound on the set of peers whose first refused message was logged at WARNING."""

_CLIENT = frozenset({ROLE_CLIENT})
_WORKER = frozenset({ROLE_WORKER})
_POOL = frozenset({ROLE_POOL})
_ANY = frozenset({ROLE_CLIENT, ROLE_WORKER, ROLE_POOL})
_NO_KEYS: frozenset[str] = frozenset()


ERRORS_PER_PEER_PER_TICK = 8
"""At most this many ERROR replies go to one identity between two ticks; the rest are counted."""

MAX_ERROR_PEERS_PER_TICK = 1024
"""At most this many identities get ERROR replies between two ticks."""


@dataclass(slots=True)
class BrokerCounters:
    """Running totals, for INFO, logs and tests."""

    messages: int = 0
    """Messages handled."""
    malformed: int = 0
    """Messages dropped because they did not decode."""
    too_large: int = 0
    """Messages refused for exceeding the size limit."""
    unknown_peer: int = 0
    """Messages from identities that are not registered."""
    not_allowed: int = 0
    """Messages refused because the sender's role may not send them."""
    rejected_hello: int = 0
    """HELLOs refused for invalid peer info."""
    stale: int = 0
    """DATA answers nobody was waiting for any more."""
    dispatched: int = 0
    """Tasks sent to workers (including resends after failures)."""
    peers_died: int = 0
    """Registrations ended by death, departure or re-registration."""
    internal_errors: int = 0
    """Bugs caught while handling a message (logged with their traceback)."""
    errors_suppressed: int = 0
    """Refusals not answered because the peer already had its share of ERRORs this tick."""
    direct_gets: int = 0
    """Values a client was told to fetch from their holder itself (ELSEWHERE)."""
    direct_stores: int = 0
    """Scattered values a client was told to send to a worker itself (PLACE)."""
    direct_fetches: int = 0
    """FETCHes a worker was told to serve from the holder itself (FETCH_FROM)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain map."""
        return asdict(self)


class _Request:
    """A GET in flight: who holds the values and who asked for them."""

    __slots__ = ("holder", "keys", "requester", "requester_rid")

    def __init__(self, holder: WorkerPeer, requester: Peer, requester_rid: int | None, keys: list[str]) -> None:
        self.holder = holder
        self.requester = requester
        self.requester_rid = requester_rid
        """The worker's own request id (FETCH), or None for a client."""
        self.keys = keys


class BrokerState:
    """The broker's whole state and logic, free of I/O (see the module docstring)."""

    def __init__(
        self,
        *,
        epoch: str,
        now: float,
        address: str = "",
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness_timeout_s: float = LIVENESS_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.epoch = epoch
        self.address = address
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.max_message_bytes = max_message_bytes
        self.unknown_key_grace_s = 2 * liveness_timeout_s
        """How long a WANT of a key this broker does not know waits for the key to arrive
        (from another client, or from its submitter re-registering after a broker restart)."""
        self.counters = BrokerCounters()
        self._now = now
        self._outbox = Outbox(max_message_bytes)
        self.ledger = Ledger(self._outbox)
        """The task ledger (read it, do not change it from outside)."""
        self._peers: dict[bytes, Peer] = {}
        self._workers: dict[bytes, WorkerPeer] = {}
        self._clients: dict[bytes, ClientPeer] = {}
        self._pools: dict[bytes, PoolPeer] = {}
        self._functions = FunctionTable()
        self._requests: dict[int, _Request] = {}
        self._request_ids = itertools.count(1)
        self._runs = RunRelay(self._outbox)
        self._datasets = DatasetStore(self.ledger)
        self._wants = PendingWants()
        self._coordination = Coordination(self.ledger, self._outbox)
        self._version_info: dict[str, Any] | None = None
        # Releases received and not applied yet (see RELEASE_KEYS_PER_STEP), oldest first,
        # and how many of them name each key.
        self._release_backlog: deque[tuple[ClientPeer, list[str]]] = deque()
        self._release_index: dict[str, int] = {}
        self._warned: set[bytes] = set()
        self._unknown_notified: set[bytes] = set()
        self._errors_sent: dict[bytes, int] = {}
        # Workers found dead without a list of running tasks, with the tasks that were blamed:
        # a WORKER_DIED arriving later corrects the blame of tasks that were only prefetched.
        self._graveyard: dict[bytes, tuple[float, list[TaskRecord]]] = {}
        self._pythons: dict[bytes, str] = {}
        """The Python version each client and worker announced in its HELLO."""
        self._welcome_info = {
            "heartbeat_interval": heartbeat_interval_s,
            "liveness_timeout": liveness_timeout_s,
            "max_message_bytes": max_message_bytes,
            "address": address,
        }
        self._handlers: dict[int, tuple[Callable[[Any, Message], None], frozenset[str]]] = {
            HEARTBEAT: (self._on_heartbeat, _ANY),
            GOODBYE: (self._on_goodbye, _ANY),
            INFO: (self._on_info, _ANY),
            SUBMIT: (self._on_submit, _CLIENT),
            SCATTER: (self._on_scatter, _CLIENT),
            RELEASE: (self._on_release, _CLIENT),
            CANCEL: (self._on_cancel, _CLIENT),
            GATHER: (self._on_gather, _CLIENT),
            RELAY_GATHER: (self._on_relay_gather, _CLIENT),
            PLACE: (self._on_place, _CLIENT),
            DONE: (self._on_done, _WORKER),
            DATA: (self._on_data, _WORKER),
            FETCH: (self._on_fetch, _WORKER),
            RELAY_FETCH: (self._on_relay_fetch, _WORKER),
            WORKER_DIED: (self._on_worker_died, _POOL),
            SECEDE: (self._on_secede, _WORKER),
            FORGET_FUNCTIONS: (self._on_forget_functions, _CLIENT),
            KEEP: (self._on_keep, _CLIENT),
            RUN: (self._on_run, _CLIENT),
            RAN: (self._on_ran, _WORKER),
            RESTART: (self._on_restart, _CLIENT),
            SETUP: (self._on_setup, _CLIENT),
            WHO_HAS: (self._on_who_has, _CLIENT),
            WANT: (self._on_want, _CLIENT),
            DATASETS: (self._on_datasets, _CLIENT),
            COORDINATE: (self._on_coordinate, _CLIENT),
        }

    # --- public API -------------------------------------------------------------------

    @property
    def peers(self) -> Mapping[bytes, Peer]:
        """Registered peers by identity (read only)."""
        return self._peers

    @property
    def workers(self) -> Mapping[bytes, WorkerPeer]:
        """Registered workers by identity (read only)."""
        return self._workers

    @property
    def clients(self) -> Mapping[bytes, ClientPeer]:
        """Registered clients by identity (read only)."""
        return self._clients

    def handle(self, sender: bytes, frames: list[Any], now: float) -> Outgoing:
        """Process one received message (without its identity frame); never raises."""
        self._now = now
        self.counters.messages += 1
        peer = self._peers.get(sender)
        if peer is not None:
            peer.last_seen = now
        try:
            self._handle(sender, peer, frames)
        except Exception:
            self.counters.internal_errors += 1
            logger.exception("internal error while handling a message from %s", _who(sender, peer))
        return self._finish()

    def handle_many(self, messages: Iterable[tuple[bytes, list[Any]]], now: float) -> Outgoing:
        """Process several received messages as one step; never raises.

        The same as calling :meth:`handle` for each in order, except that releasing,
        dispatching and encoding happen once at the end: what the messages produce for one
        peer is batched into as few messages as the outbox allows.  A socket loop passes
        everything it drained in one round.
        """
        self._now = now
        peers = self._peers
        counters = self.counters
        for sender, frames in messages:
            counters.messages += 1
            peer = peers.get(sender)
            if peer is not None:
                peer.last_seen = now
            try:
                self._handle(sender, peer, frames)
            except Exception:
                counters.internal_errors += 1
                logger.exception("internal error while handling a message from %s", _who(sender, peer))
        return self._finish()

    @property
    def pending_work(self) -> bool:
        """Whether work waits that :meth:`work` would do (releases received, not applied yet)."""
        return bool(self._release_backlog)

    def work(self, now: float) -> Outgoing:
        """Do one step's share of the work that waits, for a loop with nothing else to do."""
        self._now = now
        return self._finish()

    def tick(self, now: float) -> Outgoing:
        """Advance time: declare silent peers dead and heartbeat the ones we have not talked to."""
        self._now = now
        self._unknown_notified.clear()
        self._errors_sent.clear()
        try:
            silent_since = now - self.liveness_timeout_s
            for peer in [p for p in self._peers.values() if p.last_seen < silent_since]:
                self._peer_died(peer, None, f"silent for {now - peer.last_seen:.1f} s")
            if self._graveyard:
                for identity in [i for i, (t, _) in self._graveyard.items() if t < silent_since]:
                    del self._graveyard[identity]
            self.ledger.ready.compact(self.ledger.tasks, self.ledger.counts["queued"])
            self._give_back_stalled(now)
        except Exception:
            self.counters.internal_errors += 1
            logger.exception("internal error during tick")
        out = self._finish()
        stale = now - self.heartbeat_interval_s
        heartbeat: list[Any] | None = None
        for peer in self._peers.values():
            if peer.last_sent <= stale:
                if heartbeat is None:
                    heartbeat = encode(HEARTBEAT, [self.epoch])
                out.append((peer.identity, heartbeat))
                peer.last_sent = now
        return out

    def _give_back_stalled(self, now: float) -> None:
        """Move tasks queued on a worker that has finished nothing for :data:`STALL_S` to
        workers with an idle thread.

        Tasks go to workers ahead of time (the window) so that tiny tasks never wait for the
        broker; behind a task that runs for long (or for ever: a running task cannot be
        interrupted) they would wait as long while other workers idle.  The stalled worker
        is asked to drop its newest tasks (CANCEL_TASKS: it drops those it has not started
        and answers CANCELLED, which requeues them) and is sent one task per thread at most
        until it finishes one.
        """
        workers = self._workers.values()
        if len(workers) < 2 or not any(w.busy < w.nthreads and not w.stalled for w in workers):
            return
        since = now - STALL_S
        for worker in workers:
            excess = worker.busy - worker.nthreads
            if excess <= 0 or worker.last_progress > since:
                continue
            worker.stall()
            seceded = worker.seceded
            # Newest first: the tasks least likely to have started.
            keys = [key for key in reversed(worker.processing) if key not in seceded][:excess]
            for key in keys:
                self._outbox.cancel_task(worker, key)
            logger.info(
                "%s finished nothing for %.1f s: asking it to give back %d queued tasks for idle workers",
                worker.label(),
                now - worker.last_progress,
                len(keys),
            )

    def peer_unreachable(self, identity: bytes, now: float) -> Outgoing:
        """The socket could not route to ``identity`` (it disconnected): treat it as dead."""
        self._now = now
        peer = self._peers.get(identity)
        if peer is not None:
            try:
                self._peer_died(peer, None, "unreachable")
            except Exception:
                self.counters.internal_errors += 1
                logger.exception("internal error while removing unreachable %s", peer.label())
        return self._finish()

    def shutdown(self, reason: str) -> Outgoing:
        """GOODBYE to every registered peer (the broker is going away)."""
        goodbye = encode(GOODBYE, [reason])
        return [(identity, goodbye) for identity in self._peers]

    def info(self) -> dict[str, Any]:
        """The map sent in INFO_REPLY."""
        return {
            "epoch": self.epoch,
            "address": self.address,
            "workers": {w.identity.hex(): w.describe() for w in self._workers.values()},
            "nclients": len(self._clients),
            "tasks": dict(self.ledger.counts),
            "functions": len(self._functions),
            "function_bytes": self._functions.nbytes,
            "malformed": self.counters.malformed,
            "direct_gets": self.counters.direct_gets,
            "direct_stores": self.counters.direct_stores,
            "direct_fetches": self.counters.direct_fetches,
            "datasets": len(self._datasets),
            "versions": self._versions(),
        }

    def _versions(self) -> dict[str, Any]:
        if self._version_info is None:
            self._version_info = version_info()  # reads package metadata: once
        return self._version_info

    def audit(self) -> list[str]:
        """Violations of the ledger's invariants (empty when all is well); O(ledger size)."""
        problems = audit_ledger(self.ledger, self._workers, self._clients)
        problems.extend(self._functions.audit(self.ledger.function_refs, self._clients.values()))
        for rid, request in self._requests.items():
            if request.holder.alive and rid not in request.holder.requests:
                problems.append(f"request {rid} unknown to its holder")
        problems.extend(self._runs.audit(self._workers))
        problems.extend(self._datasets.audit(self._coordination.held_records()))
        problems.extend(self._coordination.audit())
        problems.extend(self._wants.audit(self.ledger))
        return problems

    # --- message intake ---------------------------------------------------------------

    def _handle(self, sender: bytes, peer: Peer | None, frames: list[Any]) -> None:
        size = 0
        try:
            for frame in frames:
                size += len(frame) if type(frame) is bytes else frame_nbytes(frame)
        except (TypeError, ValueError) as exc:
            self._malformed(sender, peer, f"unreadable frame: {exc}")
            return
        if size > self.max_message_bytes:
            self.counters.too_large += 1
            text = f"message of {size} bytes exceeds the limit of {self.max_message_bytes} bytes"
            self._refuse(sender, peer, ERR_TOO_LARGE, text)
            return
        try:
            message = decode(frames)
        except ProtocolError as exc:
            self._malformed(sender, peer, str(exc))
            return
        command = message.command
        if command == HELLO:
            self._on_hello(sender, message)
            return
        if peer is None:
            self.counters.unknown_peer += 1
            if command != GOODBYE and sender not in self._unknown_notified:
                # One reply per identity and tick: a peer that kept talking to a restarted
                # broker re-registers once, not once per message it had in flight.
                self._unknown_notified.add(sender)
                self._outbox.send(sender, UNKNOWN_PEER, [self.epoch])
            return
        handler = self._handlers.get(command)
        if handler is None or peer.role not in handler[1]:
            self.counters.not_allowed += 1
            self._refuse(sender, peer, ERR_NOT_ALLOWED, f"a {peer.role} may not send {message.name}")
            return
        handler[0](peer, message)

    def _malformed(self, sender: bytes, peer: Peer | None, text: str) -> None:
        self.counters.malformed += 1
        self._refuse(sender, peer, ERR_MALFORMED, text)

    def _refuse(self, sender: bytes, peer: Peer | None, code: str, text: str) -> None:
        """Reply ERROR; log the first refusal per peer at WARNING and the rest at DEBUG."""
        if sender not in self._warned and len(self._warned) < MAX_WARNED_PEERS:
            self._warned.add(sender)
            logger.warning(
                "refused a message (%s) from %s: %s (more from this peer are logged at DEBUG)",
                code,
                _who(sender, peer),
                text,
            )
        else:
            logger.debug("refused a message (%s) from %s: %s", code, _who(sender, peer), text)
        # Refusals are answered at a bounded rate: a peer that floods the broker with bad
        # messages and never reads the answers must not make them pile up in our memory.
        sent = self._errors_sent.get(sender, 0)
        if sent >= ERRORS_PER_PEER_PER_TICK or (not sent and len(self._errors_sent) >= MAX_ERROR_PEERS_PER_TICK):
            self.counters.errors_suppressed += 1
            return
        self._errors_sent[sender] = sent + 1
        self._outbox.send(sender, ERROR, [code, text, []])

    def _finish(self) -> Outgoing:
        """End of a step: release, dispatch, issue GETs, then encode everything batched."""
        ledger = self.ledger
        try:
            if self._wants:
                # First: an unwanted key that arrived this step must not be released before.
                self._wants.settle(ledger, self._now)
            self._coordination.expire(self._now)
            if self._release_backlog:
                self._apply_releases(RELEASE_KEYS_PER_STEP)
            while True:
                ledger.process_releases()
                self.counters.dispatched += dispatch(
                    ledger, self._workers.values(), self._functions.payloads, self._outbox
                )
                if not ledger.gets:
                    break
                self._issue_gets()
            if ledger.unreferenced_functions or self._functions.pending:
                self._drop_functions()
        except Exception:
            self.counters.internal_errors += 1
            logger.exception("internal error while finishing a step")
        out = self._outbox.flush()
        peers = self._peers
        now = self._now
        for identity, _ in out:
            peer = peers.get(identity)
            if peer is not None:
                peer.last_sent = now
        return out

    def _drop_functions(self) -> None:
        # After dispatching: a function a record of this step runs is referenced by now.
        ledger = self.ledger
        functions = self._functions
        functions.unreferenced(ledger.unreferenced_functions)
        ledger.unreferenced_functions = []
        for worker, hashes in functions.collect(ledger.function_refs, self._workers.values()).items():
            self._outbox.send(worker.identity, FORGET_FUNCTIONS, [hashes])

    def _issue_gets(self) -> None:
        ledger = self.ledger
        gets = ledger.gets
        ledger.gets = {}
        for (holder, client), keys in gets.items():
            if not client.alive:
                continue
            if not holder.alive:
                # The holder died later in this same step; it is no longer in any who_has.
                for key in keys:
                    ledger.gather(client, key)
                continue
            if client.direct and holder.data_address:
                keys = self._send_elsewhere(holder, client, keys)
                if not keys:
                    continue
            # One GET per slice of the keys that fits a message: the holder answers each
            # request with a single DATA, which must stay inside the size limit.
            for chunk in self._fit_in_messages(keys):
                request_id = next(self._request_ids)
                self._requests[request_id] = _Request(holder, client, None, chunk)
                holder.requests.add(request_id)
                self._outbox.get(holder, request_id, chunk)

    def _send_elsewhere(self, holder: WorkerPeer, client: ClientPeer, keys: list[str]) -> list[str]:
        """Tell ``client`` where to fetch the large values among ``keys``; returns the rest.

        Only a header goes out for them: the client fetches each from ``holder``'s data
        socket itself, in one hop, and asks again with RELAY_GATHER if that fails.
        """
        tasks = self.ledger.tasks
        relay_keys = client.relay_keys
        rest: list[str] = []
        for key in keys:
            rec = tasks.get(key)
            if key in relay_keys:
                relay_keys.discard(key)
                rest.append(key)
            elif rec is not None and rec.nbytes >= DIRECT_MIN_BYTES:
                detail = [rec.type_name, rec.nbytes, holder.data_address]
                self._outbox.report(client, [key, protocol.ELSEWHERE, detail, 0])
                self.counters.direct_gets += 1
            else:
                rest.append(key)
        return rest

    def _fit_in_messages(self, keys: list[str]) -> list[list[str]]:
        """Cut ``keys`` into slices whose values add up to at most half the message limit."""
        budget = self.max_message_bytes // 2
        tasks = self.ledger.tasks
        chunks: list[list[str]] = [[]]
        size = 0
        for key in keys:
            rec = tasks.get(key)
            nbytes = rec.nbytes if rec is not None else 0
            if chunks[-1] and size + nbytes > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(key)
            size += nbytes
        return chunks

    # --- registration and liveness ----------------------------------------------------

    def _on_hello(self, sender: bytes, message: Message) -> None:
        role, info = message.header
        old = self._peers.get(sender)
        incarnation = _incarnation(role, info)
        if old is not None and incarnation is not None and old.role == role and old.incarnation == incarnation:
            # A HELLO repeated while the first was on its way (a peer sends one every second
            # while the broker does not answer, and its socket queues them during an outage):
            # the registration stands, with everything it holds.
            self._outbox.send(sender, WELCOME, [self.epoch, self._welcome_for(old)])
            return
        if old is not None:
            # The same identity registering again: its previous incarnation dropped whatever it
            # held, so release that first (a worker's tasks are requeued without blame).
            self._peer_died(old, _NO_KEYS, "registered again")
        try:
            peer = self._make_peer(sender, role, info)
        except ProtocolError as exc:
            self.counters.rejected_hello += 1
            logger.warning("refused HELLO from %s: %s", sender.hex(), exc)
            self._outbox.send(sender, ERROR, [ERR_MALFORMED, f"HELLO refused: {exc}", []])
            return
        peer.incarnation = incarnation
        self._peers[sender] = peer
        python = info.get("python")
        if isinstance(python, str) and not isinstance(peer, PoolPeer):
            self._pythons[sender] = python
            self._check_pythons(peer, python)
        self._outbox.send(sender, WELCOME, [self.epoch, self._welcome_for(peer)])
        logger.info("registered %s", peer.label())
        if isinstance(peer, WorkerPeer):
            graves = self._graveyard.pop(sender, None)
            if graves is not None:
                # Declared dead while it was only out of reach (it says so by coming back):
                # the tasks it was not running when it lost the broker are not to blame.
                was_running = info.get("running")
                keys = was_running if isinstance(was_running, list) else []
                self._take_back_blame(graves[1], frozenset(k for k in keys if isinstance(k, str)))
            self._workers[sender] = peer
            self._runs.worker_joined(peer)
            pending = self.ledger.pending_stores
            while pending:
                rec = pending.popleft()
                if self.ledger.tasks.get(rec.key) is rec and rec.state is PROCESSING:
                    self.ledger.store(peer, rec)
        elif isinstance(peer, ClientPeer):
            self._clients[sender] = peer
        else:
            self._pools[sender] = cast(PoolPeer, peer)

    def _check_pythons(self, peer: Peer, python: str) -> None:
        """Warn when a client and a worker run different Python versions: a function pickled
        by value (defined in a notebook or script) is bytecode of one version."""
        others = self._workers if isinstance(peer, ClientPeer) else self._clients
        differing = sorted({self._pythons[i] for i in others if i in self._pythons} - {python})
        if differing:
            logger.warning(
                "%s runs Python %s, while %s run Python %s: functions defined in a notebook or script "
                "cannot run across versions; use the same Python version everywhere",
                peer.label(),
                python,
                "workers" if isinstance(peer, ClientPeer) else "clients",
                ", ".join(differing),
            )

    def _make_peer(self, identity: bytes, role: str, info: dict[str, Any]) -> Peer:
        now = self._now
        if role == ROLE_WORKER:
            return WorkerPeer(
                identity,
                name=_str_field(info, "name"),
                nthreads=_int_field(info, "nthreads", None, 1),
                credit=_int_field(info, "credit", None, 1),
                host=_str_field(info, "host"),
                pid=_int_field(info, "pid", 0, 0),
                pool=_str_field(info, "pool"),
                memory_limit=_int_field(info, "memory_limit", 0, 0),
                now=now,
                data_address=_str_field(info, "data_address"),
            )
        if role == ROLE_CLIENT:
            direct = info.get("direct", False)
            if type(direct) is not bool:
                raise ProtocolError("'direct' must be a boolean")
            return ClientPeer(identity, _str_field(info, "name"), _int_field(info, "pid", 0, 0), now, direct)
        return PoolPeer(
            identity,
            pool=_str_field(info, "pool"),
            host=_str_field(info, "host"),
            nworkers=_int_field(info, "nworkers", 0, 0),
            now=now,
        )

    def _peer_died(self, peer: Peer, running: frozenset[str] | None, reason: str) -> None:
        """End a registration; ``running`` as for :meth:`Ledger.worker_removed`."""
        if not peer.alive:
            return
        peer.alive = False
        self.counters.peers_died += 1
        identity = peer.identity
        self._pythons.pop(identity, None)
        if self._peers.get(identity) is peer:
            del self._peers[identity]
        if isinstance(peer, WorkerPeer):
            del self._workers[identity]
            nprocessing, nkeys = len(peer.processing), len(peer.has)
            # Work somebody still needs is what a departure can cost; the rest (say, results
            # of a client that is leaving too) is routine.
            needed = self.ledger.needed
            nneeded = sum(1 for rec in peer.processing.values() if needed(rec)) + sum(
                1 for rec in peer.has if rec.who_has == (peer,) and needed(rec)
            )
            orphans, blamed = self.ledger.worker_removed(peer, running)
            if running is None and blamed:
                self._graveyard[identity] = (self._now, blamed)
            # GETs in flight to the dead worker are answered as if it had said "missing".
            for request_id in sorted(peer.requests):
                request = self._requests.pop(request_id, None)
                if request is not None:
                    self._answer_missing(request, request.keys)
            peer.requests.clear()
            self._runs.worker_gone(peer, reason, departed=reason.startswith("said goodbye"))
            for rec in orphans:
                self._place_store(rec)
            logger.log(
                logging.WARNING if nneeded else logging.INFO,
                "%s is gone (%s): %d tasks to requeue, %d keys it held, %d of them still needed",
                peer.label(),
                reason,
                nprocessing,
                nkeys,
                nneeded,
            )
        elif isinstance(peer, ClientPeer):
            del self._clients[identity]
            self.ledger.client_removed(peer)
            if self._wants:
                self._wants.drop_client(peer)
            self._coordination.client_gone(peer)
            self._functions.client_gone(peer)
            self._runs.client_gone(peer)
            logger.info("%s is gone (%s)", peer.label(), reason)
        else:
            self._pools.pop(identity, None)
            logger.info("%s is gone (%s)", peer.label(), reason)

    def _answer_missing(self, request: _Request, keys: list[str]) -> None:
        requester = request.requester
        if not requester.alive:
            return
        if isinstance(requester, ClientPeer):
            for key in keys:
                self.ledger.gather(requester, key)
        else:
            self._outbox.send(requester.identity, DATA, [request.requester_rid, [], keys])

    def _on_heartbeat(self, peer: Peer, message: Message) -> None:
        pass  # receiving it refreshed last_seen already

    def _on_goodbye(self, peer: Peer, message: Message) -> None:
        # A departing worker is not crashing: nothing it was running is blamed.
        self._peer_died(peer, _NO_KEYS, f"said goodbye: {message.header[0]}")
        if isinstance(peer, ClientPeer):
            # Everything the client sent before is handled and its interest dropped: a client
            # about to stop its own cluster waits for this before stopping the workers.
            self._outbox.send(peer.identity, GOODBYE, ["goodbye"])

    def _on_worker_died(self, pool: PoolPeer, message: Message) -> None:
        identity, running_keys, exitcode = message.header
        running = frozenset(running_keys)
        worker = self._workers.get(identity)
        if worker is not None:
            self._peer_died(worker, running, f"pool {pool.pool!r} saw it exit with code {exitcode}")
            return
        graves = self._graveyard.pop(identity, None)
        if graves is not None:
            # It was already declared dead without knowing what it ran: take back the blame
            # of the tasks that were only waiting on it.
            self._take_back_blame(graves[1], running)

    def _welcome_for(self, peer: Peer) -> dict[str, Any]:
        welcome = self._welcome_info
        python = self._pythons.get(peer.identity)
        if python is not None and isinstance(peer, ClientPeer):
            workers = sorted({self._pythons.get(w, python) for w in self._workers})
            welcome = {**welcome, "worker_pythons": workers}
        return welcome

    @staticmethod
    def _take_back_blame(blamed: list[TaskRecord], running: frozenset[str]) -> None:
        for rec in blamed:
            if rec.key not in running and rec.suspicious > 0 and rec.state not in (ERRED, FORGOTTEN):
                rec.suspicious -= 1

    def _on_info(self, peer: Peer, message: Message) -> None:
        if self._release_backlog:
            # The counts in the answer reflect every release received before the request.
            self._apply_releases(None)
            self.ledger.process_releases()
        self._outbox.send(peer.identity, INFO_REPLY, [message.header[0], self.info()])

    def _on_who_has(self, peer: Peer, message: Message) -> None:
        request_id, keys = message.header
        tasks = self.ledger.tasks
        if keys is None:
            records = [rec for rec in tasks.values() if rec.who_has]
        else:
            records = [rec for rec in (tasks.get(key) for key in dict.fromkeys(keys)) if rec is not None]
        holders = {rec.key: [worker.identity.hex() for worker in rec.who_has or ()] for rec in records}
        answer: dict[str, Any] = {"who_has": holders}
        if keys is None:
            answer["has_what"] = {w.identity.hex(): [rec.key for rec in w.has] for w in self._workers.values()}
        self._outbox.send(peer.identity, INFO_REPLY, [request_id, answer])

    # --- clients ----------------------------------------------------------------------

    def _on_run(self, client: ClientPeer, message: Message) -> None:
        request_id, targets, field = message.header
        self._runs.start(client, request_id, targets, self._workers, field, message.payload)

    def _on_setup(self, client: ClientPeer, message: Message) -> None:
        request_id, name, field = message.header
        self._runs.start(client, request_id, None, self._workers, field, message.payload, setup=name)

    def _on_ran(self, worker: WorkerPeer, message: Message) -> None:
        self._runs.answered(worker, message)

    def _on_restart(self, client: ClientPeer, message: Message) -> None:
        """``Client.restart``: every client's work ends and every pool replaces its workers.

        Each client's interest goes, as if it had left (the one restarting has cancelled its
        futures itself; the others are told CANCELLED for each of theirs), so nothing is
        needed any more and nothing is requeued when the old workers die.  Workers outside a
        pool stay and drop their values as the released keys are forgotten.
        """
        request_id = message.header[0]
        self.ledger.kept.clear()  # fire_and_forget ends too
        self._datasets.clear()  # and so do published datasets: their values go with the workers
        reason = f"the cluster was restarted by {client.label()}"
        self._coordination.clear(reason)  # and variables, queues, events and locks
        for peer in list(self._clients.values()):
            waited = self._wants.drop_client(peer) if self._wants else []
            if peer is not client:
                for rec in peer.interest:
                    self._outbox.report(peer, [rec.key, protocol.CANCELLED, reason, 0])
                for key in waited:
                    self._outbox.report(peer, [key, protocol.CANCELLED, reason, 0])
            self.ledger.client_removed(peer)
        pools = {pool.pool for pool in self._pools.values()}
        replaced = [worker.identity for worker in self._workers.values() if worker.pool in pools]
        self._runs.excuse(replaced)
        for pool in self._pools.values():
            self._outbox.send(pool.identity, RESTART, [request_id])
        self._outbox.send(client.identity, RESTARTING, [request_id, replaced])
        logger.info("%s: replacing %d workers of %d pools", reason, len(replaced), len(pools))

    def _on_submit(self, client: ClientPeer, message: Message) -> None:
        functions, tasks = message.header
        waiting = self._release_index
        if waiting and (
            not waiting.keys().isdisjoint([entry[0] for entry in tasks])
            or not waiting.keys().isdisjoint([dep for entry in tasks if entry[2] for dep in entry[2]])
        ):
            self._apply_releases(None)
        payload = message.payload
        table = self._functions
        for index, fn_hash in enumerate(functions):
            table.register(client, fn_hash, payload[index])
        canonical = table.canonical
        offset = len(functions)
        submit = self.ledger.submit
        for entry in tasks:
            nframes = entry[6]
            if type(nframes) is bytes:
                frames: Payload = nframes  # inline: kept and forwarded as it came
            elif nframes == 1:
                frames = (payload[offset],)
                offset += 1
            else:
                frames = tuple(payload[offset : offset + nframes])
                offset += nframes
            # Records share one hash object per function instead of one per decoded entry.
            submit(client, entry, frames, canonical.get(entry[1]))

    def _on_forget_functions(self, client: ClientPeer, message: Message) -> None:
        # The client sends a function again before it next names one of these; tasks that
        # run one keep it meanwhile (FunctionTable).
        self._functions.disown(client, message.header[0])

    def _on_scatter(self, client: ClientPeer, message: Message) -> None:
        entries, broadcast = message.header[0], message.header[1]
        replace = len(message.header) > 2 and message.header[2]
        waiting = self._release_index
        if waiting and any(entry[0] in waiting for entry in entries):
            self._apply_releases(None)
        payload = message.payload
        ledger = self.ledger
        workers = list(self._workers.values())
        planned = {worker: worker.nbytes for worker in workers}
        position = 0
        for key, nframes in entries:
            frames: Payload
            if type(nframes) is bytes:
                frames = nframes
            else:
                frames = payload[position : position + nframes]
                position += nframes
            rec = ledger.scatter(client, key, frames, replace=replace)
            if rec is None:
                continue
            if not workers:
                ledger.pending_stores.append(rec)
            elif broadcast:
                for worker in workers:
                    ledger.store(worker, rec)
            else:
                target = min(workers, key=planned.__getitem__)
                # +1 so that empty values still rotate over the workers.
                planned[target] += payload_nbytes(frames) + 1
                ledger.store(target, rec)

    def _on_place(self, client: ClientPeer, message: Message) -> None:
        entries = message.header[0]
        waiting = self._release_index
        if waiting and any(entry[0] in waiting for entry in entries):
            self._apply_releases(None)
        ledger = self.ledger
        targets = [worker for worker in self._workers.values() if worker.data_address] if client.direct else []
        planned = {worker: worker.nbytes for worker in targets}
        for key, nbytes in entries:
            # A new key, or a scattered one that was lost or released, waits in PROCESSING
            # with no payload for the client's bytes; a known one gets this client's interest
            # (and FINISHED if it is in memory: nothing needs sending).
            rec = ledger.scatter(client, key, None)
            if rec is None:
                if ledger.tasks[key] in ledger.awaiting:
                    # Its bytes are awaited from another client, which may never send them
                    # (it may leave first): this one sends them through the broker too, and
                    # whichever comes first provides the value.
                    ledger.ask_through_broker(client, key, nbytes)
                continue
            if not targets:
                ledger.awaiting[rec] = None
                ledger.ask_through_broker(client, key, nbytes)
                continue
            target = min(targets, key=planned.__getitem__)
            planned[target] += nbytes + 1
            # The worker confirms with DONE once the client's STORE reached it, as for a
            # STORE from the broker.
            target.storing[key] = rec
            ledger.awaiting[rec] = target
            self._outbox.report(client, [key, protocol.ELSEWHERE, ["", nbytes, target.data_address], 0])
            self.counters.direct_stores += 1

    def _place_store(self, rec: TaskRecord) -> None:
        """Send a scattered value whose holder-to-be died before confirming it elsewhere."""
        if any(worker.storing.get(rec.key) is rec for worker in self._workers.values()):
            return
        if rec.payload is None:
            # Sent to that worker directly: only the client has the bytes, and is asked
            # to send them again, through the broker this time.
            if not self.ledger.ask_for_bytes(rec):
                self.ledger.awaiting.pop(rec, None)
                self.ledger.err(rec, lost_data_detail(rec.key), (), lost=True)
            return
        if self._workers:
            self.ledger.store(min(self._workers.values(), key=lambda w: w.nbytes), rec)
        else:
            self.ledger.pending_stores.append(rec)

    def _on_secede(self, worker: WorkerPeer, message: Message) -> None:
        # Keys it no longer processes (answered, cancelled) are ignored: the message may
        # cross their DONE.
        processing = worker.processing
        for key in message.header[0]:
            if key in processing:
                worker.seceded.add(key)

    def _on_release(self, client: ClientPeer, message: Message) -> None:
        # Only noted here: each step applies its share (see RELEASE_KEYS_PER_STEP).
        keys = message.header[0]
        if client.relay_keys:
            client.relay_keys.difference_update(keys)
        self._release_backlog.append((client, keys))
        index = self._release_index
        for key in keys:
            index[key] = index.get(key, 0) + 1

    def _apply_releases(self, budget: int | None) -> None:
        """Apply waiting releases, oldest first: all of them, or about ``budget`` keys."""
        backlog = self._release_backlog
        index = self._release_index
        tasks = self.ledger.tasks
        drop_interest = self.ledger.drop_interest
        while backlog and (budget is None or budget > 0):
            client, keys = backlog[0]
            if budget is not None and len(keys) > budget:
                keys, backlog[0] = keys[:budget], (client, keys[budget:])
            else:
                backlog.popleft()
            if budget is not None:
                budget -= len(keys)
            alive = client.alive
            for key in keys:
                count = index[key] - 1
                if count:
                    index[key] = count
                else:
                    del index[key]
                if alive:
                    rec = tasks.get(key)
                    if rec is not None:
                        drop_interest(rec, client)
                    elif self._wants:
                        self._wants.forget(client, key)  # a future of a key not here yet

    def _apply_releases_naming(self, keys: list[str]) -> None:
        """Before a message naming ``keys`` is handled: apply waiting releases of any of them."""
        index = self._release_index
        if index and not index.keys().isdisjoint(keys):
            self._apply_releases(None)

    def _on_cancel(self, client: ClientPeer, message: Message) -> None:
        keys = message.header[0]
        self._apply_releases_naming(keys)
        for key in keys:
            if self._wants and key not in self.ledger.tasks:
                self._wants.forget(client, key)
            self.ledger.cancel(client, key)
        if keys:
            # After every report this CANCEL caused: the client may already have submitted
            # some of these keys again, and tells reports about the old ones by this mark.
            self._outbox.report(client, [keys[-1], protocol.CANCELS_SEEN, len(keys), 0])

    def _on_keep(self, client: ClientPeer, message: Message) -> None:
        for key in message.header[0]:
            self.ledger.keep(key)

    def _on_want(self, client: ClientPeer, message: Message) -> None:
        # A release of these keys received earlier applies first: it came before the WANT.
        self._apply_releases_naming(message.header[0])
        deadline = self._now + self.unknown_key_grace_s
        for key in message.header[0]:
            if not self.ledger.want(client, key):
                self._wants.add(client, key, deadline)  # it may be on its way (see broker.datasets)

    def _on_datasets(self, client: ClientPeer, message: Message) -> None:
        request_id, op, name, keys, override, field = message.header
        if op == "get":
            keys = self._datasets.keys_of(name)
            if self._release_backlog:
                self._apply_releases(None)  # as for a queue's get: see _on_coordinate
        if keys:
            # Releases of these keys received earlier apply first (a client that dropped a
            # dataset and fetches it again must hold the keys after the get).
            self._apply_releases_naming(keys)
        value = dataset_value(message.payload, field) if op == "put" else b""
        answer = self._datasets.request(client, request_id, op, name, keys, override, value)
        self._outbox.send(client.identity, INFO_REPLY, [request_id, answer])

    def _on_coordinate(self, client: ClientPeer, message: Message) -> None:
        request_id, kind, op, name, args, field = message.header
        keys = args.get("keys")
        if keys:
            self._apply_releases_naming(keys)  # the client's earlier releases come first
        elif op == "get" and self._release_backlog:
            # A get may hand this client keys it released just before asking (the releases
            # came first): they must apply before the hand-over, not drop it afterwards.
            self._apply_releases(None)
        value = dataset_value(message.payload, field) if (field or message.payload) else b""
        self._coordination.request(client, request_id, kind, op, name, args, value, self._now)

    def _on_gather(self, client: ClientPeer, message: Message) -> None:
        self._apply_releases_naming(message.header[0])
        wants = self._wants
        for key in message.header[0]:
            if wants and wants.gather(client, key):
                continue  # a future made from a key not here yet: its value goes once it is
            self.ledger.gather(client, key)

    def _on_relay_gather(self, client: ClientPeer, message: Message) -> None:
        # The client could not fetch these from their holders itself: their GETs, issued
        # at the end of this step or when the values exist, go through the broker.
        client.relay_keys.update(message.header[0])
        self._on_gather(client, message)

    # --- workers ----------------------------------------------------------------------

    def _on_done(self, worker: WorkerPeer, message: Message) -> None:
        ledger = self.ledger
        payload = message.payload
        storing = worker.storing
        offset = 0
        frames: Payload
        entries = message.header[0]
        if worker.stalled and any(entry[1] == protocol.FINISHED or entry[1] == protocol.ERRED for entry in entries):
            worker.unstall(self._now)
        worker.finished_tasks(len(entries), self._now)
        for key, code, detail, nframes in entries:
            if type(nframes) is bytes:
                frames = nframes
            elif nframes:
                frames = payload[offset : offset + nframes]
                offset += nframes
            else:
                frames = ()
            if code == protocol.FINISHED:
                nbytes = max(0, detail[1])
                if key in storing and ledger.stored(worker, key, detail[0], nbytes):
                    continue
                ledger.finished(worker, key, detail[0], nbytes, frames)
            elif code == protocol.ERRED:
                if key in storing and ledger.store_failed(worker, key, detail, frames):
                    continue
                ledger.failed(worker, key, detail, frames)
            elif code == protocol.CANCELLED:
                ledger.cancelled(worker, key)
            else:
                ledger.missing_deps(worker, key, detail)

    def _on_data(self, holder: WorkerPeer, message: Message) -> None:
        request_id, entries, missing = message.header
        request = self._requests.get(request_id)
        if request is None or request.holder is not holder:
            self.counters.stale += 1
            return
        del self._requests[request_id]
        holder.requests.discard(request_id)
        returned = {entry[0] for entry in entries}
        missing_set = set(missing)
        # A key asked for but neither returned nor listed counts as missing too.
        all_missing = list(missing) + [k for k in request.keys if k not in returned and k not in missing_set]
        ledger = self.ledger
        tasks = ledger.tasks
        for key in all_missing:
            rec = tasks.get(key)
            if rec is not None:
                ledger.remove_holder(rec, holder)
        requester = request.requester
        if not requester.alive:
            return
        if isinstance(requester, ClientPeer):
            payload = message.payload
            position = 0
            frames: Payload
            for key, nframes in entries:
                if type(nframes) is bytes:
                    frames = nframes
                else:
                    frames = payload[position : position + nframes]
                    position += nframes
                rec = tasks.get(key)
                if rec is not None and rec.state is MEMORY:
                    detail = [rec.type_name, rec.nbytes]
                else:
                    detail = ["", payload_nbytes(frames)]
                self._outbox.report(requester, [key, protocol.FINISHED, detail, nframes], frames)
            self._answer_missing(request, all_missing)
        else:
            self._outbox.send(requester.identity, DATA, [request.requester_rid, entries, all_missing], message.payload)

    def _on_fetch(self, worker: WorkerPeer, message: Message) -> None:
        request_id, holder_identity, keys = message.header
        holder = self._workers.get(holder_identity)
        if (
            holder is not None
            and holder is not worker
            and holder.data_address
            and worker.data_address
            and (holder.host == worker.host or not holder.data_address.startswith("ipc://"))
        ):
            tasks = self.ledger.tasks
            nbytes = 0
            for key in keys:
                rec = tasks.get(key)
                nbytes += rec.nbytes if rec is not None else 0
            if nbytes >= DIRECT_MIN_BYTES:
                # Only a header here: the worker GETs them from the holder in one hop (and
                # sends RELAY_FETCH if that fails).
                self._outbox.send(worker.identity, FETCH_FROM, [request_id, holder.data_address, keys, nbytes])
                self.counters.direct_fetches += 1
                return
        self._on_relay_fetch(worker, message)

    def _on_relay_fetch(self, worker: WorkerPeer, message: Message) -> None:
        request_id, holder_identity, keys = message.header
        holder = self._workers.get(holder_identity)
        if holder is None or holder is worker:
            self._outbox.send(worker.identity, DATA, [request_id, [], keys])
            return
        own_id = next(self._request_ids)
        self._requests[own_id] = _Request(holder, worker, request_id, keys)
        holder.requests.add(own_id)
        self._outbox.send(holder.identity, GET, [own_id, keys])


def _who(sender: bytes, peer: Peer | None) -> str:
    return peer.label() if peer is not None else f"unregistered peer [{sender.hex()}]"


def _str_field(info: dict[str, Any], name: str) -> str:
    value = info.get(name, "")
    if type(value) is not str:
        raise ProtocolError(f"{name!r} must be a string")
    return value


def _int_field(info: dict[str, Any], name: str, default: int | None, minimum: int) -> int:
    value = info.get(name, default)
    if value is None:
        raise ProtocolError(f"{name!r} is required")
    if type(value) is not int or value < minimum:
        raise ProtocolError(f"{name!r} must be an integer >= {minimum}, not {value!r:.40}")
    return value


def _incarnation(role: str, info: dict[str, Any]) -> str | int | None:
    """The registration a HELLO announces: a client's ``session``, a worker's ``incarnation``."""
    value = info.get("session") if role == ROLE_CLIENT else info.get("incarnation") if role == ROLE_WORKER else None
    return value if type(value) in (str, int) else None
