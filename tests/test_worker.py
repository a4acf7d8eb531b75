"""Worker tests: pure task execution, a real worker process and the pool manager against a scripted broker.

The scripted broker is a bare ROUTER socket on 127.0.0.1 that plays the broker's side of the
protocol message by message, so each test states exactly what the worker must send.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import multiprocessing
import operator
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import zmq

from zmqdask import serialize
from zmqdask.config import INLINE_AFTER_QUICK_CALLS, INLINE_RESULT_MAX_BYTES, MAX_KEY_LENGTH
from zmqdask.errors import ProtocolError, SerializationError, UsageError
from zmqdask.executor import (
    SLOT_BYTES,
    STATE_CANCELLED,
    Executor,
    FunctionCache,
    Task,
    clear_slot,
    describe_pickled_function,
    execute,
    read_slots,
    slots_nbytes,
    slots_view,
    write_slot,
)
from zmqdask.pool import EXIT_USAGE, RESTART_BACKOFF_BASE_S, RESTART_BACKOFF_MAX_S, restart_delay
from zmqdask.protocol import (
    CANCEL_TASKS,
    CANCELLED,
    COMPUTE,
    DATA,
    DELETE,
    DONE,
    ERRED,
    FETCH,
    FETCH_FROM,
    FINISHED,
    FLAG_PUSH_RESULT,
    GET,
    GOODBYE,
    HEARTBEAT,
    HELLO,
    MISSING_DEPS,
    RELAY_FETCH,
    STORE,
    UNKNOWN_PEER,
    WELCOME,
    WORKER_DIED,
    Message,
    decode,
    encode,
    entry_payload,
)
from zmqdask.serialize import TaskRef
from zmqdask.worker import DONE_FLUSH_BYTES, EXIT_BROKER_UNREACHABLE, MAX_PREFETCH_PER_THREAD, Worker

# Functions of this module travel by value, as a client's notebook functions do: the worker
# processes cannot import the test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT_S = 10.0
"""Upper bound for any single expected event; tests normally see it in milliseconds."""


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.01) -> None:
    """Poll ``condition`` until it holds; fail when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- task functions (sent by value) -----------------------------------------------------------


