"""Pure tests of the broker's state machine: injected time, no sockets."""

from __future__ import annotations

import gc
import random
import tracemalloc
from typing import Any

import pytest

from broker.ledger import QUEUED, RELEASED, ReadyQueue, TaskRecord
from broker.state import BrokerState
from zmqdask import protocol as P
from zmqdask.config import MAX_KILLED_ATTEMPTS
from zmqdask.protocol import Message, decode, encode

EPOCH = "epoch-test"
FN = b"fn-inc"
FN_FRAME = b"<pickled inc>"

Out = list[tuple[bytes, Message]]


class Harness:
    """Drives a BrokerState with encoded messages and decodes what it sends back."""

    def __init__(self, *, audit: bool = True, **kwargs: Any) -> None:
        self.now = 0.0
        self.state = BrokerState(epoch=EPOCH, now=self.now, address="tcp://test:1", **kwargs)
        self.audit = audit

    def send(self, sender: bytes, command: int, header: list[Any], payload: list[Any] | tuple[Any, ...] = ()) -> Out:
        return self.raw(sender, encode(command, header, list(payload)))

    def raw(self, sender: bytes, frames: list[Any]) -> Out:
        out = self.state.handle(sender, frames, self.now)
        self.check()
        return [(identity, decode(msg)) for identity, msg in out]

    def tick(self, advance: float) -> Out:
        self.now += advance
        out = self.state.tick(self.now)
        self.check()
        return [(identity, decode(msg)) for identity, msg in out]

    def check(self) -> None:
        assert self.state.counters.internal_errors == 0
        if self.audit:
            assert self.state.audit() == []

    def worker(self, identity: bytes, nthreads: int = 1, credit: int = 4, **info: Any) -> Out:
        return self.send(identity, P.HELLO, ["worker", {"nthreads": nthreads, "credit": credit, **info}])

    def client(self, identity: bytes) -> Out:
        return self.send(identity, P.HELLO, ["client", {"name": identity.decode(), "pid": 1}])

    def submit(
        self,
        client: bytes,
        tasks: list[tuple[str, list[str]]],
        *,
        flags: int = P.FLAG_WANTED,
        unwanted: tuple[str, ...] = (),
        with_function: bool = True,
        retries: int = 0,
        priority: int = 0,
        fn: bytes = FN,
    ) -> Out:
        """Submit tasks with ``flags``, except those named in ``unwanted`` (no flags)."""
        entries = [[key, fn, deps, priority, retries, 0 if key in unwanted else flags, 1] for key, deps in tasks]
        payload = ([FN_FRAME] if with_function else []) + [f"args:{key}".encode() for key, _ in tasks]
        return self.send(client, P.SUBMIT, [[fn] if with_function else [], entries], payload)

    def done(self, worker: bytes, entries: list[list[Any]], payload: list[Any] | tuple[Any, ...] = ()) -> Out:
        return self.send(worker, P.DONE, [entries], payload)

    def finish(self, worker: bytes, *keys: str, nbytes: int = 8) -> Out:
        return self.done(worker, [[key, P.FINISHED, ["int", nbytes], 0] for key in keys])


def msgs(out: Out, identity: bytes, command: int) -> list[Message]:
    return [m for i, m in out if i == identity and m.command == command]


def one(out: Out, identity: bytes, command: int) -> Message:
    found = msgs(out, identity, command)
    assert len(found) == 1, f"expected one {P.COMMAND_NAMES[command]} to {identity!r}, got {out}"
    return found[0]


def compute_keys(out: Out, identity: bytes) -> list[str]:
    return [entry[0] for m in msgs(out, identity, P.COMPUTE) for entry in m.header[1]]


def report_entries(out: Out, identity: bytes) -> dict[str, list[Any]]:
    """The REPORT entries for ``identity`` by key, without the answers to its CANCELs."""
    return {
        entry[0]: entry for m in msgs(out, identity, P.REPORT) for entry in m.header[0] if entry[1] != P.CANCELS_SEEN
    }


def cancels_seen(out: Out, identity: bytes) -> list[list[Any]]:
    """The answers to ``identity``'s CANCELs in ``out``, in order."""
    return [entry for m in msgs(out, identity, P.REPORT) for entry in m.header[0] if entry[1] == P.CANCELS_SEEN]


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- registration ------------------------------------------------------------------------


def test_hello_registers_and_welcome_carries_the_settings() -> None:
    h = Harness(heartbeat_interval_s=0.5, liveness_timeout_s=2.5, max_message_bytes=12345)
    welcome = one(h.worker(b"w1", nthreads=2, credit=7, name="alpha", pool="p", memory_limit=10), b"w1", P.WELCOME)
    assert welcome.header == [
        EPOCH,
        {"heartbeat_interval": 0.5, "liveness_timeout": 2.5, "max_message_bytes": 12345, "address": "tcp://test:1"},
    ]
    one(h.client(b"c1"), b"c1", P.WELCOME)
    info = h.state.info()
    assert info["nclients"] == 1
    entry = info["workers"][b"w1".hex()]
    assert (entry["name"], entry["nthreads"], entry["credit"], entry["pool"], entry["memory_limit"]) == (
        "alpha",
        2,
        7,
        "p",
        10,
    )
    assert (entry["processing"], entry["nkeys"], entry["nbytes"]) == (0, 0, 0)


@pytest.mark.parametrize(
    "info",
    [
        {"nthreads": 0, "credit": 1},
        {"nthreads": 1, "credit": "many"},
        {"credit": 2},
        {"nthreads": 1, "credit": 1, "name": 5},
        {"nthreads": True, "credit": 1},
    ],
)
def test_invalid_worker_hello_is_refused_and_not_registered(h: Harness, info: dict[str, Any]) -> None:
    out = h.send(b"w1", P.HELLO, ["worker", info])
    assert one(out, b"w1", P.ERROR).header[0] == P.ERR_MALFORMED
    assert not msgs(out, b"w1", P.WELCOME)
    assert h.state.info()["workers"] == {}
    assert msgs(h.send(b"w1", P.HEARTBEAT, [EPOCH]), b"w1", P.UNKNOWN_PEER)


def test_unregistered_sender_gets_unknown_peer(h: Harness) -> None:
    out = h.submit(b"stranger", [("a", [])])
    assert one(out, b"stranger", P.UNKNOWN_PEER).header == [EPOCH]
    assert h.state.ledger.tasks == {}
    assert h.send(b"stranger", P.GOODBYE, ["bye"]) == []


def test_role_may_not_send_other_roles_messages(h: Harness) -> None:
    h.client(b"c1")
    h.worker(b"w1")
    out = h.finish(b"c1", "a")
    assert one(out, b"c1", P.ERROR).header[0] == P.ERR_NOT_ALLOWED
    out = h.submit(b"w1", [("a", [])])
    assert one(out, b"w1", P.ERROR).header[0] == P.ERR_NOT_ALLOWED
    out = h.send(b"c1", P.COMPUTE, [[], []])
    assert one(out, b"c1", P.ERROR).header[0] == P.ERR_NOT_ALLOWED
    assert h.state.ledger.tasks == {}
    assert h.state.counters.not_allowed == 3


def test_hello_from_registered_identity_treats_old_incarnation_as_dead(h: Harness) -> None:
    h.client(b"c1")
    h.worker(b"w1")
    out = h.submit(b"c1", [("a", [])])
    assert compute_keys(out, b"w1") == ["a"]
    out = h.worker(b"w1")  # restarted with the same identity: its task is gone
    one(out, b"w1", P.WELCOME)
    assert compute_keys(out, b"w1") == ["a"]
    assert h.state.ledger.tasks["a"].suspicious == 0
    assert one(h.finish(b"w1", "a"), b"c1", P.REPORT).header[0][0][:2] == ["a", P.FINISHED]


# --- submit, dispatch, done ----------------------------------------------------------------


def test_round_trip_submit_compute_done_report(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])])
    compute = one(out, b"w1", P.COMPUTE)
    assert compute.header == [[FN], [["a", FN, [], 0, 1]]]
    assert compute.payload == [FN_FRAME, b"args:a"]
    out = h.finish(b"w1", "a", nbytes=28)
    assert one(out, b"c1", P.REPORT).header == [[["a", P.FINISHED, ["int", 28], 0]]]
    assert h.state.ledger.tasks["a"].state == "memory"


def test_push_result_flag_delivers_inline_value(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])], flags=P.FLAG_WANTED | P.FLAG_PUSH_RESULT)
    assert one(out, b"w1", P.COMPUTE).header[1][0][3] == P.FLAG_PUSH_RESULT
    out = h.done(b"w1", [["a", P.FINISHED, ["int", 28], 2]], [b"v1", b"v2"])
    report = one(out, b"c1", P.REPORT)
    assert report.header == [[["a", P.FINISHED, ["int", 28], 2]]]
    assert report.payload == [b"v1", b"v2"]


def test_a_small_value_that_came_inline_goes_to_every_client_holding_a_future(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c2", [("a", [])], with_function=False)
    out = h.done(b"w1", [["a", P.FINISHED, ["int", 28], b"tiny"]])
    for client in (b"c1", b"c2"):
        assert report_entries(out, client)["a"] == ["a", P.FINISHED, ["int", 28], b"tiny"]
    # Values sent as frames (not inline) are not forwarded unasked.
    h.submit(b"c1", [("b", [])], with_function=False)
    out = h.done(b"w1", [["b", P.FINISHED, ["int", 28], 1]], [b"frame"])
    assert one(out, b"c1", P.REPORT).header == [[["b", P.FINISHED, ["int", 28], 0]]]


def test_push_result_without_inline_value_is_fetched_with_get(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", [])], flags=P.FLAG_WANTED | P.FLAG_PUSH_RESULT)
    out = h.finish(b"w1", "a")
    assert not msgs(out, b"c1", P.REPORT)
    get = one(out, b"w1", P.GET)
    assert get.header[1] == ["a"]
    out = h.send(b"w1", P.DATA, [get.header[0], [["a", 1]], []], [b"value"])
    report = one(out, b"c1", P.REPORT)
    assert report.header == [[["a", P.FINISHED, ["int", 8], 1]]]
    assert report.payload == [b"value"]


def test_one_compute_per_worker_and_one_report_per_client_per_step(h: Harness) -> None:
    h.worker(b"w1", credit=5)
    h.worker(b"w2", credit=5)
    h.client(b"c1")
    keys = [f"t{i}" for i in range(10)]
    out = h.submit(b"c1", [(k, []) for k in keys])
    assert len(msgs(out, b"w1", P.COMPUTE)) == 1
    assert len(msgs(out, b"w2", P.COMPUTE)) == 1
    sent_w1, sent_w2 = compute_keys(out, b"w1"), compute_keys(out, b"w2")
    assert sorted(sent_w1 + sent_w2) == sorted(keys)
    assert len(sent_w1) == len(sent_w2) == 5
    out = h.finish(b"w1", *sent_w1)
    assert len(msgs(out, b"c1", P.REPORT)) == 1
    assert sorted(report_entries(out, b"c1")) == sorted(sent_w1)


def test_credit_is_never_exceeded() -> None:
    h = Harness(audit=False)
    credits = {b"w1": 3, b"w2": 1, b"w3": 2}
    for identity, credit in credits.items():
        h.worker(identity, credit=credit)
    h.client(b"c1")
    held: dict[bytes, set[str]] = {w: set() for w in credits}
    rng = random.Random(7)

    def absorb(out: Out) -> None:
        for w in credits:
            held[w].update(compute_keys(out, w))
            assert len(held[w]) <= credits[w]

    absorb(h.submit(b"c1", [(f"t{i}", []) for i in range(60)]))
    finished = 0
    while finished < 60:
        w = rng.choice([w for w in credits if held[w]])
        batch = rng.sample(sorted(held[w]), rng.randint(1, len(held[w])))
        held[w].difference_update(batch)
        finished += len(batch)
        absorb(h.finish(w, *batch))
        for entry in h.state.info()["workers"].values():
            assert entry["processing"] <= entry["credit"]
    assert h.state.ledger.counts["memory"] == 60
    assert h.state.audit() == []


def test_seceded_tasks_leave_room_in_the_window_and_credit_until_they_finish(h: Harness) -> None:
    h.worker(b"w1", credit=2)
    h.client(b"c1")
    out = h.submit(b"c1", [(f"parent{i}", []) for i in range(4)])
    assert compute_keys(out, b"w1") == ["parent0", "parent1"]  # the credit is full
    # Both parents wait for children (get_client in a task): they stop counting.
    out = h.send(b"w1", P.SECEDE, [["parent0", "parent1", "never-sent"]])
    assert compute_keys(out, b"w1") == ["parent2", "parent3"]
    out = h.submit(b"c1", [("child0", [])])
    assert compute_keys(out, b"w1") == []  # parent2 and parent3 fill the credit again
    out = h.send(b"w1", P.SECEDE, [["parent2"]])
    assert compute_keys(out, b"w1") == ["child0"]
    info = h.state.info()["workers"]
    assert [(w["processing"], w["seceded"]) for w in info.values()] == [(5, 3)]
    h.finish(b"w1", "child0", "parent0", "parent2")  # answers end the seceded state
    assert h.state.workers[b"w1"].seceded == {"parent1"}
    assert h.state.audit() == []


def test_tasks_queued_behind_a_stalled_worker_go_to_an_idle_one(h: Harness) -> None:
    h.worker(b"w1", credit=20)
    h.client(b"c1")
    h.submit(b"c1", [("long", [])])  # the only worker: w1 runs it (for ever, as it turns out)
    out = h.submit(b"c1", [(f"t{i}", []) for i in range(6)])
    assert compute_keys(out, b"w1") == [f"t{i}" for i in range(6)]  # queued behind "long"
    h.worker(b"w2", credit=20)
    assert not msgs(h.tick(0.5), b"w1", P.CANCEL_TASKS)  # not stalled yet
    out = h.tick(0.6)
    given_back = one(out, b"w1", P.CANCEL_TASKS).header[0]
    assert sorted(given_back) == [f"t{i}" for i in range(6)]  # newest first, all of the excess
    # w1 drops those it had not started; they go to w2, and w1 gets no more for now.
    out = h.done(b"w1", [[key, P.CANCELLED, "cancelled", 0] for key in given_back])
    assert sorted(compute_keys(out, b"w2")) == sorted(given_back) and not compute_keys(out, b"w1")
    h.finish(b"w2", *given_back)
    out = h.submit(b"c1", [("more", [])])
    assert compute_keys(out, b"w2") == ["more"]
    # Once w1 finishes something it takes tasks again.
    h.finish(b"w1", "long")
    out = h.submit(b"c1", [("again", []), ("and-again", [])])
    assert compute_keys(out, b"w1")


def test_a_busy_worker_keeps_its_queue_while_no_other_worker_is_idle(h: Harness) -> None:
    h.worker(b"w1", credit=20)
    h.worker(b"w2", credit=20)
    h.client(b"c1")
    out = h.submit(b"c1", [(f"t{i}", []) for i in range(10)])
    assert compute_keys(out, b"w1") and compute_keys(out, b"w2")
    for _ in range(30):  # 3 s with both workers busy: nothing moves
        assert not [m for _, m in h.tick(0.1) if m.command == P.CANCEL_TASKS]


def test_function_frames_are_sent_once_per_worker(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    first = one(h.submit(b"c1", [("a", [])]), b"w1", P.COMPUTE)
    assert first.header[0] == [FN] and first.payload[0] == FN_FRAME
    h.submit(b"c1", [("b", [])], with_function=False)  # queued: no credit left
    second = one(h.finish(b"w1", "a"), b"w1", P.COMPUTE)
    assert second.header[0] == [] and second.payload == [b"args:b"]
    h.worker(b"w2", credit=1)
    third = one(h.submit(b"c1", [("c", [])], with_function=False), b"w2", P.COMPUTE)  # w1 is busy
    assert third.header[0] == [FN] and third.payload == [FN_FRAME, b"args:c"]


def held_functions(h: Harness) -> int:
    return int(h.state.info()["functions"])


def test_a_function_is_kept_while_its_client_may_name_it_and_dropped_when_it_forgets(h: Harness) -> None:
    h.worker(b"w1", credit=4)
    h.worker(b"w2", credit=4)
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])])
    first = [identity for identity, m in out if m.command == P.COMPUTE]
    assert len(first) == 1 and h.state.info()["function_bytes"] == len(FN_FRAME)
    h.finish(first[0], "a")
    out = h.send(b"c1", P.RELEASE, [["a"]])
    assert h.state.ledger.tasks == {}
    assert held_functions(h) == 1, "the client may still name the function by hash"
    assert not [m for _, m in out if m.command == P.FORGET_FUNCTIONS]
    out = h.send(b"c1", P.FORGET_FUNCTIONS, [[FN]])
    assert held_functions(h) == 0 and h.state.info()["function_bytes"] == 0
    # Only the worker that received the function is told to drop it.
    assert one(out, first[0], P.FORGET_FUNCTIONS).header == [[FN]]
    other = b"w2" if first[0] == b"w1" else b"w1"
    assert not msgs(out, other, P.FORGET_FUNCTIONS)
    # Sent again, the function reaches that worker again with its next task.
    again = h.submit(b"c1", [("b", [])])
    computes = [m for _, m in again if m.command == P.COMPUTE]
    assert len(computes) == 1 and computes[0].header[0] == [FN] and computes[0].payload[0] == FN_FRAME


