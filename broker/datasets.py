"""Named datasets, and futures made from keys: what one client shares with the others.

``client.publish_dataset(df=persisted)`` sends the broker the pickled object (opaque here,
as every payload) and the keys of the futures inside it.  While the dataset is published
those records stay needed (see :meth:`~broker.ledger.Ledger.publish`): their values survive
the publishing client's own futures, and the client itself.  Another client's
``get_dataset`` receives the pickle and the keys, and holds futures of them from then on;
the records are kept for it from the moment of its request, so a dataset deleted while
the answer travels cannot take the values away from under it.

A dataset holds its records, not their keys: a record forgotten while published would be a
bug, which :meth:`DatasetStore.audit` looks for.

``Future(key)`` in a client sends WANT.  Two clients' messages are not ordered, and after a
broker restart the submitter sends its tasks again only once it has re-registered: a key
the broker does not know yet may be on its way.  Such a WANT waits in :class:`PendingWants`
for a grace period, and becomes a plain WANT when the key arrives, or a LOST report when the
period ends.
"""

from __future__ import annotations

from typing import Any

from broker.ledger import FORGOTTEN, Ledger, TaskRecord
from broker.peers import ClientPeer


class Dataset:
    """One published object: its pickle and the records of the keys it holds."""

    __slots__ = ("origin", "records", "value")

    def __init__(self, value: bytes, records: tuple[TaskRecord, ...], origin: tuple[bytes, int]) -> None:
        self.value = value
        self.records = records
        self.origin = origin
        """The publishing client's identity and request id: a request sent again is no duplicate."""


