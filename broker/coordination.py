"""Named coordination objects shared by clients: variables, queues, events and semaphores.

Dask's ``Variable``, ``Queue``, ``Event``, ``Lock`` and ``Semaphore`` live here, on the
broker, by name (a lock is a semaphore of one lease).  Each COORDINATE request is answered
with an INFO_REPLY once its operation is done: at once, or, for an operation that waits (a
get of an unset variable or an empty queue, a wait for an event, an acquire of a semaphore
with no lease free), when its condition comes true or its timeout ends, whichever is first.
A waiting request is bounded by its client's liveness too: a client that leaves stops
waiting, and the leases it held go to the next waiters.

Values are the client's pickles, opaque here, with the keys of the futures inside them: the
records of those keys stay needed while a variable or a queue holds the value (as for a
published dataset), and the client that gets the value holds them from the moment of its
request.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from broker.ledger import Ledger, TaskRecord
from broker.outbox import Outbox
from broker.peers import ClientPeer
from zmqdask.protocol import INFO_REPLY


class Waiter:
    """A request whose answer waits for a condition, or for its deadline (None: none)."""

    __slots__ = ("client", "count", "deadline", "request_id")

    def __init__(self, client: ClientPeer, request_id: int, deadline: float | None, count: int = 1) -> None:
        self.client = client
        self.request_id = request_id
        self.deadline = deadline
        self.count = count
        """A queue get: how many items it waits for."""


class Held:
    """A value held by a variable or a queue: its pickle and the records of its futures."""

    __slots__ = ("records", "value")

    def __init__(self, value: bytes, records: tuple[TaskRecord, ...]) -> None:
        self.value = value
        self.records = records


class Semaphore:
    """A semaphore's leases and the acquires waiting for one."""

    __slots__ = ("holders", "max_leases", "waiters")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        self.holders: dict[str, ClientPeer] = {}
        self.waiters: deque[tuple[Waiter, str]] = deque()


