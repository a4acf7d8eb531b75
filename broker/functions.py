"""The broker's pickled functions, kept while a client or a task still refers to them.

A client sends a function's pickle once, with the first task that uses it, and names it by
hash afterwards; the broker forwards the pickle to each worker once.  A function is
therefore *owned* by every client that sent it, until that client leaves or says it will
send the function again (FORGET_FUNCTIONS), and *referenced* by every task record in the
ledger that runs it (counted by :class:`~broker.ledger.Ledger`), because a record kept for
its lineage may have to run again.  When neither holds any more, the pickle is dropped here
and the workers that received it are told to drop theirs: a broker that serves clients for
weeks does not keep every function it has ever seen.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar

from broker.peers import ClientPeer, WorkerPeer
from zmqdask.protocol import frame_nbytes

_Counted = TypeVar("_Counted", bound=Hashable)


def count_down(counts: dict[_Counted, int], key: _Counted) -> bool:
    """Take one from ``counts[key]``; True, with ``key`` removed, when none is left."""
    left = counts[key] - 1
    if left:
        counts[key] = left
        return False
    del counts[key]
    return True


class FunctionTable:
    """Pickled functions by hash, with the clients that own each (see the module docstring)."""

    def __init__(self) -> None:
        self.payloads: dict[bytes, Any] = {}
        """Pickled function by hash: what :func:`broker.dispatch.dispatch` sends to workers."""
        self.canonical: dict[bytes, bytes] = {}
        """One hash object per function, shared by every record that runs it."""
        self.nbytes = 0
        """Total size of the pickles held."""
        self._owners: dict[bytes, int] = {}
        # Hashes that may have lost their last owner or reference: checked by collect().
        self._candidates: list[bytes] = []

    def __len__(self) -> int:
        return len(self.payloads)

    def register(self, client: ClientPeer, fn_hash: bytes, payload: Any) -> None:
        """``client`` sent this function (again): keep it at least while the client owns it."""
        if fn_hash not in self.payloads:
            self.payloads[fn_hash] = payload
            self.canonical[fn_hash] = fn_hash
            self.nbytes += frame_nbytes(payload)
        if fn_hash not in client.functions:
            client.functions.add(fn_hash)
            self._owners[fn_hash] = self._owners.get(fn_hash, 0) + 1

    def disown(self, client: ClientPeer, hashes: Iterable[bytes]) -> None:
        """``client`` no longer owns these (it said so, or it is gone)."""
        owners = self._owners
        for fn_hash in hashes:
            if fn_hash not in client.functions:
                continue
            client.functions.discard(fn_hash)
            if count_down(owners, fn_hash):
                self._candidates.append(fn_hash)

    def client_gone(self, client: ClientPeer) -> None:
        """Drop every function ``client`` owned."""
        self.disown(client, list(client.functions))

    def unreferenced(self, hashes: Iterable[bytes]) -> None:
        """The ledger's last record running each of these was forgotten."""
        self._candidates.extend(hashes)

    @property
    def pending(self) -> bool:
        """Whether :meth:`collect` may have something to drop."""
        return bool(self._candidates)

    def collect(self, refs: Mapping[bytes, int], workers: Iterable[WorkerPeer]) -> dict[WorkerPeer, list[bytes]]:
        """Drop the candidates no client owns and no record references (``refs``).

        Returns, per worker, the dropped hashes it had been sent (and forgets that it had).
        Called at the end of a broker step, after dispatching: a record created in the same
        step that runs a candidate holds a reference by then and keeps it.
        """
        candidates = self._candidates
        self._candidates = []
        dropped: list[bytes] = []
        for fn_hash in candidates:
            if fn_hash in self._owners or refs.get(fn_hash) or fn_hash not in self.payloads:
                continue
            self.nbytes -= frame_nbytes(self.payloads.pop(fn_hash))
            del self.canonical[fn_hash]
            dropped.append(fn_hash)
        told: dict[WorkerPeer, list[bytes]] = {}
        if dropped:
            for worker in workers:
                sent = worker.functions_sent
                had = [fn_hash for fn_hash in dropped if fn_hash in sent]
                if had:
                    sent.difference_update(had)
                    told[worker] = had
        return told

    def audit(self, refs: Mapping[bytes, int], clients: Iterable[ClientPeer]) -> list[str]:
        """Functions held that nothing holds, and owner counts that disagree with the clients."""
        problems: list[str] = []
        if self._candidates:
            return problems  # the step that made them has not finished
        counted: dict[bytes, int] = {}
        for client in clients:
            for fn_hash in client.functions:
                counted[fn_hash] = counted.get(fn_hash, 0) + 1
        if counted != self._owners:
            problems.append(f"function owner counts {len(self._owners)} disagree with the clients' {len(counted)}")
        leaked = [h for h in self.payloads if h not in self._owners and not refs.get(h)]
        if leaked:
            problems.append(f"{len(leaked)} functions held with no owner and no task: {leaked[0].hex()[:16]}")
        return problems
