"""Map batches: many quick calls in one task each, every call keeping its own Future."""

from __future__ import annotations

import collections
import gc
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zmqdask import Client, FutureCancelledError, as_completed, wait
from zmqdask.batches import (
    BATCH_MAX_BYTES,
    BATCH_MAX_CALLS,
    BATCH_MIN_BATCHES,
    BATCH_MIN_CALLS,
    BATCH_PROBE_CALLS,
    BatchCall,
    BatchResult,
    ElementError,
    batch_size,
    pick_element,
    run_batch,
)
from zmqdask.errors import SerializationError, UsageError
from zmqdask.serialize import TaskRef

_ATTEMPTS: collections.Counter[Any] = collections.Counter()
"""Calls per argument in this process (a worker's, for the flaky functions below)."""


def inc(x: int) -> int:
    return x + 1


def fails_on_three(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"three in {x}")
    return x


def flaky(x: int) -> int:
    """Fails the first time it sees each argument in a process."""
    _ATTEMPTS[x] += 1
    if _ATTEMPTS[x] == 1:
        raise OSError(f"first try of {x}")
    return x * 10


def fails_first_time(x: int, directory: str) -> int:
    """Fails the first time any process calls it with ``x`` (a marker file remembers)."""
    marker = Path(directory) / str(x)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return x * 10
    raise OSError(f"first try of {x}")


def lock_at_eight(x: int) -> Any:
    return threading.Lock() if x == 8 else x


def _refuse_in(pid: int) -> object:
    if os.getpid() == pid:
        raise RuntimeError("this value cannot be loaded in the client")
    return object()