def echo(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    return args, kwargs


def fail_with_value_error(text: str) -> None:
    raise ValueError(text)


def raise_system_exit() -> None:
    raise SystemExit(7)


def make_lock() -> Any:
    return threading.Lock()


def wait_for_file(path: str, started: str | None = None) -> str:
    """Block until ``path`` exists (created by the test), announcing the start via ``started``."""
    if started is not None:
        Path(started).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "released"


def thread_name(_: Any = None) -> str:
    return threading.current_thread().name


def thread_name_after(seconds: float, _: Any = None) -> str:
    time.sleep(seconds)
    return threading.current_thread().name


def sleep_if_exists(path: str, seconds: float, _: Any = None) -> str:
    if os.path.exists(path):
        time.sleep(seconds)
    return threading.current_thread().name


def touch_and_sleep(path: str, seconds: float) -> None:
    Path(path).touch()
    time.sleep(seconds)


def pickled_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """``(hash, payload)`` the way a client ships a function defined in a notebook."""
    payload = cloudpickle.dumps(fn, protocol=serialize.PICKLE_PROTOCOL)
    return hashlib.blake2b(payload, digest_size=16).digest(), payload


def task_frames(*args: Any, **kwargs: Any) -> list[Any]:
    return serialize.dumps((args, kwargs))


# === pure tests: task execution without sockets ==============================================


_unpickle_count = 0


def _rebuild_counted() -> Callable[..., Any]:
    global _unpickle_count
    _unpickle_count += 1
    return operator.add


class _CountedFunction:
    """Unpickles into ``operator.add`` and counts how often that happens."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_counted, ())


def test_function_cache_unpickles_each_function_once() -> None:
    fn_hash, payload = b"h1", pickle.dumps(_CountedFunction())
    cache = FunctionCache("w")
    before = _unpickle_count
    cache.add(fn_hash, payload)
    cache.add(fn_hash, payload)
    fn, error = cache.lookup(fn_hash)
    assert _unpickle_count == before + 1
    assert error is None and fn is operator.add
    missing_fn, missing_error = cache.lookup(b"never-sent")
    assert missing_fn is None and isinstance(missing_error, ProtocolError)


@pytest.fixture
def unimportable_function() -> tuple[str, bytes]:
    """A function pickled by reference to a module that only exists in this process, briefly."""
    module = types.ModuleType("zmqdask_vanished_module")

    def vanished(x: int) -> int:
        return x

    vanished.__module__ = module.__name__
    vanished.__qualname__ = "vanished"
    module.vanished = vanished  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        payload = pickle.dumps(vanished, protocol=serialize.PICKLE_PROTOCOL)
    finally:
        del sys.modules[module.__name__]
    return f"{module.__name__}.vanished", payload


def test_function_that_cannot_be_loaded_fails_its_tasks_with_a_named_error(
    unimportable_function: tuple[str, bytes],
) -> None:
    qualified_name, payload = unimportable_function
    cache = FunctionCache("w")
    cache.add(b"h", payload)
    fn, error = cache.lookup(b"h")
    assert fn is None and isinstance(error, SerializationError)
    task = execute(Task("t", fn, task_frames(1), fn_error=error))
    assert task.code == ERRED
    type_name, message, origin = task.detail
    assert type_name == "SerializationError" and origin == "t"
    assert qualified_name in message and "No module named 'zmqdask_vanished_module'" in message
    exc, _text = serialize.loads_error(task.detail, task.out_frames)
    assert isinstance(exc, SerializationError)


def test_describe_pickled_function() -> None:
    by_reference = pickle.dumps(operator.add, protocol=serialize.PICKLE_PROTOCOL)
    expected = f"{operator.add.__module__}.{operator.add.__qualname__}"
    assert describe_pickled_function(by_reference) == expected
    by_value = cloudpickle.dumps(lambda x: x, protocol=serialize.PICKLE_PROTOCOL)
    assert describe_pickled_function(by_value) == "a function sent by value"
    assert describe_pickled_function(b"\x80\x05garbage") == "a function sent by value"


def test_execute_substitutes_references_with_input_values() -> None:
    frames = task_frames(TaskRef("x"), [TaskRef("y"), 3], k={"z": TaskRef("x")})
    task = execute(Task("t", echo, frames, deps={"x": "X", "y": "Y"}))
    assert task.code == FINISHED
    assert task.value == (("X", ["Y", 3]), {"k": {"z": "X"}})


def test_execute_reports_value_type_and_size_without_frames_unless_pushed() -> None:
    value = list(range(10))
    kept = execute(Task("t", list, task_frames(range(10))))
    assert kept.code == FINISHED and kept.value == value and kept.out_frames == []
    assert kept.detail == [type(value).__name__, serialize.sizeof(value)]
    pushed = execute(Task("t", list, task_frames(range(10)), FLAG_PUSH_RESULT))
    assert serialize.loads(pushed.out_frames) == value


def test_execute_does_not_inline_large_results() -> None:
    task = execute(Task("big", bytes, task_frames(INLINE_RESULT_MAX_BYTES + 1), FLAG_PUSH_RESULT))
    assert task.code == FINISHED and task.out_frames == []
    assert len(task.value) == INLINE_RESULT_MAX_BYTES + 1


def test_execute_captures_exceptions_with_remote_traceback() -> None:
    task = execute(Task("bad", fail_with_value_error, task_frames("boom")))
    assert task.code == ERRED
    assert task.detail == ["ValueError", "boom", "bad"]
    exc, text = serialize.loads_error(task.detail, task.out_frames)
    assert isinstance(exc, ValueError) and str(exc) == "boom"
    assert "fail_with_value_error" in text


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_execute_reports_base_exceptions_as_task_errors(exc_type: type[BaseException]) -> None:
    def raiser() -> None:
        raise exc_type("stop")

    task = execute(Task("t", raiser, task_frames()))
    assert task.code == ERRED and task.detail[0] == exc_type.__name__


def test_unserializable_result_fails_only_when_it_must_be_sent() -> None:
    pushed = execute(Task("locked", make_lock, task_frames(), FLAG_PUSH_RESULT))
    assert pushed.code == ERRED
    type_name, message, _ = pushed.detail
    lock_type = type(threading.Lock()).__name__
    assert type_name == "SerializationError"
    assert "'locked'" in message and lock_type in message
    kept = execute(Task("locked", make_lock, task_frames()))
    assert kept.code == FINISHED and kept.detail[0] == lock_type


def test_arguments_that_cannot_be_loaded_fail_the_task() -> None:
    task = execute(Task("t", echo, [b"not a pickle"]))
    assert task.code == ERRED
    assert task.detail[0] == "SerializationError" and "arguments of task 't'" in task.detail[1]


def test_running_slots_round_trip() -> None:
    buffer = multiprocessing.RawArray(ctypes.c_uint8, slots_nbytes(3))
    slots = slots_view(buffer)
    assert len(slots) == 4 * SLOT_BYTES  # three executor threads and the main thread
    longest = "\U0001f600" * MAX_KEY_LENGTH  # four UTF-8 bytes per character
    write_slot(slots, 0, b"first")
    write_slot(slots, 2, longest.encode())
    assert read_slots(slots) == ["first", longest]
    clear_slot(slots, 0)
    assert read_slots(slots) == [longest]
    slots[SLOT_BYTES : SLOT_BYTES + 2] = b"\xff\xff"  # a damaged length is ignored
    assert read_slots(slots) == [longest]


def test_executor_runs_tasks_and_cancels_only_unstarted_ones() -> None:
    wake = threading.Event()
    release = threading.Event()
    slots = slots_view(bytearray(slots_nbytes(1)))
    executor = Executor(1, wake.set, slots)
    try:
        blocker = Task("blocker", lambda: release.wait(WAIT_S), [])
        queued = Task("queued", echo, task_frames(1))
        executor.submit(blocker)
        executor.submit(queued)
        wait_until(lambda: read_slots(slots) == ["blocker"])
        assert not executor.cancel(blocker)
        assert executor.cancel(queued) and queued.state == STATE_CANCELLED
        release.set()
        # A thread clears its slot and queues the result before it sends the wake-up.
        assert wake.wait(WAIT_S)
        finished = executor.drain()
        assert [t.key for t in finished] == ["blocker"] and finished[0].value is True
        assert read_slots(slots) == []
    finally:
        release.set()
        assert executor.stop(WAIT_S)


def test_executor_hands_results_over_in_its_own_thread_or_wakes_the_main_thread() -> None:
    wake = threading.Event()
    taken: list[str] = []
    accept = threading.Event()
    accept.set()

    def hand_over() -> bool:
        if not accept.is_set():
            return False
        taken.extend(task.key for task in executor.drain())
        return True

    executor = Executor(1, wake.set, hand_over=hand_over)
    try:
        for i in range(50):
            executor.submit(Task(f"t{i}", echo, task_frames(i)))
        wait_until(lambda: len(taken) == 50)
        assert taken == [f"t{i}" for i in range(50)] and not wake.is_set()
        accept.clear()  # the results are left to the main thread, which is woken once
        executor.submit(Task("late", echo, task_frames(1)))
        assert wake.wait(WAIT_S)
        assert [task.key for task in executor.drain()] == ["late"]
    finally:
        assert executor.stop(WAIT_S)


# === a real worker process against a scripted broker =========================================


class ScriptedBroker:
    """A bare ROUTER socket playing the broker's part of the protocol."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.backlog: list[tuple[bytes, Message]] = []
        self.log: list[tuple[bytes, Message]] = []

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send(self, identity: bytes, command: int, header: list[Any], payload: list[Any] | tuple[()] = ()) -> None:
        self.socket.send_multipart([identity, *encode(command, header, payload)])

    def recv(self, timeout: float = WAIT_S) -> tuple[bytes, Message]:
        if not self.socket.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing received within {timeout} s")
        identity, *frames = self.socket.recv_multipart()
        message = decode(frames)
        self.log.append((identity, message))
        return identity, message

    def expect(
        self,
        command: int,
        sender: bytes | None = None,
        timeout: float = WAIT_S,
        ignore: frozenset[int] = frozenset({HEARTBEAT}),
    ) -> tuple[bytes, Message]:
        """The next message with ``command`` (from ``sender``); others wait in the backlog."""
        for index, (identity, message) in enumerate(self.backlog):
            if message.command == command and sender in (None, identity):
                del self.backlog[index]
                return identity, message
        deadline = time.monotonic() + timeout
        while True:
            identity, message = self.recv(max(0.0, deadline - time.monotonic()))
            if message.command == command and sender in (None, identity):
                return identity, message
            if message.command not in ignore:
                self.backlog.append((identity, message))

    def done(self, keys: set[str], sender: bytes | None = None) -> dict[str, tuple[int, Any, list[bytes]]]:
        """Collect DONE entries until every key in ``keys`` was reported."""
        results: dict[str, tuple[int, Any, list[bytes]]] = {}
        while not keys <= results.keys():
            _, message = self.expect(DONE, sender)
            position = 0
            for key, code, detail, nframes in message.header[0]:
                frames, position = entry_payload(nframes, message.payload, position)
                results[key] = (code, detail, frames)
        return results


@pytest.fixture
def broker() -> Iterator[ScriptedBroker]:
    scripted = ScriptedBroker()
    try:
        yield scripted
    finally:
        scripted.close()


_WORKER_SCRIPT = (
    "import json, sys\n"
    "from zmqdask.worker import run_worker\n"
    "options = json.loads(sys.argv[1])\n"
    "options['identity'] = options['identity'].encode()\n"
    "run_worker(**options)\n"
)


class WorkerProcesses:
    """Starts worker processes running ``run_worker`` and kills any left at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, address: str, identity: str = "worker-1", **options: Any) -> subprocess.Popen[bytes]:
        settings: dict[str, Any] = {
            "address": address,
            "identity": identity,
            "nthreads": 1,
            "credit": None,
            "name": "",
            "pool": "",
            "memory_limit": 0,
            "running_slots": None,
            "death_timeout_s": 30.0,
            "parent_pid": None,
            "heartbeat_interval_s": 0.05,
        }
        settings.update(options)
        process = subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT, json.dumps(settings)])
        self.processes.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(WAIT_S)


@pytest.fixture
def workers() -> Iterator[WorkerProcesses]:
    started = WorkerProcesses()
    try:
        yield started
    finally:
        started.kill_all()


EPOCH = "epoch-1"


def register(broker: ScriptedBroker, workers: WorkerProcesses, **options: Any) -> bytes:
    """Start a worker, welcome it, and return its identity once it is known to be registered."""
    workers.start(broker.address, **options)
    identity, _ = broker.expect(HELLO)
    broker.send(identity, WELCOME, [EPOCH, {}])
    # A heartbeat proves the WELCOME arrived; HELLOs repeated before that are stale.
    broker.expect(HEARTBEAT, identity, ignore=frozenset({HELLO}))
    broker.backlog.clear()
    return identity


def compute(
    broker: ScriptedBroker,
    identity: bytes,
    tasks: list[tuple[str, Callable[..., Any], tuple[Any, ...], list[list[Any]], int]],
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Send one COMPUTE: ``tasks`` are ``(key, function, args, deps, flags)``."""
    hashes: dict[bytes, bytes] = {}
    entries: list[list[Any]] = []
    frames: list[Any] = []
    for key, fn, args, deps, flags in tasks:
        fn_hash, payload = pickled_function(fn)
        hashes[fn_hash] = payload
        args_frames = task_frames(*args, **(kwargs or {}))
        entries.append([key, fn_hash, deps, flags, len(args_frames)])
        frames.extend(args_frames)
    broker.send(identity, COMPUTE, [list(hashes), entries], [*hashes.values(), *frames])


def get(
    broker: ScriptedBroker, identity: bytes, keys: list[str], request_id: int = 1
) -> tuple[dict[str, Any], list[str]]:
    """Ask for values with GET; returns ``(values, missing)`` from the DATA answer."""
    broker.send(identity, GET, [request_id, keys])
    _, message = broker.expect(DATA, identity)
    assert message.header[0] == request_id
    values: dict[str, Any] = {}
    position = 0
    for key, nframes in message.header[1]:
        frames, position = entry_payload(nframes, message.payload, position)
        values[key] = serialize.loads(frames)
    return values, message.header[2]


def test_worker_registers_with_its_details_and_repeats_hello_until_welcomed(
    broker: ScriptedBroker, workers: WorkerProcesses
) -> None:
    process = workers.start(broker.address, identity="w-hello", nthreads=2, name="alpha", pool="p1", memory_limit=123)
    identity, hello = broker.expect(HELLO)
    role, info = hello.header
    assert identity == b"w-hello" and role == "worker"
    assert info["pid"] == process.pid and info["host"] == socket.gethostname()
    assert info["nthreads"] == 2 and info["credit"] == 2 + 2 * MAX_PREFETCH_PER_THREAD
    assert (info["name"], info["pool"], info["memory_limit"]) == ("alpha", "p1", 123)
    broker.expect(HELLO, identity)  # not welcomed yet: it asks again
    broker.send(identity, WELCOME, [EPOCH, {}])
    _, heartbeat = broker.expect(HEARTBEAT, identity, ignore=frozenset({HELLO}))
    assert heartbeat.header == [EPOCH]


def run_one(broker: ScriptedBroker, identity: bytes, key: str, fn: Callable[..., Any], *args: Any) -> Any:
    """One COMPUTE of one task; returns its value (pushed back with the DONE)."""
    compute(broker, identity, [(key, fn, args, [], FLAG_PUSH_RESULT)])
    code, _, frames = broker.done({key})[key]
    assert code == FINISHED
    return serialize.loads(frames)


def test_a_function_proven_quick_runs_on_the_main_thread_when_the_worker_is_idle(
    broker: ScriptedBroker, workers: WorkerProcesses
) -> None:
    identity = register(broker, workers)
    names = [run_one(broker, identity, f"q{i}", thread_name, i) for i in range(INLINE_AFTER_QUICK_CALLS + 2)]
    assert names[:INLINE_AFTER_QUICK_CALLS] == ["zmqdask-executor-0"] * INLINE_AFTER_QUICK_CALLS
    assert names[INLINE_AFTER_QUICK_CALLS:] == ["MainThread", "MainThread"]
    # Slower calls never qualify; a batch always goes to the executor threads.
    slow = [
        run_one(broker, identity, f"s{i}", thread_name_after, 0.005, i) for i in range(INLINE_AFTER_QUICK_CALLS + 1)
    ]
    assert set(slow) == {"zmqdask-executor-0"}
    compute(broker, identity, [(f"b{i}", thread_name, (i,), [], FLAG_PUSH_RESULT) for i in range(3)])
    batch = broker.done({"b0", "b1", "b2"})
    assert {serialize.loads(frames) for _, _, frames in batch.values()} == {"zmqdask-executor-0"}


def test_a_quick_function_turning_slow_on_the_main_thread_keeps_the_worker_alive_and_loses_its_place(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers, heartbeat_interval_s=0.05, liveness_timeout_s=0.5)
    flag = tmp_path / "slow-now"
    for i in range(INLINE_AFTER_QUICK_CALLS + 1):
        run_one(broker, identity, f"q{i}", sleep_if_exists, str(flag), 1.5, i)
    kept = run_one(broker, identity, "kept", operator.mul, [3], 2)
    assert kept == [3, 3]
    flag.touch()
    compute(broker, identity, [("long", sleep_if_exists, (str(flag), 1.5), [], FLAG_PUSH_RESULT)])
    # A live broker keeps talking while the call blocks the worker's main thread for three
    # times the liveness timeout: the worker keeps heartbeating, answers a GET and runs a new
    # task on its idle executor thread meanwhile, and afterwards does not take its own
    # silence for the broker's (no HELLO, nothing dropped).
    heartbeats = 0
    deadline = time.monotonic() + WAIT_S
    asked_at = time.monotonic() + 0.3
    asked = False
    order: list[str] = []
    results: dict[str, Any] = {}
    while "long" not in results:
        assert time.monotonic() < deadline, "the long call never finished"
        broker.send(identity, HEARTBEAT, [EPOCH])
        if not asked and time.monotonic() >= asked_at:
            asked = True
            broker.send(identity, GET, [7, ["kept"]])
            compute(broker, identity, [("side", thread_name, (1,), [], FLAG_PUSH_RESULT)])
        if not broker.socket.poll(50):
            continue
        _, message = broker.recv()
        assert message.command != HELLO, "the worker dropped its registration"
        if message.command == HEARTBEAT:
            heartbeats += 1
        elif message.command == DATA:
            assert message.header[0] == 7 and [entry[0] for entry in message.header[1]] == ["kept"]
            order.append("data")
        elif message.command == DONE:
            position = 0
            for key, code, _detail, nframes in message.header[0]:
                frames, position = entry_payload(nframes, message.payload, position)
                assert code == FINISHED
                results[key] = serialize.loads(frames)
                order.append(key)
    assert results == {"long": "MainThread", "side": "zmqdask-executor-0"}
    assert order == ["data", "side", "long"]
    assert heartbeats >= 5
    values, missing = get(broker, identity, ["kept"])
    assert values == {"kept": [3, 3]} and not missing
    # Slow once, never again on the main thread.
    flag.unlink()
    assert run_one(broker, identity, "after", sleep_if_exists, str(flag), 1.5) == "zmqdask-executor-0"


def test_results_are_pushed_when_asked_for_and_kept_for_get(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    compute(
        broker,
        identity,
        [
            ("pushed", operator.add, ([1], [2]), [], FLAG_PUSH_RESULT),
            ("kept", operator.mul, ([3], 4), [], 0),
            ("long", operator.mul, ("ab", 300), [], 0),
            ("small", operator.mul, (3, 4), [], 0),
        ],
    )
    results = broker.done({"pushed", "kept", "long", "small"})
    code, detail, frames = results["pushed"]
    assert code == FINISHED and serialize.loads(frames) == [1, 2] and detail == ["list", serialize.sizeof([1, 2])]
    assert results["kept"] == (FINISHED, ["list", serialize.sizeof([3, 3, 3, 3])], [])
    assert results["long"] == (FINISHED, ["str", serialize.sizeof("ab" * 300)], [])
    # A small scalar travels with its DONE even unasked: cheaper than a GET later.
    code, detail, frames = results["small"]
    assert code == FINISHED and serialize.loads(frames) == 12 and detail == ["int", serialize.sizeof(12)]
    values, missing = get(broker, identity, ["kept", "pushed", "small", "unknown"])
    assert values == {"kept": [3, 3, 3, 3], "pushed": [1, 2], "small": 12} and missing == ["unknown"]


def test_many_tiny_tasks_come_back_in_batches(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    count = 1000
    compute(broker, identity, [(f"t{i}", operator.add, (i, 1), [], 0) for i in range(count)])
    done_messages_before = sum(1 for _, m in broker.log if m.command == DONE)
    results = broker.done({f"t{i}" for i in range(count)})
    done_messages = sum(1 for _, m in broker.log if m.command == DONE) - done_messages_before
    assert all(code == FINISHED for code, _, _ in results.values())
    assert done_messages < count
    values, _ = get(broker, identity, ["t0", f"t{count - 1}"])
    assert values == {"t0": 1, f"t{count - 1}": count}


def gated_bytes(gate: str, size: int) -> bytes:
    wait_for_file(gate)
    return bytes(size)


def test_pushed_results_are_split_into_bounded_done_messages(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers, nthreads=2)
    gate, size, count = tmp_path / "gate", INLINE_RESULT_MAX_BYTES - 1000, 24
    compute(broker, identity, [(f"b{i}", gated_bytes, (str(gate), size), [], FLAG_PUSH_RESULT) for i in range(count)])
    gate.touch()
    results = broker.done({f"b{i}" for i in range(count)})
    assert all(len(serialize.loads(frames)) == size for _, _, frames in results.values())
    for _, message in broker.log:
        if message.command == DONE:
            assert sum(len(frame) for frame in message.payload) < DONE_FLUSH_BYTES + INLINE_RESULT_MAX_BYTES


def test_inputs_are_taken_locally_or_fetched_once_per_holder(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    broker.send(identity, STORE, [[["local", 1]]], serialize.dumps(10))
    assert broker.done({"local"})["local"][0] == FINISHED
    compute(
        broker,
        identity,
        [
            (
                "sum",
                sum_refs,
                ([TaskRef("local"), TaskRef("far"), TaskRef("other")],),
                [["local", None], ["far", b"w-far"], ["other", b"w-other"]],
                FLAG_PUSH_RESULT,
            ),
            ("again", sum_refs, ([TaskRef("far")],), [["far", b"w-far"]], FLAG_PUSH_RESULT),
        ],
    )
    fetches = {}
    for _ in range(2):
        _, fetch = broker.expect(FETCH, identity)
        request_id, holder, keys = fetch.header
        fetches[holder] = (request_id, keys)
    assert {holder: keys for holder, (_, keys) in fetches.items()} == {b"w-far": ["far"], b"w-other": ["other"]}
    for holder, value in ((b"w-far", 100), (b"w-other", 1000)):
        request_id, keys = fetches[holder]
        frames = serialize.dumps(value)
        broker.send(identity, DATA, [request_id, [[keys[0], len(frames)]], []], frames)
    results = broker.done({"sum", "again"})
    assert serialize.loads(results["sum"][2]) == 1110
    assert serialize.loads(results["again"][2]) == 100


def sum_refs(values: list[int]) -> int:
    return sum(values)


class FakeDataSocket:
    """A ROUTER on 127.0.0.1 standing where another worker's data socket would be."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"

    def expect_get(self) -> tuple[bytes, list[Any]]:
        assert self.socket.poll(int(WAIT_S * 1000)), "no GET came to the data socket"
        identity, *frames = self.socket.recv_multipart()
        message = decode(frames)
        assert message.command == GET
        return identity, message.header

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def peer() -> Iterator[FakeDataSocket]:
    fake = FakeDataSocket()
    try:
        yield fake
    finally:
        fake.close()


def test_inputs_told_to_be_elsewhere_are_fetched_from_the_holder_directly(
    broker: ScriptedBroker, workers: WorkerProcesses, peer: FakeDataSocket
) -> None:
    identity = register(broker, workers)
    compute(broker, identity, [("sum", sum_refs, ([TaskRef("far")],), [["far", b"w-far"]], FLAG_PUSH_RESULT)])
    _, fetch = broker.expect(FETCH, identity)
    request_id, _, keys = fetch.header
    broker.send(identity, FETCH_FROM, [request_id, peer.address, keys, 8])
    asker, (get_id, get_keys) = peer.expect_get()
    assert (get_id, get_keys) == (request_id, ["far"])
    frames = serialize.dumps(41)
    peer.socket.send_multipart([asker, *encode(DATA, [get_id, [["far", len(frames)]], []], frames)])
    assert serialize.loads(broker.done({"sum"})["sum"][2]) == 41


def test_inputs_a_holder_does_not_have_are_asked_of_the_broker_again(
    broker: ScriptedBroker, workers: WorkerProcesses, peer: FakeDataSocket
) -> None:
    identity = register(broker, workers)
    compute(
        broker,
        identity,
        [("sum", sum_refs, ([TaskRef("a"), TaskRef("b")],), [["a", b"w-far"], ["b", b"w-far"]], FLAG_PUSH_RESULT)],
    )
    _, fetch = broker.expect(FETCH, identity)
    request_id, _, keys = fetch.header
    broker.send(identity, FETCH_FROM, [request_id, peer.address, keys, 8])
    asker, (get_id, _) = peer.expect_get()
    frames = serialize.dumps(1)
    peer.socket.send_multipart([asker, *encode(DATA, [get_id, [["a", len(frames)]], ["b"]], frames)])
    # Not reported as missing: the broker, which believes w-far holds it, must hear it says no.
    _, relay = broker.expect(RELAY_FETCH, identity)
    again, holder, missing = relay.header
    assert (holder, missing) == (b"w-far", ["b"]) and again != request_id
    frames = serialize.dumps(2)
    broker.send(identity, DATA, [again, [["b", len(frames)]], []], frames)
    assert serialize.loads(broker.done({"sum"})["sum"][2]) == 3


def test_a_holder_that_does_not_answer_is_given_up_for_the_broker(
    broker: ScriptedBroker, workers: WorkerProcesses, peer: FakeDataSocket
) -> None:
    identity = register(broker, workers, direct_timeout_s=0.2)
    compute(broker, identity, [("sum", sum_refs, ([TaskRef("far")],), [["far", b"w-far"]], FLAG_PUSH_RESULT)])
    _, fetch = broker.expect(FETCH, identity)
    request_id, _, keys = fetch.header
    broker.send(identity, FETCH_FROM, [request_id, peer.address, keys, 8])
    peer.expect_get()  # and never answered
    _, relay = broker.expect(RELAY_FETCH, identity)
    assert relay.header == [request_id, b"w-far", ["far"]]
    frames = serialize.dumps(7)
    broker.send(identity, DATA, [request_id, [["far", len(frames)]], []], frames)
    assert serialize.loads(broker.done({"sum"})["sum"][2]) == 7
    # That address is not tried again: the next FETCH_FROM naming it is relayed at once.
    compute(broker, identity, [("again", sum_refs, ([TaskRef("far2")],), [["far2", b"w-far"]], FLAG_PUSH_RESULT)])
    _, fetch = broker.expect(FETCH, identity)
    broker.send(identity, FETCH_FROM, [fetch.header[0], peer.address, ["far2"], 8])
    _, relay = broker.expect(RELAY_FETCH, identity)
    assert relay.header[0] == fetch.header[0]


def test_a_worker_serves_its_values_and_takes_stores_on_its_data_socket(
    broker: ScriptedBroker, workers: WorkerProcesses
) -> None:
    workers.start(broker.address, data_address="tcp://127.0.0.1")
    identity, hello = broker.expect(HELLO)
    address = hello.header[1]["data_address"]
    assert address.startswith("tcp://127.0.0.1:")
    broker.send(identity, WELCOME, [EPOCH, {}])
    broker.expect(HEARTBEAT, identity, ignore=frozenset({HELLO}))
    broker.backlog.clear()
    broker.send(identity, STORE, [[["held", 1]]], serialize.dumps([1, 2, 3]))
    assert broker.done({"held"})["held"][0] == FINISHED
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        client.connect(address)
        client.send_multipart([b"not a message"])  # dropped; the worker goes on
        frames = serialize.dumps("sent directly")
        client.send_multipart(encode(STORE, [[["put", len(frames)]]], frames))
        # Confirmed to the broker, as a STORE from the broker would be.
        assert broker.done({"put"})["put"][0] == FINISHED
        client.send_multipart(encode(GET, [5, ["put", "held", "nope"]]))
        assert client.poll(int(WAIT_S * 1000))
        answer = decode(client.recv_multipart())
        assert answer.command == DATA and answer.header[0] == 5 and answer.header[2] == ["nope"]
        values = {}
        position = 0
        for key, nframes in answer.header[1]:
            value_frames, position = entry_payload(nframes, answer.payload, position)
            values[key] = serialize.loads(value_frames)
        assert values == {"put": "sent directly", "held": [1, 2, 3]}
    finally:
        client.close(linger=0)
        context.term()


def test_missing_inputs_are_reported(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    compute(
        broker,
        identity,
        [
            ("needs-local", sum_refs, ([TaskRef("absent")],), [["absent", None]], 0),
            ("needs-far", sum_refs, ([TaskRef("gone")],), [["gone", b"w-far"]], 0),
        ],
    )
    _, fetch = broker.expect(FETCH, identity)
    broker.send(identity, DATA, [fetch.header[0], [], ["gone"]])
    results = broker.done({"needs-local", "needs-far"})
    assert results["needs-local"] == (MISSING_DEPS, ["absent"], [])
    assert results["needs-far"] == (MISSING_DEPS, ["gone"], [])


def test_task_errors_are_reported_and_the_worker_goes_on(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    compute(
        broker, identity, [("bad", fail_with_value_error, ("boom",), [], 0), ("exit", raise_system_exit, (), [], 0)]
    )
    results = broker.done({"bad", "exit"})
    code, detail, frames = results["bad"]
    assert code == ERRED and detail == ["ValueError", "boom", "bad"]
    exc, text = serialize.loads_error(detail, frames)
    assert isinstance(exc, ValueError) and "fail_with_value_error" in text
    assert results["exit"][0] == ERRED and results["exit"][1][0] == "SystemExit"
    compute(broker, identity, [("after", operator.add, (1, 1), [], FLAG_PUSH_RESULT)])
    assert serialize.loads(broker.done({"after"})["after"][2]) == 2


def test_function_the_worker_cannot_import(
    broker: ScriptedBroker, workers: WorkerProcesses, unimportable_function: tuple[str, bytes]
) -> None:
    qualified_name, payload = unimportable_function
    identity = register(broker, workers)
    fn_hash = hashlib.blake2b(payload, digest_size=16).digest()
    frames = task_frames(1)
    entries = [["t1", fn_hash, [], 0, 1], ["t2", fn_hash, [], 0, 1]]
    broker.send(identity, COMPUTE, [[fn_hash], entries], [payload, *frames, *frames])
    results = broker.done({"t1", "t2"})
    for key in ("t1", "t2"):
        code, (type_name, message, origin), _ = results[key]
        assert code == ERRED and type_name == "SerializationError" and origin == key
        assert qualified_name in message and "No module named" in message


def test_unserializable_values(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    compute(
        broker, identity, [("pushed-lock", make_lock, (), [], FLAG_PUSH_RESULT), ("kept-lock", make_lock, (), [], 0)]
    )
    results = broker.done({"pushed-lock", "kept-lock"})
    assert results["pushed-lock"][0] == ERRED and "pushed-lock" in results["pushed-lock"][1][1]
    assert results["kept-lock"][0] == FINISHED
    # GET of a value that cannot be pickled: the ERRED notice comes first, then DATA without it.
    broker.send(identity, GET, [5, ["kept-lock"]])
    _, first = broker.recv()
    while first.command == HEARTBEAT:
        _, first = broker.recv()
    assert first.command == DONE and first.header[0][0][:2] == ["kept-lock", ERRED]
    _, data = broker.expect(DATA, identity)
    assert data.header == [5, [], ["kept-lock"]]


def test_store_get_and_delete(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    value = {"a": [1, 2, 3]}
    broker.send(identity, STORE, [[["scattered", 1], ["broken", 1]]], [*serialize.dumps(value), b"not a pickle"])
    results = broker.done({"scattered", "broken"})
    assert results["scattered"] == (FINISHED, ["dict", serialize.sizeof(value)], [])
    assert results["broken"][0] == ERRED and results["broken"][1][0] == "SerializationError"
    assert get(broker, identity, ["scattered"]) == ({"scattered": value}, [])
    broker.send(identity, DELETE, [["scattered"]])
    assert get(broker, identity, ["scattered"], request_id=2) == ({}, ["scattered"])


def test_cancel_drops_tasks_that_have_not_started(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers)
    release, started = tmp_path / "release", tmp_path / "started"
    compute(
        broker,
        identity,
        [
            ("running", wait_for_file, (str(release), str(started)), [], 0),
            ("queued", operator.add, (1, 2), [], 0),
            ("fetching", sum_refs, ([TaskRef("far")],), [["far", b"w-far"]], 0),
        ],
    )
    broker.expect(FETCH, identity)
    wait_until(started.exists)
    broker.send(identity, CANCEL_TASKS, [["running", "queued", "fetching"]])
    assert broker.done({"queued", "fetching"}) == {
        "queued": (CANCELLED, "cancelled", []),
        "fetching": (CANCELLED, "cancelled", []),
    }
    release.touch()
    results = broker.done({"running"})
    assert results["running"][0] == FINISHED and set(results) == {"running"}
    reported = [entry[0] for _, m in broker.log if m.command == DONE for entry in m.header[0]]
    assert sorted(reported) == ["fetching", "queued", "running"]


def add_one(value: int) -> int:
    return value + 1


def test_tasks_sent_ahead_run_when_their_local_inputs_finish(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    # b and c name inputs this worker is computing (holder None): they wait here for them.
    compute(
        broker,
        identity,
        [
            ("a", operator.add, (1, 2), [], 0),
            ("b", add_one, (TaskRef("a"),), [["a", None]], 0),
            ("c", add_one, (TaskRef("b"),), [["b", None]], FLAG_PUSH_RESULT),
        ],
    )
    results = broker.done({"a", "b", "c"})
    assert all(code == FINISHED for code, _, _ in results.values())
    assert serialize.loads(results["c"][2]) == 5
    reported = [entry[0] for _, m in broker.log if m.command == DONE for entry in m.header[0]]
    assert reported == ["a", "b", "c"]  # an input's DONE entry precedes its dependent's


def test_a_task_sent_ahead_is_given_back_when_its_local_input_fails_or_it_is_cancelled(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers)
    compute(
        broker,
        identity,
        [
            ("bad", fail_with_value_error, ("no",), [], 0),
            ("after-bad", add_one, (TaskRef("bad"),), [["bad", None]], 0),
        ],
    )
    results = broker.done({"bad", "after-bad"})
    assert results["bad"][0] == ERRED
    assert results["after-bad"][:2] == (MISSING_DEPS, ["bad"])
    release, started = tmp_path / "release", tmp_path / "started"
    compute(
        broker,
        identity,
        [
            ("slow", wait_for_file, (str(release), str(started)), [], 0),
            ("after-slow", echo, (TaskRef("slow"),), [["slow", None]], 0),
        ],
    )
    wait_until(started.exists)
    broker.send(identity, CANCEL_TASKS, [["after-slow"]])
    assert broker.done({"after-slow"})["after-slow"][0] == CANCELLED
    release.touch()
    assert broker.done({"slow"})["slow"][0] == FINISHED
    values, _ = get(broker, identity, ["slow"])
    assert values == {"slow": "released"}
    reported = [entry[0] for _, m in broker.log if m.command == DONE for entry in m.header[0]]
    assert reported.count("after-slow") == 1  # cancelled, never run


def test_a_forgetful_broker_gets_a_fresh_worker(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers)
    broker.send(identity, STORE, [[["kept", 1]]], serialize.dumps(1))
    broker.done({"kept"})
    release, started = tmp_path / "release", tmp_path / "started"
    compute(broker, identity, [("old-task", wait_for_file, (str(release), str(started)), [], 0)])
    wait_until(started.exists)
    broker.send(identity, UNKNOWN_PEER, [EPOCH])
    broker.expect(HELLO, identity)
    broker.send(identity, WELCOME, ["epoch-2", {}])
    assert get(broker, identity, ["kept"]) == ({}, ["kept"])
    release.touch()
    compute(broker, identity, [("new-task", operator.add, (1, 1), [], 0)])
    assert set(broker.done({"new-task"})) == {"new-task"}
    # The old generation's result is dropped: only new-task was ever reported after the reset.
    reported = [entry[0] for _, m in broker.log if m.command == DONE for entry in m.header[0]]
    assert reported == ["kept", "new-task"]


def test_a_new_epoch_in_welcome_means_the_broker_restarted(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    broker.send(identity, STORE, [[["kept", 1]]], serialize.dumps(1))
    broker.done({"kept"})
    broker.send(identity, WELCOME, ["epoch-2", {}])
    broker.expect(HELLO, identity)
    broker.send(identity, WELCOME, ["epoch-2", {}])
    assert get(broker, identity, ["kept"]) == ({}, ["kept"])


def test_a_silent_broker_is_given_up_after_the_liveness_timeout(
    broker: ScriptedBroker, workers: WorkerProcesses
) -> None:
    workers.start(broker.address, heartbeat_interval_s=0.1, liveness_timeout_s=0.5)
    identity, _ = broker.expect(HELLO)
    welcomed = time.monotonic()
    broker.send(identity, WELCOME, [EPOCH, {}])
    broker.expect(HEARTBEAT, identity, ignore=frozenset({HELLO}))
    broker.backlog.clear()
    broker.expect(HELLO, identity)
    assert time.monotonic() - welcomed >= 0.5


def test_worker_exits_when_no_broker_answers(workers: WorkerProcesses) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = workers.start(f"tcp://127.0.0.1:{port}", death_timeout_s=0.5)
    assert process.wait(WAIT_S) == EXIT_BROKER_UNREACHABLE


def test_sigterm_says_goodbye_and_exits_promptly_even_with_a_task_running(
    broker: ScriptedBroker, workers: WorkerProcesses, tmp_path: Path
) -> None:
    identity = register(broker, workers)
    started = tmp_path / "started"
    compute(broker, identity, [("forever", wait_for_file, (str(tmp_path / "never"), str(started)), [], 0)])
    wait_until(started.exists)
    process = workers.processes[-1]
    stop_time = time.monotonic()
    process.send_signal(signal.SIGTERM)
    broker.expect(GOODBYE, identity)
    assert process.wait(WAIT_S) == 0
    assert time.monotonic() - stop_time < 3.0


def test_malformed_messages_are_dropped(broker: ScriptedBroker, workers: WorkerProcesses) -> None:
    identity = register(broker, workers)
    broker.socket.send_multipart([identity, b"\x01\x16", b"\xc1"])  # GET with an invalid header
    broker.socket.send_multipart([identity, b"junk"])
    broker.send(identity, STORE, [[["x", 1]]], serialize.dumps(1))
    assert broker.done({"x"})["x"][0] == FINISHED


# === the pool manager =========================================================================


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _read_line(process: subprocess.Popen[bytes], timeout: float = WAIT_S) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return process.stdout.readline().decode()


@contextlib.contextmanager
def pool_process(address: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "zmqdask.pool", address, *extra, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT_S)


def _welcome_pool(broker: ScriptedBroker, nworkers: int) -> tuple[bytes, dict[bytes, dict[str, Any]]]:
    """Answer the pool's and its workers' HELLOs; returns the pool identity and worker infos."""
    pool_identity = b""
    workers: dict[bytes, dict[str, Any]] = {}
    while len(workers) < nworkers or not pool_identity:
        identity, hello = broker.expect(HELLO)
        role, info = hello.header
        if role == "pool":
            pool_identity = identity
            assert info["nworkers"] == nworkers and info["host"] == socket.gethostname()
        else:
            assert role == "worker"
            workers[identity] = info
        broker.send(identity, WELCOME, [EPOCH, {}])
    return pool_identity, workers


def test_pool_reports_and_replaces_a_dead_worker_and_stops_on_sigterm(broker: ScriptedBroker, tmp_path: Path) -> None:
    with pool_process(broker.address, "--nworkers", "2", "--nthreads", "2") as pool:
        assert _read_line(pool) == f"zmqdask-worker started 2 workers for {broker.address}\n"
        pool_identity, infos = _welcome_pool(broker, 2)
        pool_id = infos[next(iter(infos))]["pool"]
        assert pool_identity == f"{pool_id}-pool".encode()
        assert set(infos) == {f"{pool_id}-w0-g0".encode(), f"{pool_id}-w1-g0".encode()}
        victim = f"{pool_id}-w1-g0".encode()
        started = [tmp_path / "started-1", tmp_path / "started-2"]
        compute(
            broker,
            victim,
            [(f"sleepy-{i}", touch_and_sleep, (str(path), 60.0), [], 0) for i, path in enumerate(started, 1)],
        )
        wait_until(lambda: all(path.exists() for path in started))
        os.kill(infos[victim]["pid"], signal.SIGKILL)
        _, died = broker.expect(WORKER_DIED, pool_identity, ignore=frozenset({HEARTBEAT, GOODBYE}))
        identity, running, exitcode = died.header
        assert (identity, sorted(running), exitcode) == (victim, ["sleepy-1", "sleepy-2"], -signal.SIGKILL)
        replacement, hello = broker.expect(HELLO)
        assert replacement == f"{pool_id}-w1-g1".encode()
        broker.send(replacement, WELCOME, [EPOCH, {}])
        children = [infos[f"{pool_id}-w0-g0".encode()]["pid"], hello.header[1]["pid"]]
        assert all(_alive(pid) for pid in children)
        stop_time = time.monotonic()
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(WAIT_S) == 0
        assert time.monotonic() - stop_time < 5.0
        wait_until(lambda: not any(_alive(pid) for pid in children), timeout=5.0)
        broker.expect(GOODBYE, pool_identity)


def exit_if_exists(path: str, _: Any = None) -> str:
    if os.path.exists(path):
        os._exit(3)
    return "alive"


def test_a_task_that_kills_its_worker_on_the_main_thread_is_named_by_the_pool(
    broker: ScriptedBroker, tmp_path: Path
) -> None:
    with pool_process(broker.address, "--nworkers", "1") as pool:
        assert _read_line(pool) == f"zmqdask-worker started 1 workers for {broker.address}\n"
        pool_identity, infos = _welcome_pool(broker, 1)
        victim = next(iter(infos))
        flag = tmp_path / "die-now"
        for i in range(INLINE_AFTER_QUICK_CALLS + 1):  # proven quick: the next call runs on the main thread
            assert run_one(broker, victim, f"q{i}", exit_if_exists, str(flag), i) == "alive"
        flag.touch()
        compute(broker, victim, [("fatal", exit_if_exists, (str(flag),), [], 0)])
        _, died = broker.expect(WORKER_DIED, pool_identity, ignore=frozenset({HEARTBEAT, GOODBYE, DONE}))
        identity, running, exitcode = died.header
        assert (identity, running, exitcode) == (victim, ["fatal"], 3)


def test_workers_exit_when_the_pool_is_killed(broker: ScriptedBroker) -> None:
    with pool_process(broker.address, "--nworkers", "2") as pool:
        _, infos = _welcome_pool(broker, 2)
        children = [info["pid"] for info in infos.values()]
        pool.kill()
        pool.wait(WAIT_S)
        wait_until(lambda: not any(_alive(pid) for pid in children), timeout=5.0)


def test_pool_stops_on_sigint_and_when_the_watched_process_exits(broker: ScriptedBroker) -> None:
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        env = dict(os.environ, ZMQDASK_PARENT_PID=str(watched.pid))
        with pool_process(broker.address, "--nworkers", "1", env=env) as pool:
            _, infos = _welcome_pool(broker, 1)
            assert watched.stdin is not None
            watched.stdin.close()
            watched.wait(WAIT_S)
            assert pool.wait(WAIT_S) == 0
            assert not any(_alive(info["pid"]) for info in infos.values())
        with pool_process(broker.address, "--nworkers", "1") as pool:
            _, infos = _welcome_pool(broker, 1)
            pool.send_signal(signal.SIGINT)
            assert pool.wait(WAIT_S) == 0
            wait_until(lambda: not any(_alive(info["pid"]) for info in infos.values()), timeout=5.0)
    finally:
        watched.kill()
        watched.wait(WAIT_S)


def test_cli_usage_errors_and_module_entry_points() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "zmqdask.worker", "--help"], capture_output=True, text=True, timeout=WAIT_S
    )
    assert help_text.returncode == 0 and "zmqdask-worker" in help_text.stdout and "--nthreads" in help_text.stdout
    for arguments, complaint in [
        (["tcp://127.0.0.1:1", "--nworkers", "0"], "--nworkers"),
        (["tcp://127.0.0.1:1", "--log-level", "chatty"], "log level"),
        (["not-an-address", "--nworkers", "1"], "not-an-address"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "zmqdask.pool", *arguments], capture_output=True, text=True, timeout=WAIT_S
        )
        assert result.returncode == EXIT_USAGE, result.stderr
        assert complaint in result.stderr


def test_restart_delay_backs_off_and_is_bounded() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] == RESTART_BACKOFF_BASE_S
    assert delays == sorted(delays)
    assert delays[-1] == RESTART_BACKOFF_MAX_S


def test_worker_refuses_running_slots_too_small_for_its_threads() -> None:
    with pytest.raises(UsageError, match="running_slots"):
        Worker("tcp://127.0.0.1:1", identity=b"w", nthreads=2, running_slots=bytearray(slots_nbytes(1)))


def test_pool_gives_up_when_no_broker_answers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with pool_process(address, "--nworkers", "1", "--death-timeout", "1") as pool:
        _read_line(pool)
        assert pool.wait(WAIT_S) == EXIT_BROKER_UNREACHABLE
        assert pool.stderr is not None
        assert "no broker answered" in pool.stderr.read().decode()


def test_a_compute_held_back_behind_a_set_up_loses_the_tasks_given_back() -> None:
    from zmqdask.protocol import COMPUTE, decode, encode
    from zmqdask.worker import _without_tasks

    fn = b"f" * 16
    header = [[fn], [["a", fn, [], 0, 2], ["b", fn, [], 0, b"inline"], ["c", fn, [], 0, 1]]]
    message = decode(encode(COMPUTE, header, [b"<fn>", b"a1", b"a2", b"c1"]))
    kept = _without_tasks(message, {"a"})
    assert kept.header == [[fn], [["b", fn, [], 0, b"inline"], ["c", fn, [], 0, 1]]]
    assert kept.payload == [b"<fn>", b"c1"]
    assert decode(encode(COMPUTE, kept.header, kept.payload)).header == kept.header
    assert _without_tasks(message, {"b", "c"}).payload == [b"<fn>", b"a1", b"a2"]