class Coordination:
    """The broker's variables, queues, events and semaphores (answers COORDINATE requests)."""

    def __init__(self, ledger: Ledger, outbox: Outbox) -> None:
        self._ledger = ledger
        self._outbox = outbox
        self._variables: dict[str, Held] = {}
        self._variable_waiters: dict[str, list[Waiter]] = {}
        self._queues: dict[str, deque[Held]] = {}
        self._queue_waiters: dict[str, deque[Waiter]] = {}
        self._events: dict[str, bool] = {}
        self._event_waiters: dict[str, list[Waiter]] = {}
        self._semaphores: dict[str, Semaphore] = {}
        self._timed = 0
        """How many waiters have a deadline (the end-of-step check skips the scan when none)."""

    # --- requests ---------------------------------------------------------------------

    def request(
        self,
        client: ClientPeer,
        request_id: int,
        kind: str,
        op: str,
        name: str,
        args: dict[str, Any],
        value: bytes,
        now: float,
    ) -> None:
        """Carry out one COORDINATE request: answer it now, or keep it until it can be."""
        timeout = args.get("timeout")
        waiter = Waiter(client, request_id, None if timeout is None else now + float(timeout))
        if op == "abandon":
            self._abandon(client, args.get("request"))
            self._answer(waiter, {"ok": True})
            return
        if kind == "variable":
            self._variable(waiter, op, name, args, value)
        elif kind == "queue":
            self._queue(waiter, op, name, args, value)
        elif kind == "event":
            self._event(waiter, op, name)
        else:
            self._semaphore(waiter, op, name, args)

    def _answer(self, waiter: Waiter, answer: dict[str, Any]) -> None:
        self._outbox.send(waiter.client.identity, INFO_REPLY, [waiter.request_id, answer])

    def _wait(self, waiters: list[Waiter] | deque[Waiter], waiter: Waiter) -> None:
        # A timeout of 0 (a non-blocking try) ends at the end of this step (see expire).
        waiters.append(waiter)
        if waiter.deadline is not None:
            self._timed += 1

    def _hold(self, keys: list[str], value: bytes) -> Held | str:
        """The value, its records kept while it is held; or why it cannot be held."""
        records, unknown = self._ledger.records_of(keys)
        if unknown is not None:
            return unknown
        for rec in records:
            self._ledger.publish(rec)
        return Held(value, records)

    def _let_go(self, held: Held) -> None:
        for rec in held.records:
            self._ledger.unpublish(rec)

    def _hand_over(self, held: Held, client: ClientPeer) -> dict[str, Any]:
        """The answer giving ``held`` to ``client``, who holds its futures from now on."""
        self._ledger.hand_over(held.records, client)
        return {"value": held.value, "keys": [rec.key for rec in held.records]}

    # --- variables --------------------------------------------------------------------

    def _variable(self, waiter: Waiter, op: str, name: str, args: dict[str, Any], value: bytes) -> None:
        if op == "set":
            held = self._hold(args.get("keys", []), value)
            if isinstance(held, str):
                self._answer(waiter, {"ok": False, "error": held})
                return
            old = self._variables.get(name)
            self._variables[name] = held
            if old is not None:
                self._let_go(old)
            self._answer(waiter, {"ok": True})
            for getter in self._variable_waiters.pop(name, ()):
                self._untime(getter)
                self._answer(getter, {"ok": True, **self._hand_over(held, getter.client)})
        elif op == "get":
            current = self._variables.get(name)
            if current is not None:
                self._answer(waiter, {"ok": True, **self._hand_over(current, waiter.client)})
            else:
                self._wait(self._variable_waiters.setdefault(name, []), waiter)
        else:
            old = self._variables.pop(name, None)
            if old is not None:
                self._let_go(old)
            self._answer(waiter, {"ok": True})

    # --- queues -----------------------------------------------------------------------

    def _queue(self, waiter: Waiter, op: str, name: str, args: dict[str, Any], value: bytes) -> None:
        items = self._queues.get(name)
        if op == "qsize":
            self._answer(waiter, {"ok": True, "size": len(items) if items is not None else 0})
            return
        if op == "put":
            held = self._hold(args.get("keys", []), value)
            if isinstance(held, str):
                self._answer(waiter, {"ok": False, "error": held})
                return
            if items is None:
                items = self._queues[name] = deque()
            items.append(held)
            self._answer(waiter, {"ok": True})
            self._serve_queue(name)
            return
        batch = args.get("batch", 1)
        if batch is True:
            # Everything waiting now, without waiting for more.
            taken = list(items or ())
            if items is not None:
                items.clear()
            self._answer(waiter, self._give(taken, waiter.client, many=True))
            return
        waiter.count = max(1, int(batch))
        waiters = self._queue_waiters.setdefault(name, deque())
        self._wait(waiters, waiter)
        self._serve_queue(name)

    def _give(self, taken: list[Held], client: ClientPeer, many: bool) -> dict[str, Any]:
        answers = [self._hand_over(held, client) for held in taken]
        for held in taken:
            self._let_go(held)  # after the getter holds the records: nothing is released between
        if many:
            return {"ok": True, "values": [a["value"] for a in answers], "keys": [a["keys"] for a in answers]}
        return {"ok": True, **answers[0]}

    def _serve_queue(self, name: str) -> None:
        """Hand items to the waiting gets, oldest first, as long as there are enough."""
        items = self._queues.get(name)
        waiters = self._queue_waiters.get(name)
        while items and waiters and len(items) >= waiters[0].count:
            getter = waiters.popleft()
            self._untime(getter)
            taken = [items.popleft() for _ in range(getter.count)]
            self._answer(getter, self._give(taken, getter.client, many=getter.count > 1))
        if waiters is not None and not waiters:
            del self._queue_waiters[name]
        if items is not None and not items:
            del self._queues[name]

    # --- events -----------------------------------------------------------------------

    def _event(self, waiter: Waiter, op: str, name: str) -> None:
        if op == "set":
            self._events[name] = True
            self._answer(waiter, {"ok": True})
            for other in self._event_waiters.pop(name, ()):
                self._untime(other)
                self._answer(other, {"ok": True, "set": True})
        elif op == "clear":
            self._events.pop(name, None)
            self._answer(waiter, {"ok": True})
        elif op == "is_set" or name in self._events:
            self._answer(waiter, {"ok": True, "set": name in self._events})
        else:
            self._wait(self._event_waiters.setdefault(name, []), waiter)

    # --- semaphores (and locks) -------------------------------------------------------

    def _semaphore(self, waiter: Waiter, op: str, name: str, args: dict[str, Any]) -> None:
        semaphore = self._semaphores.get(name)
        if op == "get_value":
            self._answer(waiter, {"ok": True, "value": len(semaphore.holders) if semaphore else 0})
            return
        lease = str(args.get("lease", ""))
        if op == "release":
            if semaphore is None or semaphore.holders.get(lease) is not waiter.client:
                self._answer(waiter, {"ok": False, "error": "not acquired"})
                return
            del semaphore.holders[lease]
            self._answer(waiter, {"ok": True})
            self._grant(name, semaphore)
            return
        max_leases = int(args.get("max_leases", 1))
        if semaphore is None:
            semaphore = self._semaphores[name] = Semaphore(max_leases)
        elif semaphore.max_leases != max_leases:
            text = f"semaphore {name!r} has {semaphore.max_leases} leases, not {max_leases}: use another name"
            self._answer(waiter, {"ok": False, "error": text})
            return
        if lease in semaphore.holders:
            self._answer(waiter, {"ok": True, "acquired": True})  # the same request again
            return
        semaphore.waiters.append((waiter, lease))
        if waiter.deadline is not None:
            self._timed += 1
        self._grant(name, semaphore)

    def _grant(self, name: str, semaphore: Semaphore) -> None:
        """Give free leases to the waiting acquires, in order; forget an idle semaphore."""
        while semaphore.waiters and len(semaphore.holders) < semaphore.max_leases:
            waiter, lease = semaphore.waiters.popleft()
            self._untime(waiter)
            semaphore.holders[lease] = waiter.client
            self._answer(waiter, {"ok": True, "acquired": True})
        if not semaphore.holders and not semaphore.waiters:
            del self._semaphores[name]

    # --- time, departures, restarts ---------------------------------------------------

    def _untime(self, waiter: Waiter) -> None:
        if waiter.deadline is not None:
            self._timed -= 1

    def expire(self, now: float) -> None:
        """Answer the waiting requests whose timeout has ended."""
        if not self._timed:
            return
        for waiters in self._variable_waiters.values():
            self._expire_in(waiters, now, {"ok": False, "timed_out": True})
        for waiters in self._event_waiters.values():
            self._expire_in(waiters, now, {"ok": True, "set": False})
        for queue_waiters in self._queue_waiters.values():
            self._expire_in(queue_waiters, now, {"ok": False, "timed_out": True})
        for name in list(self._queue_waiters):
            self._serve_queue(name)  # an expired get that waited for more items may have been first
        for semaphore in self._semaphores.values():
            expired = [(w, lease) for w, lease in semaphore.waiters if w.deadline is not None and w.deadline <= now]
            for waiter, lease in expired:
                semaphore.waiters.remove((waiter, lease))
                self._untime(waiter)
                self._answer(waiter, {"ok": True, "acquired": False})
        self._drop_empty()

    def _expire_in(self, waiters: list[Waiter] | deque[Waiter], now: float, answer: dict[str, Any]) -> None:
        expired = [w for w in waiters if w.deadline is not None and w.deadline <= now]
        for waiter in expired:
            waiters.remove(waiter)
            self._untime(waiter)
            self._answer(waiter, answer)

    def _abandon(self, client: ClientPeer, request_id: Any) -> None:
        """``client`` stopped waiting for its request ``request_id``: drop it if it still
        waits (if it was answered meanwhile, the client undoes what the answer gave it)."""
        for table in (self._variable_waiters, self._event_waiters, self._queue_waiters):
            for waiters in table.values():
                for waiter in [w for w in waiters if w.client is client and w.request_id == request_id]:
                    waiters.remove(waiter)
                    self._untime(waiter)
        for semaphore in self._semaphores.values():
            for entry in [e for e in semaphore.waiters if e[0].client is client and e[0].request_id == request_id]:
                semaphore.waiters.remove(entry)
                self._untime(entry[0])
        for name in list(self._queue_waiters):
            self._serve_queue(name)  # the get dropped may have been ahead of smaller ones
        for name, semaphore in list(self._semaphores.items()):
            self._grant(name, semaphore)
        self._drop_empty()

    def client_gone(self, client: ClientPeer) -> None:
        """``client`` left: its waits end, and its leases go to the next waiters."""
        for table in (self._variable_waiters, self._event_waiters, self._queue_waiters):
            for waiters in table.values():
                for waiter in [w for w in waiters if w.client is client]:
                    waiters.remove(waiter)
                    self._untime(waiter)
        for name, semaphore in list(self._semaphores.items()):
            for waiter, lease in [entry for entry in semaphore.waiters if entry[0].client is client]:
                semaphore.waiters.remove((waiter, lease))
                self._untime(waiter)
            for lease in [lease for lease, holder in semaphore.holders.items() if holder is client]:
                del semaphore.holders[lease]
            self._grant(name, semaphore)
        for name in list(self._queue_waiters):
            self._serve_queue(name)  # a get that waited for more items may have been first
        self._drop_empty()

    def _drop_empty(self) -> None:
        for table in (self._variable_waiters, self._event_waiters, self._queue_waiters):
            for name in [name for name, waiters in table.items() if not waiters]:
                del table[name]

    def clear(self, reason: str) -> None:
        """The cluster restarts: every object goes (their values go with the workers), and
        every waiting request is answered with ``reason``."""
        answer = {"ok": False, "error": reason}
        for table in (self._variable_waiters, self._event_waiters, self._queue_waiters):
            for waiters in table.values():
                for waiter in waiters:
                    self._answer(waiter, answer)
            table.clear()
        for semaphore in self._semaphores.values():
            for waiter, _ in semaphore.waiters:
                self._answer(waiter, answer)
        self._semaphores.clear()
        for held in self._variables.values():
            self._let_go(held)
        for items in self._queues.values():
            for held in items:
                self._let_go(held)
        self._variables.clear()
        self._queues.clear()
        self._events.clear()
        self._timed = 0

    def audit(self) -> list[str]:
        """Broken invariants (empty when sound): the count of timed waiters."""
        lists = [*self._variable_waiters.values(), *self._event_waiters.values(), *self._queue_waiters.values()]
        timed = sum(w.deadline is not None for waiters in lists for w in waiters)
        timed += sum(w.deadline is not None for s in self._semaphores.values() for w, _ in s.waiters)
        return [] if timed == self._timed else [f"{self._timed} timed waiters counted, {timed} waiting"]

    def held_records(self) -> list[TaskRecord]:
        """Every record a variable or a queue keeps (for the ledger's published counts)."""
        held = [rec for h in self._variables.values() for rec in h.records]
        held.extend(rec for items in self._queues.values() for h in items for rec in h.records)
        return held
