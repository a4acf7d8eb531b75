"""Pure tests of the wire protocol, payload serialization and graph helpers (no sockets)."""

from __future__ import annotations

import operator
import pickle
import random

import msgpack
import numpy as np
import pytest

from zmqdask import protocol as proto
from zmqdask.config import MAX_KEY_LENGTH, PROTOCOL_VERSION, ZERO_COPY_THRESHOLD_BYTES
from zmqdask.errors import ProtocolError, RemoteTaskFailure, SerializationError
from zmqdask.graph import cull, execute_local, topological_order
from zmqdask.serialize import (
    TaskRef,
    dumps,
    dumps_error,
    dumps_function,
    loads,
    loads_error,
    sizeof,
    substitute_refs,
)

FN = b"f" * 16


def roundtrip(command: int, header: list, payload: list | None = None) -> proto.Message:
    return proto.decode(proto.encode(command, header, payload or []))


def test_every_command_has_a_name_and_a_validator() -> None:
    assert proto.COMMAND_NAMES[proto.SUBMIT] == "SUBMIT"
    assert set(proto.COMMAND_NAMES) == set(proto._VALIDATORS)


def test_submit_roundtrip_and_frame_accounting() -> None:
    header = [[FN], [["inc-1", FN, [], 0, 0, proto.FLAG_WANTED, 2], ["inc-2", FN, ["inc-1"], 5, 1, 0, 1]]]
    message = roundtrip(proto.SUBMIT, header, [b"fn", b"a1", b"a2", b"b1"])
    assert message.name == "SUBMIT"
    assert message.header == header
    assert message.payload == [b"fn", b"a1", b"a2", b"b1"]
    with pytest.raises(ProtocolError, match="announces 4 payload frames but carries 3"):
        proto.decode(proto.encode(proto.SUBMIT, header, [b"fn", b"a1", b"a2"]))


def test_report_answering_a_cancel_roundtrip() -> None:
    header = [[["x", proto.CANCELLED, "cancelled", 0], ["x", proto.CANCELS_SEEN, 3, 0]]]
    assert roundtrip(proto.REPORT, header).header == header


def test_run_messages_roundtrip_and_are_validated() -> None:
    run = roundtrip(proto.RUN, [7, [b"w1", b"w2"], 2], [b"pickled call", b"buffer"])
    assert run.name == "RUN" and run.header == [7, [b"w1", b"w2"], 2] and len(run.payload) == 2
    assert roundtrip(proto.RUN, [8, None, b"inline call"]).header == [8, None, b"inline call"]
    assert roundtrip(proto.RUNNING, [7, [b"w1"]]).header == [7, [b"w1"]]
    for header in (
        [7, b"w1", proto.FINISHED, None, b"result"],
        [7, b"w1", proto.ERRED, ["ValueError", "no", "run-1"], 1],
        [7, b"w1", proto.LOST, "it left", 0],
    ):
        payload = [b"frame"] if header[-1] == 1 else []
        assert roundtrip(proto.RAN, header, payload).header == header
    bad = [
        (proto.RUN, [7, [b""], 0], "identity"),
        (proto.RUN, [7, "all", 0], "targets"),
        (proto.RUNNING, [7, None], "identities"),
        (proto.RAN, [7, b"w1", proto.FINISHED, "detail", 0], "FINISHED detail"),
        (proto.RAN, [7, b"w1", proto.CANCELLED, "no", 0], "unknown code"),
        (proto.RAN, [7, b"w1", proto.LOST, ["x"], 0], "LOST detail"),
    ]
    for command, header, match in bad:
        with pytest.raises(ProtocolError, match=match):
            proto.decode(proto.encode(command, header))


