"""Large values moved between clients and workers in one hop (zmqdask.direct).

Pure tests of the broker's side (ELSEWHERE, RELAY_GATHER, PLACE) and of the messages, then
real clusters: workers listening on TCP and on Unix sockets, a data socket that cannot be
reached, and a worker that stops answering.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemons import connected_client, running_cluster
from test_broker_state import Harness, msgs, one, report_entries

from zmqdask import Client, LocalCluster, wait
from zmqdask import protocol as P
from zmqdask.config import DIRECT_MIN_BYTES
from zmqdask.direct import check_data_address, reachable
from zmqdask.errors import ProtocolError, UsageError
from zmqdask.protocol import decode, encode

BIG = DIRECT_MIN_BYTES * 2
DATA_ADDRESS = "ipc:///tmp/zmqdask-test/w1.sock"


@pytest.fixture
def h() -> Harness:
    return Harness()


def _direct_client(h: Harness, identity: bytes, direct: bool = True) -> None:
    one(h.send(identity, P.HELLO, ["client", {"name": "c", "pid": 1, "direct": direct}]), identity, P.WELCOME)


def _held_value(h: Harness, key: str = "x", nbytes: int = BIG) -> None:
    """Worker w1 (with a data address) and client c1; ``key`` computed and held by w1."""
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    h.submit(b"c1", [(key, [])])
    h.finish(b"w1", key, nbytes=nbytes)


# --- the broker's side -----------------------------------------------------------------------


def test_a_large_value_is_fetched_from_its_holder_not_relayed(h: Harness) -> None:
    _held_value(h)
    out = h.send(b"c1", P.GATHER, [["x"]])
    assert report_entries(out, b"c1")["x"] == ["x", P.ELSEWHERE, ["int", BIG, DATA_ADDRESS], 0]
    assert msgs(out, b"w1", P.GET) == []
    assert h.state.counters.direct_gets == 1


def test_relay_gather_always_goes_through_the_broker(h: Harness) -> None:
    _held_value(h)
    out = h.send(b"c1", P.RELAY_GATHER, [["x"]])
    assert one(out, b"w1", P.GET).header[1] == ["x"]
    assert report_entries(out, b"c1") == {}
    # Only that request: the next GATHER may be answered ELSEWHERE again.
    out = h.send(b"c1", P.GATHER, [["x"]])
    assert report_entries(out, b"c1")["x"][1] == P.ELSEWHERE


@pytest.mark.parametrize("case", ["small value", "client without direct", "worker without data address"])
def test_values_go_through_the_broker_otherwise(h: Harness, case: str) -> None:
    h.worker(b"w1", data_address="" if case == "worker without data address" else DATA_ADDRESS)
    _direct_client(h, b"c1", direct=case != "client without direct")
    h.submit(b"c1", [("x", [])])
    h.finish(b"w1", "x", nbytes=100 if case == "small value" else BIG)
    out = h.send(b"c1", P.GATHER, [["x"]])
    assert one(out, b"w1", P.GET).header[1] == ["x"]
    assert h.state.counters.direct_gets == 0


def test_a_placed_value_is_confirmed_by_the_worker_it_was_sent_to(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    out = h.send(b"c1", P.PLACE, [[["big", BIG]]])
    assert report_entries(out, b"c1")["big"] == ["big", P.ELSEWHERE, ["", BIG, DATA_ADDRESS], 0]
    assert msgs(out, b"w1", P.STORE) == []  # the client sends the bytes itself
    out = h.finish(b"w1", "big", nbytes=BIG)  # the worker's DONE once the client's STORE arrived
    assert report_entries(out, b"c1")["big"][1] == P.FINISHED
    assert h.state.info()["tasks"].get("memory") == 1


@pytest.mark.parametrize("case", ["no data worker", "client without direct"])
def test_place_answers_send_it_through_me_when_it_cannot_place(h: Harness, case: str) -> None:
    h.worker(b"w1", data_address="" if case == "no data worker" else DATA_ADDRESS)
    _direct_client(h, b"c1", direct=case != "client without direct")
    out = h.send(b"c1", P.PLACE, [[["big", BIG]]])
    assert report_entries(out, b"c1")["big"] == ["big", P.ELSEWHERE, ["", BIG, ""], 0]
    assert h.state.counters.direct_stores == 0
    out = h.send(b"c1", P.SCATTER, [[["big", 1]], False], [b"payload"])
    assert one(out, b"w1", P.STORE).header[0] == [["big", 1]]
    assert report_entries(h.finish(b"w1", "big"), b"c1")["big"][1] == P.FINISHED


def test_placing_a_known_value_sends_nothing(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    _direct_client(h, b"c2")
    h.send(b"c1", P.SCATTER, [[["big", 1]], False], [b"payload"])
    h.finish(b"w1", "big")
    out = h.send(b"c2", P.PLACE, [[["big", BIG]]])
    assert report_entries(out, b"c2")["big"][1] == P.FINISHED
    assert msgs(out, b"w1", P.STORE) == [] and h.state.counters.direct_stores == 0


def test_a_value_placed_by_two_clients_comes_from_whichever_sends_it(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    _direct_client(h, b"c2")
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    out = h.send(b"c2", P.PLACE, [[["big", BIG]]])
    # c1 may never send it (it may leave first): c2 is asked to send it through the broker.
    assert report_entries(out, b"c2")["big"] == ["big", P.ELSEWHERE, ["", BIG, ""], 0]
    h.submit(b"c2", [("uses-big", ["big"])])
    h.send(b"c1", P.GOODBYE, ["leaving"])
    out = h.send(b"c2", P.SCATTER, [[["big", 1]], False], [b"payload"])
    one(out, b"w1", P.STORE)
    out = h.finish(b"w1", "big")
    assert report_entries(out, b"c2")["big"][1] == P.FINISHED
    assert "uses-big" in [entry[0] for m in msgs(out, b"w1", P.COMPUTE) for entry in m.header[1]]
    assert h.state.ledger.awaiting == {}


def test_a_placed_value_whose_worker_died_is_asked_for_again_and_kept(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    h.worker(b"w2")
    _direct_client(h, b"c1")
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    h.submit(b"c1", [("uses-big", ["big"])])
    out = h.send(b"w1", P.GOODBYE, ["leaving"])  # gone before it confirmed the value
    assert report_entries(out, b"c1")["big"] == ["big", P.ELSEWHERE, ["", 0, ""], 0]
    # The client sends the bytes through the broker; the task waiting on them is not failed.
    out = h.send(b"c1", P.SCATTER, [[["big", 1]], False], [b"payload"])
    store = one(out, b"w2", P.STORE)
    assert store.header[0] == [["big", 1]] and bytes(store.payload[0]) == b"payload"
    out = h.finish(b"w2", "big")
    assert "uses-big" in [entry[0] for m in msgs(out, b"w2", P.COMPUTE) for entry in m.header[1]]


def test_a_placed_value_can_still_come_through_the_broker(h: Harness) -> None:
    # The client could not reach the worker named: it sends the bytes with SCATTER instead.
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    out = h.send(b"c1", P.SCATTER, [[["big", 1]], False], [b"payload"])
    assert one(out, b"w1", P.STORE).header[0] == [["big", 1]]
    out = h.finish(b"w1", "big")
    assert report_entries(out, b"c1")["big"][1] == P.FINISHED


def test_a_placed_value_nobody_waits_for_is_lost_when_its_worker_dies(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1", direct=True)
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    h.state.clients[b"c1"].direct = False  # a client that could not send it again
    out = h.send(b"w1", P.GOODBYE, ["leaving"])
    assert report_entries(out, b"c1")["big"][1] == P.LOST


def _two_holders(h: Harness, address_1: str, address_2: str, host_2: str = "h") -> None:
    """Workers w1 and w2 with data addresses; ``x`` computed and held by w1."""
    h.worker(b"w1", data_address=address_1, host="h")
    h.worker(b"w2", data_address=address_2, host=host_2)
    _direct_client(h, b"c1")
    h.submit(b"c1", [("x", [])])
    h.finish(b"w1", "x", nbytes=BIG)


def test_a_worker_fetches_a_large_input_from_its_holder_directly(h: Harness) -> None:
    _two_holders(h, DATA_ADDRESS, "ipc:///tmp/zmqdask-test/w2.sock")
    out = h.send(b"w2", P.FETCH, [7, b"w1", ["x"]])
    assert one(out, b"w2", P.FETCH_FROM).header == [7, DATA_ADDRESS, ["x"], BIG]
    assert msgs(out, b"w1", P.GET) == []
    assert h.state.counters.direct_fetches == 1
    out = h.send(b"w2", P.RELAY_FETCH, [7, b"w1", ["x"]])  # the holder did not answer it
    assert one(out, b"w1", P.GET).header[1] == ["x"]


@pytest.mark.parametrize(
    "case", ["small value", "Unix socket on another host", "asker without data address", "holder gone"]
)
def test_inputs_are_relayed_by_the_broker_otherwise(h: Harness, case: str) -> None:
    _two_holders(
        h,
        DATA_ADDRESS,
        "" if case == "asker without data address" else "ipc:///tmp/zmqdask-test/w2.sock",
        host_2="elsewhere" if case == "Unix socket on another host" else "h",
    )
    if case == "small value":
        h.submit(b"c1", [("small", [])])
        h.finish(b"w1", "small", nbytes=100)
    key = "small" if case == "small value" else "x"
    if case == "holder gone":
        h.send(b"w1", P.GOODBYE, ["leaving"])
    out = h.send(b"w2", P.FETCH, [7, b"w1", [key]])
    assert msgs(out, b"w2", P.FETCH_FROM) == []
    if case == "holder gone":
        assert one(out, b"w2", P.DATA).header == [7, [], [key]]
    else:
        assert one(out, b"w1", P.GET).header[1] == [key]


def test_tcp_data_addresses_are_used_across_hosts(h: Harness) -> None:
    _two_holders(h, "tcp://10.0.0.1:4000", "tcp://10.0.0.2:4000", host_2="other-host")
    out = h.send(b"w2", P.FETCH, [7, b"w1", ["x"]])
    assert one(out, b"w2", P.FETCH_FROM).header[1] == "tcp://10.0.0.1:4000"


# --- messages ------------------------------------------------------------------------------


def test_elsewhere_place_and_relay_gather_round_trip() -> None:
    for command, header in [
        (P.REPORT, [[["k", P.ELSEWHERE, ["int", 5, "tcp://h:1"], 0]]]),
        (P.PLACE, [[["k", 5]]]),
        (P.RELAY_GATHER, [["k"]]),
        (P.FETCH_FROM, [3, "tcp://h:1", ["k"], 10]),
        (P.RELAY_FETCH, [3, b"w1", ["k"]]),
    ]:
        assert decode(encode(command, header)).header == header


@pytest.mark.parametrize(
    "command, header",
    [
        (P.REPORT, [[["k", P.ELSEWHERE, ["int", 5], 0]]]),
        (P.REPORT, [[["k", P.ELSEWHERE, ["int", "5", "tcp://h:1"], 0]]]),
        (P.DONE, [[["k", P.ELSEWHERE, ["int", 5, "tcp://h:1"], 0]]]),  # REPORT only
        (P.PLACE, [[["k", -1]]]),
        (P.PLACE, [[["k"]]]),
        (P.RELAY_GATHER, [[1]]),
        (P.FETCH_FROM, [3, "", ["k"], 10]),
        (P.FETCH_FROM, [3, "tcp://h:1", ["k"]]),
        (P.FETCH_FROM, [3, "tcp://h:1", ["k"], -1]),
    ],
)
def test_malformed_direct_messages_are_refused(command: int, header: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode(encode(command, header))


def test_data_addresses_are_checked(tmp_path: Path) -> None:
    assert check_data_address(f"ipc://{tmp_path}") == f"ipc://{tmp_path}"
    assert check_data_address("tcp://10.0.0.5") == "tcp://10.0.0.5"
    for bad, hint in [
        ("tcp://10.0.0.5:9000", "without a port"),
        (f"ipc://{tmp_path}/missing", "not a directory"),
        ("10.0.0.5", "expected ipc://DIRECTORY or tcp://HOST"),
        ("tcp://*", "not a wildcard"),
        ("tcp://0.0.0.0", "not a wildcard"),
    ]:
        with pytest.raises(UsageError, match=hint):
            check_data_address(bad)
    assert not reachable(f"ipc://{tmp_path}/no-such.sock")
    assert reachable("tcp://10.0.0.5:9000")


# --- real clusters ---------------------------------------------------------------------------


def _big_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(BIG // 8 + 1000)


def _direct_counts(client: Client) -> tuple[int, int]:
    info = client.scheduler_info()
    return info["direct_gets"], info["direct_stores"]


def test_local_cluster_workers_serve_large_values_over_unix_sockets(client: Client) -> None:
    addresses = [w["data_address"] for w in client.scheduler_info()["workers"].values()]
    assert len(addresses) == 2 and all(a.startswith("ipc://") and reachable(a) for a in addresses)
    gets, stores = _direct_counts(client)
    array = _big_array(1)
    scattered = client.scatter(array)
    doubled = client.submit(np.multiply, scattered, 2)
    assert np.array_equal(doubled.result(timeout=30), array * 2)
    assert float(client.submit(np.sum, scattered).result(timeout=30)) == pytest.approx(array.sum())
    # A small value still comes through the broker.
    assert client.submit(len, scattered).result(timeout=30) == len(array)
    assert _direct_counts(client) == (gets + 1, stores + 1)


def test_large_values_move_directly_over_tcp(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as daemons:
        daemons.start_broker()
        daemons.start_pool(2, options=["--data-address", "tcp://127.0.0.1"])
        with connected_client(daemons) as client:
            addresses = [w["data_address"] for w in client.scheduler_info()["workers"].values()]
            assert all(a.startswith("tcp://127.0.0.1:") for a in addresses)
            arrays = [_big_array(seed) for seed in range(3)]
            scattered = client.scatter(arrays)
            copies = client.map(np.copy, scattered, pure=False)
            wait(copies, timeout=30)
            for array, back in zip(arrays, client.gather(copies), strict=True):
                assert np.array_equal(array, back)
            assert _direct_counts(client) == (3, 3)


def test_an_unreachable_data_socket_makes_values_go_through_the_broker(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    with running_cluster(tmp_path) as daemons:
        daemons.start_broker()
        daemons.start_pool(2, options=["--data-address", f"ipc://{sockets}"])
        with connected_client(daemons) as client:
            for path in sockets.iterdir():  # the workers still listen, but nobody can connect
                path.unlink()
            array = _big_array(2)
            scattered = client.scatter(array)
            copied = client.submit(np.copy, scattered, pure=False)
            assert np.array_equal(copied.result(timeout=30), array)
            # The broker named the workers; the client could not reach them and relayed.
            assert _direct_counts(client) == (1, 1)


@pytest.mark.slow
def test_a_holder_that_stops_answering_is_given_up_and_the_value_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zmqdask.direct

    monkeypatch.setattr(zmqdask.direct, "DIRECT_TIMEOUT_S", 0.5)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    with Client(cluster, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        made = client.submit(np.ones, BIG // 8, pure=False)
        wait([made], timeout=30)
        holder = next(
            w["pid"] for w in client.scheduler_info()["workers"].values() if w["nkeys"] == 1
        )
        os.kill(holder, signal.SIGSTOP)  # alive, but answers nobody
        try:
            # The direct request times out, the broker's GET too (the worker is declared
            # dead), and the task runs again on the other worker.
            assert made.result(timeout=60).sum() == BIG // 8
        finally:
            os.kill(holder, signal.SIGCONT)


# --- large task arguments ---------------------------------------------------------------------


def test_which_arguments_are_sent_ahead() -> None:
    import pandas as pd

    from zmqdask.client import _placeable_nbytes

    assert _placeable_nbytes(np.zeros(10)) == 80
    assert _placeable_nbytes(b"x" * 5) == 5
    frame = pd.DataFrame({"a": np.arange(1000)})
    assert _placeable_nbytes(frame) == frame.memory_usage(index=True).sum()
    assert _placeable_nbytes(frame["a"]) == frame["a"].memory_usage(index=True)
    assert _placeable_nbytes([np.zeros(10**6)]) == 0  # only top-level arguments are looked at
    assert _placeable_nbytes(np.float64(1.0)) == 0


def _fail_once_then_sum(array: np.ndarray, marker: str) -> float:
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return float(array.sum())


def test_large_arguments_go_ahead_of_their_task_and_are_released_after(client: Client, wait_until: Any) -> None:
    import pandas as pd

    gets, stores = _direct_counts(client)
    array = _big_array(3)
    total = client.submit(np.sum, array)
    assert total.result(timeout=30) == pytest.approx(array.sum())
    # The same pure call with the same array: the same keys, nothing sent again.
    assert client.submit(np.sum, array).key == total.key
    frame = pd.DataFrame({"x": _big_array(4)})
    described = client.submit(pd.DataFrame.sum, frame, numeric_only=True)
    assert described.result(timeout=30)["x"] == pytest.approx(frame.x.sum())
    scaled = client.submit(np.multiply, array, 2)
    assert np.array_equal(scaled.result(timeout=30), array * 2)
    assert _direct_counts(client)[1] == stores + 2  # the array once, the frame once
    assert _direct_counts(client)[0] == gets + 1  # the doubled array came back directly
    del total, described, scaled
    wait_until(lambda: client.scheduler_info()["tasks"]["memory"] == 0, timeout=20)


def test_a_task_with_a_large_argument_can_be_retried(client: Client, tmp_path: Path) -> None:
    array = _big_array(5)
    future = client.submit(_fail_once_then_sum, array, marker=str(tmp_path / "failed-once"))
    with pytest.raises(RuntimeError, match="first attempt fails"):
        future.result(timeout=30)
    future.retry()
    assert future.result(timeout=30) == pytest.approx(array.sum())


def test_workers_move_large_inputs_between_them_directly() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        first, second = _big_array(6), _big_array(7)
        # Placed on the two workers in turn (each goes to the one holding fewest bytes).
        held = client.scatter([first, second])
        assert sorted(w["nkeys"] for w in client.scheduler_info()["workers"].values()) == [1, 1]
        total = client.submit(np.add, held[0], held[1])
        assert np.array_equal(total.result(timeout=30), first + second)
        assert client.scheduler_info()["direct_fetches"] == 1


# --- what goes wrong on the way ------------------------------------------------------------


def test_a_value_given_up_on_a_worker_is_placed_again_when_its_new_holder_dies(h: Harness) -> None:
    h.worker(b"w3")  # no data address
    h.worker(b"w1", data_address="tcp://10.0.0.1:5555")
    _direct_client(h, b"c1")
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    h.submit(b"c1", [("uses-big", ["big"])])
    # The client could not reach w1 and sends the bytes through the broker; w3 takes them.
    out = h.send(b"c1", P.SCATTER, [[["big", 1]], False], [b"payload"])
    assert [identity for identity, m in out if m.command == P.STORE] == [b"w3"]
    assert "big" not in h.state.workers[b"w1"].storing  # w1's placement is void
    out = h.send(b"w3", P.GOODBYE, ["leaving"])  # before confirming it
    assert one(out, b"w1", P.STORE).header[0] == [["big", 1]]


def test_bytes_asked_of_clients_that_all_let_go_are_lost(h: Harness) -> None:
    h.worker(b"w1", data_address=DATA_ADDRESS)
    _direct_client(h, b"c1")
    h.send(b"c1", P.PLACE, [[["big", BIG]]])
    h.submit(b"c1", [("uses-big", ["big"])])
    out = h.send(b"w1", P.GOODBYE, ["leaving"])
    assert report_entries(out, b"c1")["big"][1] == P.ELSEWHERE  # send it again, please
    h.worker(b"w2")
    out = h.send(b"c1", P.RELEASE, [["big"]])  # ... but the client let it go meanwhile
    out += h.tick(0.01)
    assert report_entries(out, b"c1")["uses-big"][1] == P.ERRED
    assert h.state.ledger.awaiting == {}


def test_a_scattered_value_whose_holder_died_is_sent_again_by_its_client(h: Harness) -> None:
    h.worker(b"w1")
    h.worker(b"w2")
    _direct_client(h, b"c1")
    out = h.send(b"c1", P.SCATTER, [[["data", 1]], False], [b"payload"])
    holder = next(identity for identity, m in out if m.command == P.STORE)
    h.finish(holder, "data")
    h.submit(b"c1", [("uses-data", ["data"])])
    out = h.send(holder, P.GOODBYE, ["leaving"])
    assert report_entries(out, b"c1")["data"] == ["data", P.ELSEWHERE, ["", 8, ""], 0]
    other = b"w2" if holder == b"w1" else b"w1"
    out = h.send(b"c1", P.SCATTER, [[["data", 1]], False], [b"payload"])
    one(out, other, P.STORE)
    out = h.finish(other, "data")
    assert "uses-data" in [entry[0] for m in msgs(out, other, P.COMPUTE) for entry in m.header[1]]


def test_a_client_keeps_few_connections_to_data_sockets() -> None:
    import zmq

    from zmqdask.direct import _MAX_CHANNELS, DirectFetcher

    context = zmq.Context()
    try:
        fetcher = DirectFetcher(context)
        for port in range(40000, 40000 + 3 * _MAX_CHANNELS):
            fetcher._channel(f"tcp://127.0.0.1:{port}")
        assert len(fetcher._channels) == _MAX_CHANNELS
        assert f"tcp://127.0.0.1:{40000 + 3 * _MAX_CHANNELS - 1}" in fetcher._channels
        fetcher.close()
    finally:
        context.term()


def test_a_placement_released_before_it_is_confirmed_leaves_nothing_behind(
    client: Client, monkeypatch: pytest.MonkeyPatch, wait_until: Any
) -> None:
    import zmqdask.direct

    monkeypatch.setattr(zmqdask.direct, "DIRECT_TIMEOUT_S", 0.2)
    array = _big_array(8)
    client.submit(np.sum, array)  # dropped at once
    session: Any = client
    wait_until(lambda: not session._placing, timeout=10)
    wait_until(lambda: client.scheduler_info()["tasks"]["memory"] == 0, timeout=10)
    assert session._direct is None or not session._direct._failed
    assert client.submit(np.sum, array).result(timeout=30) == pytest.approx(array.sum())


def test_a_scattered_array_dropped_and_passed_again_is_found(client: Client) -> None:
    for seed in range(10):
        array = _big_array(100 + seed)
        held = client.scatter(array)
        del held  # a release still pending when the same array is passed again
        assert client.submit(np.sum, array).result(timeout=30) == pytest.approx(array.sum())


def _slow_sum(array: np.ndarray) -> float:
    import time

    time.sleep(3)
    return float(array.sum())


@pytest.mark.slow
def test_arguments_and_scattered_values_outlive_the_worker_holding_them() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        array = _big_array(9)
        total = client.submit(_slow_sum, array)
        deadline = time.monotonic() + 30
        while True:
            workers = client.scheduler_info()["workers"].values()
            busy = [w for w in workers if w["processing"] and w["nkeys"]]
            if busy:
                break
            assert time.monotonic() < deadline, "the task never started next to its argument"
            time.sleep(0.05)
        os.kill(busy[0]["pid"], signal.SIGKILL)  # the argument and the running task go
        # The client still has the array: it sends it again, and the task runs again.
        assert total.result(timeout=60) == pytest.approx(array.sum())
