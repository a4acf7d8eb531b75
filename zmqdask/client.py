"""The Client: the user-facing API, named and shaped like ``dask.distributed.Client``.

All logic is asynchronous and lives on one event loop (see :mod:`zmqdask.session` for the
broker session underneath).  In asynchronous mode that is the caller's loop; in synchronous
mode a :class:`~zmqdask.sync.LoopThread`, and each blocking method runs the same coroutine
there.  Submitting never blocks: it pickles the arguments in the caller's thread, appends to
an ordered list of operations and schedules one flush; everything submitted before that
flush goes out as one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import html
import itertools
import logging
import os
import pickle
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import zmq

from zmqdask import batches, dask_graph, publish
from zmqdask import protocol as proto
from zmqdask.base import graphs_of
from zmqdask.config import (
    CONNECT_TIMEOUT_S,
    DIRECT_MIN_BYTES,
    MAX_KEY_LENGTH,
    RECONNECT_TIMEOUT_S,
    broker_address_problem,
    optional_seconds,
    seconds,
)
from zmqdask.errors import (
    ClosedClientError,
    FutureCancelledError,
    SerializationError,
    SyncInAsyncError,
    UsageError,
)
from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError
from zmqdask.future import (
    CANCEL_CLOCK,
    CANCELLED,
    ERROR,
    FINISHED,
    LOST,
    PENDING,
    Future,
    FutureState,
    failure_of,
)
from zmqdask.graph import TaskSpec, is_collection, topological_order
from zmqdask.local import format_bytes
from zmqdask.runs import UploadedFile, check_run_call, run_results, worker_targets
from zmqdask.security import Security, as_security
from zmqdask.serialize import PICKLE_PROTOCOL, TaskRef, dumps, loads, pickle_function
from zmqdask.session import BrokerSession, ClientStatus
from zmqdask.sync import LoopThread
from zmqdask.versions import mismatches, version_info

logger = logging.getLogger(__name__)

_current_clients: list[Client] = []
_current_lock = threading.Lock()


def default_client() -> Client | None:
    """The most recently started client that is still open, or None."""
    with _current_lock:
        for client in reversed(_current_clients):
            if client.status == ClientStatus.RUNNING or client.status == ClientStatus.RECONNECTING:
                return client
    return None


def get_client(address: str | None = None, timeout: Any = None, resolve_address: bool = True) -> Client:
    """The current client; raises ValueError when there is none.

    Dask's ``address``, ``timeout`` and ``resolve_address`` are accepted: a task's client is
    always one of its worker's own broker.

    Inside a task, this is a client of the worker's own broker (made on first use, one per
    worker process), so tasks can submit tasks and wait for them, as in Dask.  The calling
    task's executor thread leaves the pool and a new one takes its place (Dask's
    ``secede``), so the tasks it waits for always find a thread.
    """
    client = default_client()
    if client is not None:
        return client
    worker_module = sys.modules.get("zmqdask.worker")
    address = worker_module.task_client_address() if worker_module is not None else None
    if worker_module is None or address is None:
        raise ValueError("no zmqdask Client is running; create one with Client()")
    client = _task_client(address)
    # This task will wait for others: its thread must not be the one they need.
    worker_module.secede_current_task()
    return client


_task_client_lock = threading.Lock()
_task_clients: dict[str, Client] = {}


def _task_client(address: str) -> Client:
    """The client tasks of this worker process share, connected to ``address``."""
    with _task_client_lock:
        client = _task_clients.get(address)
        if client is None or client.status not in (ClientStatus.RUNNING, ClientStatus.RECONNECTING):
            client = Client(address, name=f"tasks-of-worker-{os.getpid()}", set_as_default=False)
            _task_clients[address] = client
        return client


def close_task_clients(timeout: float = 2.0) -> None:
    """Close the clients made for tasks by :func:`get_client` (a worker process leaving)."""
    with _task_client_lock:
        clients = list(_task_clients.values())
        _task_clients.clear()
    for client in clients:
        try:
            client.close(timeout=timeout)
        except Exception:  # the worker is leaving either way
            logger.debug("closing a task client failed", exc_info=True)


def check_blocking_allowed(client: Client, alternative: str) -> None:
    """Raise SyncInAsyncError if a blocking call would stall ``client``'s running event loop."""
    if client.asynchronous and client._in_loop_thread():
        raise SyncInAsyncError(
            f"this call blocks, and the asynchronous client's event loop is running in this "
            f"thread; use `{alternative}` instead"
        )


GOODBYE_LINGER_MS = 200
"""How long closing waits, at most, for the GOODBYE to leave (milliseconds, as ZeroMQ counts)."""
_MAP_CHUNK_TASKS = 4096
"""map records and sends its tasks this many at a time."""
GOODBYE_ANSWER_TIMEOUT_S = 2.0
"""How long closing a client that started its own cluster waits for the broker's answer to
its GOODBYE before stopping that cluster anyway."""