def test_want_and_dataset_messages_roundtrip_and_are_validated() -> None:
    assert roundtrip(proto.WANT, [["k1", "k2"]]).header == [["k1", "k2"]]
    put = roundtrip(proto.DATASETS, [3, "put", "df", ["k1"], False, 1], [b"pickled dataset"])
    assert put.name == "DATASETS" and put.payload == [b"pickled dataset"]
    assert roundtrip(proto.DATASETS, [4, "put", "df", [], True, b"inline pickle"]).payload == []
    for op, name in (("get", "df"), ("delete", "df"), ("list", "")):
        assert roundtrip(proto.DATASETS, [5, op, name, [], False, 0]).header == [5, op, name, [], False, 0]
    bad = [
        (proto.WANT, [[""]], "invalid key"),
        (proto.DATASETS, [1, "copy", "df", [], False, 0], "unknown dataset operation"),
        (proto.DATASETS, [1, "get", "", [], False, 0], "name must be"),
        (proto.DATASETS, [1, "put", "df", [], 0, 1], "override must be a bool"),
        (proto.DATASETS, [1, "put", "df", [7], False, 1], "invalid key"),
        (proto.DATASETS, [1, "put", "df", [], False, 0], "put carries the wrong payload"),
        (proto.DATASETS, [1, "get", "df", [], False, 1], "get carries the wrong payload"),
        (proto.DATASETS, [1, "list", ""], "expected 6"),
    ]
    for command, header, match in bad:
        payload = [b"frame"] if header[-1] == 1 else []
        with pytest.raises(ProtocolError, match=match):
            proto.decode(proto.encode(command, header, payload))


def test_coordinate_messages_roundtrip_and_are_validated() -> None:
    put = roundtrip(proto.COORDINATE, [1, "queue", "put", "q", {"keys": ["k"], "timeout": None}, 1], [b"value"])
    assert put.name == "COORDINATE" and put.payload == [b"value"]
    assert roundtrip(proto.COORDINATE, [2, "variable", "set", "v", {}, b"inline"]).payload == []
    header = [3, "semaphore", "acquire", "lock/x", {"lease": "l", "timeout": 0.5}, 0]
    assert roundtrip(proto.COORDINATE, header).header == header
    bad = [
        ([1, "barrier", "wait", "b", {}, 0], "unknown kind"),
        ([1, "queue", "set", "q", {}, 0], "unknown queue operation"),
        ([1, "event", "wait", "", {}, 0], "name must be"),
        ([1, "event", "wait", "e", [], 0], "args must be a map"),
        ([1, "event", "wait", "e", {"timeout": -1}, 0], "timeout must be"),
        ([1, "event", "wait", "e", {"keys": [3]}, 0], "invalid key"),
        ([1, "queue", "put", "q", {}, 0], "queue put carries the wrong payload"),
        ([1, "queue", "get", "q", {}, 1], "queue get carries the wrong payload"),
    ]
    for header, match in bad:
        payload = [b"frame"] if header[-1] == 1 else []
        with pytest.raises(ProtocolError, match=match):
            proto.decode(proto.encode(proto.COORDINATE, header, payload))


