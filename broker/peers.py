"""Records of the peers registered with the broker: clients, workers and pool managers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zmqdask.config import DEFAULT_PREFETCH_PER_THREAD
from zmqdask.protocol import ROLE_CLIENT, ROLE_POOL, ROLE_WORKER

if TYPE_CHECKING:
    from broker.ledger import TaskRecord


class Peer:
    """One registered incarnation of a peer, identified by its ROUTER identity.

    Records hash by object identity on purpose: when a peer registers again under the same
    identity, the old record stays distinct, so messages batched for the old incarnation are
    recognisably stale (``alive`` is False) and never reach the new one.
    """

    __slots__ = ("alive", "identity", "incarnation", "last_seen", "last_sent", "name", "role")

    def __init__(self, identity: bytes, role: str, name: str, now: float) -> None:
        self.identity = identity
        self.role = role
        self.name = name
        self.last_seen = now
        self.last_sent = now
        self.alive = True
        self.incarnation: str | int | None = None
        """What the peer's HELLO says this registration is (a client's session, a worker's
        count of registrations): a HELLO saying the same again is a repeat, not a new start."""

    def label(self) -> str:
        """Short human description for logs: role, name and identity."""
        name = f" {self.name!r}" if self.name else ""
        return f"{self.role}{name} [{self.identity.hex()}]"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label()}>"


class ClientPeer(Peer):
    """A client: holds futures (``wanted_by``) and waits for values (``push_to``)."""

    __slots__ = ("direct", "functions", "interest", "pid", "relay_keys")

    def __init__(self, identity: bytes, name: str, pid: int, now: float, direct: bool = False) -> None:
        super().__init__(identity, ROLE_CLIENT, name, now)
        self.pid = pid
        self.direct = direct
        """The client fetches large values from their holders itself when told ELSEWHERE."""
        self.relay_keys: set[str] = set()
        """Keys asked for with RELAY_GATHER whose GET is not issued yet: never ELSEWHERE."""
        self.interest: set[TaskRecord] = set()
        """Records naming this client in ``wanted_by`` or ``push_to`` (released at its death)."""
        self.functions: set[bytes] = set()
        """Hashes of the functions this client sent and may name again without sending."""


BASE_PREFETCH_PER_THREAD = DEFAULT_PREFETCH_PER_THREAD
"""Tasks per executor thread a worker is sent ahead of what it runs, before its pace is known."""

QUEUE_TARGET_S = 0.02
"""How much work, in seconds at a worker's measured pace, its window lets wait in its queue:
enough to cover the broker's round trip and a busy broker step, little enough that long tasks
are not hoarded by one worker."""

PACE_INTERVAL_S = 0.05
"""How often a worker's pace (completions per second) is measured and its window adjusted."""