class Client(BrokerSession):
    """Connect to a zmqdask cluster, or start a local one, and run work on it.

    ``Client()`` starts a broker and one worker process per core on this machine and stops
    them on close; ``Client("tcp://host:8786")`` connects to a running broker.  With
    ``asynchronous=True`` use ``client = await Client(asynchronous=True)`` or ``async with``;
    every method that waits then returns an awaitable.  A broker started with
    ``--curve-keys`` needs ``security=``: a :class:`~zmqdask.security.Security` or the path of
    a key directory holding ``broker.key`` and one ``clients/NAME.key_secret``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        asynchronous: bool = False,
        timeout: float = CONNECT_TIMEOUT_S,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        name: str | None = None,
        set_as_default: bool = True,
        reconnect_timeout: float = RECONNECT_TIMEOUT_S,
        security: Security | str | os.PathLike[str] | None = None,
        memory_limit: int | str | None = None,
        dashboard_address: Any = None,
        silence_logs: Any = None,
        direct_to_workers: Any = None,
    ) -> None:
        """See the class docstring; ``memory_limit`` goes to the local cluster's workers, and
        ``dashboard_address``, ``silence_logs`` and ``direct_to_workers`` are accepted for
        Dask's sake (no dashboard; every message goes through the broker)."""
        keys = as_security(security, proto.ROLE_CLIENT)
        if keys is not None and address is None:
            raise UsageError(
                "security= needs the address of a broker started with --curve-keys; "
                "the local cluster of Client() listens on 127.0.0.1 without keys"
            )
        given_cluster: Any = None
        connect_address: str | None = None
        if address is not None and not isinstance(address, str):
            cluster_address = getattr(address, "address", None)
            if callable(getattr(address, "start", None)) and hasattr(address, "local_address"):
                # Client(LocalCluster(...)) as in Dask: a cluster not started yet (an
                # asynchronous one) starts with this client, which waits for its workers;
                # being the caller's, it is not closed with the client.
                given_cluster, address = address, None
            elif not isinstance(cluster_address, str):
                raise UsageError(
                    f"address must be a 'tcp://host:port' string or a LocalCluster, got {type(address).__name__}"
                )
            else:
                connect_address = getattr(address, "local_address", None)
                address = cluster_address
        if address is not None and not address.startswith(("tcp://", "ipc://", "inproc://")):
            if ":" in address and "://" not in address:
                address = "tcp://" + address
            else:
                raise UsageError(f"address must look like 'tcp://host:port', got {address!r}")
        problem = None if address is None else broker_address_problem(address)
        if problem is not None:
            raise UsageError(problem)
        super().__init__(
            address,
            timeout,
            reconnect_timeout,
            name or f"client-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            keys,
        )
        self.asynchronous = asynchronous
        self.cluster: Any = None
        """The local cluster this client started itself (and stops when it closes), if any."""
        self._given_cluster = given_cluster
        if isinstance(connect_address, str):
            self._connect_address = connect_address  # the cluster's Unix socket, when it has one
        self._cluster_options = {
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker,
            "processes": processes,
            "memory_limit": memory_limit,
        }
        self._set_as_default = set_as_default
        self._function_info_cache: dict[Any, tuple[bytes, bytes, str]] = {}
        self._key_token = uuid.uuid4().hex[:16]
        self._key_counter = itertools.count()
        self._start_task: Any = None
        self._graphs_submitted = 0
        if not asynchronous:
            self._loop_thread = LoopThread()
            self._loop = self._loop_thread.loop
            self._loop_thread_id = self._loop_thread.thread_id
            try:
                self._loop_thread.run(self._start(), timeout=None)
            except BaseException:
                self._loop_thread.stop()
                raise

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The current client (see :func:`get_client`); raises ValueError when there is none."""
        client = default_client()
        if client is None:
            raise ValueError("no zmqdask Client is running; create one with Client()")
        return client

    def __await__(self) -> Any:
        return self._start_once().__await__()

    async def _start_once(self) -> Client:
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._start_task)

    async def __aenter__(self) -> Client:
        return await self._start_once()

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def __enter__(self) -> Client:
        if self.asynchronous:
            raise UsageError("an asynchronous client is used with `async with`, not `with`")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> Client:
        if self.status != ClientStatus.NEW:
            return self
        self.status = ClientStatus.CONNECTING
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        deadline = time.monotonic() + self.timeout
        try:
            if self._given_cluster is not None:
                given = self._given_cluster
                self.address = await asyncio.to_thread(given.start, max(self.timeout, 30.0))
                self._connect_address = given.local_address
                deadline = time.monotonic() + self.timeout
            elif self.address is None:
                from zmqdask.local import LocalCluster

                # Asynchronous: started below in a thread, not in the constructor on the loop.
                self.cluster = LocalCluster(**self._cluster_options, asynchronous=True)  # type: ignore[arg-type]
                self.address = await asyncio.to_thread(self.cluster.start, max(self.timeout, 30.0))
                self._connect_address = self.cluster.local_address
                deadline = time.monotonic() + self.timeout
            self._context = zmq.Context()
            self._connect_socket()
            await self._handshake(deadline)
            # As in Dask, a client of a local cluster starts once its workers are there.
            local = self.cluster if self.cluster is not None else self._given_cluster
            if local is not None and local.n_workers:
                await self._wait_for_workers(local.n_workers, max(self.timeout, 30.0))
        except BaseException:
            await self._teardown()
            self.status = ClientStatus.CLOSED
            raise
        self.status = ClientStatus.RUNNING
        self._schedule_heartbeat()
        if self._set_as_default:
            with _current_lock:
                _current_clients.append(self)
        return self

    def close(self, timeout: float | None = None) -> Any:
        """Close the client (and the local cluster it started).

        Returns an awaitable on an asynchronous client.
        """
        if self.asynchronous:
            return self._close()
        if self._loop_thread is None or self.status == ClientStatus.CLOSED:
            return None
        try:
            self._loop_thread.run(self._close(), timeout=timeout or 30.0)
        finally:
            self._loop_thread.stop()
        return None

    async def _close(self) -> None:
        if self.status in (ClientStatus.CLOSED, ClientStatus.CLOSING):
            return
        was_running = self.status == ClientStatus.RUNNING
        self.status = ClientStatus.CLOSING
        with _current_lock:
            if self in _current_clients:
                _current_clients.remove(self)
        if self._socket is not None:
            try:
                if was_running and self.cluster is not None and self._loop is not None:
                    self._goodbye_answered = self._loop.create_future()
                self._flush()
                self._send(proto.encode(proto.GOODBYE, ["client closing"]))
            except zmq.ZMQError:
                pass
        if self._goodbye_answered is not None:
            # Our own cluster stops next: once the broker has answered, it has dropped this
            # client's work, and the workers' leaving costs nobody anything (no warnings).
            try:
                await asyncio.wait_for(self._goodbye_answered, GOODBYE_ANSWER_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.debug("the broker did not answer GOODBYE within %s s", GOODBYE_ANSWER_TIMEOUT_S)
        self._fail_pending(ClosedClientError("the client was closed before this result arrived"), CANCELLED)
        await self._teardown()
        self.status = ClientStatus.CLOSED

    async def _teardown(self) -> None:
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
            self._heartbeat_handle = None
        # A short linger lets the GOODBYE just queued reach the broker, which then releases
        # this client's keys at once instead of after the liveness timeout.  term() waits
        # for that linger, so it runs off the event loop.
        self._close_direct()
        self._stop_callback_thread()
        self._close_socket(linger_ms=GOODBYE_LINGER_MS)
        if self._context is not None:
            context, self._context = self._context, None
            await asyncio.to_thread(context.term)
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await asyncio.to_thread(cluster.close)

    # --- submitting ------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        key: str | None = None,
        pure: bool = True,
        priority: int = 0,
        retries: int = 0,
        workers: Any = None,
        resources: Any = None,
        allow_other_workers: bool = False,
        fifo_timeout: Any = None,
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; returns a Future at once.

        Futures anywhere in ``args``/``kwargs`` become dependencies: the worker receives
        their values.  Pure calls with equal arguments share one task and key.  Dask's
        placement hints (``workers``, ``resources``, ``allow_other_workers``,
        ``fifo_timeout``) are accepted and not used: any worker may run any task.
        """
        self._check_open()
        _refuse_actors(actor or actors)
        if not callable(fn):
            raise UsageError(f"submit expects a callable as its first argument, got {type(fn).__name__}")
        return self._submit_one(fn, args, kwargs, key, pure, priority, retries, wanted=True)

    def _submit_one(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        key: str | None,
        pure: bool,
        priority: int,
        retries: int,
        wanted: bool,
        deps_known: dict[str, FutureState] | None = None,
        functions: dict[int, tuple[Any, tuple[bytes, bytes, str]]] | None = None,
    ) -> Future:
        priority, retries = _task_options(priority, retries)
        if functions is None:
            info = self._function_info(fn)
        else:
            # One graph is one moment: each function is pickled once for all its tasks.
            known = functions.get(id(fn))
            if known is None or known[0] is not fn:
                known = functions[id(fn)] = (fn, self._function_info(fn))
            info = known[1]
        dep_states: dict[str, FutureState] = {} if deps_known is None else deps_known
        owned: list[Future] = []
        key, frames = self._task_spec(info, args, kwargs, key, pure, dep_states, owned)
        with self._lock:
            future = self._queue_task(key, info, frames, dep_states, priority, retries, wanted)
            if owned and future._state.owned is None:
                future._state.owned = owned
            return future

    def _function_info(self, fn: Callable[..., Any]) -> tuple[bytes, bytes, str]:
        """``(hash, pickled function, name for keys)``.

        An importable function is pickled by name once and remembered.  Anything pickled
        by value (defined in ``__main__`` or a notebook, a lambda, a bound method) is
        pickled at every call, as Dask does: its pickle holds the globals and the state it
        reads, which may have changed since the last call (``factor = 10``, a model fitted
        again).  Equal pickles still share one hash, so the broker and the workers keep one
        copy.
        """
        try:
            info = self._function_info_cache.get(fn)
            cacheable = True
        except TypeError:  # unhashable callable
            info, cacheable = None, False
        if info is None:
            fn_hash, payload, by_value = pickle_function(fn)
            info = (fn_hash, payload, _funcname(fn))
            if cacheable and not by_value:
                if len(self._function_info_cache) > 10_000:
                    self._function_info_cache.clear()
                self._function_info_cache[fn] = info
        return info

    def _task_spec(
        self,
        info: tuple[bytes, bytes, str],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        key: str | None,
        pure: bool,
        dep_states: dict[str, FutureState],
        owned: list[Future] | None = None,
    ) -> tuple[str, list[Any]]:
        """The key and argument frames of one task; futures in the arguments go to ``dep_states``.

        With ``owned``, large arguments (see :meth:`_place_argument`) are sent ahead to a
        worker and replaced by references; their Futures are added to ``owned``.
        """
        fn_hash, _, name = info
        if kwargs:
            packed_kwargs = self._replace_futures(dict(kwargs), dep_states)
        elif not args:
            packed_kwargs = None
        else:
            packed_kwargs = _EMPTY_KWARGS
        if packed_kwargs is None:
            frames = _EMPTY_ARGS_FRAMES
        elif packed_kwargs is _EMPTY_KWARGS and _LEAF_TYPES.issuperset(map(type, args)):
            # Plain scalar arguments (the common case): nothing to replace, nothing out of
            # band, and pickle cannot fail; these are the very bytes serialize.dumps makes.
            frames = [pickle.dumps((tuple(args), {}), protocol=PICKLE_PROTOCOL)]
        else:
            packed_args = self._replace_futures(tuple(args), dep_states)
            if owned is not None:
                # Keyed by content only when the call's own key is: a graph's tasks have
                # theirs already, and hashing their partitions would cost more than it saves.
                by_content = pure and key is None
                packed_args = tuple(self._place_argument(arg, by_content, dep_states, owned) for arg in packed_args)
                if packed_kwargs is not _EMPTY_KWARGS:
                    packed_kwargs = {
                        name: self._place_argument(value, by_content, dep_states, owned)
                        for name, value in packed_kwargs.items()
                    }
            try:
                frames = dumps((packed_args, packed_kwargs if packed_kwargs is not _EMPTY_KWARGS else {}))
            except SerializationError as exc:
                raise SerializationError(
                    f"cannot send the arguments of {name} to a worker: {exc}", exc.obj_repr
                ) from None
        if key is None:
            if pure:
                digest = hashlib.blake2b(fn_hash, digest_size=16)
                for frame in frames:
                    digest.update(frame)
                key = f"{name}-{digest.hexdigest()}"
            else:
                # As unique as a uuid4 (64 random bits per client, then a counter), without
                # a system call per key.
                key = f"{name}-{self._key_token}{next(self._key_counter):016x}"
        else:
            _check_key(key)
        return key, frames

    def _queue_task(
        self,
        key: str,
        info: tuple[bytes, bytes, str],
        frames: list[Any],
        dep_states: dict[str, FutureState],
        priority: int,
        retries: int,
        wanted: bool,
    ) -> Future:
        """Record one task and queue it for the next flush; called with ``_lock`` held."""
        futures = self._futures
        state = futures.get(key)
        if (
            state is not None
            and state.status not in (CANCELLED, LOST)
            and (state.entry is not None or state.batch is not None)  # a call of a map batch too
        ):
            if state.entry is None:
                self._materialize(state)  # other tasks of this submission may name its key
            return Future(key, self, state)
        if self._releases:
            self._take_back_release(key, wanted)
        fn_hash, fn_payload, _ = info
        state = FutureState(key)
        futures[key] = state
        field = proto.payload_field(frames)
        state.entry = [
            key,
            fn_hash,
            list(dep_states) if dep_states else _NO_DEP_KEYS,
            priority,
            retries,
            proto.FLAG_WANTED if wanted else 0,
            field,
        ]
        # An inline payload lives in the entry itself (a million queued tasks: 130 MB less).
        state.frames = None if type(field) is bytes else frames
        state.fn_payload = fn_payload
        state.unsent = True
        if dep_states:
            state.deps = list(dep_states.values())
        future = Future._adopt(key, self, state)
        self._ops.append(("task", state, fn_payload, self._graph_id))
        if not self._flush_scheduled:
            self._schedule_flush()
        return future

    def _place_argument(self, value: Any, by_content: bool, deps: dict[str, FutureState], owned: list[Future]) -> Any:
        """``value`` itself, or, if it is a large array, frame or byte string, a reference to
        it scattered as data of its own.

        Inside the task's message the value would cross two sockets through the broker;
        scattered, it goes to a worker in one hop (see :mod:`zmqdask.direct`), and the task
        runs where it is.  It is scattered as if the call's Future held a Future of it.
        """
        if _placeable_nbytes(value) < DIRECT_MIN_BYTES:
            return value
        try:
            frames = dumps(value)
        except SerializationError:
            return value  # the task's own serialization reports it, naming the function
        name = type(value).__name__
        if by_content:
            # SHA-256, which has hardware support on most CPUs: 2-3 times BLAKE2b's speed
            # on a large array, and the caller's thread waits for it.
            digest = hashlib.sha256()
            for frame in frames:
                digest.update(frame)
            key = f"{name}-{digest.hexdigest()[:32]}"
        else:
            key = f"{name}-{self._key_token}{next(self._key_counter):016x}"
        with self._lock:
            state = self._futures.get(key)
            if state is None or state.status in (CANCELLED, LOST, ERROR):
                if self._releases:
                    # Held by a Future again at once: a pending release of it is dropped, so
                    # the broker keeps the value it may still hold (and says FINISHED).
                    self._take_back_release(key, True)
                state = self._futures[key] = FutureState(key)
                state.value = value
                state.has_value = True
                self._place_ops.append((key, frames))
                self._schedule_flush()
            owned.append(Future._adopt(key, self, state))
        deps[key] = state
        return TaskRef(key)

    def _replace_futures(self, obj: Any, deps: dict[str, FutureState]) -> Any:
        kind = type(obj)
        if (kind is tuple or kind is list) and all(type(item) in _LEAF_TYPES for item in obj):
            return obj  # the common case: plain scalar arguments, nothing to replace
        if kind is Future:
            if obj._client is not self:
                raise UsageError(f"{obj!r} belongs to another client; gather it there and pass the value")
            state = obj._state
            if state is None or state.refcount < 0:
                raise UsageError(f"{obj.key} was released and cannot be used anymore")
            if state.entry is None and state.batch is not None:
                self._materialize(state)
            elif state.entry is None and state.status == CANCELLED and not state.has_value:
                # A cancelled call of a map batch: nothing on the cluster stands for it.
                raise FutureCancelledError(f"{obj.key} was cancelled; it cannot be the input of a task", obj.key)
            deps[obj.key] = state
            return TaskRef(obj.key)
        if kind is tuple or kind is list:
            return kind(self._replace_futures(item, deps) for item in obj)
        if kind is dict:
            return {k: self._replace_futures(v, deps) for k, v in obj.items()}
        if kind is set or kind is frozenset:
            return kind(self._replace_futures(item, deps) for item in obj)
        return obj

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | Sequence[str] | None = None,
        pure: bool = True,
        priority: int = 0,
        retries: int = 0,
        batch_size: int | None = None,
        workers: Any = None,
        resources: Any = None,
        allow_other_workers: bool = False,
        fifo_timeout: Any = None,
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> list[Future]:
        """Submit ``fn`` over the elements of the iterables; returns a list of Futures.

        Many quick calls with plain arguments run in batch tasks (see
        :mod:`zmqdask.batches`), each call keeping its own Future; ``batch_size`` sets the
        calls per batch task (1: one task per call; default: learned from the function's
        run time).  Dask's placement hints are accepted and not used, as in :meth:`submit`.
        """
        self._check_open()
        _refuse_actors(actor or actors)
        if not callable(fn):
            raise UsageError(f"map expects a callable as its first argument, got {type(fn).__name__}")
        if not iterables:
            raise UsageError("map needs at least one iterable")
        columns = [list(iterable) for iterable in iterables]
        count = min(len(column) for column in columns)
        prefix: str | None = None
        if isinstance(key, str) or key is None:
            # A string is a prefix, as in Dask: each call's key is the prefix and a token of
            # the call (of its arguments when pure), never a position that another map with
            # the same prefix would also use.
            keys: list[str | None] = [None] * count
            prefix = key
        else:
            keys = list(key)
            if len(keys) != count:
                raise UsageError(f"map got {len(keys)} keys for {count} elements")
        priority, retries = _task_options(priority, retries)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise UsageError(f"batch_size must be a positive int (1: one task per call), got {batch_size!r}")
        info = self._function_info(fn)
        if prefix is not None:
            info = (info[0], info[1], prefix)
        size = self._batch_size(info[0], columns, count, batch_size)
        if size > 1:
            batched = self._map_batches(info, columns, keys, count, kwargs, pure, priority, retries, size)
            if batched is not None:
                return batched
        # Tasks are prepared (pickling, keys) and recorded a chunk at a time, and each chunk
        # is sent as soon as it is recorded: the cluster starts on the first ones while the
        # rest are prepared.  A failure part-way drops the futures made so far, which
        # releases their tasks.
        task_spec = self._task_spec
        specs: list[tuple[str, list[Any], dict[str, FutureState]]] = []
        futures: list[Future] = []
        # Elements beyond the shortest iterable are ignored, as by the builtin map.
        rows = zip(*columns, strict=False) if len(columns) > 1 else ((item,) for item in columns[0])
        with _collector_paused(count):
            deps: dict[str, FutureState] = {}
            for call_args, element_key in zip(rows, keys, strict=False):
                task_key, frames = task_spec(info, call_args, kwargs, element_key, pure, deps)
                if deps:
                    specs.append((task_key, frames, deps))
                    deps = {}
                else:  # the usual case: no futures among the arguments, one shared empty map
                    specs.append((task_key, frames, _NO_DEP_STATES))
                if len(specs) >= _MAP_CHUNK_TASKS:
                    self._queue_chunk(info, specs, priority, retries, futures)
                    specs = []
            self._queue_chunk(info, specs, priority, retries, futures)
        return futures

    def _batch_size(self, fn_hash: bytes, columns: list[list[Any]], count: int, requested: int | None) -> int:
        """Calls per batch task for a map (1: one task per call), from what is known of the
        function (its time and result size per call) and the size of the arguments."""
        if requested is None and count >= batches.BATCH_MIN_CALLS:
            text = (str, bytes)
            arg_bytes = sum(len(x) for column in columns for x in column[:count] if type(x) in text) / count
            result_bytes = self._bytes_per_call.get(fn_hash, 0.0)
            return batches.batch_size(self._seconds_per_call.get(fn_hash), count, None, max(arg_bytes, result_bytes))
        return batches.batch_size(None, count, requested)

    def _map_batches(
        self,
        info: tuple[bytes, bytes, str],
        columns: list[list[Any]],
        keys: list[str | None],
        count: int,
        kwargs: dict[str, Any],
        pure: bool,
        priority: int,
        retries: int,
        size: int,
    ) -> list[Future] | None:
        """``map`` as batch tasks of up to ``size`` calls each (see :mod:`zmqdask.batches`).

        None when a call has other arguments than plain values (numbers, strings, None...),
        or the keywords hold futures or cannot be pickled: those calls go one task each.
        Each call still gets its own Future and key; calls whose key the client already
        holds (pure calls made before) reuse it and stay out of the batches.
        """
        for column in columns:
            if not _LEAF_TYPES.issuperset(map(type, column[:count])):
                return None
        if kwargs:
            found: dict[str, FutureState] = {}
            self._replace_futures(dict(kwargs), found)
            if found:
                return None
            try:
                dumps(kwargs)
            except SerializationError:
                return None
        rows: list[tuple[Any, ...]] = (
            list(zip(*columns, strict=False)) if len(columns) > 1 else [(item,) for item in columns[0][:count]]
        )
        name = info[2]
        token, counter = self._key_token, self._key_counter
        no_deps: dict[str, FutureState] = {}
        call_keys: list[str] = []
        for row, given in zip(rows, keys, strict=False):
            if given is not None:
                _check_key(given)
                call_keys.append(given)
            elif pure:
                call_keys.append(self._task_spec(info, row, kwargs, None, True, no_deps)[0])
            else:
                call_keys.append(f"{name}-{token}{next(counter):016x}")
        futures: list[Future] = []
        step = size * max(1, _MAP_CHUNK_TASKS // size)  # whole batches per round
        with _collector_paused(count):
            for start in range(0, count, step):
                with self._lock:
                    for first in range(start, min(count, start + step), size):
                        self._queue_batch(info, rows, call_keys, first, min(count, first + size), kwargs, priority,
                                          retries, futures)
                if self._in_loop_thread() and self._flush_scheduled:
                    self._flush()  # as _queue_chunk: the cluster starts while the rest is prepared
        return futures

    def _queue_batch(
        self,
        info: tuple[bytes, bytes, str],
        rows: list[tuple[Any, ...]],
        call_keys: list[str],
        first: int,
        stop: int,
        kwargs: dict[str, Any],
        priority: int,
        retries: int,
        futures: list[Future],
    ) -> None:
        """Record calls ``first:stop`` of a map and one batch task for those not known yet
        (``_lock`` held); their Futures go to ``futures`` in order."""
        known = self._futures
        calls: list[tuple[Any, ...]] = []
        members: list[FutureState] = []
        for i in range(first, stop):
            key = call_keys[i]
            state = known.get(key)
            if state is not None and state.status not in (CANCELLED, LOST):
                futures.append(Future._adopt(key, self, state))
                continue
            member = FutureState(key)
            member.index = len(calls)
            known[key] = member
            calls.append(rows[i])
            members.append(member)
            futures.append(Future._adopt(key, self, member))
        if not members:
            return
        frames = dumps(((batches.BatchCall(calls, retries),), kwargs))
        name = info[2]
        batch_key = f"{name}-batch-{self._key_token}{next(self._key_counter):016x}"
        holder = self._queue_task(batch_key, info, frames, _NO_DEP_STATES, priority, 0, True)
        # The batch is held by its calls, not by a Future: the last call released releases it.
        batch = holder._state
        holder._state = None  # type: ignore[assignment]
        # Not pushed unless asked for (or made of small scalars, which the worker sends
        # anyway): results that nobody gathers stay on the cluster, as a task's do.
        batch.members = members
        batch.alive = len(members)
        for member in members:
            member.batch = batch

    def _materialize(self, member: FutureState) -> None:
        """A call of a map batch becomes a task of its own, picking its value out of the
        batch's result: for a task that takes it as input (``_lock`` taken here)."""
        with self._lock:
            batch = member.batch
            if member.entry is not None or batch is None:
                return
            pick_hash, pick_payload, _ = self._function_info(batches.pick_element)
            frames = [pickle.dumps(((TaskRef(batch.key), member.index), {}), protocol=PICKLE_PROTOCOL)]
            member.entry = [
                member.key,
                pick_hash,
                [batch.key],
                0,
                0,
                proto.FLAG_WANTED,
                proto.payload_field(frames),
            ]
            member.fn_payload = pick_payload
            member.deps = [batch]
            member.unsent = True
            if member.status == FINISHED and not member.has_value:
                member.status = PENDING  # the broker reports the pick's outcome
            self._ops.append(("task", member, pick_payload, self._graph_id))
            if not self._flush_scheduled:
                self._schedule_flush()

    def _as_own_task(self, member: FutureState) -> None:
        """Make a call of a map batch an ordinary task: its function with its arguments,
        taken from the batch's, to run it again alone (``_lock`` held)."""
        batch = member.batch
        assert batch is not None and batch.entry is not None
        args, kwargs, retries = self._call_spec(member)
        frames = dumps((args, kwargs))
        member.entry = [member.key, batch.entry[1], [], batch.entry[3], retries, proto.FLAG_WANTED,
                        proto.payload_field(frames)]
        member.frames = None if type(member.entry[6]) is bytes else frames
        member.fn_payload = batch.fn_payload
        self._detach(member)  # an ordinary task from now on

    def _run_calls_alone(self, batch: FutureState) -> bool:
        """A map batch killed the workers that ran it: each call still waiting runs again
        alone, so that only a call that kills its worker fails (as when each call has a
        task of its own), and the function's later maps give every call a task."""
        with self._lock:
            # A call made the input of another task is a pick task the broker has erred with
            # the batch: it fails as the batch did (client.retry runs it again).
            waiting = [
                m
                for m in batch.members or ()
                if m.batch is batch and not m.has_value and m.status == PENDING and m.entry is None
            ]
            if len(waiting) < 2 or batch.entry is None:
                return False
            self._seconds_per_call[batch.entry[1]] = batches.BATCH_TARGET_SECONDS
            for member in waiting:
                self._as_own_task(member)
                member.unsent = True
                self._ops.append(("task", member, member.fn_payload or b"", 0))
            self._schedule_flush()
        return True

    def _call_spec(self, member: FutureState) -> tuple[tuple[Any, ...], dict[str, Any], int]:
        """A call's arguments, keywords and retries, from its batch's payload."""
        batch = member.batch
        assert batch is not None and batch.entry is not None
        payload = batch.entry[6]
        (call,), kwargs = loads([payload] if type(payload) is bytes else list(batch.frames or ()))
        return call.calls[member.index], kwargs, call.retries

    def _rerun_in_pick(self, member: FutureState) -> None:
        """The pick task of a failed call of a map batch, sent again, runs the call again
        (its key and inputs stay as they were: tasks depending on it follow; ``_lock`` held)."""
        batch = member.batch
        assert batch is not None and member.entry is not None
        args, kwargs, _ = self._call_spec(member)
        rerun = (batch.fn_payload, args, kwargs)
        frames = dumps(((TaskRef(batch.key), member.index, rerun), {}))
        member.entry[6] = proto.payload_field(frames)
        member.frames = None if type(member.entry[6]) is bytes else frames

    def _queue_chunk(
        self,
        info: tuple[bytes, bytes, str],
        specs: list[tuple[str, list[Any], dict[str, FutureState]]],
        priority: int,
        retries: int,
        futures: list[Future],
    ) -> None:
        """Record prepared tasks (adding their futures to ``futures``) and send them soon."""
        queue_task = self._queue_task
        with self._lock:
            futures.extend(
                queue_task(task_key, info, frames, deps, priority, retries, True) for task_key, frames, deps in specs
            )
        if self._in_loop_thread() and self._flush_scheduled:
            # On the client's own loop nothing else runs until map returns: send now.  From
            # another thread the loop sends what was scheduled while this one goes on.
            self._flush()

    def submit_graph(
        self, graph: Mapping[str, TaskSpec], outputs: Sequence[str], priority: int = 0, retries: int = 0
    ) -> list[Future]:
        """Submit a whole task graph (see :mod:`zmqdask.graph`) as one batch.

        Returns Futures for ``outputs`` in order; intermediate values are released by the
        broker once nothing needs them.  Each task is tried ``retries`` more times if it fails.
        """
        self._check_open()
        output_set = set(outputs)
        missing = output_set - graph.keys()
        if missing:
            raise UsageError(f"outputs not in the graph: {sorted(missing)[:5]}")
        order = topological_order(graph)
        states: dict[str, FutureState] = {}
        result: dict[str, Future] = {}
        keep_alive: list[Future] = []
        functions: dict[int, tuple[Any, tuple[bytes, bytes, str]]] = {}
        # Holding the lock for the whole graph keeps the loop thread from flushing half of
        # it (a synchronous caller submits from its own thread).
        with self._lock, _collector_paused(len(order)):
            self._graphs_submitted += 1
            self._graph_id = self._graphs_submitted
            self._graph_start = len(self._ops)
            try:
                for key in order:
                    fn, args, kwargs = graph[key]
                    deps: dict[str, FutureState] = {}
                    # TaskRefs name other graph keys; their states carry the lineage.
                    _collect_refs((args, kwargs), states, deps)
                    future = self._submit_one(
                        fn,
                        tuple(args),
                        dict(kwargs),
                        key,
                        True,
                        priority,
                        retries,
                        wanted=key in output_set,
                        deps_known=deps,
                        functions=functions,
                    )
                    states[key] = future._state
                    if key in output_set:
                        result[key] = future
                    else:
                        keep_alive.append(future)
            finally:
                self._graph_id = 0
        # Intermediate states stay referenced by their dependents' ``deps`` lists; dropping
        # the temporary Futures must not send RELEASE for keys that were never wanted.
        del keep_alive
        return [result[key] for key in outputs]

    def compute(
        self,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        retries: int = 0,
        priority: int = 0,
        **placement: Any,
    ) -> Any:
        """Start computing a collection (or a list of them); returns Future(s) at once.

        As in Dask, a list, tuple, set or dict holding collections (``{"a": d1, "b": d2}``)
        is computed as one value, with the collections in it computed (unless
        ``traverse=False``), and anything else that is neither a collection nor a future is
        returned as it is.  Every task of the graph is tried ``retries`` more times if it
        fails.  Dask's ``workers``, ``resources``, ``allow_other_workers`` and
        ``fifo_timeout`` are accepted and not used; graphs are always optimized.
        """
        self._check_open()
        _accept_placement(placement)
        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        if placement.get("traverse", True):
            items = [_as_delayed_container(item) for item in items]
        for item in items:
            _refuse_foreign_collection(item)
        lazy = [item for item in items if not isinstance(item, Future) and is_collection(item)]
        partitions = iter(self._submit_graphs(lazy, priority, retries))
        futures: list[Any] = []
        for item in items:
            if isinstance(item, Future) or not is_collection(item):
                futures.append(item)
                continue
            finalize = item.__zmqdask_finalize__()
            parts = next(partitions)
            futures.append(self._submit_one(finalize, (parts,), {}, None, True, priority, retries, wanted=True))
        if sync:
            return self.gather(futures[0] if single else futures)
        return futures[0] if single else futures

    def _submit_graphs(self, collections: list[Any], priority: int, retries: int) -> list[list[Future]]:
        """Submit the collections' graphs as one, and return the futures of each one's
        output partitions: a task two of them share is submitted (and computed) once."""
        merged: dict[str, TaskSpec] = {}
        outputs_of: list[list[str]] = []
        for graph, outputs in graphs_of(collections):
            merged.update(graph)
            outputs_of.append(outputs)
        every_output = list(dict.fromkeys(key for outputs in outputs_of for key in outputs))
        if not every_output:
            return [[] for _ in collections]
        futures = dict(zip(every_output, self.submit_graph(merged, every_output, priority, retries), strict=True))
        return [[futures[key] for key in outputs] for outputs in outputs_of]

    def get(
        self,
        dsk: Mapping[Any, Any],
        keys: Any,
        sync: bool = True,
        retries: int = 0,
        priority: int = 0,
        **placement: Any,
    ) -> Any:
        """Run a graph written in Dask's format (``{key: (func, *args)}``) and return the
        values of ``keys`` (a key, or nested lists of keys), as Dask's ``client.get``.

        With ``sync=False`` returns futures in the shape of ``keys`` instead; on an
        asynchronous client the values come as an awaitable.
        """
        self._check_open()
        _accept_placement(placement)
        suffix = f"{self._key_token}{next(self._key_counter):x}"
        graph = dask_graph.convert(dsk, suffix)

        def names(shape: Any) -> Any:
            if type(shape) is list:
                return [names(item) for item in shape]
            try:
                known = shape in dsk
            except TypeError:
                known = False
            if not known:
                raise UsageError(f"key {shape!r} is not in the graph")
            return dask_graph.key_name(shape, suffix)

        shape = names(keys)
        flat: list[str] = []

        def flatten(item: Any) -> None:
            if type(item) is list:
                for part in item:
                    flatten(part)
            else:
                flat.append(item)

        flatten(shape)
        outputs = list(dict.fromkeys(flat))
        futures = dict(zip(outputs, self.submit_graph(graph, outputs, priority=priority, retries=retries), strict=True))

        def as_futures(item: Any) -> Any:
            return [as_futures(part) for part in item] if type(item) is list else futures[item]

        result = as_futures(shape)
        return result if not sync else self.gather(result)

    def persist(
        self, collections: Any, optimize_graph: bool = True, retries: int = 0, priority: int = 0, **placement: Any
    ) -> Any:
        """Start computing collections and return equivalent ones backed by futures, at once.

        ``retries`` and Dask's placement keywords as for :meth:`compute`.
        """
        self._check_open()
        _accept_placement(placement)
        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        for item in items:
            if not is_collection(item):
                raise UsageError(f"persist expects zmqdask collections, got {type(item).__name__}")
        results = []
        for item, parts in zip(items, self._submit_graphs(items, priority, retries), strict=True):
            results.append(item.__zmqdask_persisted__(parts))
        return results[0] if single else results

    # --- gathering and friends -------------------------------------------------------------

    def gather(
        self, futures: Any, errors: str = "raise", direct: bool | None = None, asynchronous: bool | None = None
    ) -> Any:
        """Values of futures in any nesting of lists, tuples, dicts and sets.

        ``errors='skip'`` leaves out failed futures instead of raising.
        """
        self._check_open()
        if errors not in ("raise", "skip"):
            raise UsageError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if isinstance(futures, Iterator):
            # As Dask: an iterator (a generator of futures) gives an iterator of values,
            # each gathered as it is reached; on an asynchronous client, all at once.
            if self.asynchronous or asynchronous:
                return self._gather(list(futures), errors)
            return (self.gather(future, errors=errors) for future in futures)
        coro = self._gather(futures, errors)
        if asynchronous and not self.asynchronous:
            return coro
        return self._run_or_await(coro, "await client.gather(futures)")

    async def _gather(self, obj: Any, errors: str) -> Any:
        found: dict[str, Future] = {}
        _collect_futures(obj, found)
        # Reports waiting in the socket may carry some of these values already (small ones
        # come with their completion notice): read them before asking for the rest.
        self._drain()
        futures = list(found.values())
        # Many futures are handled in slices, with a turn of the event loop between two: the
        # application's other coroutines wait for one slice at most, not for the whole list.
        for start in range(0, len(futures), _GATHER_SLICE):
            if start:
                await asyncio.sleep(0)
            with self._lock:
                for future in futures[start : start + _GATHER_SLICE]:
                    state = future._state
                    if not state.has_value and state.status in (PENDING, FINISHED) and not state.data_requested:
                        if state.batch is not None and state.entry is None:
                            self._request_data(state)  # a call of a map batch: asks for its batch's value
                            continue
                        state.data_requested = True
                        if state.unsent and state.entry is not None:
                            state.entry[5] |= proto.FLAG_PUSH_RESULT
                        else:
                            self._ops.append(("gather", state.key))
                self._schedule_flush()
        values: dict[str, Any] = {}
        failures: set[str] = set()
        for index, (key, future) in enumerate(found.items()):
            if index and not index % _GATHER_SLICE:
                await asyncio.sleep(0)
            state = future._state
            if state.has_value:
                values[key] = state.value  # no need to suspend for a value already here
                continue
            try:
                values[key] = await self._wait_value(state)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and future._state.status != CANCELLED:
                    raise
                if errors == "raise":
                    raise
                failures.add(key)
        return _rebuild(obj, values, failures)

    def scatter(
        self,
        data: Any,
        broadcast: bool = False,
        hash: bool = True,
        workers: Any = None,
        direct: Any = None,
        timeout: Any = None,
    ) -> Any:
        """Send local data to the workers; returns Future(s) shaped like ``data``.

        A list gives a list of futures, a dict a dict; anything else one future.  Dask's
        ``workers`` and ``direct`` are accepted (large values go to a worker in one hop
        anyway); ``timeout`` bounds the wait for the workers to hold the data.
        """
        self._check_open()
        coro = self._scatter(data, broadcast, hash)
        return self._run_or_await(coro, "await client.scatter(data)", timeout, "scatter")

    async def _scatter(self, data: Any, broadcast: bool, hash_keys: bool) -> Any:
        if isinstance(data, dict):
            items = list(data.items())
            named = True
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, value) for value in data]
            named = False
        else:
            items = [(None, data)]
            named = False
        entries: list[list[Any]] = []
        replacing: list[list[Any]] = []
        replacing_frames: list[Any] = []
        placements = False
        frames: list[Any] = []
        futures: list[Future] = []
        for name, value in items:
            if isinstance(value, Future):
                futures.append(value)
                continue
            try:
                value_frames = dumps(value)
            except SerializationError as exc:
                raise SerializationError(f"cannot scatter {exc.obj_repr}: {exc}", exc.obj_repr) from None
            nbytes = sum(proto.frame_nbytes(frame) for frame in value_frames)
            if nbytes > self.max_message_bytes * 3 // 4:
                raise UsageError(
                    f"cannot scatter a {type(value).__name__} of {nbytes} bytes: it exceeds the broker's message "
                    f"limit ({self.max_message_bytes} bytes); split it, or start the broker with a larger "
                    "--max-message-bytes"
                )
            if named:
                key = str(name)
                _check_key(key)
            elif hash_keys:
                key = f"{type(value).__name__}-{await _content_digest(value_frames)}"
            else:
                key = f"{type(value).__name__}-{uuid.uuid4().hex}"
            with self._lock:
                state = self._futures.get(key)
                fresh = state is None or state.status in (CANCELLED, LOST, ERROR)
                again = named and not fresh and state is not None and state.entry is None and state.batch is None
                if again:
                    # A name scattered again takes the new value, as in Dask: every future of
                    # it (the same state) sees it, and the workers' copies are replaced.
                    assert state is not None
                    state.value = _private_copy(value, value_frames)
                    state.has_value = True
                    state.status = PENDING
                    state.exception = None
                elif fresh:
                    if self._releases:
                        # A scatter is a transfer the user asked for: a pending release of
                        # the same key goes out first, as it would have without the delay.
                        self._take_back_release(key, False)
                    state = self._futures[key] = FutureState(key)
                    state.value = _private_copy(value, value_frames)
                    state.has_value = True
                futures.append(Future(key, self, state))
            if named and (fresh or again):
                # A name may still hold a value on the broker (another client's, or one this
                # client released a moment ago): this one replaces it, as in Dask.
                field = proto.payload_field(value_frames)
                replacing.append([key, field])
                if type(field) is not bytes:
                    replacing_frames.extend(value_frames)
            elif fresh and nbytes >= DIRECT_MIN_BYTES and not broadcast:
                # Large: the broker names a worker to send it to directly (see zmqdask.direct).
                with self._lock:
                    self._place_ops.append((key, value_frames))
                placements = True
            elif fresh:
                field = proto.payload_field(value_frames)
                entries.append([key, field])
                if type(field) is not bytes:
                    frames.extend(value_frames)
        if entries or placements:
            self._flush()  # sends the PLACE for the large ones too
        if entries:
            self._send(proto.encode(proto.SCATTER, [entries, bool(broadcast)], frames))
        if replacing:
            self._flush()
            self._send(proto.encode(proto.SCATTER, [replacing, bool(broadcast), True], replacing_frames))
        for future in futures:
            await self._wait_done(future._state)
        for future in futures:
            state = future._state
            if state.status in (LOST, ERROR) and state.exception is not None:
                raise failure_of(state)  # the broker was lost past the reconnect timeout, say
        if named:
            return dict(zip([name for name, _ in items], futures, strict=False))
        if isinstance(data, (list, tuple, set, frozenset)):
            return type(data)(futures) if not isinstance(data, (set, frozenset)) else futures
        return futures[0]

    def cancel(self, futures: Any, force: bool = False) -> Any:
        """Cancel futures, finished or not, and the pending futures that depend on them:
        their tasks stop if nobody else needs them, and their values are dropped here."""
        self._check_open()
        found: dict[str, Future] = {}
        _collect_futures(futures, found)

        def do_cancel() -> None:
            states = [f._state for f in found.values() if f._state.status in (PENDING, FINISHED)]
            # The broker cancels the dependents too, but says so only later: a future
            # submitted again meanwhile must not be handed their old, doomed state.
            for state in [*states, *self._pending_dependents(states)]:
                if state.status not in (PENDING, FINISHED):
                    continue
                state.value = None
                state.has_value = False
                if state.status == FINISHED:
                    state.status = PENDING  # so that it can fail
                self._set_failed(state, CANCELLED, FutureCancelledError(f"{state.key} was cancelled", state.key), None)
                with self._lock:
                    if state.batch is not None:
                        # A call of a map batch: its batch stops once none of its calls is left.
                        self._detach(state)
                        if state.entry is None:
                            continue
                    self._ops.append(("cancel", state.key))
                    self._cancels_unanswered.append(CANCEL_CLOCK.tick())
            with self._lock:
                self._schedule_flush()

        return self._on_loop(do_cancel)

    def _pending_dependents(self, states: list[FutureState]) -> list[FutureState]:
        """The pending futures' states that depend on ``states``, directly or through
        intermediate tasks no future holds (a graph's inner keys)."""
        with self._lock:
            candidates = [s for s in self._futures.values() if s.deps and s.status == PENDING]
        if not candidates or not states:
            return []
        # id -> whether that state depends on a cancelled one; walked down ``deps`` once.
        verdict: dict[int, bool] = {id(state): True for state in states}
        found: list[FutureState] = []
        for candidate in candidates:
            stack: list[tuple[FutureState, bool]] = [(candidate, False)]
            while stack:
                state, expanded = stack.pop()
                if id(state) in verdict:
                    continue
                deps = [d for d in state.deps or () if d.status in (PENDING, FINISHED)]
                if expanded:
                    verdict[id(state)] = any(verdict.get(id(d), False) for d in deps)
                    continue
                stack.append((state, True))
                stack.extend((d, False) for d in deps if id(d) not in verdict)
            if verdict[id(candidate)]:
                found.append(candidate)
        return found

    def _on_loop(self, fn: Callable[[], None]) -> Any:
        """Run ``fn`` on the client's loop: at once on an asynchronous client (returning an
        awaitable, as Dask's methods do there), else from this thread, waiting for it."""
        if self.asynchronous:
            fn()
            return _done_coro()
        self._loop_thread.run(_as_coro(fn), timeout=self.timeout)  # type: ignore[union-attr]
        return None

    def futures_of(self, obj: Any) -> list[Future]:
        """The futures inside ``obj``: a future, a persisted collection, or containers of
        those (Dask's ``client.futures_of``; see :func:`zmqdask.futures_of`)."""
        from zmqdask.progressbar import futures_of

        return futures_of(obj)

    def retry(self, futures: Any) -> Any:
        """Run erred futures again, with their erred inputs (Dask's ``client.retry``).

        Futures that did not err are left alone.  Returns an awaitable on an asynchronous
        client; the futures are pending again once it returns.
        """
        self._check_open()
        found: dict[str, Future] = {}
        _collect_futures(futures, found)

        def do_retry() -> None:
            with self._lock:
                for future in found.values():
                    state = future._state
                    if state.status == ERROR and state.batch is not None and state.entry is None:
                        self._as_own_task(state)
            order: list[FutureState] = []
            seen: set[str] = set()
            # Inputs first: the broker takes an erred input back before its dependents.
            stack: list[tuple[FutureState, bool]] = [(f._state, False) for f in reversed(found.values())]
            while stack:
                state, expanded = stack.pop()
                if expanded:
                    order.append(state)
                    continue
                if state.key in seen or state.status != ERROR or state.entry is None:
                    continue
                seen.add(state.key)
                stack.append((state, True))
                stack.extend((dep, False) for dep in state.deps or ())
            with self._lock:
                for state in order:
                    if state.batch is not None and state.entry is not None:
                        self._rerun_in_pick(state)  # a call of a map batch made an input
                    state.status = PENDING
                    state.exception = None
                    state.traceback = None
                    entry = state.entry
                    assert entry is not None
                    state.entry = [*entry[:5], entry[5] | proto.FLAG_RETRY, entry[6]]
                    state.unsent = True
                    self._ops.append(("task", state, state.fn_payload or b"", 0))
                if order:
                    self._schedule_flush()

        return self._on_loop(do_retry)

    def scheduler_info(self, n_workers: int | None = None, **options: Any) -> Any:
        """Broker and worker information, shaped like Dask's ``scheduler_info()``; every worker
        unless ``n_workers`` (a positive count) limits them."""
        self._check_open()
        limit = None if n_workers is None or n_workers < 0 else int(n_workers)

        async def fetch() -> dict[str, Any]:
            info = await self._info()
            workers = {
                f"{self.address}/{worker_id}": dict(details, id=worker_id)
                for worker_id, details in list(info.get("workers", {}).items())[:limit]
            }
            return {
                "type": "Scheduler",
                "id": info.get("epoch"),
                "address": self.address,
                "workers": workers,
                "tasks": info.get("tasks", {}),
                "nclients": info.get("nclients", 0),
                # Pickled functions the broker keeps for clients' tasks (see FORGET_FUNCTIONS).
                "functions": info.get("functions", 0),
                "function_bytes": info.get("function_bytes", 0),
                # Large values moved between clients and workers in one hop (see zmqdask.direct).
                "direct_gets": info.get("direct_gets", 0),
                "direct_stores": info.get("direct_stores", 0),
                "direct_fetches": info.get("direct_fetches", 0),
            }

        return self._run_or_await(fetch(), "await client.scheduler_info()")

    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: Any = None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> Any:
        """Call ``function(*args, **kwargs)`` once in each worker process, or in those named by
        ``workers``; returns ``{worker address: result}``, as Dask does.

        The call runs outside the worker's tasks, in a thread of its own: at once, even while
        every thread of the worker is busy.  A coroutine function is awaited.  With
        ``on_error="raise"`` the first exception is raised, ``"return"`` puts exceptions in
        the result, ``"ignore"`` leaves their workers out.  A worker that leaves before
        answering counts as an error (:class:`~zmqdask.errors.CommunicationError`).  With
        ``wait=False`` the call is sent and None returned at once.
        """
        self._check_open()
        check_run_call(function, nanny, on_error)
        coro = self._run(function, args, kwargs, workers, wait, on_error)
        return self._run_or_await(coro, "await client.run(function)")

    async def _run(
        self, function: Callable[..., Any], args: Any, kwargs: Any, workers: Any, wait: bool, on_error: str
    ) -> dict[str, Any] | None:
        address = self.address or ""
        targets = None
        if workers is not None:
            targets = worker_targets(address, (await self._info()).get("workers", {}), workers)
        answers = await self._run_on(targets, self._run_frames(function, args, kwargs), wait)
        if answers is None:
            return None
        return run_results(address, answers, on_error, self._run_error)

    def _run_frames(self, function: Callable[..., Any], args: Any, kwargs: Any) -> list[Any]:
        """The pickled call of a run or a set-up, refused at once if it cannot travel."""
        try:
            frames = dumps((function, tuple(args), dict(kwargs)))
        except SerializationError as exc:
            raise SerializationError(f"cannot send the call to the workers: {exc}", exc.obj_repr) from None
        nbytes = sum(proto.frame_nbytes(frame) for frame in frames)
        if nbytes > self.max_message_bytes * 3 // 4:
            raise UsageError(
                f"the function and its arguments take {nbytes} bytes, more than a message may carry "
                f"({self.max_message_bytes}); send large data with scatter and tasks instead"
            )
        return frames

    def _run_error(self, origin: str, detail: Any, frames: list[Any]) -> BaseException:
        return self._rebuild_error(origin, detail, frames)[0]

    def upload_file(self, filename: str, load: bool = True) -> Any:
        """Send a local file to every worker process, now and each one that starts later.

        It lands in a directory first on the worker's ``sys.path``: a module (``.py``) is
        then imported (again, if it was), with ``load``; an archive (``.zip``, ``.egg``,
        ``.whl``) goes on ``sys.path`` itself and its top-level packages are imported.  The
        same file name again replaces the earlier one.  Returns ``{worker: path}``.
        """
        self._check_open()
        try:
            with open(filename, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise UsageError(f"upload_file: cannot read {filename!r}: {exc.strerror or exc}") from None
        name = os.path.basename(filename)
        coro = self._set_up_workers(f"upload_file:{name}", UploadedFile(name, data, load))
        return self._run_or_await(coro, "await client.upload_file(filename)")

    def register_worker_callbacks(self, setup: Callable[[], Any] | None = None) -> Any:
        """Call ``setup()`` in every worker process now and in each one that starts later (a
        replacement after a crash or a restart, a new pool) before it runs a task.

        Returns ``{worker: result}`` of the workers there now (None for a result that cannot
        be pickled), raising the first failure.
        Registering an equal function again replaces it.  A set-up that fails on a worker
        that starts later is logged by the broker, and that worker runs tasks anyway.
        """
        self._check_open()
        if setup is None:
            return _done_coro() if self.asynchronous else None
        if not callable(setup):
            raise UsageError(f"register_worker_callbacks expects a callable, got {type(setup).__name__}")
        name = f"setup:{_funcname(setup)}:{self._function_info(setup)[0].hex()}"
        coro = self._set_up_workers(name, setup)
        return self._run_or_await(coro, "await client.register_worker_callbacks(setup)")

    async def _set_up_workers(self, name: str, setup: Callable[[], Any]) -> dict[str, Any]:
        frames = self._run_frames(setup, (), {})
        answers = await self._run_on(None, frames, True, setup=name)
        assert answers is not None
        return run_results(self.address or "", answers, "raise", self._run_error)

    def restart(self, timeout: Any = None, wait_for_workers: bool = True) -> Any:
        """Cancel every future and replace every worker process, as Dask's ``restart`` does.

        The work of every client of the cluster ends (their futures are cancelled too), and
        each worker pool starts fresh worker processes: values, imported modules and memory
        go with the old ones.  With ``wait_for_workers`` it returns once as many workers as
        before are connected again, all of them new, or raises TimeoutError after
        ``timeout`` (seconds or a duration such as "30s"; 60 s by default).
        """
        self._check_open()
        limit = RESTART_TIMEOUT_S if timeout is None else seconds(timeout, "timeout")
        coro = self._restart(limit, wait_for_workers)
        return self._run_or_await(coro, "await client.restart()")

    async def _restart(self, timeout: float, wait_for_workers: bool) -> None:
        deadline = time.monotonic() + timeout
        before = len((await self._info()).get("workers", {}))
        replaced = {identity.hex() for identity in await self._request_restart("the cluster was restarted")}
        if not wait_for_workers:
            return
        delay = WORKERS_POLL_FIRST_S
        while True:
            workers = (await self._info()).get("workers", {})
            if len(workers) >= before and replaced.isdisjoint(workers):
                return
            if time.monotonic() >= deadline:
                new = len(set(workers) - replaced)
                raise ZmqdaskTimeoutError(
                    f"{new} of {before} workers were back within {timeout} s of the restart; "
                    "wait with client.wait_for_workers(n)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, WORKERS_POLL_MAX_S)

    def get_versions(self, check: bool = False, packages: Sequence[str] | None = None) -> Any:
        """Python's and the relevant packages' versions in this client, the broker (as
        ``"scheduler"``) and each worker, as Dask's ``get_versions``; ``packages`` adds more
        to look up.  With ``check``, differences raise ValueError naming them."""
        self._check_open()
        extra = tuple(packages or ())

        async def fetch() -> dict[str, Any]:
            scheduler = (await self._info()).get("versions", {})
            workers = await self._run(version_info, (extra,), {}, None, True, "raise")
            found = {"scheduler": scheduler, "workers": workers or {}, "client": version_info(extra)}
            if check:
                lines = mismatches(found["client"], scheduler, found["workers"])
                if lines:
                    raise ValueError(
                        "Mismatched versions found (use the same versions everywhere):\n" + "\n".join(lines)
                    )
            return found

        return self._run_or_await(fetch(), "await client.get_versions()")

    # --- named datasets (see zmqdask.publish) -----------------------------------------

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False, **kwargs: Any) -> Any:
        """Publish objects by name for any client of this cluster, as Dask's: futures, a
        persisted collection, or anything picklable holding them.

        ``publish_dataset(df=persisted)`` or ``publish_dataset(persisted, name="df")``.  The
        values of the futures inside stay on the cluster while the dataset is published,
        even once this client has gone.  An existing name is refused (KeyError) unless
        ``override=True``.
        """
        self._check_open()
        if args:
            if name is None:
                raise ValueError(
                    "publish_dataset with a positional argument needs name=: publish_dataset(df, name='df')"
                )
            if len(args) > 1:
                raise ValueError(
                    "publish_dataset takes one positional dataset (with name=); name the others: x=..., y=..."
                )
            kwargs = {name: args[0], **kwargs}
        elif name is not None:
            raise ValueError("publish_dataset(name=...) needs the dataset as well: publish_dataset(df, name='df')")
        if not kwargs:
            raise ValueError("publish_dataset needs datasets to publish: publish_dataset(df=persisted)")
        for each in kwargs:
            publish.check_name(each)
        return self._run_or_await(publish.publish(self, kwargs, bool(override)), "await client.publish_dataset(...)")

    def get_dataset(self, name: str, default: Any = publish.NO_DEFAULT) -> Any:
        """The dataset published as ``name``, its futures held by this client; ``default``
        if there is none, else KeyError."""
        self._check_open()
        publish.check_name(name)
        return self._run_or_await(publish.fetch(self, name, default), "await client.get_dataset(name)")

    def unpublish_dataset(self, name: str) -> Any:
        """Delete the dataset published as ``name`` (KeyError if there is none); the values it
        held are released once no future holds them."""
        self._check_open()
        publish.check_name(name)
        return self._run_or_await(publish.unpublish(self, name), "await client.unpublish_dataset(name)")

    def list_datasets(self) -> Any:
        """The names of the published datasets, sorted."""
        self._check_open()
        return self._run_or_await(publish.names(self), "await client.list_datasets()")

    @property
    def datasets(self) -> publish.Datasets:
        """The published datasets as a mapping (``client.datasets["df"]``), as in Dask."""
        return publish.Datasets(self)

    def who_has(self, futures: Any = None) -> Any:
        """Key -> addresses of the workers holding its value, for ``futures`` (any futures or
        collections of them; None: every future of this client), as Dask's ``who_has``."""
        self._check_open()
        with self._lock:
            if futures is None:
                # The futures the user holds, not the inner keys of graphs and map batches.
                states = [s for s in self._futures.values() if s.refcount > 0 and s.members is None]
            else:
                found: dict[str, Future] = {}
                _collect_futures(futures, found)
                states = [future._state for future in found.values()]
            # A call of a map batch lives in its batch's value: where the batch is, it is.
            held_as = {
                state.key: state.batch.key if state.entry is None and state.batch is not None else state.key
                for state in states
            }

        async def fetch() -> dict[str, tuple[str, ...]]:
            answer = await self._info(list(dict.fromkeys(held_as.values())))
            where = answer.get("who_has", {})
            return {key: tuple(f"{self.address}/{w}" for w in where.get(held, ())) for key, held in held_as.items()}

        return self._run_or_await(fetch(), "await client.who_has()")

    def has_what(self, workers: Any = None) -> Any:
        """Worker address -> the keys whose values it holds (every worker, or those named as in
        ``scheduler_info()``), as Dask's ``has_what``."""
        self._check_open()

        async def fetch() -> dict[str, tuple[str, ...]]:
            answer = await self._info(None)
            held = {f"{self.address}/{worker}": tuple(keys) for worker, keys in answer.get("has_what", {}).items()}
            if workers is None:
                return held
            wanted = [workers] if isinstance(workers, str) else list(workers)
            known = {**held, **{address.rsplit("/", 1)[-1]: keys for address, keys in held.items()}}
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise UsageError(
                    f"has_what: no connected worker is named {', '.join(map(repr, unknown))}; "
                    f"connected: {', '.join(sorted(held)) or '(none)'}"
                )
            return {w if w in held else f"{self.address}/{w}": known[w] for w in wanted}

        return self._run_or_await(fetch(), "await client.has_what()")

    def nthreads(self) -> Any:
        """Worker address -> number of threads."""
        self._check_open()

        async def fetch() -> dict[str, int]:
            info = await self._info()
            return {f"{self.address}/{wid}": d.get("nthreads", 1) for wid, d in info.get("workers", {}).items()}

        return self._run_or_await(fetch(), "await client.nthreads()")

    ncores = nthreads

    def wait_for_workers(self, n_workers: int = 1, timeout: Any = None) -> Any:
        """Wait until at least ``n_workers`` workers are connected (``timeout`` in seconds, or a
        duration such as "30s")."""
        self._check_open()
        coro = self._wait_for_workers(n_workers, optional_seconds(timeout))
        return self._run_or_await(coro, "await client.wait_for_workers(n)")

    async def _wait_for_workers(self, n_workers: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = WORKERS_POLL_FIRST_S
        while True:
            info = await self._info()
            if len(info.get("workers", {})) >= n_workers:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ZmqdaskTimeoutError(
                    f"only {len(info.get('workers', {}))} of {n_workers} workers connected within {timeout} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, WORKERS_POLL_MAX_S)

    def shutdown(self) -> Any:
        """Close the client and stop its local cluster: the one it started, or the
        ``LocalCluster`` it was given (Dask's ``shutdown``).

        A broker and workers started as daemons keep running: stop them with SIGTERM.
        """
        given, self._given_cluster = self._given_cluster, None
        if self.asynchronous:
            return self._shutdown_async(given)
        try:
            self.close()
        finally:
            if given is not None:
                given.close()
        return None

    async def _shutdown_async(self, given: Any) -> None:
        try:
            await self._close()
        finally:
            if given is not None:
                await asyncio.to_thread(given.close)

    def __reduce__(self) -> Any:
        raise UsageError(
            "a Client cannot be sent to a worker (a task's function or arguments hold it); "
            "call zmqdask.get_client() inside the task instead"
        )

    @property
    def id(self) -> str:
        """This client's name, unique per client (Dask's ``Client.id``)."""
        return self.name

    @property
    def dashboard_link(self) -> None:
        """None: zmqdask has no dashboard (``scheduler_info()`` reports workers and tasks)."""
        return None

    def __getattr__(self, name: str) -> Any:
        # Only for names the class does not have: Dask's that zmqdask lacks say so and what to do.
        hint = _UNSUPPORTED_DASK_METHODS.get(name)
        if hint is not None:
            raise AttributeError(f"zmqdask's Client has no {name}(): {hint}")
        raise AttributeError(f"'Client' object has no attribute {name!r}")

    # --- reprs -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<Client: {self.address!r} status={self.status.value}>"

    def _repr_html_(self) -> str:
        rows = [("Broker", self.address or "not connected"), ("Status", self.status.value)]
        if self.status == ClientStatus.RUNNING and not self.asynchronous:
            try:
                info = self.scheduler_info()
                workers = info["workers"].values()
                rows += [
                    ("Workers", str(len(workers))),
                    ("Threads", str(sum(w.get("nthreads", 0) for w in workers))),
                    ("Memory held", format_bytes(sum(w.get("nbytes", 0) for w in workers))),
                ]
            except Exception:
                pass
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
        )
        return f"<div><h3>zmqdask Client</h3><table>{body}</table></div>"


_EMPTY_ARGS_FRAMES = dumps(((), {}))
_EMPTY_KWARGS: dict[str, Any] = {}
_NO_DEP_KEYS: list[str] = []  # shared by the entries of tasks without inputs; never changed
_NO_DEP_STATES: dict[str, FutureState] = {}  # likewise, for map's tasks without inputs
_LEAF_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})