def test_forget_functions_roundtrip() -> None:
    message = roundtrip(proto.FORGET_FUNCTIONS, [[FN, b"g" * 16]])
    assert message.name == "FORGET_FUNCTIONS" and message.header == [[FN, b"g" * 16]] and message.payload == []


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"\x01"], "at least 2"),
        ([b"\x01\x01\x00", b"\x90"], "expected 2"),
        ([bytes((PROTOCOL_VERSION + 1, proto.HELLO)), msgpack.packb(["client", {}])], "version"),
        ([bytes((PROTOCOL_VERSION, 250)), b"\x90"], "unknown command"),
        ([bytes((PROTOCOL_VERSION, proto.HELLO)), b"\xc1"], "msgpack"),
        ([bytes((PROTOCOL_VERSION, proto.HELLO)), msgpack.packb({"a": 1})], "must be a list"),
        ([bytes((PROTOCOL_VERSION, proto.HELLO)), msgpack.packb(["alien", {}])], "unknown role"),
        ([bytes((PROTOCOL_VERSION, proto.RELEASE)), msgpack.packb([[1, 2]])], "invalid key"),
        ([bytes((PROTOCOL_VERSION, proto.RELEASE)), msgpack.packb([["k" * (MAX_KEY_LENGTH + 1)]])], "invalid key"),
        ([bytes((PROTOCOL_VERSION, proto.GET)), msgpack.packb([-1, []])], "invalid count"),
        ([bytes((PROTOCOL_VERSION, proto.DONE)), msgpack.packb([[["k", 9, "x", 0]]])], "unknown code"),
        ([bytes((PROTOCOL_VERSION, proto.DONE)), msgpack.packb([[["k", proto.FINISHED, "x", 0]]])], "FINISHED"),
        ([bytes((PROTOCOL_VERSION, proto.DONE)), msgpack.packb([[["k", proto.CANCELS_SEEN, 1, 0]]])], "unknown code"),
        ([bytes((PROTOCOL_VERSION, proto.REPORT)), msgpack.packb([[["k", proto.CANCELS_SEEN, 0, 0]]])], "key count"),
        ([bytes((PROTOCOL_VERSION, proto.REPORT)), msgpack.packb([[["k", proto.CANCELS_SEEN, "1", 0]]])], "key count"),
        ([bytes((PROTOCOL_VERSION, proto.SUBMIT)), msgpack.packb([[], [["k", FN, [], 0, 0, 0]]])], "7 fields"),
        ([bytes((PROTOCOL_VERSION, proto.FORGET_FUNCTIONS)), msgpack.packb([["not bytes"]])], "function hash"),
        ([bytes((PROTOCOL_VERSION, proto.FORGET_FUNCTIONS)), msgpack.packb([[b"x" * 65]])], "function hash"),
        ([bytes((PROTOCOL_VERSION, proto.FORGET_FUNCTIONS)), msgpack.packb([b"x"])], "must be a list"),
    ],
)
def test_malformed_messages_raise_protocol_error(frames: list, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        proto.decode(frames)


def test_random_garbage_only_ever_raises_protocol_error() -> None:
    rng = random.Random(1234)
    commands = list(proto.COMMAND_NAMES)
    for _ in range(3000):
        head = bytes((PROTOCOL_VERSION, rng.choice(commands)))
        kind = rng.random()
        if kind < 0.3:
            body = rng.randbytes(rng.randrange(0, 40))
        else:
            choices = [1, "x", b"y", None, [], {}, [["k", 0, [], 1]], -5, 2**40]
            body = msgpack.packb([rng.choice(choices) for _ in range(rng.randrange(0, 8))])
        extra = [rng.randbytes(3) for _ in range(rng.randrange(0, 3))]
        try:
            proto.decode([head, body, *extra])
        except ProtocolError:
            pass


def test_frame_nbytes_and_split_payload() -> None:
    assert proto.frame_nbytes(b"abc") == 3
    assert proto.frame_nbytes(memoryview(b"abcd")) == 4
    assert proto.split_payload([2, 0, 1], ["a", "b", "c", "d"], offset=1) == [["b", "c"], [], ["d"]]


def test_dumps_keeps_large_buffers_out_of_band() -> None:
    small = np.arange(10)
    assert len(dumps(small)) == 1
    large = np.arange(ZERO_COPY_THRESHOLD_BYTES)  # 8 bytes each: well above the threshold
    frames = dumps(large)
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == large.nbytes
    np.testing.assert_array_equal(loads(frames), large)


def test_dumps_falls_back_to_cloudpickle_and_names_unpicklable_objects() -> None:
    offset = 3
    assert loads(dumps(lambda v: v + offset))(1) == 4
    import threading

    with pytest.raises(SerializationError, match="lock"):
        dumps(threading.Lock())


def test_functions_are_hashed_stably_and_main_functions_go_by_value() -> None:
    h1, p1 = dumps_function(operator.add)
    h2, p2 = dumps_function(operator.add)
    assert h1 == h2 and p1 == p2 and len(h1) == 16
    main_fn = eval("lambda x: x * 2")
    main_fn.__module__ = "__main__"
    _, payload = dumps_function(main_fn)
    assert pickle.loads(payload)(21) == 42


def test_errors_roundtrip_with_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        detail, frames = dumps_error(exc, "task-1")
    assert detail[0] == "KeyError" and detail[2] == "task-1"
    exc2, text = loads_error(detail, frames)
    assert isinstance(exc2, KeyError) and "raise KeyError" in text


def test_unpicklable_errors_get_a_stand_in() -> None:
    class Local(Exception):
        def __reduce__(self) -> tuple:
            raise TypeError("no")

    detail, frames = dumps_error(Local("odd"), "k")
    exc, _ = loads_error(detail, frames)
    assert isinstance(exc, RemoteTaskFailure) and exc.type_name == "Local"
    exc, _ = loads_error(["Weird", "msg", "k"], [])
    assert isinstance(exc, RemoteTaskFailure) and "msg" in str(exc)


def test_substitute_refs_walks_containers_only() -> None:
    values = {"a": 1, "b": 2}
    obj = (TaskRef("a"), [TaskRef("b"), {"k": TaskRef("a")}], {TaskRef("b")}, "a")
    assert substitute_refs(obj, values) == (1, [2, {"k": 1}], {2}, "a")
    assert pickle.loads(pickle.dumps(TaskRef("x"))).key == "x"


def test_sizeof_is_cheap_and_sensible() -> None:
    assert sizeof(np.zeros(1000)) == 8000
    assert sizeof([1, 2, 3]) > 0
    import pandas as pd

    frames = [
        pd.DataFrame(
            {"x": np.arange(10.0), "n": ["a"] * 10, "c": pd.Categorical(list("ab") * 5)},
            index=pd.date_range("2000-01-01", periods=10, freq="s"),
        ),
        pd.DataFrame(),
        pd.DataFrame({"s": pd.array(["x", None], dtype="string")}),
        pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([(1, "a"), (2, "b")])),
    ]
    for frame in frames:  # the figure pandas gives, without building pandas' own report
        assert sizeof(frame) == int(frame.memory_usage(deep=False).sum())


