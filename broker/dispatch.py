"""Task dispatch: choose a worker for each queued task and batch the COMPUTE messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.ledger import MEMORY, PROCESSING, WAITING, Ledger, TaskRecord
from broker.outbox import Outbox, payload_field
from broker.peers import WorkerPeer
from zmqdask.protocol import FLAG_PUSH_RESULT

LOCALITY_SLACK_TASKS_PER_THREAD = 2.0
"""How much busier (tasks per thread) than the least loaded worker a holder of a task's
inputs may be and still be preferred: moving data costs more than waiting a little."""


def choose_worker(rec: TaskRecord, free: list[WorkerPeer]) -> WorkerPeer:
    """The worker (among ``free``, which is not empty) that should run ``rec``.

    A task with inputs goes to the worker holding most of its input bytes if that worker has
    credit left and is not much busier than the least loaded one; otherwise, and for tasks
    without inputs, the least loaded worker wins.
    """
    if len(free) == 1:
        return free[0]
    least = min(free, key=_load)
    if rec.deps:
        scores: dict[WorkerPeer, int] = {}
        for dep in rec.deps:
            # +1 so that holders of empty or tiny values still count as local.
            weight = dep.nbytes + 1
            for holder in dep.who_has or ():
                scores[holder] = scores.get(holder, 0) + weight
        if scores:
            limit = least.load + LOCALITY_SLACK_TASKS_PER_THREAD
            for holder in sorted(scores, key=scores.__getitem__, reverse=True):
                if holder.alive and holder.busy < holder.window and holder.load <= limit:
                    return holder
    return least


def _load(worker: WorkerPeer) -> float:
    return worker.busy / worker.nthreads


AHEAD_PENDING_MAX = 4096
"""Records remembered as ready to go ahead once their worker has room; more are left to be
queued normally when their inputs finish."""


def dispatch(
    ledger: Ledger,
    workers: Iterable[WorkerPeer],
    functions: dict[bytes, Any],
    outbox: Outbox,
) -> int:
    """Send queued tasks to workers with free window; returns how many were dispatched.

    Never exceeds a worker's window (hence never its credit).  Functions a worker has not
    received yet travel in the same COMPUTE as the first task using them.  Tasks whose
    unfinished inputs are all being computed on one worker then go to that worker ahead of
    them (see :func:`dispatch_ahead`).
    """
    count = 0
    ready = ledger.ready
    if ready:
        free = [worker for worker in workers if worker.busy < worker.window]
        tasks = ledger.tasks
        while free:
            rec = ready.pop(tasks)
            if rec is None:
                break
            if rec.deps and any(dep.who_has is None for dep in rec.deps):
                # Defensive: a queued task's inputs are in memory; if not, let it wait for them.
                ledger.make_ready(rec)
                continue
            worker = choose_worker(rec, free)
            _send(ledger, rec, worker, functions, outbox)
            count += 1
            if worker.busy >= worker.window:
                free.remove(worker)
    if ledger.started or ledger.ahead_pending:
        count += dispatch_ahead(ledger, functions, outbox)
    return count


def dispatch_ahead(ledger: Ledger, functions: dict[bytes, Any], outbox: Outbox) -> int:
    """Send waiting tasks to the worker that computes their unfinished inputs, ahead of them.

    A task whose inputs are in memory or being computed on one worker ``w`` goes to ``w``
    now, in the COMPUTE that follows its inputs' (or a later one), naming those inputs as
    local: ``w`` runs it as soon as they finish, without a round trip through the broker per
    link of a chain.  If an input fails or is cancelled there, ``w`` answers MISSING_DEPS
    for the task and the broker treats it as it does any such answer.  Tasks that could go
    ahead but find the worker's window full are remembered and tried again at later steps.
    """
    count = 0
    candidates = ledger.ahead_pending
    ledger.ahead_pending = []
    started = ledger.started  # _send appends to it: a task sent ahead may let its dependents go
    while True:
        for rec in started:
            for dependent in rec.dependents or ():
                if dependent.state is WAITING:
                    candidates.append(dependent)
        started.clear()
        if not candidates:
            break
        remaining: list[TaskRecord] = []
        for rec in candidates:
            worker = _ahead_worker(rec)
            if worker is None:
                continue
            if worker.busy >= worker.window:
                remaining.append(rec)
                continue
            _send(ledger, rec, worker, functions, outbox)
            count += 1
        candidates = remaining
        if not started:
            break
    if candidates:
        ledger.ahead_pending = candidates[:AHEAD_PENDING_MAX]
    return count


def _ahead_worker(rec: TaskRecord) -> WorkerPeer | None:
    """The worker ``rec`` may be sent to ahead of its inputs, or None."""
    if rec.state is not WAITING or rec.is_data or rec.payload is None or rec.processing_on is not None:
        return None
    target: WorkerPeer | None = None
    for dep in rec.deps:
        state = dep.state
        if state is MEMORY:
            continue  # local, or fetched from its holder as for any task
        if state is not PROCESSING or dep.is_data:
            return None
        worker = dep.processing_on
        if worker is None or (target is not None and worker is not target):
            return None
        target = worker
    if target is None or not target.alive:
        return None
    return target


def _send(ledger: Ledger, rec: TaskRecord, worker: WorkerPeer, functions: dict[bytes, Any], outbox: Outbox) -> None:
    """Start ``rec`` on ``worker`` and add its COMPUTE entry."""
    ledger.start(rec, worker)
    deps: list[list[Any]] = []
    for dep in rec.deps:
        who_has = dep.who_has
        if who_has is None or worker in who_has:
            # In memory here, or (sent ahead) being computed here: the worker has it.
            deps.append([dep.key, None])
        else:
            deps.append([dep.key, next(iter(who_has)).identity])
    fn_hash = rec.fn_hash
    function = None
    if fn_hash is not None and fn_hash not in worker.functions_sent:
        worker.functions_sent.add(fn_hash)
        function = (fn_hash, functions[fn_hash])
    payload = rec.payload if rec.payload is not None else ()
    flags = FLAG_PUSH_RESULT if rec.push_to is not None else 0
    outbox.compute(worker, [rec.key, fn_hash, deps, flags, payload_field(payload)], payload, function)