WORKERS_POLL_FIRST_S = 0.005
WORKERS_POLL_MAX_S = 0.05
RESTART_TIMEOUT_S = 60.0
"""How long ``restart`` waits for the workers to come back when no timeout is given."""
"""wait_for_workers asks the broker every few milliseconds at first (a local cluster's
workers register within about half a second of its start), then less often."""

GC_PAUSE_MIN_TASKS = 1000
"""Bulk submissions of at least this many tasks pause the cyclic garbage collector."""


@contextlib.contextmanager
def _collector_paused(count: int) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while ``count`` tasks are created at once.

    Each task is a handful of container objects that live on; creating a hundred thousand
    triggers several full collections of the whole heap on the way, which costs more than
    creating them.  Nothing they hold is cyclic garbage, and collection resumes afterwards
    (if it was enabled) at its usual pace.
    """
    if count < GC_PAUSE_MIN_TASKS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_UNSUPPORTED_DASK_METHODS = {
    "run_on_scheduler": "the broker runs no user code; compute in a task or in the client",
    "register_worker_plugin": "there are no plugin objects; register a set-up function with register_worker_callbacks",
    "register_plugin": "there are no plugin objects; register a set-up function with register_worker_callbacks",
    "rebalance": "results stay where they were computed and move to the workers that need them",
    "replicate": "results stay where they were computed and move to the workers that need them",
    "get_task_stream": "there is no task stream; time tasks in your own code",
    "profile": "profile a task's function in the client, or run py-spy on a worker process",
    "get_executor": "use submit/map and gather",
    "get_metadata": "keep such values in the client (a dict) or scatter them",
    "set_metadata": "keep such values in the client (a dict) or scatter them",
    "processing": "scheduler_info() gives each worker's count of processing tasks",
    "get_worker_logs": "workers log to the standard error of their pool (the client's, for Client())",
    "get_scheduler_logs": "the broker logs to its standard error (the client's, for Client())",
    "retire_workers": "stop a worker pool with SIGTERM: its running tasks go to other workers",
    "write_scheduler_file": "pass the broker's address (client.scheduler_info()['address']) instead",
    "forward_logging": "workers log to the standard error of their pool (the client's, for Client())",
    "story": "set --log-level DEBUG on the broker and workers to follow a key",
    "call_stack": "run py-spy dump on the worker process (scheduler_info() gives its pid)",
    "dump_cluster_state": "scheduler_info() gives the broker's view of workers and tasks",
    "unregister_worker_plugin": "there are no plugins; do per-worker set-up at import time of your module",
}


_GATHER_SLICE = 4096
"""Futures a gather handles between two turns of the event loop."""

_PLACEMENT_KEYWORDS = frozenset(
    {"workers", "resources", "allow_other_workers", "fifo_timeout", "traverse", "actors", "user_priority"}
)
"""Dask's keywords of compute/persist that choose workers or tune Dask's scheduler: any
worker runs any task here, so they are accepted and not used."""


def _private_copy(value: Any, frames: list[Any]) -> Any:
    """The client's own copy of a value it scatters, when its pickle holds all of it: later
    changes to the caller's object then reach neither ``result()`` nor a copy sent again
    after a worker's death, as in Dask.  A value with out-of-band buffers (a large array)
    is kept as it is: copying it would double the client's memory."""
    if len(frames) == 1 and type(frames[0]) is bytes:
        try:
            return loads(frames)
        except Exception:  # it pickles but does not load back here: keep the object
            return value
    return value