def test_a_function_outlives_its_clients_while_a_task_runs_it(h: Harness) -> None:
    h.worker(b"w1", credit=4)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c2", [("b", [])], with_function=False)  # c2 names it without sending it
    out = h.send(b"c1", P.FORGET_FUNCTIONS, [[FN]])
    assert held_functions(h) == 1 and not msgs(out, b"w1", P.FORGET_FUNCTIONS)
    h.send(b"c1", P.GOODBYE, ["bye"])
    assert held_functions(h) == 1, "task b still runs the function"
    h.finish(b"w1", "a", "b")
    out = h.send(b"c2", P.RELEASE, [["b"]])
    assert held_functions(h) == 0
    assert one(out, b"w1", P.FORGET_FUNCTIONS).header == [[FN]]


def test_functions_of_a_client_that_leaves_are_dropped_unless_another_owns_them(h: Harness) -> None:
    h.worker(b"w1", credit=4)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c2", [("b", [])])  # c2 sends the same function: both own it
    h.submit(b"c2", [("g", [])], fn=b"fn-other")
    h.finish(b"w1", "a", "b", "g")
    h.send(b"c1", P.RELEASE, [["a"]])
    h.send(b"c2", P.RELEASE, [["b", "g"]])
    assert held_functions(h) == 2
    out = h.send(b"c1", P.GOODBYE, ["bye"])
    assert held_functions(h) == 2 and not msgs(out, b"w1", P.FORGET_FUNCTIONS)
    h.send(b"c2", P.FORGET_FUNCTIONS, [[b"fn-other", b"never-sent"]])
    assert held_functions(h) == 1
    h.now += 100.0  # c2 falls silent and is declared dead; w1 does not
    h.send(b"w1", P.HEARTBEAT, [EPOCH])
    out = h.tick(0.0)
    assert not h.state.clients and held_functions(h) == 0
    assert one(out, b"w1", P.FORGET_FUNCTIONS).header == [[FN]]


def test_forget_functions_from_a_worker_is_refused(h: Harness) -> None:
    h.worker(b"w1")
    out = h.send(b"w1", P.FORGET_FUNCTIONS, [[FN]])
    assert one(out, b"w1", P.ERROR).header[0] == P.ERR_NOT_ALLOWED


def test_unknown_function_hash_errs_the_task(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])], with_function=False, fn=b"never-sent")
    entry = report_entries(out, b"c1")["a"]
    assert entry[1] == P.ERRED
    assert entry[2][0] == "ProtocolError" and "unknown to broker; resend" in entry[2][1]
    assert entry[2][2] == "a" and entry[3] == 0
    assert not msgs(out, b"w1", P.COMPUTE)


def test_priority_then_submission_order(h: Harness) -> None:
    h.client(b"c1")
    h.submit(b"c1", [("low", [])], priority=0)
    h.submit(b"c1", [("high", [])], priority=5, with_function=False)
    h.submit(b"c1", [("low2", [])], priority=0, with_function=False)
    out = h.worker(b"w1", credit=1)
    assert compute_keys(out, b"w1") == ["high"]
    assert compute_keys(h.finish(b"w1", "high"), b"w1") == ["low"]
    assert compute_keys(h.finish(b"w1", "low"), b"w1") == ["low2"]


# --- dependencies and locality -------------------------------------------------------------


