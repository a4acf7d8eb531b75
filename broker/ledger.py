"""The broker's task ledger: one record per key, its state, and every state transition.

States of a record and how it moves between them::

    new/released ──make_ready──▶ waiting ──inputs in memory──▶ queued ──dispatch──▶ processing(w)
         ▲                          │                                                  │
         │                          └────────────── erred ◀───── error / KilledWorker ◀┤
         │                                                                             ▼
         └──────── release (nobody needs it; spec kept for lineage) ◀──────────── memory(who_has)
    released or erred, with no dependents and no wanters ──▶ forgotten (record deleted)

A key is *needed* while a client holds a future for it (``wanted_by``), a client waits for its
value (``push_to``), or a dependent is waiting, queued or processing (``n_active``).  Every
change of state goes through :meth:`Ledger.set_state`, which keeps ``n_active`` of the inputs
and the per-state counts exact, so "is it still needed?" is O(1).  Records whose need may
have dropped are collected as *candidates* and examined once at the end of each step.

Walks over the graph (erring dependents, recomputing lineage, cancelling) use explicit
stacks: chains of dependent tasks can be far longer than Python's recursion limit.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from typing import Any

from broker.functions import count_down
from broker.outbox import Outbox, Payload, payload_field
from broker.peers import ClientPeer, WorkerPeer
from zmqdask import protocol
from zmqdask.config import MAX_KILLED_ATTEMPTS
from zmqdask.protocol import FLAG_PUSH_RESULT, FLAG_RETRY, FLAG_WANTED

logger = logging.getLogger(__name__)

WAITING = "waiting"
QUEUED = "queued"
PROCESSING = "processing"
MEMORY = "memory"
ERRED = "erred"
RELEASED = "released"
FORGOTTEN = "forgotten"
STATES = (WAITING, QUEUED, PROCESSING, MEMORY, ERRED, RELEASED)
"""States of records present in the ledger (a forgotten record is no longer there)."""

ACTIVE_STATES = frozenset({WAITING, QUEUED, PROCESSING})
"""States of records that still have to run: they keep their inputs needed."""
_NO_DEPS: tuple[TaskRecord, ...] = ()

ErrorDetail = list[str]
"""``[exception type name, message, origin key]`` as carried by ERRED entries."""


class TaskRecord:
    """Everything the broker knows about one key.  Payload frames are opaque and kept as received.

    Empty collections are stored as ``None``: a million queued tasks must stay small.
    """

    __slots__ = (
        "dependents",
        "deps",
        "error",
        "fn_hash",
        "is_data",
        "key",
        "n_active",
        "nbytes",
        "payload",
        "priority",
        "processing_on",
        "push_to",
        "retries",
        "seq",
        "state",
        "suspicious",
        "type_name",
        "waiting_on",
        "wanted_by",
        "who_has",
    )

    def __init__(
        self,
        key: str,
        fn_hash: bytes | None,
        payload: Payload | None,
        deps: tuple[TaskRecord, ...],
        priority: int,
        seq: int,
        retries: int,
        is_data: bool,
    ) -> None:
        self.key = key
        self.state = RELEASED
        self.fn_hash = fn_hash
        self.payload = payload
        """The task's argument frames (or a scattered value's frames until it is stored)."""
        self.deps = deps
        self.dependents: set[TaskRecord] | None = None
        self.waiting_on: set[TaskRecord] | None = None
        self.priority = priority
        self.seq = seq
        """Submission order: ties between equal priorities go to the older task."""
        self.retries = retries
        self.suspicious = 0
        """How many workers died while running this task."""
        self.processing_on: WorkerPeer | None = None
        """The worker whose credit this task counts against (possibly while being cancelled)."""
        # A tuple, not a set: usually one holder, and a 1-tuple is a fraction of a set's size.
        self.who_has: tuple[WorkerPeer, ...] | None = None
        self.nbytes = 0
        self.type_name = ""
        # Tuples rather than sets or lists: usually one client, and a 1-tuple is the smallest.
        self.wanted_by: tuple[ClientPeer, ...] | None = None
        self.push_to: tuple[ClientPeer, ...] | None = None
        self.error: tuple[ErrorDetail, Payload] | None = None
        self.is_data = is_data
        self.n_active = 0
        """How many dependents are waiting, queued or processing."""

    def __repr__(self) -> str:
        return f"<TaskRecord {self.key!r} {self.state}>"


class ReadyQueue:
    """Queued tasks by (-priority, submission order); entries of tasks that left the queued
    state in another way are skipped when popped (lazy deletion).

    Entries usually arrive in order (a batch of tasks of one priority, submitted in turn):
    those go to a FIFO run, O(1) each way.  Only an entry that sorts before the run's last
    one goes to a heap; popping takes the smaller of the two heads, so the order is exact.
    """

    __slots__ = ("_heap", "_run")

    def __init__(self) -> None:
        self._run: deque[tuple[int, int, str]] = deque()
        self._heap: list[tuple[int, int, str]] = []

    def __len__(self) -> int:
        return len(self._run) + len(self._heap)

    def push(self, rec: TaskRecord) -> None:
        """Add a record that just became queued."""
        entry = (-rec.priority, rec.seq, rec.key)
        run = self._run
        if not run or run[-1] <= entry:
            run.append(entry)
        else:
            heapq.heappush(self._heap, entry)

    def pop(self, tasks: dict[str, TaskRecord]) -> TaskRecord | None:
        """Remove and return the most urgent queued record, or None."""
        run, heap = self._run, self._heap
        while run or heap:
            if heap and (not run or heap[0] < run[0]):
                _, seq, key = heapq.heappop(heap)
            else:
                _, seq, key = run.popleft()
            rec = tasks.get(key)
            # The seq check rejects an entry left behind by an earlier record of the same key.
            if rec is not None and rec.state is QUEUED and rec.seq == seq:
                return rec
        return None

    def unpop(self, rec: TaskRecord) -> None:
        """Put back a record popped but not dispatched."""
        self.push(rec)

    def compact(self, tasks: dict[str, TaskRecord], nqueued: int) -> None:
        """Drop stale entries once they dominate the heap."""
        if len(self) <= 2 * nqueued + 1024:
            return
        seen: set[str] = set()
        fresh = []
        for entry in itertools.chain(self._run, self._heap):
            rec = tasks.get(entry[2])
            if rec is not None and rec.state is QUEUED and rec.seq == entry[1] and entry[2] not in seen:
                seen.add(entry[2])
                fresh.append(entry)
        fresh.sort()
        self._run = deque(fresh)
        self._heap = []


def lost_data_detail(key: str) -> ErrorDetail:
    """Error detail of a scattered key that no worker holds any more."""
    return [
        "LostDataError",
        f"scattered data {key!r} is lost: no worker holds it any more and it cannot be recomputed",
        key,
    ]


def killed_worker_detail(key: str) -> ErrorDetail:
    """Error detail of a task that was running on too many workers when they died."""
    return [
        "KilledWorker",
        f"Attempted to run task {key} on {MAX_KILLED_ATTEMPTS} different workers, but all those workers "
        "died while running it. The task itself probably kills its worker process (for example by "
        "exhausting memory or crashing in native code); it will not be tried again. A worker past its "
        "memory limit is restarted too, and the results it holds count towards that limit: if the pool's "
        "log shows such restarts, release results you no longer need, or give workers more memory.",
        key,
    ]


class Ledger:
    """The task records and their transitions; messages go to the shared :class:`Outbox`."""

    def __init__(self, outbox: Outbox) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.ready = ReadyQueue()
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self.outbox = outbox
        self.candidates: list[TaskRecord] = []
        """Records whose need may have dropped; examined by :meth:`process_releases`."""
        self.gets: dict[tuple[WorkerPeer, ClientPeer], list[str]] = {}
        """Values to fetch from a holder for a client this step: (holder, client) -> keys."""
        self.pending_stores: deque[TaskRecord] = deque()
        """Scattered values waiting for the first worker to register."""
        self.started: list[TaskRecord] = []
        """Records sent to a worker this step that have dependents (see dispatch_ahead)."""
        self.ahead_pending: list[TaskRecord] = []
        """Records that could go ahead of their inputs but found no room on the worker."""
        self.function_refs: dict[bytes, int] = {}
        """How many records run each function (the broker keeps a function while any does)."""
        self.unreferenced_functions: list[bytes] = []
        """Functions whose last record was forgotten, for the broker's FunctionTable."""
        self.respecified: set[TaskRecord] = set()
        """Records given a new call while a run of their old one goes on (cancelled, not yet
        answered): that run's answer is dropped and the record runs again."""
        self.kept: set[TaskRecord] = set()
        """Unfinished records a client asked to run to the end (``fire_and_forget``): needed
        until they finish, whoever wants them."""
        self.published: dict[TaskRecord, int] = {}
        """Records held by published datasets (see broker.datasets), with how many hold each:
        needed, whoever wants them, until the last such dataset is deleted."""
        self.awaiting: dict[TaskRecord, WorkerPeer | None] = {}
        """Scattered values whose bytes a client is sending (PROCESSING, no payload here):
        to that worker directly (PLACE, which the worker confirms), or to the broker (None)."""
        self._seq = itertools.count()

    # --- primitives -------------------------------------------------------------------

    def set_state(self, rec: TaskRecord, state: str) -> None:
        """The only way a record changes state (keeps counts and inputs' ``n_active`` exact)."""
        old = rec.state
        if old is state:
            return
        counts = self.counts
        counts[old] -= 1
        counts[state] += 1
        rec.state = state
        now_active = state in ACTIVE_STATES
        if not now_active and self.kept and rec in self.kept:
            # Finished (or failed, or released by a restart): it was kept for this.
            self.kept.discard(rec)
            self.candidates.append(rec)
        if (old in ACTIVE_STATES) is not now_active:
            if now_active:
                for dep in rec.deps:
                    dep.n_active += 1
            else:
                for dep in rec.deps:
                    dep.n_active -= 1
                self.candidates.extend(rec.deps)

    def needed(self, rec: TaskRecord) -> bool:
        """Whether a client, an unfinished dependent or a request to run it to the end
        (:meth:`keep`) still needs ``rec``."""
        return (
            rec.wanted_by is not None
            or rec.push_to is not None
            or rec.n_active > 0
            or (bool(self.kept) and rec in self.kept)
            or (bool(self.published) and rec in self.published)
        )

    def records_of(self, keys: list[str]) -> tuple[tuple[TaskRecord, ...], str | None]:
        """The records of ``keys``, each once, to hold for a value that names them (a dataset,
        a variable's or a queue's item); or none, with why, if the ledger lacks some."""
        tasks = self.tasks
        unknown = [key for key in keys if key not in tasks]
        if unknown:
            why = (
                f"the broker does not know {len(unknown)} of its futures (such as {unknown[0]!r}): "
                "they were cancelled or released"
            )
            return (), why
        return tuple(tasks[key] for key in dict.fromkeys(keys)), None

    def hand_over(self, records: tuple[TaskRecord, ...], client: ClientPeer) -> None:
        """``client`` receives a value naming ``records`` (its WANT of each follows): it
        holds them from now on, whatever becomes of what held them before."""
        for rec in records:
            self.add_interest(rec, client, wanted=True, push=False)

    def publish(self, rec: TaskRecord) -> None:
        """A published dataset holds ``rec``: keep it (and its value) until :meth:`unpublish`."""
        self.published[rec] = self.published.get(rec, 0) + 1

    def unpublish(self, rec: TaskRecord) -> None:
        """A dataset holding ``rec`` was deleted; the record may become unneeded."""
        if count_down(self.published, rec):
            self.candidates.append(rec)

    def keep(self, key: str) -> None:
        """KEEP of ``key``: if it has not finished, run it to the end even once no client
        wants it (it is released then, as any unwanted result)."""
        rec = self.tasks.get(key)
        if rec is not None and rec.state in ACTIVE_STATES:
            self.kept.add(rec)

    def new_task(
        self,
        key: str,
        fn_hash: bytes | None,
        payload: Payload | None,
        deps: tuple[TaskRecord, ...],
        priority: int,
        retries: int,
        *,
        is_data: bool,
    ) -> TaskRecord:
        """Create a released record for a key not in the ledger."""
        rec = TaskRecord(key, fn_hash, payload, deps or _NO_DEPS, priority, next(self._seq), retries, is_data)
        if fn_hash is not None:
            refs = self.function_refs
            refs[fn_hash] = refs.get(fn_hash, 0) + 1
        for dep in deps:
            if dep.dependents is None:
                dep.dependents = {rec}
            else:
                dep.dependents.add(rec)
        self.tasks[key] = rec
        self.counts[RELEASED] += 1
        return rec

    def add_interest(self, rec: TaskRecord, client: ClientPeer, *, wanted: bool, push: bool) -> None:
        """Record that ``client`` holds a future for ``rec`` and/or waits for its value."""
        if wanted:
            if rec.wanted_by is None:
                rec.wanted_by = (client,)
            elif client not in rec.wanted_by:
                rec.wanted_by += (client,)
        if push:
            if rec.push_to is None:
                rec.push_to = (client,)
            elif client not in rec.push_to:
                rec.push_to += (client,)
        if wanted or push:
            client.interest.add(rec)

    def drop_interest(self, rec: TaskRecord, client: ClientPeer) -> None:
        """Forget every interest of ``client`` in ``rec``; the record may become unneeded."""
        wanted_by = rec.wanted_by
        if wanted_by is not None:
            if len(wanted_by) == 1:
                if wanted_by[0] is client:
                    rec.wanted_by = None
            elif client in wanted_by:
                rec.wanted_by = tuple(c for c in wanted_by if c is not client) or None
        push_to = rec.push_to
        if push_to is not None and client in push_to:
            rec.push_to = tuple(c for c in push_to if c is not client) or None
        client.interest.discard(rec)
        self.candidates.append(rec)

    def _take_push(self, rec: TaskRecord) -> tuple[ClientPeer, ...]:
        """Clear and return ``push_to``: those clients are being served now."""
        push = rec.push_to
        if push is None:
            return ()
        rec.push_to = None
        wanted_by = rec.wanted_by
        for client in push:
            if wanted_by is None or client not in wanted_by:
                client.interest.discard(rec)
        return push

    def request_value(self, holder: WorkerPeer, client: ClientPeer, key: str) -> None:
        """Fetch ``key`` from ``holder`` for ``client`` (grouped into one GET per pair)."""
        keys = self.gets.get((holder, client))
        if keys is None:
            self.gets[(holder, client)] = [key]
        else:
            keys.append(key)

    def report_error(self, rec: TaskRecord, client: ClientPeer) -> None:
        """Send ``rec``'s error to ``client`` again."""
        if rec.error is None:
            return
        detail, frames = rec.error
        self.outbox.report(client, [rec.key, protocol.ERRED, detail, payload_field(frames)], frames)

    def report_lost(self, client: ClientPeer, key: str, reason: str) -> None:
        """Tell ``client`` that ``key`` has no value and never will."""
        self.outbox.report(client, [key, protocol.LOST, reason, 0])

    # --- towards running --------------------------------------------------------------

    def make_ready(self, rec: TaskRecord) -> None:
        """Send a new, released or requeued record on its way to running (recomputing inputs)."""
        for dep in rec.deps:
            if dep.state is RELEASED:
                self._recompute_inputs(rec)
                break
        self._settle(rec)

    def recompute(self, rec: TaskRecord) -> None:
        """Recompute a released record from its spec, recomputing released inputs first."""
        if rec.state is RELEASED:
            self.make_ready(rec)

    def _recompute_inputs(self, rec: TaskRecord) -> None:
        # Post-order over released ancestors, so that each settles after its own inputs did.
        stack: list[tuple[TaskRecord, bool]] = [(dep, False) for dep in rec.deps if dep.state is RELEASED]
        while stack:
            node, expanded = stack.pop()
            if node.state is not RELEASED:
                continue
            if expanded:
                self._settle(node)
                continue
            stack.append((node, True))
            stack.extend((dep, False) for dep in node.deps if dep.state is RELEASED)

    def _settle(self, rec: TaskRecord) -> None:
        """Move a record whose inputs are no longer released to waiting, queued or erred."""
        if rec.processing_on is not None:
            # A cancellation of this task is still pending on a live worker: take whatever it
            # answers (the result, or CANCELLED, which requeues) instead of running it twice.
            rec.waiting_on = None
            self.set_state(rec, PROCESSING)
            return
        if rec.is_data and self.ask_for_bytes(rec):
            return
        if rec.is_data or rec.payload is None:
            self.err(rec, lost_data_detail(rec.key) if rec.is_data else _unrecomputable(rec.key), (), lost=rec.is_data)
            return
        waiting: set[TaskRecord] | None = None
        for dep in rec.deps:
            state = dep.state
            if state is MEMORY:
                continue
            if state is ERRED and dep.error is not None:
                self.err(rec, dep.error[0], dep.error[1])
                return
            if state not in ACTIVE_STATES:
                self.err(rec, _unrecomputable(dep.key, rec.key), ())
                return
            if waiting is None:
                waiting = {dep}
            else:
                waiting.add(dep)
        rec.waiting_on = waiting
        if waiting is not None:
            self.set_state(rec, WAITING)
        else:
            self.set_state(rec, QUEUED)
            self.ready.push(rec)
        # Nobody may need it (submitted without a future and no dependent in the batch, or
        # requeued after its wanters left): the end-of-step release pass drops it then.
        if rec.wanted_by is None and rec.push_to is None and rec.n_active == 0:
            self.candidates.append(rec)

    def start(self, rec: TaskRecord, worker: WorkerPeer) -> None:
        """Mark a queued record (or one sent ahead of its inputs) as sent to ``worker``.

        It counts against the worker's window until the worker answers for it.
        """
        rec.processing_on = worker
        rec.waiting_on = None
        worker.processing[rec.key] = rec
        self.set_state(rec, PROCESSING)
        if rec.dependents is not None:
            self.started.append(rec)

    # --- results ----------------------------------------------------------------------

    def to_memory(
        self, rec: TaskRecord, worker: WorkerPeer, type_name: str, nbytes: int, frames: Payload
    ) -> None:
        """``worker`` holds the value of ``rec`` now: report it and wake dependents."""
        rec.waiting_on = None
        rec.type_name = type_name
        rec.nbytes = nbytes
        rec.who_has = (worker,)
        worker.has.add(rec)
        worker.nbytes += nbytes
        self.set_state(rec, MEMORY)
        push = self._take_push(rec)
        outbox = self.outbox
        if rec.wanted_by is not None:
            if type(frames) is bytes:
                # A small value that came inline (say, a number) goes to every client holding
                # a future for it: cheaper than a GATHER and a GET later.
                entry = [rec.key, protocol.FINISHED, [type_name, nbytes], frames]
                for client in rec.wanted_by:
                    if client not in push:
                        outbox.report(client, entry, frames)
            else:
                entry = [rec.key, protocol.FINISHED, [type_name, nbytes], 0]
                for client in rec.wanted_by:
                    if client not in push:
                        outbox.report(client, entry)
        if push:
            if frames:
                entry = [rec.key, protocol.FINISHED, [type_name, nbytes], payload_field(frames)]
                for client in push:
                    outbox.report(client, entry, frames)
            else:
                for client in push:
                    self.request_value(worker, client, rec.key)
        if rec.dependents is not None:
            ready = self.ready
            for dependent in rec.dependents:
                if dependent.state is WAITING:
                    waiting_on = dependent.waiting_on
                    if waiting_on is not None:
                        waiting_on.discard(rec)
                        if waiting_on:
                            continue
                    dependent.waiting_on = None
                    self.set_state(dependent, QUEUED)
                    ready.push(dependent)
        # Nobody may need the value any more (an input whose dependents all left): let the
        # end-of-step release pass look.  Whatever needs it later appends it again when
        # that need ends.
        if rec.wanted_by is None and rec.push_to is None and rec.n_active == 0:
            self.candidates.append(rec)

    def finished(self, worker: WorkerPeer, key: str, type_name: str, nbytes: int, frames: Payload) -> None:
        """DONE FINISHED from ``worker`` for a task (not a STORE)."""
        slot = worker.stop_processing(key)
        if slot is not None and slot.processing_on is worker:
            slot.processing_on = None
        if self.respecified and self._answer_of_old_call(slot, worker, key):
            return
        rec = self.tasks.get(key)
        if rec is None or rec.is_data:
            if rec is None or rec.who_has is None or worker not in rec.who_has:
                self.outbox.delete(worker, key)
            return
        state = rec.state
        if state is PROCESSING or state is QUEUED or state is WAITING:
            # Also taken when the task was presumed lost (requeued) or runs elsewhere too: the
            # first result wins and the other copy is cancelled (it keeps its credit until the
            # worker answers).
            other = rec.processing_on
            if other is not None:
                self.outbox.cancel_task(other, key)
            self.to_memory(rec, worker, type_name, nbytes, frames)
        elif state is MEMORY and rec.who_has is not None and worker in rec.who_has:
            pass
        else:
            self.outbox.delete(worker, key)
            self.candidates.append(rec)

    def _answer_of_old_call(self, slot: TaskRecord | None, worker: WorkerPeer, key: str) -> bool:
        """Whether ``worker``'s answer for ``key`` is of a call its record no longer runs
        (dropped, and the record runs its new call)."""
        if slot is None or slot not in self.respecified or self.tasks.get(key) is not slot:
            return False
        self.respecified.discard(slot)
        self.outbox.delete(worker, key)
        if slot.state is PROCESSING and slot.processing_on is None:
            self.make_ready(slot)
        else:
            self.candidates.append(slot)
        return True

    def failed(self, worker: WorkerPeer, key: str, detail: ErrorDetail, frames: Payload) -> None:
        """DONE ERRED from ``worker`` for a task (not a STORE)."""
        slot = worker.stop_processing(key)
        if slot is not None and slot.processing_on is worker:
            slot.processing_on = None
        if self.respecified and self._answer_of_old_call(slot, worker, key):
            return
        rec = self.tasks.get(key)
        if rec is None:
            return
        if rec.state is MEMORY and rec.who_has is not None and worker in rec.who_has:
            # The holder could not serialize the value when asked for it (its DATA answer
            # lists the key as missing right after this): the value is unusable.
            self._drop_holders(rec)
            self.set_state(rec, RELEASED)
            self.err(rec, detail, frames)
            return
        if slot is not rec or rec.state is not PROCESSING or rec.processing_on is not None:
            self.candidates.append(rec)
            return
        if rec.retries > 0:
            rec.retries -= 1
            self.make_ready(rec)
            return
        self.err(rec, detail, frames)

    def cancelled(self, worker: WorkerPeer, key: str) -> None:
        """DONE CANCELLED: ``worker`` dropped a task it had not started."""
        slot = worker.stop_processing(key)
        if slot is not None and slot.processing_on is worker:
            slot.processing_on = None
        if self.respecified and slot is not None:
            self.respecified.discard(slot)  # nothing of the old call ran: the record goes on
        rec = self.tasks.get(key)
        if rec is None or slot is not rec:
            return
        if rec.state is PROCESSING and rec.processing_on is None:
            self.make_ready(rec)
        else:
            self.candidates.append(rec)

    def missing_deps(self, worker: WorkerPeer, key: str, dep_keys: list[str]) -> None:
        """DONE MISSING_DEPS: ``worker`` could not obtain these inputs of ``key``."""
        slot = worker.stop_processing(key)
        if slot is not None and slot.processing_on is worker:
            slot.processing_on = None
        for dep_key in dep_keys:
            dep = self.tasks.get(dep_key)
            if dep is not None and dep.who_has is not None and worker in dep.who_has:
                # The worker itself was named as holder but does not have it.
                self.remove_holder(dep, worker)
        rec = self.tasks.get(key)
        if rec is None or slot is not rec:
            return
        if rec.state is PROCESSING and rec.processing_on is None:
            # Inputs whose last holder is gone are already being recomputed (their holders
            # were discarded when the fetch came back missing): wait for them again.
            self.make_ready(rec)
        else:
            self.candidates.append(rec)

    # --- scattered data ---------------------------------------------------------------

    def scatter(
        self, client: ClientPeer, key: str, frames: Payload | None, *, replace: bool = False
    ) -> TaskRecord | None:
        """Record a scattered value; returns the record if it must be sent to workers.

        ``frames`` is None for a value the client sends to a worker itself (PLACE).  With
        ``replace``, a scattered value in memory under ``key`` gives way to these bytes: its
        holders drop it, and every client holding a future of it hears FINISHED again.
        """
        rec = self.tasks.get(key)
        if rec is not None and replace and frames is not None and rec.is_data and rec.state is MEMORY:
            self._drop_holders(rec)
            rec.payload = frames
            rec.error = None
            self.add_interest(rec, client, wanted=True, push=False)
            self.set_state(rec, PROCESSING)
            return rec
        if rec is not None:
            if rec.is_data and rec.state is PROCESSING and rec.payload is None and frames is not None:
                # Awaited from a client and not confirmed: the bytes come through the broker
                # (that client could not reach the worker named, or was asked to send them).
                rec.payload = frames
                self._unawait(rec)
                self.add_interest(rec, client, wanted=True, push=False)
                return rec
            if rec.is_data and (rec.state is RELEASED or rec.state is ERRED) and rec.processing_on is None:
                # A lost or released scattered key sent again: it becomes available again.
                rec.error = None
                rec.payload = frames
                self.add_interest(rec, client, wanted=True, push=False)
                self.set_state(rec, PROCESSING)
                return rec
            self.resubmitted(rec, client, wanted=True, push=False)
            return None
        rec = self.new_task(key, None, frames, _NO_DEPS, 0, 0, is_data=True)
        self.add_interest(rec, client, wanted=True, push=False)
        self.set_state(rec, PROCESSING)
        return rec

    def ask_for_bytes(self, rec: TaskRecord) -> bool:
        """Ask the clients holding the scattered ``rec`` to send its bytes again, through the
        broker (REPORT ELSEWHERE with no address); False if no client that can is left.

        A client keeps every value it scattered while it holds a future of it, so a value
        whose last holder died, or whose direct transfer failed, is not lost while one does:
        tasks waiting for it wait on.
        """
        senders = self._senders(rec)
        if not senders:
            return False
        rec.payload = None
        if rec.state is not PROCESSING:
            self.set_state(rec, PROCESSING)
        self.awaiting[rec] = None
        for client in senders:
            self.ask_through_broker(client, rec.key, rec.nbytes)
        return True

    def ask_through_broker(self, client: ClientPeer, key: str, nbytes: int) -> None:
        """Ask ``client`` to send the value it scattered as ``key`` with SCATTER."""
        self.outbox.report(client, [key, protocol.ELSEWHERE, ["", nbytes, ""], 0])

    def _unawait(self, rec: TaskRecord) -> None:
        """``rec``'s bytes are no longer awaited: void its placement on a worker, if any."""
        target = self.awaiting.pop(rec, None)
        if target is not None and target.storing.get(rec.key) is rec:
            del target.storing[rec.key]

    @staticmethod
    def _senders(rec: TaskRecord) -> list[ClientPeer]:
        """Live clients holding a future of the scattered ``rec`` that can send it again."""
        return [client for client in rec.wanted_by or () if client.alive and client.direct]

    def store(self, worker: WorkerPeer, rec: TaskRecord) -> None:
        """Send a scattered value to ``worker`` (STORE uses no credit)."""
        if rec.payload is None:
            return
        worker.storing[rec.key] = rec
        self.outbox.store(worker, rec.key, rec.payload)

    def stored(self, worker: WorkerPeer, key: str, type_name: str, nbytes: int) -> bool:
        """DONE FINISHED answering a STORE; False if ``key`` was not being stored on ``worker``."""
        rec = worker.storing.pop(key, None)
        if rec is None:
            return False
        self.awaiting.pop(rec, None)
        state = rec.state
        if self.tasks.get(key) is not rec:
            self.outbox.delete(worker, key)
        elif state is PROCESSING:
            self.to_memory(rec, worker, type_name, nbytes, ())
            rec.payload = None  # the value lives on a worker now; the broker keeps no copy
        elif state is MEMORY and rec.who_has is not None:
            if worker not in rec.who_has:
                rec.who_has += (worker,)
                worker.has.add(rec)
                worker.nbytes += rec.nbytes
        else:
            self.outbox.delete(worker, key)
        return True

    def store_failed(self, worker: WorkerPeer, key: str, detail: ErrorDetail, frames: Payload) -> bool:
        """DONE ERRED answering a STORE; False if ``key`` was not being stored on ``worker``."""
        rec = worker.storing.pop(key, None)
        if rec is None:
            return False
        self.awaiting.pop(rec, None)
        if self.tasks.get(key) is rec and rec.state is PROCESSING:
            self.err(rec, detail, frames)
        return True

    # --- client requests --------------------------------------------------------------

    def submit(
        self,
        client: ClientPeer,
        entry: list[Any],
        frames: Payload,
        known_fn_hash: bytes | None,
    ) -> None:
        """One SUBMIT task entry ``[key, fn_hash, deps, priority, retries, flags, nframes]``.

        ``known_fn_hash`` is the broker's copy of the entry's function hash, None if the
        broker never received that function.
        """
        key, fn_hash, dep_keys, priority, retries, flags, _ = entry
        wanted = bool(flags & FLAG_WANTED)
        push = bool(flags & FLAG_PUSH_RESULT)
        tasks = self.tasks
        rec = tasks.get(key)
        if rec is not None:
            if flags & FLAG_RETRY and rec.state is ERRED and known_fn_hash == rec.fn_hash:
                self.retry(rec, frames, retries)
            elif rec.state is RELEASED and not rec.is_data and known_fn_hash is not None:
                refused = self._respecify(rec, known_fn_hash, frames, retries, dep_keys)
                if refused is not None:
                    self.add_interest(rec, client, wanted=wanted, push=push)
                    self.err(rec, refused, ())
                    return
            self.resubmitted(rec, client, wanted=wanted, push=push)
            return
        if not dep_keys and known_fn_hash is not None and (wanted or push):
            # The common case, in short: a new task without inputs that a client wants goes
            # straight to the ready queue (what new_task, add_interest and make_ready do).
            rec = TaskRecord(key, known_fn_hash, frames, _NO_DEPS, priority, next(self._seq), retries, False)
            tasks[key] = rec
            refs = self.function_refs
            refs[known_fn_hash] = refs.get(known_fn_hash, 0) + 1
            rec.state = QUEUED
            self.counts[QUEUED] += 1
            if wanted:
                rec.wanted_by = (client,)
            if push:
                rec.push_to = (client,)
            client.interest.add(rec)
            self.ready.push(rec)
            return
        deps: list[TaskRecord] = []
        unknown: str | None = None
        tasks = self.tasks
        for dep_key in dep_keys:
            dep = tasks.get(dep_key)
            if dep is None:
                unknown = dep_key
                break
            if dep not in deps:
                deps.append(dep)
        rec = self.new_task(
            key,
            known_fn_hash or fn_hash,
            frames,
            tuple(deps) if unknown is None else _NO_DEPS,
            priority,
            retries,
            is_data=False,
        )
        self.add_interest(rec, client, wanted=wanted, push=push)
        if known_fn_hash is None:
            self.err(rec, ["ProtocolError", f"function {fn_hash.hex()} unknown to broker; resend", key], ())
        elif unknown is not None:
            self.err(rec, ["LostDataError", f"dependency {unknown} is unknown", key], ())
        else:
            self.make_ready(rec)

    def retry(self, rec: TaskRecord, frames: Payload, retries: int) -> None:
        """Take an erred record back to released, with its arguments sent again (the broker
        dropped them when it erred); :meth:`resubmitted` then sends it on its way.

        Inputs that erred too must be retried first (the client sends them earlier in the
        same SUBMIT), or the record errs again with their error.
        """
        rec.error = None
        rec.payload = frames
        rec.retries = retries
        rec.suspicious = 0
        self.set_state(rec, RELEASED)

    def _respecify(
        self, rec: TaskRecord, fn_hash: bytes, frames: Payload, retries: int, dep_keys: list[str]
    ) -> ErrorDetail | None:
        """A released record submitted again with another call under its key: it runs the
        new call, with the new call's inputs.  Returns why it cannot (an input not in the
        ledger, or one computed from this very key: a cycle), leaving the record unchanged;
        else None.

        This happens when a client reuses ``key=``, and when a DataFrame graph fuses a step
        with other inputs than a graph before it did (the fused task keeps its last step's
        key: the value is the same, the call and its inputs are not).  A run of the old call
        that a cancellation has not stopped yet is not taken as this one's answer (see
        :attr:`respecified`).
        """
        if rec.fn_hash == fn_hash and _same_payload(rec.payload, frames):
            return None
        tasks = self.tasks
        deps: list[TaskRecord] = []
        for dep_key in dep_keys:
            dep = tasks.get(dep_key)
            if dep is None:
                return ["LostDataError", f"dependency {dep_key} is unknown", rec.key]
            if dep not in deps:
                deps.append(dep)
        if deps and _reaches(deps, rec):
            return ["ValueError", f"task {rec.key} would depend on itself through its new inputs", rec.key]
        self._relink(rec, tuple(deps) or _NO_DEPS)
        old_hash = rec.fn_hash
        if old_hash is not None and count_down(self.function_refs, old_hash):
            self.unreferenced_functions.append(old_hash)
        self.function_refs[fn_hash] = self.function_refs.get(fn_hash, 0) + 1
        rec.fn_hash = fn_hash
        rec.payload = frames
        rec.retries = retries
        rec.suspicious = 0
        if rec.processing_on is not None:
            self.respecified.add(rec)
        return None

    def _unlink(self, dep: TaskRecord, rec: TaskRecord) -> None:
        """``rec`` no longer reads ``dep``, which may become unneeded (a release candidate)."""
        dependents = dep.dependents
        if dependents is not None:
            dependents.discard(rec)
            if not dependents:
                dep.dependents = None
        self.candidates.append(dep)

    def _relink(self, rec: TaskRecord, deps: tuple[TaskRecord, ...]) -> None:
        """Give a released record other inputs; an input it no longer reads may become
        unneeded (a release candidate)."""
        old = rec.deps
        if old == deps:
            return
        for dep in old:
            if dep not in deps:
                self._unlink(dep, rec)
        for dep in deps:
            if dep.dependents is None:
                dep.dependents = {rec}
            else:
                dep.dependents.add(rec)
        rec.deps = deps

    def resubmitted(self, rec: TaskRecord, client: ClientPeer, *, wanted: bool, push: bool) -> None:
        """A key already in the ledger was submitted again: never run it twice."""
        state = rec.state
        if state is MEMORY and rec.who_has:
            self.add_interest(rec, client, wanted=wanted, push=False)
            if push:
                self.request_value(next(iter(rec.who_has)), client, rec.key)
            elif wanted:
                self.outbox.report(client, [rec.key, protocol.FINISHED, [rec.type_name, rec.nbytes], 0])
        elif state is ERRED:
            self.add_interest(rec, client, wanted=wanted, push=False)
            if wanted or push:
                self.report_error(rec, client)
        else:
            self.add_interest(rec, client, wanted=wanted, push=push)
            if state is RELEASED:
                self.recompute(rec)

    def gather(self, client: ClientPeer, key: str) -> None:
        """Route the value of ``key`` to ``client``, now or when it exists."""
        rec = self.tasks.get(key)
        if rec is None:
            self.report_lost(client, key, f"unknown key {key!r}: never submitted, or already released")
            return
        state = rec.state
        if state is MEMORY and rec.who_has:
            self.request_value(next(iter(rec.who_has)), client, key)
        elif state in ACTIVE_STATES:
            self.add_interest(rec, client, wanted=False, push=True)
        elif state is ERRED:
            self.report_error(rec, client)
        elif rec.is_data or rec.payload is None:
            self.report_lost(client, key, lost_data_detail(key)[1] if rec.is_data else _unrecomputable(key)[1])
        else:
            self.add_interest(rec, client, wanted=False, push=True)
            self.recompute(rec)

    def want(self, client: ClientPeer, key: str) -> bool:
        """WANT of ``key``: ``client`` made a future of it from its name; tell it the outcome
        the key has already, if any (it hears of a later one as any holder of a future).
        False, with nothing done, for a key not in the ledger."""
        rec = self.tasks.get(key)
        if rec is None:
            return False
        state = rec.state
        if state is MEMORY and rec.who_has:
            self.add_interest(rec, client, wanted=True, push=False)
            self.outbox.report(client, [key, protocol.FINISHED, [rec.type_name or "", rec.nbytes], 0])
        elif state in ACTIVE_STATES:
            self.add_interest(rec, client, wanted=True, push=False)
        elif state is ERRED:
            self.add_interest(rec, client, wanted=True, push=False)
            self.report_error(rec, client)
        elif rec.is_data or rec.payload is None:
            self.report_lost(client, key, lost_data_detail(key)[1] if rec.is_data else _unrecomputable(key)[1])
        else:
            # Released (its value was dropped, its call is known): run it again for this future.
            self.add_interest(rec, client, wanted=True, push=False)
            self.recompute(rec)
        return True

    def cancel(self, client: ClientPeer, key: str) -> None:
        """CANCEL of one key by ``client``: cancel it and its dependents if nobody else wants it."""
        rec = self.tasks.get(key)
        if rec is None:
            self.outbox.report(client, [key, protocol.CANCELLED, "cancelled", 0])
            return
        self.drop_interest(rec, client)
        if rec.state is MEMORY or rec.state is ERRED:
            return  # it has its outcome already: cancelling only drops the interest
        self.outbox.report(client, [key, protocol.CANCELLED, "cancelled", 0])
        if rec.wanted_by is not None or rec.push_to is not None or (self.published and rec in self.published):
            return  # someone else still wants it (a client, or a published dataset)
        stack = [rec]
        while stack:
            node = stack.pop()
            if node.state not in ACTIVE_STATES and (node is not rec or node.state is not RELEASED):
                continue
            entry = [node.key, protocol.CANCELLED, "cancelled", 0]
            for clients in (node.wanted_by, node.push_to):
                for other in clients or ():
                    if other is not client or node is not rec:
                        self.outbox.report(other, entry)
                    other.interest.discard(node)
            node.wanted_by = None
            node.push_to = None
            node.waiting_on = None
            if node.state is PROCESSING and node.processing_on is not None:
                self.outbox.cancel_task(node.processing_on, node.key)
            self.set_state(node, RELEASED)
            self.candidates.append(node)
            if node.dependents is not None:
                stack.extend(d for d in node.dependents if d.state in ACTIVE_STATES)

    def client_removed(self, client: ClientPeer) -> None:
        """A client died or left: it no longer wants anything."""
        for rec in list(client.interest):
            self.drop_interest(rec, client)
        client.interest.clear()

    # --- losing data and workers ------------------------------------------------------

    def remove_holder(self, rec: TaskRecord, worker: WorkerPeer) -> None:
        """``worker`` no longer holds ``rec``; a key left without holders is lost."""
        who_has = rec.who_has
        if who_has is None or worker not in who_has:
            return
        rec.who_has = tuple(holder for holder in who_has if holder is not worker) or None
        worker.has.discard(rec)
        worker.nbytes -= rec.nbytes
        if rec.who_has is None:
            self._lost(rec)

    def _lost(self, rec: TaskRecord) -> None:
        self.set_state(rec, RELEASED)
        if rec.dependents is not None:
            for dependent in rec.dependents:
                if dependent.state is QUEUED:
                    dependent.waiting_on = {rec}
                    self.set_state(dependent, WAITING)
                elif dependent.state is WAITING and dependent.waiting_on is not None:
                    dependent.waiting_on.add(rec)
        if self.needed(rec):
            self.recompute(rec)
        else:
            self.candidates.append(rec)

    def _drop_holders(self, rec: TaskRecord) -> None:
        for worker in rec.who_has or ():
            worker.has.discard(rec)
            worker.nbytes -= rec.nbytes
            self.outbox.delete(worker, rec.key)
        rec.who_has = None

    def worker_removed(
        self, worker: WorkerPeer, running: frozenset[str] | None
    ) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """Account for the death of ``worker``.

        ``running`` names the tasks it was running when it died (None: unknown, so every task
        it held is suspected).  Returns (scattered values whose STORE was not confirmed
        anywhere yet, records whose ``suspicious`` count was raised).
        """
        requeue: list[TaskRecord] = []
        blamed: list[TaskRecord] = []
        tasks = self.tasks
        for key, rec in worker.processing.items():
            if rec.processing_on is worker:
                rec.processing_on = None
            if rec.state is PROCESSING and rec.processing_on is None and tasks.get(key) is rec:
                requeue.append(rec)
                if running is None or key in running:
                    rec.suspicious += 1
                    blamed.append(rec)
            else:
                self.candidates.append(rec)
        worker.processing.clear()
        worker.seceded.clear()
        # Held keys first: inputs lost with the worker start recomputing before the tasks that
        # need them are requeued, so those find their inputs waiting, not released.
        for rec in list(worker.has):
            self.remove_holder(rec, worker)
        worker.has.clear()
        worker.nbytes = 0
        for rec in requeue:
            if rec.state is not PROCESSING or rec.processing_on is not None:
                continue  # an input was lost for good meanwhile and erred it
            if rec.suspicious >= MAX_KILLED_ATTEMPTS:
                logger.warning("task %r was running on %d workers that died: failing it", rec.key, rec.suspicious)
                self.err(rec, killed_worker_detail(rec.key), ())
            else:
                self.make_ready(rec)
        orphans = [rec for key, rec in worker.storing.items() if tasks.get(key) is rec and rec.state is PROCESSING]
        worker.storing.clear()
        return orphans, blamed

    # --- errors -----------------------------------------------------------------------

    def err(self, rec: TaskRecord, detail: ErrorDetail, frames: Payload, *, lost: bool = False) -> None:
        """Fail ``rec`` (not in memory) and, transitively, its unfinished dependents.

        Wanters of ``rec`` get ERRED (or LOST when ``lost``, for scattered data); wanters of
        dependents get ERRED with the same detail and frames.
        """
        error = (detail, frames)
        outbox = self.outbox
        stack = [rec]
        while stack:
            node = stack.pop()
            state = node.state
            if state is ERRED or state is FORGOTTEN or state is MEMORY:
                continue
            if node is not rec and state not in ACTIVE_STATES:
                continue
            node.error = error
            node.waiting_on = None
            if state is PROCESSING and node.processing_on is not None:
                outbox.cancel_task(node.processing_on, node.key)
            self.set_state(node, ERRED)
            node.payload = None
            push = self._take_push(node)
            if lost and node is rec:
                entry: list[Any] = [node.key, protocol.LOST, detail[1], 0]
                entry_frames: Payload = ()
            else:
                entry = [node.key, protocol.ERRED, detail, payload_field(frames)]
                entry_frames = frames
            for client in node.wanted_by or ():
                if client not in push:
                    outbox.report(client, entry, entry_frames)
            for client in push:
                outbox.report(client, entry, entry_frames)
            self.candidates.append(node)
            if node.dependents is not None:
                stack.extend(d for d in node.dependents if d.state in ACTIVE_STATES)

    # --- releasing --------------------------------------------------------------------

    def process_releases(self) -> None:
        """Release what nobody needs any more and forget what no dependent refers to."""
        candidates = self.candidates
        outbox = self.outbox
        awaiting = self.awaiting
        while candidates:
            rec = candidates.pop()
            if awaiting and rec in awaiting and awaiting[rec] is None and not self._senders(rec):
                # Its bytes were asked of clients, and none that could send them wants it any more.
                del awaiting[rec]
                self.err(rec, lost_data_detail(rec.key), (), lost=True)
            state = rec.state
            if state is FORGOTTEN or self.needed(rec):
                continue
            if state is MEMORY:
                self._drop_holders(rec)
                self.set_state(rec, RELEASED)
            elif state is WAITING or state is QUEUED:
                rec.waiting_on = None
                self.set_state(rec, RELEASED)
            elif state is PROCESSING:
                if rec.processing_on is not None:
                    outbox.cancel_task(rec.processing_on, rec.key)
                if awaiting:
                    self._unawait(rec)
                self.set_state(rec, RELEASED)
            if rec.dependents is None and rec.processing_on is None and rec.state is not MEMORY:
                self._forget(rec)

    def _forget(self, rec: TaskRecord) -> None:
        if self.tasks.get(rec.key) is rec:
            del self.tasks[rec.key]
        if self.respecified:
            self.respecified.discard(rec)
        if rec.is_data and self.awaiting:
            self._unawait(rec)
        self.counts[rec.state] -= 1
        rec.state = FORGOTTEN
        for dep in rec.deps:
            self._unlink(dep, rec)
        rec.deps = _NO_DEPS
        rec.payload = None
        rec.error = None
        fn_hash = rec.fn_hash
        if fn_hash is not None:
            if count_down(self.function_refs, fn_hash):
                self.unreferenced_functions.append(fn_hash)
            rec.fn_hash = None


def _unrecomputable(key: str, dependent: str | None = None) -> ErrorDetail:
    if dependent is None:
        return ["LostDataError", f"the value of {key!r} is gone and it cannot be recomputed", key]
    return ["LostDataError", f"input {key!r} of {dependent!r} is gone and cannot be recomputed", dependent]


def _same_payload(old: Payload | None, new: Payload) -> bool:
    """Whether two task payloads (an inline ``bytes`` or a list of frames) hold equal bytes."""
    if old is None:
        return False
    if type(old) is bytes or type(new) is bytes:
        return type(old) is type(new) and old == new
    if len(old) != len(new):
        return False
    return all(_frame_bytes(a) == _frame_bytes(b) for a, b in zip(old, new, strict=True))


def _frame_bytes(frame: Any) -> bytes:
    return bytes(memoryview(getattr(frame, "buffer", frame)))


def _reaches(starts: list[TaskRecord], target: TaskRecord) -> bool:
    """Whether ``target`` is among ``starts`` or their inputs, however far back."""
    seen: set[int] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.deps)
    return False