def _as_delayed_container(item: Any) -> Any:
    """A container holding collections as one delayed value of it (Dask's ``traverse``)."""
    if isinstance(item, (list, tuple, set, frozenset, dict)) and _holds_collection(item):
        from zmqdask.delayed import delayed

        return delayed(item)
    return item


def _holds_collection(obj: Any, depth: int = 0) -> bool:
    if is_collection(obj) or isinstance(obj, Future):
        return is_collection(obj)
    if depth > 8:
        return False
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set, frozenset)) else ()
    return any(_holds_collection(value, depth + 1) for value in values)


def _refuse_foreign_collection(item: Any) -> None:
    """A Dask collection (built with dask's own modules) cannot run here: say so."""
    if not is_collection(item) and not isinstance(item, type) and hasattr(item, "__dask_graph__"):
        raise UsageError(
            f"{type(item).__module__}.{type(item).__name__} is a dask collection: build it with zmqdask "
            "(zmqdask.delayed, zmqdask.dataframe), or run a Dask graph with client.get(dsk, keys)"
        )


def _accept_placement(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - _PLACEMENT_KEYWORDS)
    if unknown:
        raise UsageError(f"unexpected keyword arguments {unknown}")
    _refuse_actors(bool(options.get("actors")))


def _refuse_actors(requested: bool) -> None:
    if requested:
        raise UsageError("zmqdask has no actors; submit functions instead (actor=False)")