def test_task_goes_to_the_holder_of_most_input_bytes_and_names_other_holders(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    out = h.submit(b"c1", [("big", []), ("small", [])])
    holder = {key: w for w in (b"w1", b"w2") for key in compute_keys(out, w)}
    assert holder["big"] != holder["small"]
    h.finish(holder["big"], "big", nbytes=10_000_000)
    out = h.finish(holder["small"], "small", nbytes=10)
    out = h.submit(b"c1", [("sum", ["big", "small"])], with_function=False)
    compute = one(out, holder["big"], P.COMPUTE)
    assert compute.header[1][0][2] == [["big", None], ["small", holder["small"]]]


def test_dependent_waits_until_inputs_on_different_workers_are_in_memory(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.worker(b"w2", credit=1)
    h.client(b"c1")
    out = h.submit(b"c1", [("a", []), ("c", []), ("b", ["a", "c"])])
    assert sorted(compute_keys(out, b"w1") + compute_keys(out, b"w2")) == ["a", "c"]
    assert h.state.ledger.tasks["b"].state == "waiting"  # its inputs run on two workers
    holder_of_a = b"w1" if compute_keys(out, b"w1") == ["a"] else b"w2"
    other = b"w2" if holder_of_a == b"w1" else b"w1"
    h.finish(holder_of_a, "a")
    out = h.finish(other, "c")
    assert compute_keys(out, b"w1") + compute_keys(out, b"w2") == ["b"]


def test_dependents_go_ahead_to_the_worker_computing_their_inputs(h: Harness) -> None:
    h.worker(b"w1", credit=3)
    h.client(b"c1")
    out = h.submit(b"c1", [("k0", [])] + [(f"k{i}", [f"k{i - 1}"]) for i in range(1, 5)])
    compute = one(out, b"w1", P.COMPUTE)
    # The chain follows its first task to w1 as far as the credit allows, each link naming
    # its input as local (None): w1 runs it when the input finishes there.
    assert [entry[0] for entry in compute.header[1]] == ["k0", "k1", "k2"]
    assert [entry[2] for entry in compute.header[1]] == [[], [["k0", None]], [["k1", None]]]
    assert h.state.ledger.tasks["k3"].state == "waiting"
    out = h.finish(b"w1", "k0")
    assert compute_keys(out, b"w1") == ["k3"]  # room again: the next link goes ahead too
    out = h.finish(b"w1", "k1", "k2", "k3")
    assert compute_keys(out, b"w1") == ["k4"]
    out = h.finish(b"w1", "k4")
    assert report_entries(out, b"c1")["k4"][1] == P.FINISHED


def test_a_task_sent_ahead_of_a_failed_input_fails_and_is_cancelled(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", []), ("b", ["a"])])
    assert compute_keys(out, b"w1") == ["a", "b"]
    out = h.done(b"w1", [["a", P.ERRED, ["E", "m", "a"], 1]], [b"<exc>"])
    assert report_entries(out, b"c1")["b"][1] == P.ERRED
    assert one(out, b"w1", P.CANCEL_TASKS).header == [["b"]]
    # The worker answers for b (it never ran it); b keeps its record until then.
    h.done(b"w1", [["b", P.MISSING_DEPS, ["a"], 0]])
    assert h.state.workers[b"w1"].processing == {}


def test_tasks_sent_ahead_to_a_worker_that_dies_are_requeued_after_their_inputs(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", []), ("b", ["a"]), ("c", ["b"])])
    assert compute_keys(out, b"w1") == ["a", "b", "c"]
    h.worker(b"w2")
    out = h.send(b"w1", P.GOODBYE, ["bye"])
    # The chain starts over on w2, again sent whole: each link after its input.
    assert compute_keys(out, b"w2") == ["a", "b", "c"]
    out = h.finish(b"w2", "a", "b", "c")
    assert report_entries(out, b"c1")["c"][1] == P.FINISHED


def test_a_task_sent_ahead_is_requeued_when_its_input_is_given_back(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", []), ("b", ["a"])])
    assert compute_keys(out, b"w1") == ["a", "b"]
    # w1 drops a (cancelled) and so b, which it cannot run without it.
    out = h.done(b"w1", [["a", P.CANCELLED, "cancelled", 0], ["b", P.MISSING_DEPS, ["a"], 0]])
    assert compute_keys(out, b"w1") == ["a", "b"]
    h.finish(b"w1", "a")
    out = h.finish(b"w1", "b")
    assert report_entries(out, b"c1")["b"][1] == P.FINISHED


def test_unknown_dependency_errs_the_task(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("b", ["ghost"])])
    entry = report_entries(out, b"c1")["b"]
    assert entry[1] == P.ERRED and entry[2] == ["LostDataError", "dependency ghost is unknown", "b"]


def test_released_inputs_are_recomputed_when_needed_again(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])], flags=0)
    assert not msgs(out, b"w1", P.COMPUTE) and "a" not in h.state.ledger.tasks  # nobody needs it
    out = h.submit(b"c1", [("a", []), ("b", ["a"])], unwanted=("a",), with_function=False)
    assert compute_keys(out, b"w1") == ["a", "b"]  # b goes ahead to the worker computing a
    h.finish(b"w1", "a")
    out = h.finish(b"w1", "b")
    assert one(out, b"w1", P.DELETE).header == [["a"]]  # b done: a is not needed any more
    assert h.state.ledger.tasks["a"].state == "released"  # spec kept: b's lineage
    out = h.send(b"c1", P.GATHER, [["a"]])  # asking for it again recomputes it
    assert compute_keys(out, b"w1") == ["a"]


# --- duplicate submissions ---------------------------------------------------------------


def test_pure_task_submitted_twice_runs_once(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    out1 = h.submit(b"c1", [("same", [])])
    out2 = h.submit(b"c2", [("same", [])])
    assert compute_keys(out1, b"w1") == ["same"]
    assert compute_keys(out2, b"w1") == []
    out = h.finish(b"w1", "same")
    assert "same" in report_entries(out, b"c1") and "same" in report_entries(out, b"c2")
    out = h.submit(b"c1", [("same", [])])  # already in memory: reported at once
    assert report_entries(out, b"c1")["same"][1] == P.FINISHED
    assert not compute_keys(out, b"w1")
    out = h.submit(b"c2", [("same", [])], flags=P.FLAG_WANTED | P.FLAG_PUSH_RESULT)
    assert one(out, b"w1", P.GET).header[1] == ["same"]


def test_resubmitting_an_erred_key_reports_the_error_again(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("bad", [])])
    detail = ["ZeroDivisionError", "division by zero", "bad"]
    h.done(b"w1", [["bad", P.ERRED, detail, 1]], [b"<exc>"])
    out = h.submit(b"c2", [("bad", [])])
    report = one(out, b"c2", P.REPORT)
    assert report.header == [[["bad", P.ERRED, detail, 1]]] and report.payload == [b"<exc>"]


# --- gather ----------------------------------------------------------------------------


def test_gather_memory_pending_erred_and_unknown(h: Harness) -> None:
    h.worker(b"w1", credit=2)
    h.client(b"c1")
    h.submit(b"c1", [("mem", []), ("bad", []), ("pending", [])])
    h.finish(b"w1", "mem")
    h.done(b"w1", [["bad", P.ERRED, ["ValueError", "no", "bad"], 1]], [b"<exc>"])
    out = h.send(b"c1", P.GATHER, [["mem", "bad", "pending", "nope"]])
    get = one(out, b"w1", P.GET)
    assert get.header[1] == ["mem"]
    entries = report_entries(out, b"c1")
    assert entries["bad"][1] == P.ERRED
    assert entries["nope"][1] == P.LOST and "unknown key" in entries["nope"][2]
    assert "pending" not in entries
    out = h.send(b"w1", P.DATA, [get.header[0], [["mem", 1]], []], [b"m"])
    report = one(out, b"c1", P.REPORT)
    assert report.header[0] == [["mem", P.FINISHED, ["int", 8], 1]] and report.payload == [b"m"]
    out = h.finish(b"w1", "pending")
    assert one(out, b"w1", P.GET).header[1] == ["pending"]


def test_gather_retries_another_holder_when_data_is_missing(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    holder = next(w for w in (b"w1", b"w2") if h.state.workers[w].processing)
    h.finish(holder, "a")
    out = h.send(b"c1", P.GATHER, [["a"]])
    get = one(out, holder, P.GET)
    out = h.send(holder, P.DATA, [get.header[0], [], ["a"]])  # it lost the value
    assert compute_keys(out, b"w1") + compute_keys(out, b"w2") == ["a"]  # recomputed
    new_holder = next(w for w in (b"w1", b"w2") if h.state.workers[w].processing)
    out = h.finish(new_holder, "a")
    assert one(out, new_holder, P.GET).header[1] == ["a"]  # the client still gets its value


# --- release, forget, cancel ----------------------------------------------------------


def test_release_forgets_everything_no_leak(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    graph = [("a", []), ("b", ["a"]), ("c", ["a", "b"]), ("d", ["c"])]
    h.submit(b"c1", graph)
    for key, _ in graph:
        h.finish(b"w1", key)
    out = h.send(b"c1", P.RELEASE, [["a", "b", "c", "d"]])
    assert sorted(one(out, b"w1", P.DELETE).header[0]) == ["a", "b", "c", "d"]
    assert h.state.ledger.tasks == {}
    assert h.state.workers[b"w1"].nbytes == 0


def test_release_of_pending_tasks_drops_and_cancels_them(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.submit(b"c1", [("run", []), ("wait", [])])
    out = h.send(b"c1", P.RELEASE, [["run", "wait"]])
    assert one(out, b"w1", P.CANCEL_TASKS).header == [["run"]]
    assert "wait" not in h.state.ledger.tasks
    out = h.done(b"w1", [["run", P.CANCELLED, "cancelled", 0]])
    assert h.state.ledger.tasks == {}
    assert h.state.workers[b"w1"].processing == {}


def test_cancel_cancels_dependents_and_reports_to_their_wanters(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c1", [("x", [])], with_function=False)
    h.submit(b"c2", [("b", ["x"])], with_function=False)
    h.submit(b"c2", [("c", ["b"])], with_function=False)
    out = h.send(b"c1", P.CANCEL, [["x"]])
    assert report_entries(out, b"c1")["x"][1:3] == [P.CANCELLED, "cancelled"]
    entries = report_entries(out, b"c2")
    assert entries["b"][1] == P.CANCELLED and entries["c"][1] == P.CANCELLED
    assert set(h.state.ledger.tasks) == {"a"}
    out = h.send(b"c1", P.CANCEL, [["a"]])  # running: the worker is asked to drop it
    assert one(out, b"w1", P.CANCEL_TASKS).header == [["a"]]
    h.done(b"w1", [["a", P.FINISHED, ["int", 8], 0]])  # it finished anyway: discarded
    assert h.state.ledger.tasks == {}


def test_a_cancel_is_answered_once_after_every_report_it_causes(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c1", [("x", [])], with_function=False)
    h.submit(b"c1", [("y", ["x"])], with_function=False)
    out = h.send(b"c1", P.CANCEL, [["x", "gone"]])
    entries = [entry for m in msgs(out, b"c1", P.REPORT) for entry in m.header[0]]
    assert [entry[0] for entry in entries if entry[1] == P.CANCELLED] == ["x", "y", "gone"]
    assert entries[-1] == ["gone", P.CANCELS_SEEN, 2, 0]
    assert cancels_seen(out, b"c1") == [entries[-1]]
    # Answered even when nothing is cancelled (a finished key keeps its value).
    h.finish(b"w1", "a")
    out = h.send(b"c1", P.CANCEL, [["a"]])
    assert report_entries(out, b"c1") == {} and cancels_seen(out, b"c1") == [["a", P.CANCELS_SEEN, 1, 0]]
    # Submitted again after the CANCEL: a new task, reported normally.
    h.send(b"c1", P.CANCEL, [["x"]])
    h.submit(b"c1", [("x", [])], with_function=False)
    assert "x" in h.state.ledger.tasks


def test_clients_and_workers_of_different_pythons_are_warned_about(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.worker(b"w1", python="3.12")
    out = h.send(b"c1", P.HELLO, ["client", {"name": "c1", "pid": 1, "python": "3.11"}])
    assert one(out, b"c1", P.WELCOME).header[1]["worker_pythons"] == ["3.12"]
    assert "Python 3.11, while workers run Python 3.12" in caplog.text
    caplog.clear()
    h.worker(b"w2", python="3.11")  # the same as the client: nothing to say
    assert "Python" not in caplog.text
    h.send(b"w1", P.GOODBYE, ["bye"])
    out = h.send(b"c2", P.HELLO, ["client", {"name": "c2", "pid": 2, "python": "3.11"}])
    assert one(out, b"c2", P.WELCOME).header[1]["worker_pythons"] == ["3.11"]
    assert "Python" not in caplog.text


def test_kept_tasks_run_to_the_end_after_their_client_leaves(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", []), ("c", ["b"])])
    h.send(b"c1", P.KEEP, [["a", "c", "unknown"]])
    out = h.send(b"c1", P.GOODBYE, ["bye"])
    # a and c (and c's input b) stay; nothing is cancelled on the worker.
    assert set(h.state.ledger.tasks) == {"a", "b", "c"} and not msgs(out, b"w1", P.CANCEL_TASKS)
    h.finish(b"w1", "a")
    h.finish(b"w1", "b")
    h.finish(b"w1", "c")
    # Finished and wanted by nobody: released and forgotten, as any unwanted result.
    assert h.state.ledger.tasks == {} and not h.state.ledger.kept


def test_a_kept_task_that_fails_is_forgotten_too(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    h.send(b"c1", P.KEEP, [["a"]])
    h.send(b"c1", P.GOODBYE, ["bye"])
    h.done(b"w1", [["a", P.ERRED, ["ValueError", "no", "a"], 1]], [b"<exc>"])
    assert h.state.ledger.tasks == {} and not h.state.ledger.kept


def test_a_key_submitted_again_as_another_call_while_its_cancelled_run_goes_on(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    out = h.submit(b"c1", [("k", [])])
    assert compute_keys(out, b"w1") == ["k"]
    h.send(b"c1", P.CANCEL, [["k"]])  # running: the worker is asked to drop it, and may not
    entry = ["k", FN, [], 0, 0, P.FLAG_WANTED, 1]
    out = h.send(b"c1", P.SUBMIT, [[], [entry]], [b"args:another call"])
    assert not compute_keys(out, b"w1")  # not twice at once on the worker
    # The old call's result is dropped (and deleted on the worker); the new call runs.
    out = h.done(b"w1", [["k", P.FINISHED, ["int", 8], 0]])
    assert not msgs(out, b"c1", P.REPORT) and msgs(out, b"w1", P.DELETE)
    assert compute_keys(out, b"w1") == ["k"]
    out = h.finish(b"w1", "k")
    assert report_entries(out, b"c1")["k"][1] == P.FINISHED
    # The same call submitted again takes over the run going on: one run, its result.
    h.submit(b"c1", [("same", [])], with_function=False)
    h.send(b"c1", P.CANCEL, [["same"]])
    out = h.submit(b"c1", [("same", [])], with_function=False)
    assert not compute_keys(out, b"w1")
    out = h.finish(b"w1", "same")
    assert report_entries(out, b"c1")["same"][1] == P.FINISHED


def test_cancel_keeps_a_key_someone_else_wants(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    h.submit(b"c2", [("a", [])])
    out = h.send(b"c1", P.CANCEL, [["a"]])
    assert report_entries(out, b"c1")["a"][1] == P.CANCELLED
    assert not msgs(out, b"w1", P.CANCEL_TASKS) and not msgs(out, b"c2", P.REPORT)
    out = h.finish(b"w1", "a")
    assert "a" in report_entries(out, b"c2") and not msgs(out, b"c1", P.REPORT)


# --- errors ---------------------------------------------------------------------------


def test_retries_requeue_then_error(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("flaky", [])], retries=1)
    detail = ["OSError", "flaky", "flaky"]
    out = h.done(b"w1", [["flaky", P.ERRED, detail, 1]], [b"<exc1>"])
    assert compute_keys(out, b"w1") == ["flaky"] and not msgs(out, b"c1", P.REPORT)
    out = h.done(b"w1", [["flaky", P.ERRED, detail, 1]], [b"<exc2>"])
    report = one(out, b"c1", P.REPORT)
    assert report.header == [[["flaky", P.ERRED, detail, 1]]] and report.payload == [b"<exc2>"]


def test_retry_runs_an_erred_task_and_its_erred_input_again(h: Harness) -> None:
    h.worker(b"w1", credit=4)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", ["a"])])
    out = h.done(b"w1", [["a", P.ERRED, ["ValueError", "flaky", "a"], 1]], [b"exc"])
    assert report_entries(out, b"c1")["b"][1] == P.ERRED
    h.done(b"w1", [["b", P.MISSING_DEPS, ["a"], 0]])  # b had gone ahead to w1: it answers for it
    # Without the flag a resubmitted erred key only repeats its error.
    out = h.submit(b"c1", [("a", [])], with_function=False)
    assert report_entries(out, b"c1")["a"][1] == P.ERRED and not compute_keys(out, b"w1")
    # With it, inputs first as the client sends them, both run again.
    flags = P.FLAG_WANTED | P.FLAG_RETRY
    out = h.submit(b"c1", [("a", []), ("b", ["a"])], flags=flags, with_function=False)
    assert compute_keys(out, b"w1") == ["a", "b"]  # b goes ahead to the worker computing a
    assert not report_entries(out, b"c1")
    out = h.finish(b"w1", "a", "b")
    assert {key: entry[1] for key, entry in report_entries(out, b"c1").items()} == {"a": P.FINISHED, "b": P.FINISHED}
    # The flag is ignored for a key that did not err.
    out = h.submit(b"c1", [("a", [])], flags=flags, with_function=False)
    assert report_entries(out, b"c1")["a"][1] == P.FINISHED and not compute_keys(out, b"w1")


def test_errors_propagate_to_dependents_with_the_same_detail(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", []), ("b", ["a"])])
    h.submit(b"c2", [("c", ["b"])], with_function=False)
    detail = ["KeyError", "'k'", "a"]
    out = h.done(b"w1", [["a", P.ERRED, detail, 1]], [b"<exc>"])
    c1, c2 = report_entries(out, b"c1"), report_entries(out, b"c2")
    assert c1["a"] == ["a", P.ERRED, detail, 1] and c1["b"] == ["b", P.ERRED, detail, 1]
    assert c2["c"] == ["c", P.ERRED, detail, 1]
    assert one(out, b"c2", P.REPORT).payload == [b"<exc>"]
    out = h.submit(b"c2", [("d", ["c"])], with_function=False)  # erred input: erred at once
    assert report_entries(out, b"c2")["d"] == ["d", P.ERRED, detail, 1]


def test_deep_chains_do_not_recurse(h: Harness) -> None:
    h.audit = False
    h.worker(b"w1")
    h.client(b"c1")
    depth = 5000
    h.submit(b"c1", [("k0", [])] + [(f"k{i}", [f"k{i - 1}"]) for i in range(1, depth)])
    out = h.done(b"w1", [["k0", P.ERRED, ["E", "m", "k0"], 1]], [b"<exc>"])
    assert len(report_entries(out, b"c1")) == depth
    # Links sent ahead to w1 are cancelled there; w1 confirms.
    cancelled = one(out, b"w1", P.CANCEL_TASKS).header[0]
    h.done(b"w1", [[key, P.CANCELLED, "cancelled", 0] for key in cancelled])
    h.send(b"c1", P.RELEASE, [[f"k{i}" for i in range(depth)]])
    while h.state.pending_work:  # a large release is applied over several steps
        h.state.work(h.now)
    assert h.state.ledger.tasks == {}


def test_large_releases_are_applied_over_steps_and_never_after_a_later_submission(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.state

    monkeypatch.setattr(broker.state, "RELEASE_KEYS_PER_STEP", 2)
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", []), ("c", []), ("d", [])])
    h.finish(b"w1", "a", "b", "c", "d")
    out = h.send(b"c1", P.RELEASE, [["a", "b", "c", "d"]])
    assert sorted(one(out, b"w1", P.DELETE).header[0]) == ["a", "b"]  # this step's share
    assert h.state.pending_work and h.state.ledger.tasks["c"].state == "memory"
    # Submitting c again applies the waiting releases first, so c stays wanted.
    out = h.submit(b"c1", [("c", [])], with_function=False)
    assert one(out, b"w1", P.DELETE).header == [["d"]]
    assert report_entries(out, b"c1")["c"][1] == P.FINISHED
    assert not h.state.pending_work and h.state.ledger.tasks["c"].wanted_by is not None
    # An INFO answer counts every release received before the request.
    h.submit(b"c1", [("e", []), ("f", [])], with_function=False)
    h.finish(b"w1", "e", "f")
    h.send(b"c1", P.RELEASE, [["c", "e", "f"]])
    assert h.state.pending_work
    info = one(h.send(b"c1", P.INFO, [7]), b"c1", P.INFO_REPLY).header[1]
    assert info["tasks"]["memory"] == 0 and not h.state.pending_work


# --- worker death ------------------------------------------------------------------------


def test_worker_death_requeues_its_tasks(h: Harness) -> None:
    h.worker(b"w1", credit=2)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", [])])
    out = h.send(b"w1", P.GOODBYE, ["bye"])
    assert not msgs(out, b"c1", P.REPORT)
    out = h.worker(b"w2", credit=2)
    assert sorted(compute_keys(out, b"w2")) == ["a", "b"]


def test_a_worker_leaving_warns_only_when_work_still_needed_is_lost(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.worker(b"w1", credit=2)
    h.worker(b"w2", credit=2)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", [])])
    for key in ("a", "b"):
        worker = h.state.ledger.tasks[key].processing_on
        assert worker is not None
        h.finish(worker.identity, key)
    with caplog.at_level("INFO", logger="broker.state"):
        h.send(b"c1", P.RELEASE, [["a", "b"]])
        h.state.work(h.now)  # releases are applied a share per step
        h.send(b"w1", P.GOODBYE, ["bye"])
        h.submit(b"c1", [("c", [])])
        h.finish(b"w2", "c")
        h.send(b"w2", P.GOODBYE, ["bye"])  # holds "c", which c1 still wants
    left = [(r.levelname, r.getMessage()) for r in caplog.records if "is gone" in r.getMessage()]
    assert [level for level, _ in left] == ["INFO", "WARNING"]
    assert left[1][1].endswith("1 keys it held, 1 of them still needed")


def test_lost_keys_are_recomputed_from_lineage(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", ["a"])], unwanted=("a",))
    h.finish(b"w1", "a")
    h.finish(b"w1", "b")
    assert h.state.ledger.tasks["a"].state == "released"
    h.worker(b"w2")
    out = h.send(b"w1", P.GOODBYE, ["bye"])
    assert compute_keys(out, b"w2") == ["a", "b"]  # b follows a, ahead of it
    h.finish(b"w2", "a")
    out = h.finish(b"w2", "b")
    assert report_entries(out, b"c1")["b"][1] == P.FINISHED


def test_killed_worker_after_three_deaths_while_running(h: Harness) -> None:
    h.client(b"c1")
    h.submit(b"c1", [("poison", []), ("innocent", [])])
    h.send(b"pool", P.HELLO, ["pool", {"pool": "p", "host": "h", "nworkers": 1}])
    for attempt in range(1, MAX_KILLED_ATTEMPTS + 1):
        identity = f"w-gen{attempt}".encode()
        out = h.worker(identity, credit=2)
        assert sorted(compute_keys(out, identity)) == ["innocent", "poison"]
        out = h.send(b"pool", P.WORKER_DIED, [identity, ["poison"], -9])
        assert h.state.ledger.tasks["innocent"].suspicious == 0
    entry = report_entries(out, b"c1")["poison"]
    assert entry[1] == P.ERRED and entry[3] == 0
    assert entry[2][0] == "KilledWorker" and entry[2][2] == "poison"
    assert f"Attempted to run task poison on {MAX_KILLED_ATTEMPTS} different workers" in entry[2][1]
    assert "innocent" not in report_entries(out, b"c1")
    assert h.state.ledger.tasks["innocent"].state == "queued"
    assert h.send(b"pool", P.WORKER_DIED, [b"w-gen1", ["innocent"], -9]) == []  # idempotent


def test_death_without_running_list_blames_all_until_the_pool_corrects_it(h: Harness) -> None:
    h.client(b"c1")
    h.send(b"pool", P.HELLO, ["pool", {"pool": "p", "host": "h", "nworkers": 1}])
    h.worker(b"w1", credit=2)
    h.submit(b"c1", [("runs", []), ("waits", [])])
    h.state.peer_unreachable(b"w1", h.now)
    h.check()
    tasks = h.state.ledger.tasks
    assert (tasks["runs"].suspicious, tasks["waits"].suspicious) == (1, 1)
    h.send(b"pool", P.WORKER_DIED, [b"w1", ["runs"], -11])
    assert (tasks["runs"].suspicious, tasks["waits"].suspicious) == (1, 0)


def test_scattered_data_without_holder_is_lost(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = h.send(b"c1", P.SCATTER, [[["x", 1]], False], [b"<x>"])
    assert one(out, b"w1", P.STORE).header == [[["x", 1]]]
    h.done(b"w1", [["x", P.FINISHED, ["list", 3], 0]])
    h.submit(b"c1", [("y", ["x"])])
    h.finish(b"w1", "y")
    out = h.send(b"w1", P.GOODBYE, ["bye"])
    entries = report_entries(out, b"c1")
    assert entries["x"][1] == P.LOST and "lost" in entries["x"][2]
    assert entries["y"][1] == P.ERRED and entries["y"][2][0] == "LostDataError"


def test_get_in_flight_to_a_dead_holder_is_answered_as_missing(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])])
    holder = b"w1" if compute_keys(out, b"w1") else b"w2"
    other = b"w2" if holder == b"w1" else b"w1"
    h.finish(holder, "a")
    h.send(b"c1", P.GATHER, [["a"]])
    out = h.send(other, P.FETCH, [77, holder, ["a"]])
    assert one(out, holder, P.GET).header[1] == ["a"]
    out = h.send(holder, P.GOODBYE, ["bye"])
    assert one(out, other, P.DATA).header == [77, [], ["a"]]
    assert compute_keys(out, other) == ["a"]  # the client's gather recomputes it


# --- worker to worker transfers --------------------------------------------------------


def test_fetch_is_relayed_to_the_holder_and_back(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    out = h.submit(b"c1", [("a", [])])
    holder = b"w1" if compute_keys(out, b"w1") else b"w2"
    other = b"w2" if holder == b"w1" else b"w1"
    h.finish(holder, "a")
    out = h.send(other, P.FETCH, [5, holder, ["a"]])
    get = one(out, holder, P.GET)
    out = h.send(holder, P.DATA, [get.header[0], [["a", 2]], []], [b"part1", b"part2"])
    data = one(out, other, P.DATA)
    assert data.header == [5, [["a", 2]], []] and data.payload == [b"part1", b"part2"]
    out = h.send(other, P.FETCH, [6, b"nobody", ["a"]])
    assert one(out, other, P.DATA).header == [6, [], ["a"]]


def test_missing_deps_recomputes_the_input(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", ["a"])], unwanted=("a",))
    h.finish(b"w1", "a")
    out = h.done(b"w1", [["b", P.MISSING_DEPS, ["a"], 0]])  # w1 lost a
    assert compute_keys(out, b"w1") == ["a", "b"]  # a again, and b ahead of it
    assert report_entries(h.finish(b"w1", "a", "b"), b"c1")["b"][1] == P.FINISHED


def test_result_from_a_presumed_dead_worker_is_accepted(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2", credit=1)
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    runner = next(w for w in (b"w1", b"w2") if h.state.workers[w].processing)
    h.state.peer_unreachable(runner, h.now)
    other = b"w2" if runner == b"w1" else b"w1"
    assert h.state.ledger.tasks["a"].processing_on is h.state.workers[other]
    h.worker(runner)
    out = h.finish(runner, "a")
    assert report_entries(out, b"c1")["a"][1] == P.FINISHED
    assert one(out, other, P.CANCEL_TASKS).header == [["a"]]
    out = h.finish(other, "a")
    assert one(out, other, P.DELETE).header == [["a"]]


# --- scatter ----------------------------------------------------------------------------


def test_scatter_waits_for_a_worker_then_stores_and_reports(h: Harness) -> None:
    h.client(b"c1")
    out = h.send(b"c1", P.SCATTER, [[["x", 1], ["y", 2]], False], [b"<x>", b"<y0>", b"<y1>"])
    assert out == []
    out = h.worker(b"w1")
    store = one(out, b"w1", P.STORE)
    assert store.header == [[["x", 1], ["y", 2]]] and store.payload == [b"<x>", b"<y0>", b"<y1>"]
    assert h.state.ledger.tasks["x"].payload is not None
    out = h.finish(b"w1", "x", "y", nbytes=3)
    assert set(report_entries(out, b"c1")) == {"x", "y"}
    assert h.state.ledger.tasks["x"].payload is None  # the broker keeps no copy
    assert h.state.workers[b"w1"].processing == {}


def test_scatter_spreads_keys_and_broadcast_reaches_every_worker(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    out = h.send(b"c1", P.SCATTER, [[["p", 1], ["q", 1]], False], [b"a" * 100, b"b" * 100])
    stored = {w: [e[0] for m in msgs(out, w, P.STORE) for e in m.header[0]] for w in (b"w1", b"w2")}
    assert sorted(stored[b"w1"] + stored[b"w2"]) == ["p", "q"] and stored[b"w1"] and stored[b"w2"]
    out = h.send(b"c1", P.SCATTER, [[["all", 1]], True], [b"z"])
    assert one(out, b"w1", P.STORE).header == one(out, b"w2", P.STORE).header == [[["all", 1]]]
    h.finish(b"w1", "all")
    h.finish(b"w2", "all")
    assert len(h.state.ledger.tasks["all"].who_has or ()) == 2


# --- clients -----------------------------------------------------------------------------


def test_client_death_releases_its_keys(h: Harness) -> None:
    h.worker(b"w1", credit=1)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("mine", [])])
    h.submit(b"c2", [("theirs", []), ("queued", [])], with_function=False)
    h.finish(b"w1", "mine")
    out = h.send(b"c1", P.GOODBYE, ["closing"])
    assert one(out, b"w1", P.DELETE).header == [["mine"]]
    assert one(out, b"c1", P.GOODBYE).header == ["goodbye"]  # the answer a closing client waits for
    assert set(h.state.ledger.tasks) == {"theirs", "queued"}
    h.tick(h.state.liveness_timeout_s * 0.6)
    h.send(b"w1", P.HEARTBEAT, [EPOCH])
    h.tick(h.state.liveness_timeout_s * 0.6)  # c2 silent too long: like releasing everything
    assert h.state.info()["nclients"] == 0
    assert set(h.state.ledger.tasks) == {"theirs"}  # running: cancelled, awaiting the answer
    h.done(b"w1", [["theirs", P.CANCELLED, "cancelled", 0]])
    assert h.state.ledger.tasks == {}


# --- time --------------------------------------------------------------------------------


def test_heartbeats_and_liveness_follow_injected_time() -> None:
    h = Harness(heartbeat_interval_s=1.0, liveness_timeout_s=3.0)
    h.worker(b"w1")
    h.client(b"c1")
    assert h.tick(0.5) == []
    out = h.tick(0.6)
    assert sorted(i for i, m in out if m.command == P.HEARTBEAT) == [b"c1", b"w1"]
    assert one(out, b"w1", P.HEARTBEAT).header == [EPOCH]
    assert h.tick(0.5) == []  # just sent one
    h.send(b"c1", P.HEARTBEAT, [EPOCH])
    h.tick(1.0)
    h.tick(1.0)  # w1 silent for 3.1 s now, c1 for 2.0 s
    assert h.state.info()["workers"] == {} and h.state.info()["nclients"] == 1
    assert one(h.send(b"w1", P.HEARTBEAT, [EPOCH]), b"w1", P.UNKNOWN_PEER).header == [EPOCH]


def test_shutdown_says_goodbye_to_everyone(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    out = [(i, decode(m)) for i, m in h.state.shutdown("broker shutting down")]
    assert sorted(i for i, _ in out) == [b"c1", b"w1"]
    assert all(m.command == P.GOODBYE and m.header == ["broker shutting down"] for _, m in out)


# --- hostile input -----------------------------------------------------------------------


def test_malformed_messages_get_an_error_and_are_counted(h: Harness) -> None:
    h.client(b"c1")
    bad = [
        [b"\x01"],
        [b"\x09\x0a", b"\x92\x90\x90"],
        [bytes((1, 99)), b"\x90"],
        [bytes((1, P.SUBMIT)), b"\xc1"],
        encode(P.SUBMIT, [[], [["k", FN, [], 0, 0, 0, 2]]], [b"only-one"]),
        encode(P.GATHER, [[""]]),
    ]
    for frames in bad:
        out = h.raw(b"c1", frames)
        assert one(out, b"c1", P.ERROR).header[0] == P.ERR_MALFORMED
    assert h.state.counters.malformed == len(bad) == h.state.info()["malformed"]
    assert h.state.ledger.tasks == {}


def test_too_large_messages_are_refused_before_decoding() -> None:
    h = Harness(max_message_bytes=1000)
    h.client(b"c1")
    out = h.raw(b"c1", [b"not even", b"a message", b"x" * 1000])
    assert one(out, b"c1", P.ERROR).header[0] == P.ERR_TOO_LARGE
    out = h.submit(b"c1", [("a", [])])  # small messages still work
    assert not msgs(out, b"c1", P.ERROR)
    assert h.state.counters.too_large == 1 and h.state.counters.malformed == 0


_KINDS = [
    "garbage",
    "hello",
    "submit",
    "client_keys",
    "scatter",
    "done",
    "data",
    "fetch",
    "died",
    "goodbye",
    "info",
    "heartbeat",
]
_WEIGHTS = [3, 2, 25, 16, 4, 30, 8, 4, 2, 2, 2, 6]


def _random_message(rng: random.Random, h: Harness, keys: list[str], workers: list[bytes]) -> tuple[bytes, list[Any]]:
    """A plausible message (sometimes garbage) from a random peer, exercising every handler."""
    state = h.state
    clients = [b"c1", b"c2"]
    sample = rng.sample
    kind = rng.choices(_KINDS, _WEIGHTS)[0]
    if kind == "garbage":
        return rng.choice([*clients, *workers, b"pool", b"x"]), [rng.randbytes(rng.randrange(4)) for _ in range(3)]
    if kind in ("submit", "client_keys", "scatter"):
        sender = rng.choice(clients)
    elif kind in ("done", "data", "fetch"):
        sender = rng.choice(workers)
    else:
        sender = rng.choice([*clients, *workers])
    if kind == "hello" or (sender not in state.peers and rng.random() < 0.9):
        if sender in workers:
            info = {"nthreads": rng.randint(1, 2), "credit": rng.randint(1, 3)}
            return sender, encode(P.HELLO, ["worker", info])
        return sender, encode(P.HELLO, ["client", {"name": "c"}])
    if kind == "submit":
        entries: list[Any] = []
        payload: list[Any] = []
        fns = sample([b"f1", b"f2"], rng.choice([0, 1, 1, 2]))
        payload.extend(b"F" for _ in fns)
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(0, 2)
            deps = sample(keys, rng.choice([0, 0, 1, 1, 2]))
            fn = rng.choices([b"f1", b"f2", b"f3"], [6, 3, 1])[0]
            entries.append([rng.choice(keys), fn, deps, rng.randint(-2, 2), rng.randint(0, 1), rng.randint(0, 3), n])
            payload.extend([b"a"] * n)
        return sender, encode(P.SUBMIT, [fns, entries], payload)
    if kind == "client_keys":
        command = rng.choice([P.RELEASE, P.RELEASE, P.CANCEL, P.GATHER])
        return sender, encode(command, [sample(keys, rng.randint(1, 3))])
    if kind == "scatter":
        chosen = sample(keys, rng.randint(1, 2))
        return sender, encode(P.SCATTER, [[[k, 1] for k in chosen], rng.random() < 0.3], [b"d"] * len(chosen))
    if kind == "done":
        peer = state.workers.get(sender)
        pool = list(peer.processing) + list(peer.storing) + [r.key for r in peer.has] if peer is not None else []
        chosen = sample(pool, min(len(pool), rng.randint(1, 3))) if pool and rng.random() < 0.9 else sample(keys, 1)
        entries = []
        payload = []
        for key in chosen:
            code = rng.choices([P.FINISHED, P.ERRED, P.CANCELLED, P.MISSING_DEPS], [12, 2, 1, 1])[0]
            if code == P.FINISHED:
                n = rng.randint(0, 1)
                entries.append([key, code, ["int", rng.randint(0, 100)], n])
                payload.extend([b"v"] * n)
            elif code == P.ERRED:
                entries.append([key, code, ["E", "m", key], 1])
                payload.append(b"e")
            elif code == P.CANCELLED:
                entries.append([key, code, "cancelled", 0])
            else:
                entries.append([key, code, sample(keys, 1), 0])
        return sender, encode(P.DONE, [entries], payload)
    if kind == "data":
        requests = [rid for rid, r in state._requests.items() if r.holder.identity == sender]
        rid = rng.choice(requests) if requests and rng.random() < 0.9 else rng.randint(0, 5)
        asked = state._requests[rid].keys if rid in state._requests else sample(keys, 1)
        present = [k for k in asked if rng.random() < 0.7]
        missing = [k for k in asked if k not in present and rng.random() < 0.8]
        return sender, encode(P.DATA, [rid, [[k, 1] for k in present], missing], [b"v"] * len(present))
    if kind == "fetch":
        return sender, encode(P.FETCH, [rng.randint(0, 9), rng.choice(workers), sample(keys, 1)])
    if kind == "died":
        return b"pool", encode(P.WORKER_DIED, [rng.choice(workers), sample(keys, rng.randint(0, 2)), -9])
    if kind == "goodbye":
        return sender, encode(P.GOODBYE, ["bye"])
    if kind == "info":
        return rng.choice([sender, b"pool"]), encode(P.INFO, [1])
    return sender, encode(P.HEARTBEAT, [EPOCH])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_never_raises_keeps_invariants_and_leaks_nothing(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness(heartbeat_interval_s=1.0, liveness_timeout_s=5.0)
    keys = [f"k{i}" for i in range(30)]
    workers = [b"w1", b"w2", b"w3"]
    h.send(b"pool", P.HELLO, ["pool", {"pool": "p", "host": "h", "nworkers": 3}])
    for step in range(1500):
        sender, frames = _random_message(rng, h, keys, workers)
        out = h.raw(sender, frames)
        for identity, message in out:
            peer = h.state.peers.get(identity)
            if message.command == P.COMPUTE and peer is not None:
                assert len(h.state.workers[identity].processing) <= h.state.workers[identity].credit
        if step % 50 == 0:
            h.tick(rng.random() * 2)
            if b"pool" not in h.state.peers:
                h.send(b"pool", P.HELLO, ["pool", {"pool": "p", "host": "h", "nworkers": 3}])
    # Everyone leaves: nothing may remain in the ledger.
    for identity in list(h.state.peers):
        h.send(identity, P.GOODBYE, ["bye"])
    assert h.state.ledger.tasks == {}
    assert h.state.ledger.counts == dict.fromkeys(h.state.ledger.counts, 0)
    assert h.state.counters.malformed > 0 and h.state.counters.internal_errors == 0


def test_garbage_fuzz_never_raises() -> None:
    rng = random.Random(99)
    h = Harness(audit=False)
    h.client(b"c1")
    h.worker(b"w1")
    for _ in range(3000):
        command = rng.choice(list(P.COMMAND_NAMES))
        head = bytes((rng.choice([1, 1, 1, 2]), command))
        frames = [head, rng.randbytes(rng.randrange(12))] + [rng.randbytes(3) for _ in range(rng.randrange(3))]
        h.raw(rng.choice([b"c1", b"w1", b"zz"]), frames)
    assert h.state.audit() == []
    assert h.state.counters.internal_errors == 0


# --- memory ------------------------------------------------------------------------------


def test_queued_tiny_tasks_cost_well_under_a_kilobyte_each() -> None:
    h = Harness(audit=False)
    h.client(b"c1")
    n = 20_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        entries = [[f"inc-{i:032x}", FN, [], 0, 0, P.FLAG_WANTED, 1] for i in range(n)]
        # A typical tiny pickle of (args, kwargs): about 40 bytes.
        payload = [FN_FRAME] + [b"\x80\x05\x95" + i.to_bytes(8, "little") + b"\x00" * 29 for i in range(n)]
        message = encode(P.SUBMIT, [[FN], entries], payload)
        h.raw(b"c1", message)
        del entries, payload, message
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert h.state.ledger.counts["queued"] == n
    per_task = (after - before) / n  # record, key, payload frame, queue entry, indexes
    assert per_task < 768, f"{per_task:.0f} bytes per queued task"


# --- an honest simulated cluster: everything wanted completes, whatever dies ---------------


class SimWorker:
    """A worker that follows the protocol faithfully; a task's value is b"value:" + key."""

    def __init__(self, identity: bytes) -> None:
        self.identity = identity
        self.store: set[str] = set()
        self.tasks: list[list[Any]] = []  # [key, deps, flags, fetching]
        self.fetches: dict[int, list[str]] = {}
        self.next_rid = 0

    def receive(self, message: Message) -> list[list[Any]]:
        """Messages to send back: [command, header, payload]."""
        command, header = message.command, message.header
        if command == P.COMPUTE:
            for key, _, deps, flags, _ in header[1]:
                self.tasks.append([key, deps, flags, False])
        elif command == P.GET:
            present = [k for k in header[1] if k in self.store]
            missing = [k for k in header[1] if k not in self.store]
            return [
                [P.DATA, [header[0], [[k, 1] for k in present], missing], [b"value:" + k.encode() for k in present]]
            ]
        elif command == P.DATA:
            keys = self.fetches.pop(header[0], [])
            self.store.update(entry[0] for entry in header[1])
            replies = []
            for task in list(self.tasks):
                lacking = [d for d, holder in task[1] if holder is not None and d in header[2] and d in keys]
                if lacking:
                    self.tasks.remove(task)
                    replies.append([P.DONE, [[[task[0], P.MISSING_DEPS, lacking, 0]]], []])
                elif task[3] and any(d in keys for d, _ in task[1]):
                    task[3] = False
            return replies
        elif command == P.DELETE:
            self.store.difference_update(header[0])
        elif command == P.CANCEL_TASKS:
            dropped = [t for t in self.tasks if t[0] in header[0]]
            for task in dropped:
                self.tasks.remove(task)
            return [[P.DONE, [[[t[0], P.CANCELLED, "cancelled", 0] for t in dropped]], []]] if dropped else []
        elif command == P.STORE:
            self.store.update(entry[0] for entry in header[0])
            return [[P.DONE, [[[entry[0], P.FINISHED, ["bytes", 5], 0] for entry in header[0]]], []]]
        return []

    def work(self, rng: random.Random) -> list[list[Any]]:
        """Fetch missing inputs or finish some runnable tasks."""
        out: list[list[Any]] = []
        done: list[Any] = []
        frames: list[Any] = []
        for task in list(self.tasks):
            key, deps, flags, fetching = task
            remote = [(d, holder) for d, holder in deps if d not in self.store]
            if remote:
                if not fetching:
                    task[3] = True
                    by_holder: dict[bytes, list[str]] = {}
                    for d, holder in remote:
                        by_holder.setdefault(holder or self.identity, []).append(d)
                    for holder, keys in by_holder.items():
                        self.next_rid += 1
                        self.fetches[self.next_rid] = keys
                        out.append([P.FETCH, [self.next_rid, holder, keys], []])
                continue
            if rng.random() < 0.5:
                self.tasks.remove(task)
                self.store.add(key)
                inline = bool(flags & P.FLAG_PUSH_RESULT)
                done.append([key, P.FINISHED, ["bytes", 10], 1 if inline else 0])
                if inline:
                    frames.append(b"value:" + key.encode())
        if done:
            out.append([P.DONE, [done], frames])
        return out


@pytest.mark.parametrize("seed", range(6))
def test_simulated_cluster_completes_every_wanted_key_despite_deaths(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness(audit=seed < 2)
    links: dict[tuple[bytes, bytes], list[Any]] = {}  # (from, to) -> FIFO of messages; b"" is the broker
    workers: dict[bytes, SimWorker] = {}
    clients = (b"c1", b"c2")
    wanted: dict[bytes, set[str]] = {c: set() for c in clients}
    outcome: dict[tuple[bytes, str], tuple[int, Any]] = {}  # (client, key) -> first final report
    pool = b"pool"
    generation = 0

    def from_broker(out: Out) -> None:
        for identity, message in out:
            links.setdefault((b"", identity), []).append(message)

    def from_worker(sim: SimWorker, replies: list[list[Any]]) -> None:
        for command, header, payload in replies:
            links.setdefault((sim.identity, b""), []).append(encode(command, header, payload))

    def start_worker() -> None:
        nonlocal generation
        generation += 1
        identity = f"w-g{generation}".encode()
        workers[identity] = SimWorker(identity)
        from_broker(h.worker(identity, credit=rng.randint(1, 4)))

    def cross(source: bytes, target: bytes) -> None:
        item = links[(source, target)].pop(0)
        if target == b"":
            from_broker(h.raw(source, item))
        elif target in clients and item.command == P.REPORT:
            offset = 0
            for key, code, detail, nframes in item.header[0]:
                if code == P.FINISHED and nframes:
                    assert item.payload[offset] == b"value:" + key.encode()
                offset += nframes
                outcome.setdefault((target, key), (code, detail))
        elif target in workers:
            from_worker(workers[target], workers[target].receive(item))

    for client in clients:
        h.client(client)
    h.send(pool, P.HELLO, ["pool", {"pool": "p", "host": "h", "nworkers": 3}])
    for _ in range(3):
        start_worker()
    n = kills = 0
    for step in range(1500):
        action = rng.random()
        if action < 0.08 and step < 1000:  # c1 submits a small graph over its finished keys
            batch = []
            for _ in range(rng.randint(1, 5)):
                usable = sorted(k for k in wanted[b"c1"] if outcome.get((b"c1", k), (P.FINISHED,))[0] == P.FINISHED)
                deps = rng.sample(usable, min(len(usable), rng.randint(0, 2)))
                flags = P.FLAG_WANTED | (P.FLAG_PUSH_RESULT if rng.random() < 0.3 else 0)
                batch.append([f"t{n}", FN, deps, 0, 0, flags, 0])
                wanted[b"c1"].add(f"t{n}")
                n += 1
            from_broker(h.send(b"c1", P.SUBMIT, [[FN], batch], [FN_FRAME]))
        elif action < 0.10 and wanted[b"c1"]:  # c2 submits a key c1 already submitted: it must not rerun
            key = rng.choice(sorted(wanted[b"c1"]))
            wanted[b"c2"].add(key)
            from_broker(h.send(b"c2", P.SUBMIT, [[FN], [[key, FN, [], 0, 0, P.FLAG_WANTED, 0]]], [FN_FRAME]))
        elif action < 0.12 and step < 1000 and kills < 8:  # a worker process dies
            identity = rng.choice(sorted(workers))
            sim = workers.pop(identity)
            links.pop((identity, b""), None)
            kills += 1
            if rng.random() < 0.3:  # found by the socket first; the pool's notice comes later
                from_broker([(i, decode(m)) for i, m in h.state.peer_unreachable(identity, h.now)])
            running = [sim.tasks[0][0]] if sim.tasks else []
            from_broker(h.send(pool, P.WORKER_DIED, [identity, running, -9]))
            start_worker()
        elif action < 0.15:  # a client asks for a value
            client = rng.choice(clients)
            if wanted[client]:
                from_broker(h.send(client, P.GATHER, [rng.sample(sorted(wanted[client]), 1)]))
        elif action < 0.55:  # a worker does some work
            sim = workers[rng.choice(sorted(workers))]
            from_worker(sim, sim.work(rng))
        else:  # one message crosses one link, links interleaving at random
            busy = [link for link, queue in links.items() if queue]
            if busy:
                cross(*rng.choice(busy))
    # Quiesce: no more deaths; deliver everything and let the workers finish.
    for _ in range(10_000):
        for sim in workers.values():
            from_worker(sim, sim.work(rng))
        busy = [link for link, queue in links.items() if queue]
        if not busy and not any(sim.tasks for sim in workers.values()):
            break
        for link in busy:
            cross(*link)
    assert h.state.audit() == []
    for client in clients:
        unresolved = sorted(k for k in wanted[client] if (client, k) not in outcome)
        assert unresolved == [], (client, [h.state.ledger.tasks.get(k) for k in unresolved[:5]])
    for key_of, (code, detail) in outcome.items():
        assert code == P.FINISHED or (code == P.ERRED and detail[0] == "KilledWorker"), (key_of, code, detail)
    assert h.state.counters.dispatched < 2 * n  # duplicate submissions did not run again
    for client in clients:
        h.send(client, P.RELEASE, [sorted(wanted[client])])
    for identity in [*workers, pool, *clients]:
        h.send(identity, P.GOODBYE, ["bye"])
    assert h.state.ledger.tasks == {}


def test_batches_are_split_to_respect_the_message_size_limit() -> None:
    limit = 64 * 1024
    h = Harness(max_message_bytes=limit)
    h.client(b"c1")
    keys = [f"t{i}" for i in range(10)]
    for index, key in enumerate(keys):  # each submission is within the limit
        h.send(b"c1", P.SUBMIT, [[FN], [[key, FN, [], 0, 0, P.FLAG_WANTED, 1]]], [FN_FRAME, bytes([index]) * 8000])
    out = h.worker(b"w1", credit=10)  # all ten are dispatched in this one step: 80 kB of arguments
    computes = msgs(out, b"w1", P.COMPUTE)
    assert len(computes) > 1
    for message in computes:
        assert sum(len(f) for f in encode(message.command, message.header, message.payload)) <= limit
    assert [e[0] for m in computes for e in m.header[1]] == keys
    assert sum(m.header[0] == [FN] for m in computes) == 1


def test_refusals_are_answered_at_a_bounded_rate(h: Harness) -> None:
    from broker.state import ERRORS_PER_PEER_PER_TICK

    garbage = [bytes((1, 99)), b"\x90"]
    answered = sum(len(h.raw(b"flooder", garbage)) for _ in range(10 * ERRORS_PER_PEER_PER_TICK))
    assert answered == ERRORS_PER_PEER_PER_TICK
    assert h.state.counters.malformed == 10 * ERRORS_PER_PEER_PER_TICK
    assert h.state.counters.errors_suppressed == 9 * ERRORS_PER_PEER_PER_TICK
    # Another peer still gets its answer, and the flooder gets more after the next tick.
    assert len(h.raw(b"other", garbage)) == 1
    h.tick(0.1)
    assert len(h.raw(b"flooder", garbage)) == 1


# --- ready queue ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ready_queue_pops_by_priority_then_age_whatever_the_push_order(seed: int) -> None:
    rng = random.Random(seed)
    queue = ReadyQueue()
    tasks: dict[str, TaskRecord] = {}
    records = []
    for seq in range(600):
        # Mostly in order and of one priority (the fast path), sometimes older or more urgent.
        priority = 0 if rng.random() < 0.8 else rng.randint(-2, 3)
        rec = TaskRecord(f"k{seq}", b"f", b"", (), priority, seq, 0, False)
        rec.state = QUEUED
        records.append(rec)
    order = list(range(600))
    for start in range(0, 600, 50):  # shuffle within windows: pushes arrive roughly in order
        window = order[start : start + 50]
        if rng.random() < 0.5:
            rng.shuffle(window)
        order[start : start + 50] = window
    popped: list[str] = []
    expected_pool: list[TaskRecord] = []
    for index in order:
        rec = records[index]
        tasks[rec.key] = rec
        queue.push(rec)
        expected_pool.append(rec)
        if rng.random() < 0.1:  # a task leaves the queued state another way (lazy deletion)
            gone = rng.choice(expected_pool)
            gone.state = RELEASED
            expected_pool.remove(gone)
        if rng.random() < 0.3:
            rec_out = queue.pop(tasks)
            if not expected_pool:
                assert rec_out is None
                continue
            assert rec_out is not None
            best = min(expected_pool, key=lambda r: (-r.priority, r.seq))
            assert rec_out is best
            rec_out.state = RELEASED
            expected_pool.remove(rec_out)
            popped.append(rec_out.key)
    queue.compact(tasks, len(expected_pool))
    rest = []
    while (rec_out := queue.pop(tasks)) is not None:
        rest.append(rec_out)
        rec_out.state = RELEASED
    assert rest == sorted(expected_pool, key=lambda r: (-r.priority, r.seq))


def _runs_harness() -> Harness:
    h = Harness()
    h.worker(b"w1")
    h.worker(b"w2")
    h.client(b"c1")
    return h


def test_run_goes_untouched_to_every_worker_and_each_answer_back_to_its_client() -> None:
    h = _runs_harness()
    out = h.send(b"c1", P.RUN, [5, None, 2], [b"<call>", b"<buffer>"])
    assert [(who, m.name) for who, m in out] == [(b"c1", "RUNNING"), (b"w1", "RUN"), (b"w2", "RUN")]
    assert out[0][1].header == [5, [b"w1", b"w2"]]
    run_ids = {who: m.header[0] for who, m in out[1:]}
    for _, message in out[1:]:
        assert message.header[1:] == [None, 2] and message.payload == [b"<call>", b"<buffer>"]
    answer = h.send(b"w2", P.RAN, [run_ids[b"w2"], b"w2", P.FINISHED, None, 1], [b"<result>"])
    assert [(who, m.name, m.header, m.payload) for who, m in answer] == [
        (b"c1", "RAN", [5, b"w2", P.FINISHED, None, 1], [b"<result>"])
    ]
    # Answered once: the same answer again, or another worker's run id, goes nowhere.
    assert h.send(b"w2", P.RAN, [run_ids[b"w2"], b"w2", P.FINISHED, None, 0]) == []
    assert h.send(b"w2", P.RAN, [run_ids[b"w1"], b"w2", P.FINISHED, None, 0]) == []
    error = ["ValueError", "no", "run-1"]
    out = h.send(b"w1", P.RAN, [run_ids[b"w1"], b"w1", P.ERRED, error, b"<exc>"])
    assert [(who, m.header) for who, m in out] == [(b"c1", [5, b"w1", P.ERRED, error, b"<exc>"])]
    assert len(h.state._runs) == 0


def test_a_run_target_that_is_absent_or_leaves_is_answered_lost() -> None:
    h = _runs_harness()
    out = h.send(b"c1", P.RUN, [1, [b"w1", b"gone", b"w1"], b"<call>"])
    assert [(who, m.name) for who, m in out] == [(b"c1", "RUNNING"), (b"w1", "RUN"), (b"c1", "RAN")]
    assert out[0][1].header == [1, [b"w1", b"gone"]]
    assert out[2][1].header[:3] == [1, b"gone", P.LOST]
    out = h.send(b"w1", P.GOODBYE, ["bye"])
    lost = [m.header for who, m in out if who == b"c1" and m.name == "RAN"]
    assert len(lost) == 1 and lost[0][:3] == [1, b"w1", P.LOST] and "left before answering" in lost[0][3]
    assert len(h.state._runs) == 0


def test_answers_to_a_client_that_left_are_dropped_and_runs_need_a_client() -> None:
    h = _runs_harness()
    out = h.send(b"c1", P.RUN, [1, [b"w1"], b"<call>"])
    run_id = out[-1][1].header[0]
    h.send(b"c1", P.GOODBYE, ["bye"])
    assert len(h.state._runs) == 0
    assert h.send(b"w1", P.RAN, [run_id, b"w1", P.FINISHED, None, b"<result>"]) == []
    out = h.send(b"w2", P.RUN, [1, None, b"<call>"])
    assert [m.name for _, m in out] == ["ERROR"] and out[0][1].header[0] == P.ERR_NOT_ALLOWED


def test_restart_ends_every_clients_work_and_asks_each_pool_to_replace_its_workers() -> None:
    h = Harness()
    h.send(b"p1", P.HELLO, ["pool", {"pool": "pool-a", "nworkers": 1}])
    h.worker(b"w1", pool="pool-a")
    h.worker(b"w2")  # outside any pool
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", []), ("b", ["a"])])
    h.submit(b"c2", [("c", [])])
    out = h.send(b"c1", P.RESTART, [9])
    sent = [(who, m.name) for who, m in out]
    assert (b"p1", "RESTART") in sent and (b"c1", "RESTARTING") in sent
    assert next(m.header for who, m in out if m.name == "RESTARTING") == [9, [b"w1"]]
    # The restarting client cancelled its own futures; the other one is told.
    reports = [e for who, m in out if m.name == "REPORT" for e in m.header[0]]
    assert [(e[0], e[1]) for e in reports] == [("c", P.CANCELLED)]
    assert not any(who == b"c1" and m.name == "REPORT" for who, m in out)
    # Nothing is wanted any more: finishing the old runs feeds nobody, and a worker death
    # requeues nothing.
    finished = h.finish(b"w1", "a") + h.finish(b"w2", "c")
    assert not any(m.name in ("REPORT", "COMPUTE") for _, m in finished)
    after = h.send(b"w1", P.GOODBYE, ["bye"])
    assert not any(m.name == "COMPUTE" for _, m in after)
    assert h.state.ledger.counts["queued"] == 0
    # New work after the restart runs as usual.
    assert any(m.name == "COMPUTE" for _, m in h.submit(b"c2", [("d", [])]))


def test_a_setup_is_kept_for_workers_that_register_later_and_reaches_them_before_tasks() -> None:
    h = Harness()
    h.worker(b"w1")
    h.client(b"c1")
    out = h.send(b"c1", P.SETUP, [3, "upload_file:mod.py", 1], [b"<call>"])
    assert [(who, m.name) for who, m in out] == [(b"c1", "RUNNING"), (b"w1", "SETUP")]
    assert out[1][1].header[1:] == ["upload_file:mod.py", 1] and out[1][1].payload == [b"<call>"]
    answer = h.send(b"w1", P.RAN, [out[1][1].header[0], b"w1", P.FINISHED, None, b"<path>"])
    assert [(who, m.header[:3]) for who, m in answer] == [(b"c1", [3, b"w1", P.FINISHED])]
    # The same name replaces the call; another name adds one.
    h.send(b"c1", P.SETUP, [4, "upload_file:mod.py", b"<call v2>"])
    h.send(b"c1", P.SETUP, [5, "setup:other", b"<other>"])
    h.submit(b"c1", [("t", [])])
    out = h.worker(b"w2")
    names = [m.name for who, m in out if who == b"w2"]
    assert names[:3] == ["WELCOME", "SETUP", "SETUP"]
    setups = [m for who, m in out if who == b"w2" and m.name == "SETUP"]
    expected = [("upload_file:mod.py", b"<call v2>"), ("setup:other", b"<other>")]
    assert [(m.header[1], m.header[2]) for m in setups] == expected
    # Nobody waits for these answers: they go nowhere (a failure is only logged).
    error = ["ImportError", "no module", "setup-1"]
    assert h.send(b"w2", P.RAN, [setups[0].header[0], b"w2", P.ERRED, error, b"<exc>"]) == []
    assert h.send(b"w2", P.RAN, [setups[1].header[0], b"w2", P.FINISHED, None, b"<r>"]) == []
    assert len(h.state._runs) == 2  # w1's runs of the last two, still unanswered


def test_kept_setups_are_bounded_oldest_dropped_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import broker.runs

    monkeypatch.setattr(broker.runs, "MAX_SETUPS", 2)
    monkeypatch.setattr(broker.runs, "MAX_SETUP_BYTES", 10)
    h = Harness()
    h.client(b"c1")
    for name in ("a", "b", "c"):
        h.send(b"c1", P.SETUP, [1, name, b"x"])
    big = h.send(b"c1", P.SETUP, [2, "big", b"y" * 20])  # too big for the bound: kept alone
    assert [m.name for _, m in big] == ["RUNNING"]
    out = h.worker(b"w1")
    assert [m.header[1] for _, m in out if m.name == "SETUP"] == ["big"]
    h.send(b"c1", P.SETUP, [3, "d", b"z"])
    out = h.worker(b"w2")
    assert [m.header[1] for _, m in out if m.name == "SETUP"] == ["d"]


def test_who_has_names_the_holders_of_keys_and_what_each_worker_holds() -> None:
    h = Harness()
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", [])])
    h.finish(b"w1", "a")
    out = h.send(b"c1", P.WHO_HAS, [7, ["a", "b", "unknown"]])
    assert [(who, m.name, m.header) for who, m in out] == [
        (b"c1", "INFO_REPLY", [7, {"who_has": {"a": [b"w1".hex()], "b": []}}])
    ]
    out = h.send(b"c1", P.WHO_HAS, [8, None])
    assert out[0][1].header == [8, {"who_has": {"a": [b"w1".hex()]}, "has_what": {b"w1".hex(): ["a"]}}]


def test_a_released_key_submitted_with_another_call_takes_that_calls_inputs() -> None:
    # A DataFrame step fused with its input in one graph (no inputs) and reading that input
    # as a task of its own in the next: same key, other call, other inputs.
    h = Harness()
    h.worker(b"w1", credit=8)
    h.client(b"c1")
    h.submit(b"c1", [("step", [])])
    h.finish(b"w1", "step")
    h.submit(b"c1", [("down", ["step"])], with_function=False)
    h.finish(b"w1", "down")
    h.send(b"c1", P.RELEASE, [["step"]])
    h.tick(0.0)
    assert h.state.ledger.tasks["step"].state == "released"  # kept as the lineage of "down"
    entries = [
        ["source", FN, [], 0, 0, 0, b"<source>"],
        ["step", FN, ["source"], 0, 0, P.FLAG_WANTED, b"<reads source>"],
    ]
    out = h.send(b"c1", P.SUBMIT, [[], entries])
    step = h.state.ledger.tasks["step"]
    assert [dep.key for dep in step.deps] == ["source"] and step.payload == b"<reads source>"
    assert {d.key for d in h.state.ledger.tasks["source"].dependents or ()} == {"step"}
    sent = [entry for _, m in out if m.name == "COMPUTE" for entry in m.header[1]]
    # Sent ahead to the worker computing its new input, which it names.
    assert [(entry[0], entry[2], entry[4]) for entry in sent] == [
        ("source", [], b"<source>"),
        ("step", [["source", None]], b"<reads source>"),
    ]


def test_a_released_key_submitted_again_with_an_unknown_input_errs_clearly() -> None:
    h = Harness()
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("step", [])])
    h.finish(b"w1", "step")
    h.send(b"c1", P.RELEASE, [["step"]])
    h.submit(b"c1", [("keeper", ["step"])], with_function=False)  # keeps the released record
    out = h.send(b"c1", P.SUBMIT, [[], [["step", FN, ["nowhere"], 0, 0, P.FLAG_WANTED, b"<other>"]]])
    errors = [e for _, m in out if m.name == "REPORT" for e in m.header[0] if e[1] == P.ERRED]
    assert any(e[0] == "step" and "nowhere is unknown" in e[2][1] for e in errors)


def test_a_named_value_scattered_again_replaces_the_one_in_memory() -> None:
    h = Harness()
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    out = h.send(b"c1", P.SCATTER, [[["params", b"<old>"]], False])
    assert [(who, m.name) for who, m in out] == [(b"w1", "STORE")]
    h.done(b"w1", [["params", P.FINISHED, ["dict", 10], 0]])
    h.send(b"c2", P.SCATTER, [[["params", b"<old>"]], False])  # another client holds it too
    out = h.send(b"c1", P.SCATTER, [[["params", b"<new>"]], False, True])
    sent = [(who, m.name, m.header) for who, m in out]
    assert (b"w1", "DELETE", [["params"]]) in sent
    assert (b"w1", "STORE", [[["params", b"<new>"]]]) in sent
    assert h.state.ledger.tasks["params"].state == "processing"
    out = h.done(b"w1", [["params", P.FINISHED, ["dict", 12], 0]])
    told = {who for who, m in out if m.name == "REPORT" for e in m.header[0] if e[:2] == ["params", P.FINISHED]}
    assert told == {b"c1", b"c2"}
    # Without replace, a value in memory stays as it is.
    out = h.send(b"c1", P.SCATTER, [[["params", b"<ignored>"]], False])
    assert not any(m.name == "STORE" for _, m in out)


def test_a_worker_out_of_reach_that_comes_back_clears_the_tasks_it_was_not_running() -> None:
    # A network blip: the broker hears nothing for longer than the liveness timeout and
    # blames every task on the worker; the worker comes back (same identity, a new
    # incarnation) and names the task it was running then.
    h = Harness()
    h.client(b"c1")
    h.worker(b"w1", credit=3, incarnation=0)
    h.submit(b"c1", [("runs", []), ("waits", []), ("queued", [])])
    h.state.peer_unreachable(b"w1", h.now)
    h.check()
    tasks = h.state.ledger.tasks
    assert [tasks[k].suspicious for k in ("runs", "waits", "queued")] == [1, 1, 1]
    h.worker(b"w1", credit=3, incarnation=1, running=["runs"])
    assert [tasks[k].suspicious for k in ("runs", "waits", "queued")] == [1, 0, 0]


def test_a_hello_repeated_by_the_same_registration_keeps_what_it_holds() -> None:
    # HELLOs queued in a peer's socket during an outage reach the new broker one after
    # another: only the first registers; the others must not drop what it submitted since.
    h = Harness()
    h.worker(b"w1", incarnation=0)
    hello = ["client", {"name": "c1", "pid": 1, "session": "s-1"}]
    h.send(b"c1", P.HELLO, hello)
    h.submit(b"c1", [("t", [])])
    out = h.send(b"c1", P.HELLO, hello)
    assert [m.name for _, m in out] == ["WELCOME"]
    assert h.state.ledger.tasks["t"].wanted_by is not None
    assert h.send(b"w1", P.HELLO, ["worker", {"nthreads": 1, "credit": 4, "incarnation": 0}])[0][1].name == "WELCOME"
    assert "t" in h.state.workers[b"w1"].processing
    # Another session (a new process reusing the identity) starts afresh.
    h.send(b"c1", P.HELLO, ["client", {"name": "c1", "pid": 2, "session": "s-2"}])
    assert h.state.ledger.tasks.get("t") is None or h.state.ledger.tasks["t"].wanted_by is None


def test_a_key_submitted_again_reading_its_own_dependent_is_refused_not_looped() -> None:
    h = Harness()
    h.worker(b"w1", credit=8)
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    h.finish(b"w1", "a")
    h.submit(b"c1", [("b", ["a"])], with_function=False)
    h.finish(b"w1", "b")
    h.send(b"c1", P.RELEASE, [["a"]])
    h.tick(0.0)
    assert h.state.ledger.tasks["a"].state == "released"
    out = h.send(b"c1", P.SUBMIT, [[], [["a", FN, ["b"], 0, 0, P.FLAG_WANTED, b"<reads b>"]]])
    errors = [e for _, m in out if m.name == "REPORT" for e in m.header[0] if e[1] == P.ERRED]
    assert [e[0] for e in errors] == ["a"] and "depend on itself" in errors[0][2][1]
    assert [dep.key for dep in h.state.ledger.tasks["b"].deps] == ["a"]


def test_a_setup_running_on_three_workers_that_died_is_dropped() -> None:
    h = Harness()
    h.client(b"c1")
    h.send(b"c1", P.SETUP, [1, "setup:crashes", b"<call>"])
    # Workers that leave on purpose (a goodbye) do not count against it.
    for n in range(3):
        worker = f"u{n}".encode()
        h.worker(worker)
        h.send(worker, P.GOODBYE, ["worker stopping"])
    for n in range(3):
        worker = f"w{n}".encode()
        out = h.worker(worker)
        assert [m.header[1] for _, m in out if m.name == "SETUP"] == ["setup:crashes"]
        h.state.peer_unreachable(worker, h.now)  # died while running it
        h.check()
    out = h.worker(b"w9")
    assert not any(m.name == "SETUP" for _, m in out)
    # A set-up that answers keeps its place however many workers leave afterwards.
    h.send(b"c1", P.SETUP, [2, "setup:fine", b"<call>"])
    for n in range(4):
        worker = f"v{n}".encode()
        out = h.worker(worker)
        run_id = next(m.header[0] for _, m in out if m.name == "SETUP")
        h.send(worker, P.RAN, [run_id, worker, P.FINISHED, None, b"ok"])
        h.send(worker, P.GOODBYE, ["bye"])
    assert [m.header[1] for _, m in h.worker(b"v9") if m.name == "SETUP"] == ["setup:fine"]


# --- futures made from keys, and named datasets --------------------------------------------


def datasets(h: Harness, client: bytes, request_id: int, op: str, name: str = "", keys: list[str] | None = None,
             override: bool = False, value: bytes = b"<pickled dataset>") -> dict[str, Any]:
    """One DATASETS request; the answer it got."""
    field: Any = value if op == "put" else 0
    out = h.send(client, P.DATASETS, [request_id, op, name, keys or [], override, field])
    reply = one(out, client, P.INFO_REPLY)
    assert reply.header[0] == request_id
    answer: dict[str, Any] = reply.header[1]
    return answer


def outlive_the_grace(h: Harness, *alive: bytes) -> Out:
    """Advance time past the wait for unknown keys, ``alive`` heartbeating meanwhile; what
    the broker sent."""
    out: Out = []
    waited = 0.0
    while waited <= h.state.unknown_key_grace_s:
        for peer in alive:
            h.send(peer, P.HEARTBEAT, [EPOCH])
        out.extend(h.tick(1.0))
        waited += 1.0
    return out


def test_want_reports_the_outcome_a_key_has_and_holds_it(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("done", []), ("running", []), ("bad", [])])
    h.finish(b"w1", "done")
    h.done(b"w1", [["bad", P.ERRED, ["ValueError", "no", "bad"], 1]], [b"<error>"])
    out = h.send(b"c2", P.WANT, [["done", "running", "bad", "nowhere"]])
    entries = report_entries(out, b"c2")
    assert entries["done"][1:3] == [P.FINISHED, ["int", 8]]
    assert entries["bad"][1] == P.ERRED
    assert "running" not in entries  # no outcome yet: it comes as to any holder of a future
    assert "nowhere" not in entries  # it may be on its way: waited for a while
    lost = report_entries(outlive_the_grace(h, b"c1", b"c2", b"w1"), b"c2")["nowhere"]
    assert lost[1] == P.LOST and "unknown key 'nowhere'" in lost[2] and "batch_size=1" in lost[2]
    out = h.finish(b"w1", "running")
    assert report_entries(out, b"c2")["running"][1] == P.FINISHED
    # The submitter lets go: c2's futures keep the values.
    out = h.send(b"c1", P.RELEASE, [["done", "running", "bad"]])
    assert not msgs(out, b"w1", P.DELETE)
    assert h.state.ledger.tasks["done"].state == "memory"
    out = h.send(b"c2", P.RELEASE, [["done", "running", "bad"]])
    assert sorted(one(out, b"w1", P.DELETE).header[0]) == ["done", "running"]
    assert h.state.ledger.tasks == {}
    # A key forgotten meanwhile is unknown to a later WANT.
    h.send(b"c2", P.WANT, [["done"]])
    out = outlive_the_grace(h, b"c1", b"c2", b"w1")
    assert report_entries(out, b"c2")["done"][1] == P.LOST


def test_a_release_received_before_a_want_applies_first(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    h.finish(b"w1", "a")
    # Both in one step, in this order: the release must not drop the new future's interest.
    out = h.state.handle_many(
        [(b"c1", encode(P.RELEASE, [["a"]])), (b"c1", encode(P.WANT, [["a"]]))], h.now
    )
    h.check()
    assert not [m for i, m in out if i == b"w1" and decode(m).command == P.DELETE]
    assert h.state.ledger.tasks["a"].wanted_by is not None


def test_a_published_dataset_keeps_its_values_after_its_client_left(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", [])])
    h.finish(b"w1", "a", "b")
    assert datasets(h, b"c1", 1, "put", "ab", ["a", "b"]) == {"ok": True}
    h.send(b"c1", P.GOODBYE, ["bye"])
    assert sorted(h.state.ledger.tasks) == ["a", "b"]
    assert h.state.info()["datasets"] == 1
    h.client(b"c2")
    answer = datasets(h, b"c2", 1, "get", "ab")
    assert answer == {"ok": True, "keys": ["a", "b"], "value": b"<pickled dataset>"}
    assert datasets(h, b"c2", 2, "list") == {"ok": True, "names": ["ab"]}
    # Deleted: c2's interest (taken with the get) still holds the values...
    assert datasets(h, b"c2", 3, "delete", "ab") == {"ok": True}
    assert sorted(h.state.ledger.tasks) == ["a", "b"]
    # ...until c2 lets go too.
    out = h.send(b"c2", P.RELEASE, [["a", "b"]])
    assert sorted(one(out, b"w1", P.DELETE).header[0]) == ["a", "b"]
    assert datasets(h, b"c2", 4, "list") == {"ok": True, "names": []}


def test_dataset_names_are_kept_unless_replaced_on_purpose(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    h.submit(b"c1", [("a", []), ("b", [])])
    h.finish(b"w1", "a", "b")
    assert datasets(h, b"c1", 1, "put", "x", ["a"], value=b"first") == {"ok": True}
    # The same request again (sent again after re-registering) is no duplicate...
    assert datasets(h, b"c1", 1, "put", "x", ["a"], value=b"first") == {"ok": True}
    # ...another one is.
    refused = datasets(h, b"c1", 2, "put", "x", ["b"], value=b"second")
    assert refused["ok"] is False and "already exists; pass override=True" in refused["error"]
    assert datasets(h, b"c1", 3, "put", "x", ["b"], override=True, value=b"second") == {"ok": True}
    assert datasets(h, b"c1", 4, "get", "x")["value"] == b"second"
    # The replaced dataset's key is released with it (c1 let go of both already).
    out = h.send(b"c1", P.RELEASE, [["a", "b"]])
    assert one(out, b"w1", P.DELETE).header == [["a"]]
    missing = datasets(h, b"c1", 5, "delete", "y")
    assert missing["ok"] is False and missing["missing"] is True
    assert datasets(h, b"c1", 6, "get", "y")["missing"] is True


def test_a_dataset_of_unknown_keys_is_refused_and_a_restart_drops_every_dataset(h: Harness) -> None:
    h.worker(b"w1", credit=10, pool="p")
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    refused = datasets(h, b"c1", 1, "put", "bad", ["a", "gone"])
    assert refused["ok"] is False and "'gone'" in refused["error"] and "cancelled or released" in refused["error"]
    assert datasets(h, b"c1", 2, "list")["names"] == []
    assert datasets(h, b"c1", 3, "put", "pending", ["a"]) == {"ok": True}
    h.send(b"c1", P.RELEASE, [["a"]])
    assert h.state.ledger.tasks["a"].state == "processing"  # published: it still runs
    h.send(b"c1", P.RESTART, [4])
    assert datasets(h, b"c1", 5, "list")["names"] == []
    assert h.state.ledger.published == {}


def test_a_want_of_a_key_not_known_yet_waits_for_it(h: Harness) -> None:
    h.worker(b"w1", credit=10, pool="p")
    h.client(b"c1")
    h.client(b"c2")
    # c2 names the key before c1's submission reaches the broker (their messages are not
    # ordered; after a broker restart, c1 submits its tasks again only once re-registered).
    assert not report_entries(h.send(b"c2", P.WANT, [["a", "b"]]), b"c2")
    # Its future's result() asks for the value before the key is here: it waits too.
    assert not report_entries(h.send(b"c2", P.GATHER, [["a"]]), b"c2")
    h.tick(1.0)
    h.submit(b"c1", [("a", [])])
    out = h.done(b"w1", [["a", P.FINISHED, ["int", 28], b"<pickled 42>"]])
    assert report_entries(out, b"c2")["a"][1:] == [P.FINISHED, ["int", 28], b"<pickled 42>"]
    assert h.state.ledger.tasks["a"].wanted_by == (h.state.clients[b"c1"], h.state.clients[b"c2"])
    # c1 lets go: c2's future holds the value.
    assert not msgs(h.send(b"c1", P.RELEASE, [["a"]]), b"w1", P.DELETE)
    # A client that leaves stops waiting; a restart tells the others their keys are cancelled.
    h.send(b"c1", P.WANT, [["c"]])
    h.send(b"c1", P.GOODBYE, ["bye"])
    h.client(b"c3")
    out = h.send(b"c3", P.RESTART, [1])
    assert report_entries(out, b"c2")["b"][1] == P.CANCELLED
    assert not report_entries(outlive_the_grace(h, b"c2", b"c3"), b"c2")


def test_a_dataset_fetched_again_after_its_keys_were_dropped_holds_them(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    h.client(b"c2")
    keys = [f"k{i}" for i in range(10)]
    h.submit(b"c1", [(key, []) for key in keys])
    h.finish(b"w1", *keys)
    assert datasets(h, b"c1", 1, "put", "x", keys) == {"ok": True}
    h.send(b"c1", P.RELEASE, [keys])
    datasets(h, b"c2", 1, "get", "x")
    # c2 drops the fetched futures, fetches the dataset again, and it is deleted at once:
    # all in one step, the release still waiting to be applied when the get comes.
    out = h.state.handle_many(
        [
            (b"c2", encode(P.RELEASE, [keys])),
            (b"c2", encode(P.DATASETS, [2, "get", "x", [], False, 0])),
            (b"c2", encode(P.DATASETS, [3, "delete", "x", [], False, 0])),
        ],
        h.now,
    )
    h.check()
    assert not [m for i, m in out if i == b"w1" and decode(m).command == P.DELETE]
    assert all(h.state.clients[b"c2"] in (rec.wanted_by or ()) for rec in h.state.ledger.tasks.values())
    assert len(h.state.ledger.tasks) == len(keys)


def test_cancelling_a_published_key_leaves_it_to_the_dataset(h: Harness) -> None:
    h.worker(b"w1", credit=10)
    h.client(b"c1")
    h.client(b"c2")
    h.submit(b"c1", [("a", [])])
    datasets(h, b"c1", 1, "put", "x", ["a"])
    h.send(b"c1", P.RELEASE, [["a"]])
    datasets(h, b"c2", 1, "get", "x")
    out = h.send(b"c2", P.CANCEL, [["a"]])
    assert report_entries(out, b"c2")["a"][1] == P.CANCELLED
    assert not msgs(out, b"w1", P.CANCEL_TASKS)
    assert h.state.ledger.tasks["a"].state == "processing"


# --- variables, queues, events and semaphores ----------------------------------------------


def coordinate(
    h: Harness, client: bytes, request_id: int, kind: str, op: str, name: str, value: bytes | None = None, **args: Any
) -> Out:
    """Send one COORDINATE request; everything the broker sent in that step."""
    args.setdefault("timeout", None)
    return h.send(client, P.COORDINATE, [request_id, kind, op, name, args, value if value is not None else 0])


def answers(out: Out, client: bytes) -> dict[int, dict[str, Any]]:
    """The INFO_REPLY answers ``client`` got in ``out``, by request id."""
    return {m.header[0]: m.header[1] for m in msgs(out, client, P.INFO_REPLY)}


def test_a_variable_get_waits_for_the_set_and_its_futures_are_held(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    assert answers(coordinate(h, b"c2", 1, "variable", "get", "v"), b"c2") == {}
    assert answers(coordinate(h, b"c2", 2, "variable", "get", "v", timeout=0.5), b"c2") == {}
    h.submit(b"c1", [("a", [])])
    h.finish(b"w1", "a")
    out = coordinate(h, b"c1", 1, "variable", "set", "v", b"<pickled future of a>", keys=["a"])
    assert answers(out, b"c1") == {1: {"ok": True}}
    got = answers(out, b"c2")
    assert got[1] == got[2] == {"ok": True, "value": b"<pickled future of a>", "keys": ["a"]}
    # The variable keeps a's value after its submitter lets go (c2 holds it too now).
    h.send(b"c1", P.RELEASE, [["a"]])
    h.send(b"c2", P.RELEASE, [["a"]])
    assert h.state.ledger.tasks["a"].state == "memory"
    out = coordinate(h, b"c1", 2, "variable", "delete", "v")
    assert one(out, b"w1", P.DELETE).header == [["a"]]
    # A get that times out is answered so, at the end of the step its deadline falls in.
    coordinate(h, b"c2", 3, "variable", "get", "v", timeout=0.5)
    assert answers(h.tick(1.0), b"c2") == {3: {"ok": False, "timed_out": True}}
    refused = answers(coordinate(h, b"c1", 3, "variable", "set", "v", b"x", keys=["gone"]), b"c1")[3]
    assert refused["ok"] is False and "cancelled or released" in refused["error"]


def test_queue_gets_are_served_in_order_and_abandoned_ones_dropped(h: Harness) -> None:
    h.client(b"c1")
    h.client(b"c2")
    coordinate(h, b"c2", 1, "queue", "get", "q")
    coordinate(h, b"c2", 2, "queue", "get", "q", batch=2)
    coordinate(h, b"c2", 3, "queue", "get", "q")
    coordinate(h, b"c2", 4, "queue", "abandon", "q", request=3)
    out = coordinate(h, b"c1", 1, "queue", "put", "q", b"first")
    assert answers(out, b"c2") == {1: {"ok": True, "value": b"first", "keys": []}}
    assert answers(coordinate(h, b"c1", 2, "queue", "put", "q", b"second"), b"c2") == {}  # 2 waits for two
    out = coordinate(h, b"c1", 3, "queue", "put", "q", b"third")
    assert answers(out, b"c2") == {2: {"ok": True, "values": [b"second", b"third"], "keys": [[], []]}}
    coordinate(h, b"c1", 4, "queue", "put", "q", b"fourth")  # request 3 was abandoned: it stays
    assert answers(coordinate(h, b"c1", 5, "queue", "qsize", "q"), b"c1")[5] == {"ok": True, "size": 1}
    out = coordinate(h, b"c1", 6, "queue", "get", "q", batch=True)
    assert answers(out, b"c1")[6] == {"ok": True, "values": [b"fourth"], "keys": [[]]}
    # A client that leaves stops waiting: the item goes to the next get.
    coordinate(h, b"c2", 5, "queue", "get", "q")
    coordinate(h, b"c1", 7, "queue", "get", "q")
    h.send(b"c2", P.GOODBYE, ["bye"])
    assert answers(coordinate(h, b"c1", 8, "queue", "put", "q", b"fifth"), b"c1")[7]["value"] == b"fifth"


def test_semaphore_leases_go_to_the_waiters_in_order(h: Harness) -> None:
    for client in (b"c1", b"c2", b"c3"):
        h.client(client)
    assert answers(coordinate(h, b"c1", 1, "semaphore", "acquire", "s", lease="l1"), b"c1")[1]["acquired"] is True
    assert answers(coordinate(h, b"c2", 1, "semaphore", "acquire", "s", lease="l2"), b"c2") == {}
    assert answers(coordinate(h, b"c3", 1, "semaphore", "acquire", "s", lease="l3"), b"c3") == {}
    # A try without waiting ends in the same step.
    assert answers(coordinate(h, b"c3", 2, "semaphore", "acquire", "s", lease="l4", timeout=0), b"c3") == {
        2: {"ok": True, "acquired": False}
    }
    mismatch = answers(coordinate(h, b"c3", 3, "semaphore", "acquire", "s", lease="l5", max_leases=2), b"c3")[3]
    assert mismatch["ok"] is False and "has 1 leases, not 2" in mismatch["error"]
    assert answers(coordinate(h, b"c2", 2, "semaphore", "release", "s", lease="l1"), b"c2")[2]["ok"] is False
    out = coordinate(h, b"c1", 2, "semaphore", "release", "s", lease="l1")
    assert answers(out, b"c2") == {1: {"ok": True, "acquired": True}}
    # c2 leaves holding the lease: c3 gets it.
    out = h.send(b"c2", P.GOODBYE, ["bye"])
    assert answers(out, b"c3") == {1: {"ok": True, "acquired": True}}
    assert answers(coordinate(h, b"c1", 3, "semaphore", "get_value", "s"), b"c1")[3] == {"ok": True, "value": 1}


def test_event_waits_and_a_restart_ends_every_wait(h: Harness) -> None:
    h.worker(b"w1", pool="p")
    h.client(b"c1")
    h.client(b"c2")
    assert answers(coordinate(h, b"c2", 1, "event", "wait", "e"), b"c2") == {}
    assert answers(coordinate(h, b"c2", 2, "event", "wait", "e", timeout=0.5), b"c2") == {}
    assert answers(h.tick(1.0), b"c2") == {2: {"ok": True, "set": False}}
    assert answers(coordinate(h, b"c1", 1, "event", "set", "e"), b"c2") == {1: {"ok": True, "set": True}}
    assert answers(coordinate(h, b"c1", 2, "event", "is_set", "e"), b"c1")[2] == {"ok": True, "set": True}
    coordinate(h, b"c1", 3, "event", "clear", "e")
    coordinate(h, b"c2", 3, "event", "wait", "e")
    coordinate(h, b"c2", 4, "variable", "get", "v")
    out = h.send(b"c1", P.RESTART, [9])
    ended = answers(out, b"c2")
    assert set(ended) == {3, 4} and all("restarted" in answer["error"] for answer in ended.values())


def test_a_queue_get_that_expires_first_lets_the_next_one_have_the_item(h: Harness) -> None:
    h.client(b"c1")
    coordinate(h, b"c1", 1, "queue", "get", "q", batch=3, timeout=0.5)
    coordinate(h, b"c1", 2, "queue", "get", "q", timeout=5.0)
    assert answers(coordinate(h, b"c1", 3, "queue", "put", "q", b"item"), b"c1") == {3: {"ok": True}}
    got = answers(h.tick(1.0), b"c1")
    assert got == {1: {"ok": False, "timed_out": True}, 2: {"ok": True, "value": b"item", "keys": []}}


def test_a_get_after_a_release_in_the_same_step_keeps_what_it_hands_over(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.submit(b"c1", [("a", [])])
    h.finish(b"w1", "a")
    coordinate(h, b"c1", 1, "queue", "put", "q", b"<future of a>", keys=["a"])
    # The client dropped its future of a, then asked for the queue's item: the release comes
    # first, and must not undo the hand-over of the same key.
    out = h.state.handle_many(
        [
            (b"c1", encode(P.RELEASE, [["a"]])),
            (b"c1", encode(P.COORDINATE, [2, "queue", "get", "q", {"timeout": None}, 0])),
        ],
        h.now,
    )
    h.check()
    assert not [m for i, m in out if i == b"w1" and decode(m).command == P.DELETE]
    assert h.state.ledger.tasks["a"].wanted_by == (h.state.clients[b"c1"],)


def test_a_future_of_a_key_not_here_yet_released_before_it_comes_holds_nothing(h: Harness) -> None:
    h.worker(b"w1")
    h.client(b"c1")
    h.client(b"c2")
    h.send(b"c2", P.WANT, [["later", "cancelled"]])
    h.send(b"c2", P.RELEASE, [["later"]])
    assert report_entries(h.send(b"c2", P.CANCEL, [["cancelled"]]), b"c2")["cancelled"][1] == P.CANCELLED
    h.submit(b"c1", [("later", []), ("cancelled", [])])
    h.finish(b"w1", "later", "cancelled")
    out = h.send(b"c1", P.RELEASE, [["later", "cancelled"]])
    assert sorted(one(out, b"w1", P.DELETE).header[0]) == ["cancelled", "later"]
