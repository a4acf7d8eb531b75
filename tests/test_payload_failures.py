"""Payloads that cannot travel, against the real daemons: each fails its own future clearly.

Unpicklable functions, arguments and results, values one side cannot load, functions whose
module a worker cannot import, and messages over the broker's size limit: the future fails
with an error that says what to do, and everything beside it goes on (see :mod:`daemons`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Cluster, async_failure, connected_client, run_async, running_cluster, wait_all

from zmqdask import Client, Future, wait
from zmqdask.errors import SerializationError, ZmqdaskError

logger = logging.getLogger(__name__)


def inc(x: int) -> int:
    """``x + 1`` (imported by the workers from this module)."""
    return x + 1


LIMIT_BYTES = 256 * 1024
"""Message size limit of the limited broker: small enough for quick tests, far above headers."""
BAD_PAYLOAD_TIMEOUT_S = 15.0
"""Every bad payload must have failed its future by then (nothing else takes that long)."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A broker and two workers shared by the payload tests of this module."""
    with running_cluster(tmp_path_factory.mktemp("shared"), 2) as daemons:
        yield daemons


@pytest.fixture
def client2(shared: Cluster) -> Iterator[Client]:
    """A client of the shared cluster, with both workers connected."""
    with connected_client(shared) as client:
        yield client


class LoadFailure(Exception):
    """Raised when an object that pickles fine is unpickled."""


def fail_on_load() -> None:
    """Stands in for an object's reconstructor that fails wherever the pickle is loaded."""
    raise LoadFailure("this object cannot be rebuilt here")


class Unloadable:
    """Pickles fine; unpickling raises :class:`LoadFailure`."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (fail_on_load, ())


def make_lock(_: int) -> Any:
    """A result that cannot be pickled."""
    return threading.Lock()


def make_unloadable(_: int) -> Unloadable:
    """A result that pickles but cannot be loaded again."""
    return Unloadable()


def count_args(*values: Any) -> int:
    """How many arguments arrived."""
    return len(values)


def assert_siblings_fine(client: Client) -> None:
    """Other work on the same cluster is unaffected."""
    futures = client.map(inc, range(50))
    wait_all(futures, timeout=BAD_PAYLOAD_TIMEOUT_S)
    assert client.gather(futures) == list(range(1, 51))


def expect_failure(future: Future, error: type[BaseException], match: str) -> BaseException:
    """Wait (bounded) for ``future`` to fail with ``error`` whose text matches ``match``."""
    wait_all([future], timeout=BAD_PAYLOAD_TIMEOUT_S)
    with pytest.raises(error, match=match) as info:
        future.result(timeout=BAD_PAYLOAD_TIMEOUT_S)
    return info.value


@pytest.mark.timeout(120)
def test_unpicklable_function_and_arguments_fail_at_submit(client2: Client) -> None:
    """Nothing that cannot be pickled leaves the client; the error names the object."""
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        client2.submit(inc, lock)
    with pytest.raises(SerializationError, match="lock"):
        client2.submit(inc, x=[1, {"k": lock}])
    with pytest.raises(SerializationError):
        client2.submit(lock.acquire)
    with pytest.raises(SerializationError, match="generator"):
        client2.map(count_args, [(i for i in range(3))])
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_unpicklable_results_fail_only_their_future(shared: Cluster, client2: Client) -> None:
    """A result that cannot be pickled fails its future, whether pushed or fetched later."""

    async def pushed(client: Client) -> None:
        bad, good = client.submit(make_lock, 1), client.submit(inc, 1)
        await async_failure(bad, SerializationError, "(?i)lock")
        assert await good == 2

    run_async(shared.address, pushed, BAD_PAYLOAD_TIMEOUT_S)
    sibling = client2.submit(inc, 1)
    later = client2.submit(make_lock, 2)
    wait_all([later], timeout=BAD_PAYLOAD_TIMEOUT_S)  # kept on the worker; fetched by GATHER
    assert later.status == "finished"
    expect_failure(later, SerializationError, "(?i)lock")
    assert sibling.result(timeout=BAD_PAYLOAD_TIMEOUT_S) == 2
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_unpicklable_inputs_moved_between_workers_fail_the_dependent(client2: Client) -> None:
    """A dependent needing unpicklable values from another worker fails instead of looping."""
    locks = client2.map(make_lock, range(10, 30))
    wait_all(locks, timeout=BAD_PAYLOAD_TIMEOUT_S)
    info = client2.scheduler_info()
    assert all(w["nkeys"] > 0 for w in info["workers"].values()), "all inputs landed on one worker"
    dependent = client2.submit(count_args, *locks)
    expect_failure(dependent, SerializationError, "(?i)lock")
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_results_that_cannot_be_loaded_fail_only_their_future(shared: Cluster, client2: Client) -> None:
    """A result that pickles on the worker but cannot be unpickled here fails its future."""

    async def pushed(client: Client) -> None:
        bad, good = client.submit(make_unloadable, 1), client.submit(inc, 1)
        await async_failure(bad, SerializationError, "could not be deserialized")
        assert await good == 2

    run_async(shared.address, pushed, BAD_PAYLOAD_TIMEOUT_S)
    later = client2.submit(make_unloadable, 2)
    wait_all([later], timeout=BAD_PAYLOAD_TIMEOUT_S)
    expect_failure(later, SerializationError, "could not be deserialized")
    # The worker itself can use the value: only the trip to the client fails.
    assert client2.submit(type_name_of, later).result(timeout=BAD_PAYLOAD_TIMEOUT_S) == "Unloadable"
    assert_siblings_fine(client2)


def type_name_of(value: Any) -> str:
    """The name of the value's type."""
    return type(value).__name__


