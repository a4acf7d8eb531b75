"""Outgoing messages of one broker step, batched per peer and encoded at the end of the step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.peers import ClientPeer, Peer, WorkerPeer
from zmqdask import protocol
from zmqdask.protocol import CANCEL_TASKS, COMPUTE, DELETE, GET, REPORT, STORE, encode

Outgoing = list[tuple[bytes, list[Any]]]
"""Messages to send: (destination identity, frames)."""

Payload = bytes | Sequence[Any]
"""An entry's payload as received: ``bytes`` when it came inline in the header (see
:mod:`zmqdask.protocol`), else its frames.  It is forwarded in the same form."""


def payload_field(payload: Payload) -> int | bytes:
    """The ``nframes`` field announcing ``payload`` in an entry."""
    return payload if type(payload) is bytes else len(payload)


def payload_nbytes(payload: Payload) -> int:
    """Size of a payload in bytes."""
    if type(payload) is bytes:
        return len(payload)
    total = 0
    for frame in payload:
        total += protocol.frame_nbytes(frame)
    return total

ENTRY_OVERHEAD_BYTES = 128
"""Rough header cost of one batched entry, so that a batch's encoded size can be bounded."""


class _Batch:
    """Entries of one batched message and the payload frames they announce, in order."""

    __slots__ = ("entries", "frames", "function_frames", "functions", "nbytes")

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.frames: list[Any] = []
        self.functions: list[bytes] = []
        self.function_frames: list[Any] = []
        self.nbytes = 0


class _Mail:
    """Everything one peer receives at the end of the current step."""

    __slots__ = ("cancels", "computes", "deletes", "gets", "reports", "stores")

    def __init__(self) -> None:
        self.gets: list[list[Any]] = []
        self.deletes: list[str] = []
        self.cancels: list[str] = []
        self.stores: list[_Batch] = []
        self.computes: list[_Batch] = []
        self.reports: list[_Batch] = []


class Outbox:
    """Collects the messages produced while handling one input, one batch per peer and kind.

    Batching is what makes the broker fast: a step that finishes many tasks or dispatches
    many tasks sends one REPORT per client and one COMPUTE per worker.  A batch is split
    only when it would exceed the message size limit peers enforce.
    """

    __slots__ = ("_direct", "_limit", "_mail")

    def __init__(self, max_message_bytes: int) -> None:
        self._direct: Outgoing = []
        self._mail: dict[Peer, _Mail] = {}
        # Peers refuse anything above max_message_bytes; a quarter is left for the header
        # (entries are counted at a rough ENTRY_OVERHEAD_BYTES each).
        self._limit = max(1, max_message_bytes * 3 // 4)

    def _for(self, peer: Peer) -> _Mail:
        mail = self._mail.get(peer)
        if mail is None:
            mail = self._mail[peer] = _Mail()
        return mail

    def _batch(self, batches: list[_Batch], nbytes: int) -> _Batch:
        if not batches or (batches[-1].entries and batches[-1].nbytes + nbytes > self._limit):
            batches.append(_Batch())
        batch = batches[-1]
        batch.nbytes += nbytes
        return batch

    def send(self, identity: bytes, command: int, header: Sequence[Any], payload: Sequence[Any] = ()) -> None:
        """Queue one unbatched message; these go out first, in the order queued."""
        self._direct.append((identity, encode(command, header, payload)))

    def report(self, client: ClientPeer, entry: list[Any], frames: Payload = ()) -> None:
        """Add one REPORT entry ``[key, code, detail, nframes]`` for ``client``.

        The entry's last field must be :func:`payload_field` of ``frames``.
        """
        if not frames:
            batch = self._batch(self._for(client).reports, ENTRY_OVERHEAD_BYTES)
            batch.entries.append(entry)
            return
        batch = self._batch(self._for(client).reports, ENTRY_OVERHEAD_BYTES + payload_nbytes(frames))
        batch.entries.append(entry)
        if type(frames) is not bytes:
            batch.frames.extend(frames)

    def compute(
        self,
        worker: WorkerPeer,
        entry: list[Any],
        frames: Payload,
        function: tuple[bytes, Any] | None = None,
    ) -> None:
        """Add one COMPUTE task entry; ``function`` is (hash, frame) when the worker lacks it.

        The entry's last field must be :func:`payload_field` of ``frames``.
        """
        inline = type(frames) is bytes
        nbytes = ENTRY_OVERHEAD_BYTES + (len(frames) if inline else payload_nbytes(frames))
        if function is not None:
            nbytes += protocol.frame_nbytes(function[1])
        batch = self._batch(self._for(worker).computes, nbytes)
        if function is not None:
            batch.functions.append(function[0])
            batch.function_frames.append(function[1])
        batch.entries.append(entry)
        if not inline:
            batch.frames.extend(frames)

    def store(self, worker: WorkerPeer, key: str, frames: Payload) -> None:
        """Add one STORE entry (a scattered value) for ``worker``."""
        batch = self._batch(self._for(worker).stores, ENTRY_OVERHEAD_BYTES + payload_nbytes(frames))
        batch.entries.append([key, payload_field(frames)])
        if type(frames) is not bytes:
            batch.frames.extend(frames)

    def get(self, worker: WorkerPeer, request_id: int, keys: list[str]) -> None:
        """Queue a GET; it precedes any DELETE for the same worker in this step."""
        self._for(worker).gets.append([request_id, keys])

    def delete(self, worker: WorkerPeer, key: str) -> None:
        """Ask ``worker`` to drop its copy of ``key``."""
        self._for(worker).deletes.append(key)

    def cancel_task(self, worker: WorkerPeer, key: str) -> None:
        """Ask ``worker`` to drop task ``key`` if it has not started it."""
        self._for(worker).cancels.append(key)

    def flush(self) -> Outgoing:
        """Encode and return everything queued, then start empty.

        Per worker the order is GET, DELETE, CANCEL_TASKS, STORE, COMPUTE: a value asked for
        must be read before it is dropped, and a stored value must arrive before a task that
        names it as local.  Messages for peers that died during the step are dropped.
        """
        out = self._direct
        self._direct = []
        mail_by_peer = self._mail
        self._mail = {}
        for peer, mail in mail_by_peer.items():
            if not peer.alive:
                continue
            identity = peer.identity
            for header in mail.gets:
                out.append((identity, encode(GET, header)))
            if mail.deletes:
                out.append((identity, encode(DELETE, [mail.deletes])))
            if mail.cancels:
                out.append((identity, encode(CANCEL_TASKS, [mail.cancels])))
            for batch in mail.stores:
                out.append((identity, encode(STORE, [batch.entries], batch.frames)))
            for batch in mail.computes:
                frames = batch.function_frames + batch.frames if batch.function_frames else batch.frames
                out.append((identity, encode(COMPUTE, [batch.functions, batch.entries], frames)))
            for batch in mail.reports:
                out.append((identity, encode(REPORT, [batch.entries], batch.frames)))
        return out