class WorkerPeer(Peer):
    """A worker process: runs tasks up to its window and holds results in its memory.

    ``credit`` is what the worker accepts at most (from its HELLO); ``window`` is how many of
    those the broker actually fills.  The window starts at ``nthreads`` running plus
    :data:`BASE_PREFETCH_PER_THREAD` queued per thread and grows, up to the credit, when the
    worker finishes tasks fast enough that a queue of :data:`QUEUE_TARGET_S` holds more: tiny
    tasks then travel in large batches, while long tasks keep the small window.
    """

    __slots__ = (
        "completed",
        "credit",
        "data_address",
        "functions_sent",
        "has",
        "host",
        "last_progress",
        "memory_limit",
        "nbytes",
        "nthreads",
        "pace_since",
        "pid",
        "pool",
        "processing",
        "requests",
        "seceded",
        "stalled",
        "storing",
        "window",
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
        data_address: str = "",
    ) -> None:
        super().__init__(identity, ROLE_WORKER, name, now)
        self.data_address = data_address
        """Where this worker serves its values to clients directly ("" if it does not)."""
        self.nthreads = nthreads
        self.credit = credit
        self.host = host
        self.pid = pid
        self.pool = pool
        self.memory_limit = memory_limit
        self.processing: dict[str, TaskRecord] = {}
        """Tasks sent and not yet answered (running or prefetched)."""
        self.seceded: set[str] = set()
        """Keys of ``processing`` whose tasks wait for other tasks (SECEDE): running, but
        holding no place in the window or the credit, so the tasks they wait for can come."""
        self.has: set[TaskRecord] = set()
        """Keys whose value this worker holds."""
        self.nbytes = 0
        self.storing: dict[str, TaskRecord] = {}
        """Scattered keys sent with STORE and not yet confirmed."""
        self.functions_sent: set[bytes] = set()
        self.requests: set[int] = set()
        """Ids of GET requests in flight to this worker."""
        self.window = min(credit, self.base_window())
        """How many tasks may be processing on this worker now (never above ``credit``)."""
        self.completed = 0
        self.pace_since = now
        self.last_progress = now
        """When the worker last answered for a task."""
        self.stalled = False
        """Set when its tasks were given back to idle workers (see :meth:`stall`)."""

    def base_window(self) -> int:
        """The window before the worker's pace is known, and the smallest it becomes."""
        return self.nthreads * (1 + BASE_PREFETCH_PER_THREAD)

    def finished_tasks(self, count: int, now: float) -> None:
        """``count`` tasks came back from this worker: measure its pace and size its window."""
        self.last_progress = now
        if self.stalled:
            return  # the window stays at one task per thread until the worker runs one (unstall)
        self.completed += count
        elapsed = now - self.pace_since
        if elapsed < PACE_INTERVAL_S:
            return
        # Idle time in the interval lowers the measured pace; the window then falls back
        # towards its base, which is what a worker without much to do needs anyway.
        target = self.nthreads + int(self.completed / elapsed * QUEUE_TARGET_S)
        self.window = min(self.credit, max(self.base_window(), target))
        self.completed = 0
        self.pace_since = now

    def stall(self) -> None:
        """The worker has finished nothing for a while, with tasks queued behind what it runs:
        send it no more than one task per thread until it finishes one (:meth:`unstall`)."""
        self.stalled = True
        self.window = min(self.credit, self.nthreads)

    def unstall(self, now: float) -> None:
        """The worker ran a task again: back to the window of a worker whose pace is unknown."""
        self.stalled = False
        self.window = min(self.credit, self.base_window())
        self.completed = 0
        self.pace_since = now

    @property
    def busy(self) -> int:
        """Tasks that count against the window and the credit: processing, not seceded."""
        return len(self.processing) - len(self.seceded)

    @property
    def load(self) -> float:
        """Tasks held per executor thread."""
        return self.busy / self.nthreads

    @property
    def free_credit(self) -> int:
        """How many more tasks this worker may be sent now (within its window)."""
        return self.window - self.busy

    def stop_processing(self, key: str) -> TaskRecord | None:
        """The record of ``key`` once the worker answered for it (or lost it); None if unknown."""
        self.seceded.discard(key)
        return self.processing.pop(key, None)

    def describe(self) -> dict[str, Any]:
        """The worker's entry in the broker's INFO_REPLY map."""
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "nthreads": self.nthreads,
            "credit": self.credit,
            "window": self.window,
            "processing": len(self.processing),
            "seceded": len(self.seceded),
            "nkeys": len(self.has),
            "nbytes": self.nbytes,
            "functions": len(self.functions_sent),
            "memory_limit": self.memory_limit,
            "pool": self.pool,
            "data_address": self.data_address,
        }


class PoolPeer(Peer):
    """A per-host pool manager: supervises worker processes and reports their deaths."""

    __slots__ = ("host", "nworkers", "pool")

    def __init__(self, identity: bytes, *, pool: str, host: str, nworkers: int, now: float) -> None:
        super().__init__(identity, ROLE_POOL, pool, now)
        self.pool = pool
        self.host = host
        self.nworkers = nworkers