class LoadsOnlyOnWorkers:
    """A value whose unpickling fails in the process ``pid`` (the client)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_in, (self.pid,))


def unloadable(x: int, pid: int) -> Any:
    return LoadsOnlyOnWorkers(pid) if x % 2 else x


def tagged(x: int, tag: str = "") -> str:
    return f"{tag}{x}"


def sleepy(x: int) -> int:
    time.sleep(0.02)
    return x


def big(x: int) -> bytes:
    return bytes([x % 256]) * 100_000


def tasks_held(client: Client) -> int:
    return sum(count for state, count in client.scheduler_info()["tasks"].items() if state != "forgotten")


# --- pure: the worker's runner and the sizing policy --------------------------------------


def test_run_batch_keeps_each_calls_value_or_error_and_retries_each_call() -> None:
    result = run_batch(fails_on_three, BatchCall([(1,), (3,), (5,)], retries=0), {})
    assert isinstance(result, BatchResult) and result.seconds >= 0
    assert result.values[0] == 1 and result.values[2] == 5
    error = result.values[1]
    assert isinstance(error, ElementError)
    exc, text = error.load()
    assert isinstance(exc, ValueError) and str(exc) == "three in 3"
    assert "fails_on_three" in text and "run_batch" not in text  # the call's own frames
    assert pick_element(result, 2) == 5
    with pytest.raises(ValueError, match="three in 3"):
        pick_element(result, 1)
    _ATTEMPTS.clear()
    retried = run_batch(flaky, BatchCall([(7,), (8,)], retries=1), {})
    assert retried.values == [70, 80] and _ATTEMPTS == {7: 2, 8: 2}
    assert run_batch(tagged, BatchCall([(1,), (2,)], 0), {"tag": "t"}).values == ["t1", "t2"]


def test_batch_size_learns_from_the_time_per_call() -> None:
    many = 100_000
    assert batch_size(None, BATCH_MIN_CALLS - 1, None) == 1  # few calls: one task each
    assert batch_size(None, many, None) == BATCH_PROBE_CALLS  # a function not seen yet
    assert batch_size(1e-6, many, None) == BATCH_MAX_CALLS  # quick: full batches
    assert batch_size(1e-6, 320, None) == 320 // BATCH_MIN_BATCHES  # enough batches to share out
    assert batch_size(0.001, many, None) == 5  # about 5 ms of work per batch
    assert batch_size(0.05, many, None) == 1  # slow: not batched
    assert batch_size(None, 10, 4) == 4 and batch_size(None, 3, 100) == 3 and batch_size(1e-6, many, 1) == 1
    # Large arguments or results keep batches under BATCH_MAX_BYTES, or unbatched.
    assert batch_size(1e-6, many, None, BATCH_MAX_BYTES / 10) == 10
    assert batch_size(1e-6, many, None, BATCH_MAX_BYTES * 2) == 1


# --- on a cluster ---------------------------------------------------------------------------


def test_batched_calls_have_their_own_futures_keys_and_types(client: Client, wait_until: Callable[..., None]) -> None:
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    futures = client.map(inc, range(1000), pure=False)
    assert len({f.key for f in futures}) == 1000 and all(f.key.startswith("inc-") for f in futures)
    assert client.gather(futures) == list(range(1, 1001))
    assert {f.status for f in futures} == {"finished"} and futures[5].type == "int"
    assert tasks_held(client) < 1000 // BATCH_PROBE_CALLS + 1  # batches, not calls, on the cluster
    one_each = client.map(inc, range(1000, 1100), pure=False, batch_size=1)
    assert client.gather(one_each) == list(range(1001, 1101))
    # Pure calls are keyed by their arguments, batched or not: the same map is the same futures.
    again = client.map(inc, range(2000, 2100))
    same = client.map(inc, range(2000, 2100))
    assert [f.key for f in again] == [f.key for f in same]
    assert client.gather(same) == list(range(2001, 2101))
    with pytest.raises(UsageError, match="batch_size"):
        client.map(inc, range(100), batch_size=0)
    # Batches that do not divide the rounds map prepares its calls in (4,096): none twice.
    odd = client.map(inc, range(5000), pure=False, batch_size=7)
    assert len(odd) == 5000 and len({f.key for f in odd}) == 5000
    assert client.gather(odd) == list(range(1, 5001))
    # Keys given for some calls only: the others get keys as without batches.
    named = client.map(inc, range(40), key=[None if i % 2 else f"named-{i}" for i in range(40)])
    assert [f.key for f in named[:2]] == ["named-0", client.submit(inc, 1).key]
    assert client.gather(named) == list(range(1, 41))
    del odd, named
    del futures, one_each, again, same
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)


def test_a_pure_call_submitted_again_shares_the_batched_future(
    client: Client, wait_until: Callable[..., None]
) -> None:
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    futures = client.map(inc, range(5000, 5100))
    again = client.submit(inc, 5005)
    assert again.key == futures[5].key and again.result(timeout=30) == 5006
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 2, timeout=20)  # its batch, and the call as a task
    assert again.result(timeout=5) == 5006
    del again
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    assert not any(key.startswith("inc-") for key in client._futures)
    # A graph naming a batched call's key as an input finds it (a task of its own there).
    named = client.map(inc, range(64), key=[f"call-{i}" for i in range(64)])
    graph = {"call-3": (inc, (3,), {}), "after": (inc, (TaskRef("call-3"),), {})}
    (after,) = client.submit_graph(graph, ["after"])
    assert after.result(timeout=30) == 5 and named[3].result(timeout=5) == 4


def test_a_failing_call_fails_alone_with_its_own_exception(client: Client) -> None:
    futures = client.map(fails_on_three, range(100), pure=False)
    wait(futures, timeout=30)
    failed = [f for f in futures if f.status == "error"]
    assert [f.key for f in failed] == [futures[i].key for i in range(3, 100, 10)]
    with pytest.raises(ValueError, match="three in 13") as raised:
        futures[13].result(timeout=30)
    assert "fails_on_three" in "".join(traceback.format_tb(raised.value.__traceback__))
    assert client.gather(futures, errors="skip") == [x for x in range(100) if x % 10 != 3]
    assert isinstance(futures[23].exception(timeout=30), ValueError)
    # A task that takes a failed call as input fails the same way; the others go on.
    assert client.submit(sum, futures[:3]).result(timeout=30) == 3
    with pytest.raises(ValueError, match="three in 3"):
        client.submit(sum, futures[:5]).result(timeout=30)


def test_a_call_whose_result_cannot_travel_fails_alone(client: Client) -> None:
    futures = client.map(lock_at_eight, range(64), pure=False)
    wait(futures, timeout=30)
    with pytest.raises(SerializationError, match=r"result of this call .* cannot be serialized"):
        futures[8].result(timeout=30)
    assert futures[9].result(timeout=30) == 9 and futures[7].result(timeout=5) == 7
    assert len(client.gather(futures, errors="skip")) == 63
    pushed = client.gather(client.map(lock_at_eight, range(64), pure=False), errors="skip")
    assert pushed == [x for x in range(64) if x != 8]


def test_a_batch_failing_as_a_whole_says_how_to_rerun_its_calls_and_is_not_repeated(
    client: Client, wait_until: Callable[..., None]
) -> None:
    futures = client.map(unloadable, range(64), pid=os.getpid(), pure=False)
    # Each batch holds an unloadable value: fetching it fails all its calls.
    assert client.gather(futures, errors="skip") == []
    assert {f.status for f in futures} == {"error"}
    with pytest.raises(SerializationError, match="could not be deserialized here") as raised:
        futures[0].result(timeout=5)
    notes = getattr(raised.value, "__notes__", [])
    assert len([n for n in notes if "map batch" in n]) == 1 and "client.retry" in notes[-1]
    client.retry(futures[:1])
    assert futures[0].result(timeout=30) == 0  # alone, call 0 is fine
    del futures, raised  # (the raised exception's traceback holds a future)
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    again = client.map(unloadable, range(64, 128), pid=os.getpid(), pure=False)
    assert client.gather(again[::2]) == list(range(64, 128, 2))  # one task each now
    assert tasks_held(client) == 64


def test_retries_apply_to_each_call_and_retry_reruns_a_failed_call(client: Client, tmp_path: Path) -> None:
    retried = client.map(fails_first_time, range(100, 200), directory=str(tmp_path), pure=False, retries=1)
    assert client.gather(retried) == [x * 10 for x in range(100, 200)]
    futures = client.map(fails_first_time, range(300, 364), directory=str(tmp_path), pure=False)
    wait(futures, timeout=30)
    assert {f.status for f in futures} == {"error"}
    with pytest.raises(OSError, match="first try of 301"):
        futures[1].result(timeout=5)
    client.retry(futures[:3])
    assert client.gather(futures[:3]) == [3000, 3010, 3020]
    assert futures[3].status == "error"
    # Retrying a task whose failed input is a batched call runs that call again too.
    dependent = client.submit(inc, futures[4])
    wait([dependent], timeout=30)
    assert dependent.status == "error"
    client.retry(dependent)
    assert dependent.result(timeout=30) == 3041 and futures[4].result(timeout=5) == 3040
    dependent = client.submit(inc, futures[6])  # made an input, then retried itself
    wait([dependent], timeout=30)
    client.retry(futures[6])
    assert futures[6].result(timeout=30) == 3060


def test_calls_used_as_inputs_become_tasks_of_their_own(client: Client) -> None:
    firsts = client.map(inc, range(200))
    seconds = client.map(inc, firsts)  # futures as arguments: one task each, picked values
    assert client.gather(seconds) == list(range(2, 202))
    assert client.submit(sum, firsts).result(timeout=30) == sum(range(1, 201))
    assert client.submit(lambda d: d["v"] * 2, {"v": firsts[10]}).result(timeout=30) == 22


def test_cancelling_calls_leaves_the_others_and_stops_an_abandoned_batch(
    client: Client, wait_until: Callable[..., None]
) -> None:
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    futures = client.map(sleepy, range(64), pure=False, batch_size=8)
    client.cancel(futures[:4])
    assert [f.status for f in futures[:4]] == ["cancelled"] * 4
    with pytest.raises(FutureCancelledError):
        futures[0].result(timeout=5)
    with pytest.raises(FutureCancelledError, match="cannot be the input"):
        client.submit(inc, futures[1])
    assert client.gather(futures[4:]) == list(range(4, 64))
    abandoned = client.map(sleepy, range(100, 164), pure=False, batch_size=8)
    client.cancel(abandoned)
    assert {f.status for f in abandoned} == {"cancelled"}
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)


def test_as_completed_callbacks_and_large_results_of_batched_calls(
    client: Client, wait_until: Callable[..., None]
) -> None:
    seen: list[int] = []
    futures = client.map(inc, range(500), pure=False)
    for future in futures[:5]:
        future.add_done_callback(lambda f: seen.append(f.result()))
    assert sorted(f.result() for f in as_completed(futures)) == list(range(1, 501))
    wait_until(lambda: len(seen) == 5, timeout=30)  # callbacks run in a thread of their own
    assert sorted(seen) == [1, 2, 3, 4, 5]
    pairs = sorted((value for _, value in as_completed(futures[:50], with_results=True)))
    assert pairs == list(range(1, 51))
    # 6.4 MB of results per batch: too large to come with the notice; fetched when asked for.
    blobs = client.map(big, range(64), pure=False, batch_size=64)
    wait(blobs, timeout=60)
    assert {f.status for f in blobs} == {"finished"}
    assert blobs[3].type == "bytes" and "type: bytes" in repr(blobs[3])  # known before fetching
    values = client.gather(blobs)
    assert [v[:1] for v in values] == [bytes([x]) for x in range(64)] and len(values[7]) == 100_000


def length(text: str) -> int:
    return len(text)


def test_large_arguments_keep_batches_small_or_unbatched(client: Client, wait_until: Callable[..., None]) -> None:
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    huge = [str(i) * (2 * BATCH_MAX_BYTES // len(str(i))) for i in range(1, 41)]
    futures = client.map(length, huge, pure=False)
    assert client.gather(futures) == [len(text) for text in huge]
    assert tasks_held(client) == len(huge)  # each more than a batch may carry: a task each
    del futures
    gc.collect()
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    client.gather(client.map(length, ["x"] * 64, pure=False))  # learn that length is quick
    wait_until(lambda: tasks_held(client) == 0, timeout=20)
    large = ["y" * (BATCH_MAX_BYTES // 8)] * 256
    futures = client.map(length, large, pure=False)
    assert client.gather(futures) == [BATCH_MAX_BYTES // 8] * 256
    assert tasks_held(client) == 256 // 8  # eight per batch, by their size


def test_a_slow_function_is_not_batched_once_measured(client: Client) -> None:
    probe = client.map(sleepy, range(40), pure=False)
    assert client.gather(probe) == list(range(40))
    del probe
    gc.collect()
    calls = client.map(sleepy, range(40, 80), pure=False)
    assert client.gather(calls) == list(range(40, 80))
    assert tasks_held(client) >= 40  # one task per call: 20 ms each is worth its own task


def test_batched_map_on_an_asynchronous_client(run_async: Callable[..., Any]) -> None:
    async def body(c: Client) -> None:
        assert await c.gather(c.map(inc, range(300))) == list(range(1, 301))
        futures = c.map(fails_on_three, range(40), pure=False)
        await c.gather(futures, errors="skip")
        with pytest.raises(ValueError):
            await futures[3]
        assert await futures[4] == 4
        assert (await c.gather(c.map(tagged, range(50), tag="k")))[:2] == ["k0", "k1"]

    run_async(body)