def test_graph_order_execution_and_culling() -> None:
    graph = {
        "a": (operator.add, (1, 2), {}),
        "b": (operator.mul, (TaskRef("a"), 10), {}),
        "c": (sum, ([TaskRef("a"), TaskRef("b")],), {}),
        "unused": (operator.neg, (TaskRef("a"),), {}),
    }
    order = topological_order(graph)
    assert order.index("a") < order.index("b") < order.index("c")
    assert execute_local(graph, ["c", "b"]) == [33, 30]
    assert set(cull(graph, ["b"])) == {"a", "b"}
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"x": (operator.neg, (TaskRef("y"),), {}), "y": (operator.neg, (TaskRef("x"),), {})})


def _outer(x: int) -> None:
    _middle(x)


def _middle(x: int) -> None:
    try:
        _inner(x)
    except KeyError as exc:
        raise ValueError("wrapped") from exc


def _inner(x: int) -> None:
    raise KeyError(x)


def test_a_remote_traceback_text_becomes_a_traceback_object_with_the_same_frames() -> None:
    import traceback

    from zmqdask.serialize import traceback_from_text

    try:
        _outer(3)
    except ValueError as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        expected = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    rebuilt = traceback_from_text(text)
    assert rebuilt is not None
    # The frames of the exception raised last (not of its cause), in order, names and lines kept.
    assert [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(rebuilt)] == expected
    assert [name for *_, name in expected][-2:] == ["_outer", "_middle"]
    worker_frame = '  File "/site/zmqdask/executor.py", line 9, in execute\n'
    assert traceback_from_text("Traceback (most recent call last):\n" + worker_frame + "KeyError: 1\n") is None
    assert traceback_from_text("KeyError: 1") is None and traceback_from_text(None) is None