class DatasetStore:
    """The broker's named datasets (answers DATASETS requests)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._named: dict[str, Dataset] = {}

    def __len__(self) -> int:
        return len(self._named)

    def request(
        self, client: ClientPeer, request_id: int, op: str, name: str, keys: list[str], override: bool, payload: bytes
    ) -> dict[str, Any]:
        """Carry out one DATASETS request of ``client``; the INFO_REPLY map that answers it."""
        if op == "put":
            return self._put(name, keys, override, payload, (client.identity, request_id))
        if op == "get":
            return self._get(client, name)
        if op == "delete":
            dataset = self._named.pop(name, None)
            if dataset is None:
                return _missing(name)
            self._release(dataset)
            return {"ok": True}
        return {"ok": True, "names": sorted(self._named)}

    def _put(
        self, name: str, keys: list[str], override: bool, value: bytes, origin: tuple[bytes, int]
    ) -> dict[str, Any]:
        records, unknown = self._ledger.records_of(keys)
        if unknown is not None:
            return {"ok": False, "error": f"cannot publish {name!r}: {unknown}"}
        old = self._named.get(name)
        if old is not None:
            if old.origin == origin:
                return {"ok": True}  # the same request again (resent after re-registering)
            if not override:
                return {"ok": False, "error": f"dataset {name!r} already exists; pass override=True to replace it"}
        # Hold the new records before letting go of the old ones: keys in both stay needed.
        for rec in records:
            self._ledger.publish(rec)
        self._named[name] = Dataset(value, records, origin)
        if old is not None:
            self._release(old)
        return {"ok": True}

    def keys_of(self, name: str) -> list[str]:
        """The keys the dataset called ``name`` holds (none if there is no such dataset)."""
        dataset = self._named.get(name)
        return [] if dataset is None else [rec.key for rec in dataset.records]

    def _get(self, client: ClientPeer, name: str) -> dict[str, Any]:
        dataset = self._named.get(name)
        if dataset is None:
            return _missing(name)
        # Held for the client from now on, whatever happens to the dataset meanwhile.
        self._ledger.hand_over(dataset.records, client)
        return {"ok": True, "keys": [rec.key for rec in dataset.records], "value": dataset.value}

    def _release(self, dataset: Dataset) -> None:
        for rec in dataset.records:
            self._ledger.unpublish(rec)

    def clear(self) -> None:
        """Delete every dataset (the cluster restarts: their values are gone)."""
        for dataset in self._named.values():
            self._release(dataset)
        self._named.clear()

    def audit(self, held_elsewhere: list[TaskRecord]) -> list[str]:
        """Broken invariants between the datasets and the ledger (empty when sound);
        ``held_elsewhere`` lists the records that other holders (variables, queues) keep."""
        problems: list[str] = []
        counts: dict[TaskRecord, int] = {}
        for rec in held_elsewhere:
            counts[rec] = counts.get(rec, 0) + 1
        for name, dataset in self._named.items():
            for rec in dataset.records:
                counts[rec] = counts.get(rec, 0) + 1
                if rec.state == FORGOTTEN or self._ledger.tasks.get(rec.key) is not rec:
                    problems.append(f"dataset {name!r} holds {rec.key!r}, which the ledger forgot")
        if counts != self._ledger.published:
            problems.append("the ledger's published counts do not match the datasets")
        return problems


class PendingWants:
    """WANTs of keys the broker does not know yet, each until a deadline."""

    def __init__(self) -> None:
        # key -> client -> [deadline, whether the client asked for the value too (GATHER)]
        self._waiting: dict[str, dict[ClientPeer, list[Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, client: ClientPeer, key: str, deadline: float) -> None:
        """``client`` wants ``key``, unknown here: wait for it until ``deadline``."""
        self._waiting.setdefault(key, {})[client] = [deadline, False]

    def gather(self, client: ClientPeer, key: str) -> bool:
        """A GATHER of ``key`` by ``client``: True if ``client`` waits for that key here (the
        value goes to it once the key arrives); False if it does not."""
        waiting = self._waiting.get(key)
        if waiting is None or client not in waiting:
            return False
        waiting[client][1] = True
        return True

    def settle(self, ledger: Ledger, now: float) -> None:
        """Hand the keys that arrived to :meth:`Ledger.want`; report LOST those whose time is up."""
        tasks = ledger.tasks
        for key in list(self._waiting):
            clients = self._waiting[key]
            if key in tasks:
                del self._waiting[key]
                for client, (_, push) in clients.items():
                    ledger.want(client, key)
                    if push:
                        ledger.gather(client, key)
                continue
            for client in [c for c, (deadline, _) in clients.items() if deadline <= now]:
                del clients[client]
                ledger.report_lost(client, key, unknown_key_reason(key))
            if not clients:
                del self._waiting[key]

    def forget(self, client: ClientPeer, key: str) -> None:
        """``client`` released (or cancelled) its future of ``key`` before the key arrived."""
        waiting = self._waiting.get(key)
        if waiting is not None and waiting.pop(client, None) is not None and not waiting:
            del self._waiting[key]

    def drop_client(self, client: ClientPeer) -> list[str]:
        """Forget what ``client`` waits for (it left, or the cluster restarts); those keys."""
        dropped: list[str] = []
        for key in list(self._waiting):
            clients = self._waiting[key]
            if clients.pop(client, None) is not None:
                dropped.append(key)
                if not clients:
                    del self._waiting[key]
        return dropped

    def audit(self, ledger: Ledger) -> list[str]:
        """Keys known to the ledger but still waited for (settled at the end of every step)."""
        return [f"a WANT of {key!r} waits although the ledger has it" for key in self._waiting if key in ledger.tasks]


def unknown_key_reason(key: str) -> str:
    """Why a future made from ``key`` is lost: the broker never heard of the key."""
    return (
        f"unknown key {key!r}: never submitted, already released, or a call of a batched map "
        "(share those with publish_dataset, or map them with batch_size=1)"
    )


def dataset_value(payload: list[Any], field: Any) -> bytes:
    """The pickled dataset of a "put": the inline field, or the one payload frame."""
    if type(field) is bytes:
        return field
    frame = payload[0]
    if type(frame) is bytes:
        return frame
    return bytes(frame.bytes)  # a large frame arrives as a zmq.Frame


def _missing(name: str) -> dict[str, Any]:
    return {"ok": False, "missing": True, "error": f"no dataset named {name!r}"}