@pytest.mark.timeout(120)
def test_arguments_that_cannot_be_loaded_on_the_worker(client2: Client) -> None:
    """Arguments that pickle here but fail to unpickle on the worker fail that task only."""
    bad = client2.submit(type_name_of, Unloadable())
    error = expect_failure(bad, SerializationError, "cannot load the arguments")
    assert bad.key in str(error) and "LoadFailure" in str(error)
    dependent = client2.submit(inc, bad)
    expect_failure(dependent, SerializationError, "cannot load the arguments")
    assert_siblings_fine(client2)


@pytest.mark.timeout(120)
def test_functions_whose_module_the_worker_cannot_import(client2: Client, tmp_path: Path) -> None:
    """A function pickled by reference to a module the worker lacks fails with its name."""
    # A module file that exists only in a directory on this process's path: the workers were
    # started before it existed and never had that directory on their path.
    name = f"zmqdask_gone_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
        assert module.triple(2) == 6
        (tmp_path / f"{name}.py").unlink()
        first = client2.submit(module.triple, 1)
        second = client2.submit(module.triple, 2)
        error = expect_failure(first, SerializationError, f"{name}.triple")
        assert "ModuleNotFoundError" in str(error)
        expect_failure(second, SerializationError, f"{name}.triple")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    # A module that exists nowhere but in this process's sys.modules.
    ghost_name = f"zmqdask_ghost_{uuid.uuid4().hex[:12]}"
    ghost = types.ModuleType(ghost_name)
    exec("def quadruple(x):\n    return 4 * x\n", ghost.__dict__)
    sys.modules[ghost_name] = ghost
    try:
        haunted = client2.submit(ghost.quadruple, 1)
        expect_failure(haunted, SerializationError, f"{ghost_name}.quadruple")
    finally:
        del sys.modules[ghost_name]
    assert_siblings_fine(client2)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A broker refusing messages over :data:`LIMIT_BYTES`, with two workers."""
    with running_cluster(tmp_path_factory.mktemp("limited"), 2, max_message_bytes=LIMIT_BYTES) as daemons:
        yield daemons


@pytest.fixture
def limited_client(limited: Cluster) -> Iterator[Client]:
    """A client of the size-limited broker, with both workers connected."""
    with connected_client(limited) as client:
        yield client


def make_bytes(nbytes: int) -> bytes:
    """A value of ``nbytes`` bytes."""
    return bytes(nbytes)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_results_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """A result too large for the broker fails its future with an error naming the limit.

    It is fetched together with small values, which must still arrive.
    """

    async def fetch_together(client: Client) -> None:
        futures = client.map(make_bytes, [4 * LIMIT_BYTES, 10, 11, 12])
        await wait(futures, timeout=BAD_PAYLOAD_TIMEOUT_S)  # nobody waited: values stay on the workers
        values = await client.gather(futures, errors="skip")
        assert [len(v) for v in values] == [10, 11, 12]
        await async_failure(futures[0], ZmqdaskError, "limit")

    run_async(limited.address, fetch_together, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_pushed_results_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """A result pushed with its completion notice but too large for the broker fails clearly."""

    async def pushed(client: Client) -> None:
        # Awaited at once, and below the client's inline size, so the worker sends the value
        # in its DONE message, which the broker refuses.
        bad = client.submit(make_bytes, 2 * LIMIT_BYTES)
        await async_failure(bad, ZmqdaskError, "limit")

    run_async(limited.address, pushed, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_arguments_over_the_message_limit_fail_clearly(limited: Cluster, limited_client: Client) -> None:
    """An argument too large for the broker fails its future with a clear error, and only that one."""

    async def one_batch(client: Client) -> None:
        # Submitted in one loop tick: both tasks travel in the same SUBMIT message.
        big, small = client.map(len, [bytes(2 * LIMIT_BYTES), b"abc"])
        await async_failure(big, ZmqdaskError, "limit")
        assert await asyncio.wait_for(small, BAD_PAYLOAD_TIMEOUT_S) == 3

    run_async(limited.address, one_batch, 2 * BAD_PAYLOAD_TIMEOUT_S)
    assert_siblings_fine(limited_client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_inputs_over_the_message_limit_fail_the_dependent(limited_client: Client) -> None:
    """A dependent whose input is too large to move between workers fails instead of hanging."""
    client = limited_client
    bigs = client.map(make_bytes, [2 * LIMIT_BYTES + 100 + i for i in range(8)])  # keys of no other test
    wait_all(bigs, timeout=BAD_PAYLOAD_TIMEOUT_S)
    info = client.scheduler_info()
    assert all(w["nkeys"] > 0 for w in info["workers"].values()), "all inputs landed on one worker"
    dependent = client.submit(count_args, *bigs)
    expect_failure(dependent, ZmqdaskError, "limit")
    assert_siblings_fine(client)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scatter_over_the_message_limit_fails_clearly(limited_client: Client) -> None:
    """Scattering a value too large for the broker raises instead of waiting for ever."""
    client = limited_client
    outcome: list[BaseException | None] = []

    def scatter() -> None:
        try:
            client.scatter(bytes(2 * LIMIT_BYTES))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    # In a thread, so that a scatter that never returns fails the test instead of hanging it
    # (closing the client at the end releases the thread).
    thread = threading.Thread(target=scatter, name="big-scatter", daemon=True)
    thread.start()
    thread.join(BAD_PAYLOAD_TIMEOUT_S)
    assert outcome, f"scatter still waiting after {BAD_PAYLOAD_TIMEOUT_S} s"
    assert isinstance(outcome[0], ZmqdaskError) and "limit" in str(outcome[0])
    assert_siblings_fine(client)
