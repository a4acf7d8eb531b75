"""Consistency checks of the broker's task ledger, for tests and debugging."""

from __future__ import annotations

from collections.abc import Mapping

from broker.ledger import ACTIVE_STATES, MEMORY, PROCESSING, QUEUED, STATES, WAITING, Ledger
from broker.peers import ClientPeer, WorkerPeer


def audit_ledger(ledger: Ledger, workers: Mapping[bytes, WorkerPeer], clients: Mapping[bytes, ClientPeer]) -> list[str]:
    """Check the ledger's invariants; returns a description of each violation.

    For tests and debugging: it walks the whole ledger.
    """
    problems: list[str] = []
    counts = dict.fromkeys(STATES, 0)
    live_workers = set(workers.values())
    live_clients = set(clients.values())
    for key, rec in ledger.tasks.items():
        state = rec.state
        if rec.key != key or state not in counts:
            problems.append(f"{key!r}: bad key or state {state!r}")
            continue
        counts[state] += 1
        if (state is MEMORY) != bool(rec.who_has):
            problems.append(f"{key!r}: state {state} with who_has {rec.who_has}")
        for holder in rec.who_has or ():
            if holder not in live_workers or rec not in holder.has:
                problems.append(f"{key!r}: holder {holder!r} dead or unaware")
        if state is WAITING:
            unfinished = {dep for dep in rec.deps if dep.state is not MEMORY}
            if not rec.waiting_on or rec.waiting_on != unfinished:
                problems.append(f"{key!r}: waiting_on {rec.waiting_on} but unfinished inputs {unfinished}")
            if any(dep.state not in ACTIVE_STATES for dep in unfinished):
                problems.append(f"{key!r}: waits on an input that is not on its way")
        if state is QUEUED and any(dep.state is not MEMORY for dep in rec.deps):
            problems.append(f"{key!r}: queued with inputs not in memory")
        if state is PROCESSING and not rec.is_data:
            worker = rec.processing_on
            if worker is None or worker not in live_workers or worker.processing.get(key) is not rec:
                problems.append(f"{key!r}: processing on {worker!r} which does not count it")
        active = sum(1 for d in rec.dependents or () if d.state in ACTIVE_STATES)
        if active != rec.n_active:
            problems.append(f"{key!r}: n_active {rec.n_active} but {active} active dependents")
        for dep in rec.deps:
            if dep.dependents is None or rec not in dep.dependents or ledger.tasks.get(dep.key) is not dep:
                problems.append(f"{key!r}: input {dep.key!r} missing or unaware")
        for dependent in rec.dependents or ():
            if rec not in dependent.deps:
                problems.append(f"{key!r}: dependent {dependent.key!r} does not list it")
        for client in (rec.wanted_by or ()) + (rec.push_to or ()):
            if client not in live_clients or rec not in client.interest:
                problems.append(f"{key!r}: wanted by dead or unaware client {client!r}")
    for rec, target in ledger.awaiting.items():
        key = rec.key
        awaitable = rec.is_data and rec.state is PROCESSING and rec.payload is None
        if ledger.tasks.get(key) is not rec or not awaitable:
            problems.append(f"{key!r}: awaited from a client but {rec.state}, payload {rec.payload is not None}")
        if target is not None and (target not in live_workers or target.storing.get(key) is not rec):
            problems.append(f"{key!r}: placed on {target!r}, which is gone or does not expect it")
    if counts != ledger.counts:
        problems.append(f"state counts {ledger.counts} but actual {counts}")
    refs: dict[bytes, int] = {}
    for rec in ledger.tasks.values():
        if rec.fn_hash is not None:
            refs[rec.fn_hash] = refs.get(rec.fn_hash, 0) + 1
    if refs != ledger.function_refs:
        problems.append(f"function references {ledger.function_refs} but records run {refs}")
    for worker in live_workers:
        if worker.busy > worker.credit:
            problems.append(f"{worker!r}: {worker.busy} tasks exceed credit {worker.credit}")
        stray = worker.seceded - worker.processing.keys()
        if stray:
            problems.append(f"{worker!r}: seceded keys not processing: {sorted(stray)[:3]}")
        for rec in worker.has:
            if rec.who_has is None or worker not in rec.who_has or ledger.tasks.get(rec.key) is not rec:
                problems.append(f"{worker!r}: holds {rec.key!r} unknown to the record")
    for client in live_clients:
        for rec in client.interest:
            if client not in (rec.wanted_by or ()) + (rec.push_to or ()):
                problems.append(f"{client!r}: interest in {rec.key!r} not recorded on it")
    return problems
