"""Task dispatch: choose a worker for each queued task and batch the COMPUTE messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.ledger import Ledger, TaskRecord
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
                if holder.alive and len(holder.processing) < holder.window and holder.load <= limit:
                    return holder
    return least


def _load(worker: WorkerPeer) -> float:
    return len(worker.processing) / worker.nthreads


def dispatch(
    ledger: Ledger,
    workers: Iterable[WorkerPeer],
    functions: dict[bytes, Any],
    outbox: Outbox,
) -> int:
    """Send queued tasks to workers with free credit; returns how many were dispatched.

    Never exceeds a worker's window (hence never its credit).  Functions a worker has not
    received yet travel in the same COMPUTE as the first task using them.
    """
    ready = ledger.ready
    if not ready:
        return 0
    free = [worker for worker in workers if len(worker.processing) < worker.window]
    if not free:
        return 0
    tasks = ledger.tasks
    count = 0
    while free:
        rec = ready.pop(tasks)
        if rec is None:
            break
        if rec.deps and any(dep.who_has is None for dep in rec.deps):
            # Defensive: a queued task's inputs are in memory; if not, let it wait for them.
            ledger.make_ready(rec)
            continue
        worker = choose_worker(rec, free)
        ledger.start(rec, worker)
        deps: list[list[Any]] = []
        for dep in rec.deps:
            who_has = dep.who_has
            if worker in who_has:  # type: ignore[operator]
                deps.append([dep.key, None])
            else:
                deps.append([dep.key, next(iter(who_has)).identity])  # type: ignore[arg-type]
        fn_hash = rec.fn_hash
        function = None
        if fn_hash is not None and fn_hash not in worker.functions_sent:
            worker.functions_sent.add(fn_hash)
            function = (fn_hash, functions[fn_hash])
        payload = rec.payload if rec.payload is not None else ()
        flags = FLAG_PUSH_RESULT if rec.push_to is not None else 0
        outbox.compute(worker, [rec.key, fn_hash, deps, flags, payload_field(payload)], payload, function)
        count += 1
        if len(worker.processing) >= worker.window:
            free.remove(worker)
    return count
