"""Named datasets shared between clients, as Dask's ``publish_dataset`` and ``get_dataset``.

A dataset is any picklable object: futures, a persisted DataFrame, a dict of those.  It is
pickled here with each Future inside it replaced by its key; the broker keeps the pickle and
keeps those keys' values alive while the dataset is published (see ``broker.datasets``).
Fetching it unpickles the object with a Future of the fetching client in place of each key:
the values are computed once and shared, and stay on the cluster while anyone holds them.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import cloudpickle

from zmqdask.errors import SerializationError, UsageError
from zmqdask.future import Future, FutureState
from zmqdask.serialize import PICKLE_PROTOCOL

if TYPE_CHECKING:
    from zmqdask.client import Client

_FUTURE_TAG = "zmqdask.Future"


class _DatasetPickler(cloudpickle.CloudPickler):
    """Pickles an object with every Future in it as a reference to its key."""

    def __init__(self, file: io.BytesIO, found: dict[str, Future]) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._found = found

    def persistent_id(self, obj: Any) -> Any:
        """A Future's key; None (pickle it as usual) for anything else."""
        if isinstance(obj, Future):
            self._found[obj.key] = obj
            return (_FUTURE_TAG, obj.key)
        return None


class _DatasetUnpickler(pickle.Unpickler):
    """Unpickles a dataset with a Future of ``client`` for each key referred to."""

    def __init__(self, file: io.BytesIO, client: Client) -> None:
        super().__init__(file)
        self._client = client

    def persistent_load(self, pid: Any) -> Future:
        """The Future of a key the dataset's pickle refers to."""
        if type(pid) is not tuple or len(pid) != 2 or pid[0] != _FUTURE_TAG or type(pid[1]) is not str:
            raise pickle.UnpicklingError(f"unsupported reference in a dataset: {pid!r:.80}")
        return Future(pid[1], self._client)


def dumps_dataset(obj: Any) -> tuple[bytes, list[Future]]:
    """The pickle of ``obj`` (its Futures as keys), and those Futures."""
    found: dict[str, Future] = {}
    buffer = io.BytesIO()
    try:
        _DatasetPickler(buffer, found).dump(obj)
    except (UsageError, SerializationError):
        raise
    except Exception as exc:
        raise SerializationError(
            f"the dataset cannot be pickled: {type(exc).__name__}: {exc}", type(obj).__name__
        ) from None
    return buffer.getvalue(), list(found.values())


def loads_dataset(value: bytes, keys: list[str], client: Client) -> Any:
    """The object of a fetched dataset, its Futures bound to ``client``.

    The broker already keeps ``keys`` for this client; a Future is made for each before the
    object is rebuilt, so that every key is claimed (WANT) once, and released at once if the
    object turns out not to hold it.
    """
    holders = [Future(key, client) for key in keys]
    try:
        return _DatasetUnpickler(io.BytesIO(value), client).load()
    except Exception as exc:
        raise SerializationError(
            f"the dataset could not be unpickled here: {type(exc).__name__}: {exc}", "<dataset>"
        ) from None
    finally:
        del holders


def prepare(client: Client, futures: list[Future]) -> list[str]:
    """The keys the broker must keep for a dataset holding ``futures``.

    A call of a map batch is known to the broker only through its batch: it becomes a task
    of its own first, so that its key can be held and named by other clients.
    """
    keys: list[str] = []
    for future in futures:
        state: FutureState = future._state
        if state.entry is None and state.batch is not None:
            future.client._materialize(state)
        keys.append(future.key)
    return keys


def check_name(name: Any) -> str:
    """``name`` if it can name a dataset; else a UsageError that says what to pass."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"a dataset's name must be a non-empty string, got {name!r:.80}")
    if len(name.encode()) > 255:
        raise UsageError(f"a dataset's name must be at most 255 bytes long, got {len(name.encode())}")
    return name


async def publish(client: Client, named: dict[str, Any], override: bool) -> None:
    """Publish each object of ``named`` under its name (in order; stops at the first refusal)."""
    for name, obj in named.items():
        value, futures = dumps_dataset(obj)
        keys = prepare(client, futures)
        answer = await client._datasets("put", name, keys, override, value)
        if not answer.get("ok"):
            raise KeyError(answer.get("error", f"dataset {name!r} was refused"))


async def fetch(client: Client, name: str, default: Any) -> Any:
    """The dataset called ``name``; ``default`` if there is none (KeyError if no default)."""
    answer = await client._datasets("get", name)
    if not answer.get("ok"):
        if answer.get("missing") and default is not NO_DEFAULT:
            return default
        raise KeyError(f"Dataset '{name}' not found")
    value, keys = answer.get("value"), answer.get("keys")
    if type(value) is not bytes or not isinstance(keys, list):
        raise SerializationError(f"the broker's answer for dataset {name!r} is malformed", "<dataset>")
    return loads_dataset(value, keys, client)


async def unpublish(client: Client, name: str) -> None:
    """Delete the dataset called ``name``; KeyError if there is none."""
    answer = await client._datasets("delete", name)
    if not answer.get("ok"):
        raise KeyError(f"Dataset '{name}' not found")


async def names(client: Client) -> list[str]:
    """The names of the published datasets, sorted."""
    answer = await client._datasets("list")
    return list(answer.get("names", []))


class _NoDefault:
    def __repr__(self) -> str:
        return "<no default>"


NO_DEFAULT: Any = _NoDefault()
"""``get_dataset``'s default for ``default``: a missing dataset raises KeyError."""


class Datasets(MutableMapping[str, Any]):
    """``client.datasets``: the published datasets as a mapping, as in Dask.

    ``client.datasets["name"]`` fetches (an awaitable on an asynchronous client),
    ``client.datasets["name"] = obj`` publishes, replacing any dataset of that name, ``del``
    unpublishes, and ``len``, ``in`` and iteration list the names (``async for`` on an
    asynchronous client).  Those that block refuse to run on an asynchronous client's loop:
    use ``publish_dataset``, ``unpublish_dataset`` and ``list_datasets`` there.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def _blocking(self, method: str, alternative: str, *args: Any, **kwargs: Any) -> Any:
        client = self._client
        if client.asynchronous and not client._loop_runs_in_another_thread():
            raise TypeError(f"client.datasets cannot block an asynchronous client's loop; use {alternative} instead")
        return getattr(client, method)(*args, **kwargs)

    def __getitem__(self, name: str) -> Any:
        return self._client.get_dataset(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._blocking("publish_dataset", "await client.publish_dataset(name=value)", value, name=name, override=True)

    def __delitem__(self, name: str) -> None:
        self._blocking("unpublish_dataset", "await client.unpublish_dataset(name)", name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._blocking("list_datasets", "async for name in client.datasets"))

    async def __aiter__(self) -> AsyncIterator[str]:
        """The names, on an asynchronous client: ``async for name in client.datasets``."""
        for name in await self._client.list_datasets():
            yield name

    def __len__(self) -> int:
        return len(self._blocking("list_datasets", "len(await client.list_datasets())"))

    def __contains__(self, name: object) -> bool:
        return name in self._blocking("list_datasets", "name in await client.list_datasets()")