HASH_CHUNK_BYTES = 16 * 1024 * 1024
"""Scattered data larger than this is hashed in chunks of this size, several at a time."""


def _placeable_nbytes(value: Any) -> int:
    """Bytes of an argument worth scattering ahead of its task: a NumPy array, a pandas
    frame or series, or a byte string; 0 for anything else (not measured)."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    module = kind.__module__
    if module == "numpy":
        return int(getattr(value, "nbytes", 0)) if kind.__name__ == "ndarray" else 0
    if module == "pandas" or module.startswith("pandas."):
        if kind.__name__ == "DataFrame":
            return int(value.memory_usage(index=True, deep=False).sum())
        if kind.__name__ == "Series":
            return int(value.memory_usage(index=True, deep=False))
    return 0


async def _content_digest(frames: list[Any]) -> str:
    """A hex digest of serialized data, for the key of a scattered value.

    Small values are hashed at once with BLAKE2b.  Large ones are cut into chunks of
    :data:`HASH_CHUNK_BYTES`, hashed with SHA-256 in the event loop's executor threads
    (hashlib releases the GIL, and SHA-256 has hardware support on most CPUs), and the
    chunk digests are hashed together with the frame sizes: as collision-resistant as one
    hash of the whole, several times faster on a large array, and the loop is not blocked.
    The scheme depends only on the data, so equal data always gets the same key.
    """
    sizes = [proto.frame_nbytes(frame) for frame in frames]
    digest = hashlib.blake2b(digest_size=16)
    if sum(sizes) <= HASH_CHUNK_BYTES:
        for frame in frames:
            digest.update(frame)
        return digest.hexdigest()
    chunks: list[Any] = []
    for frame, size in zip(frames, sizes, strict=True):
        view = memoryview(getattr(frame, "buffer", frame)).cast("B")
        chunks.extend(view[start : start + HASH_CHUNK_BYTES] for start in range(0, size, HASH_CHUNK_BYTES))
    loop = asyncio.get_running_loop()
    parts = await asyncio.gather(*(loop.run_in_executor(None, _sha256, chunk) for chunk in chunks))
    digest.update(b"chunked-sha256")
    for size in sizes:
        digest.update(size.to_bytes(8, "little"))
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _sha256(data: Any) -> bytes:
    return hashlib.sha256(data).digest()


def _task_options(priority: Any, retries: Any) -> tuple[int, int]:
    """``priority`` and ``retries`` as the protocol carries them: Dask's ``retries=None``
    is 0, a float priority its whole part."""
    if retries is None:
        retries = 0
    if isinstance(priority, float) and abs(priority) < 2**31:
        priority = int(priority)
    if type(priority) is bool or not isinstance(priority, int) or not isinstance(retries, int) or retries < 0:
        raise UsageError(f"priority must be a number and retries a non-negative int, got {priority!r} and {retries!r}")
    return priority, retries


def _funcname(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        return "lambda"
    return str(name)[:64]


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise UsageError(f"keys must be non-empty strings, got {key!r}")
    if len(key.encode()) > MAX_KEY_LENGTH:
        raise UsageError(f"key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} bytes")


def _collect_refs(obj: Any, states: Mapping[str, FutureState], deps: dict[str, FutureState]) -> None:
    kind = type(obj)
    if kind is TaskRef:
        state = states.get(obj.key)
        if state is None:
            raise UsageError(f"the graph refers to {obj.key!r}, which it does not define")
        deps[obj.key] = state
    elif kind is tuple or kind is list or kind is set or kind is frozenset:
        for item in obj:
            _collect_refs(item, states, deps)
    elif kind is dict:
        for item in obj.values():
            _collect_refs(item, states, deps)


def _collect_futures(obj: Any, found: dict[str, Future]) -> None:
    kind = type(obj)
    if kind is Future:
        found.setdefault(obj.key, obj)
    elif kind is tuple or kind is list or kind is set or kind is frozenset:
        for item in obj:
            _collect_futures(item, found)
    elif kind is dict:
        for item in obj.values():
            _collect_futures(item, found)


def _rebuild(obj: Any, values: dict[str, Any], failures: set[str]) -> Any:
    kind = type(obj)
    if kind is Future:
        return values.get(obj.key)
    if kind is tuple or kind is list:
        return kind(
            _rebuild(item, values, failures) for item in obj if not (type(item) is Future and item.key in failures)
        )
    if kind is dict:
        return {
            k: _rebuild(v, values, failures) for k, v in obj.items() if not (type(v) is Future and v.key in failures)
        }
    if kind is set or kind is frozenset:
        return kind(
            _rebuild(item, values, failures) for item in obj if not (type(item) is Future and item.key in failures)
        )
    return obj


async def _done_coro() -> None:
    return None


async def _as_coro(fn: Callable[[], Any]) -> Any:
    return fn()


