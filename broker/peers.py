"""Records of the peers registered with the broker: clients, workers and pool managers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zmqdask.protocol import ROLE_CLIENT, ROLE_POOL, ROLE_WORKER

if TYPE_CHECKING:
    from broker.ledger import TaskRecord


class Peer:
    """One registered incarnation of a peer, identified by its ROUTER identity.

    Records hash by object identity on purpose: when a peer registers again under the same
    identity, the old record stays distinct, so messages batched for the old incarnation are
    recognisably stale (``alive`` is False) and never reach the new one.
    """

    __slots__ = ("alive", "identity", "last_seen", "last_sent", "name", "role")

    def __init__(self, identity: bytes, role: str, name: str, now: float) -> None:
        self.identity = identity
        self.role = role
        self.name = name
        self.last_seen = now
        self.last_sent = now
        self.alive = True

    def label(self) -> str:
        """Short human description for logs: role, name and identity."""
        name = f" {self.name!r}" if self.name else ""
        return f"{self.role}{name} [{self.identity.hex()}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label()}>"


class ClientPeer(Peer):
    """A client: holds futures (``wanted_by``) and waits for values (``push_to``)."""

    __slots__ = ("interest", "pid")

    def __init__(self, identity: bytes, name: str, pid: int, now: float) -> None:
        super().__init__(identity, ROLE_CLIENT, name, now)
        self.pid = pid
        self.interest: set[TaskRecord] = set()
        """Records naming this client in ``wanted_by`` or ``push_to`` (released at its death)."""


class WorkerPeer(Peer):
    """A worker process: runs tasks up to its credit and holds results in its memory."""

    __slots__ = (
        "credit",
        "functions_sent",
        "has",
        "host",
        "memory_limit",
        "nbytes",
        "nthreads",
        "pid",
        "pool",
        "processing",
        "requests",
        "storing",
    )

    def __init__(
        self,
        identity: bytes,
        *,
        name: str,
        nthreads: int,
        credit: int,
        host: str,
        pid: int,
        pool: str,
        memory_limit: int,
        now: float,
    ) -> None:
        super().__init__(identity, ROLE_WORKER, name, now)
        self.nthreads = nthreads
        self.credit = credit
        self.host = host
        self.pid = pid
        self.pool = pool
        self.memory_limit = memory_limit
        self.processing: dict[str, TaskRecord] = {}
        """Tasks sent and not yet answered (running or prefetched): what counts against credit."""
        self.has: set[TaskRecord] = set()
        """Keys whose value this worker holds."""
        self.nbytes = 0
        self.storing: dict[str, TaskRecord] = {}
        """Scattered keys sent with STORE and not yet confirmed."""
        self.functions_sent: set[bytes] = set()
        self.requests: set[int] = set()
        """Ids of GET requests in flight to this worker."""

    @property
    def load(self) -> float:
        """Tasks held per executor thread."""
        return len(self.processing) / self.nthreads

    @property
    def free_credit(self) -> int:
        """How many more tasks this worker may be sent now."""
        return self.credit - len(self.processing)

    def describe(self) -> dict[str, Any]:
        """The worker's entry in the broker's INFO_REPLY map."""
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "nthreads": self.nthreads,
            "credit": self.credit,
            "processing": len(self.processing),
            "nkeys": len(self.has),
            "nbytes": self.nbytes,
            "memory_limit": self.memory_limit,
            "pool": self.pool,
        }


class PoolPeer(Peer):
    """A per-host pool manager: supervises worker processes and reports their deaths."""

    __slots__ = ("host", "nworkers", "pool")

    def __init__(self, identity: bytes, *, pool: str, host: str, nworkers: int, now: float) -> None:
        super().__init__(identity, ROLE_POOL, pool, now)
        self.pool = pool
        self.host = host
        self.nworkers = nworkers
