"""Dask code that ports by changing imports: call forms and keywords Dask users write."""

from __future__ import annotations

import asyncio
import pickle
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import zmqdask
import zmqdask.dataframe as dd
from zmqdask import Client, LocalCluster
from zmqdask.errors import UsageError
from zmqdask.local import parse_bytes
from zmqdask.serialize import dumps, loads


def inc(x: int) -> int:
    return x + 1


def takes_no_keywords(x: int) -> int:
    return x * 10


def test_a_function_of_main_passed_as_an_argument_travels_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    source = "def triple(x):\n    return 3 * x\n"
    exec(compile(source, "<script>", "exec"), main.__dict__)
    triple = main.__dict__["triple"]
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert b"__main__" in pickle.dumps(triple)  # plain pickle would send a reference
    frames = dumps((triple, 4))
    # A worker's __main__ is another module: the function must come with the pickle.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    fn, arg = loads(frames)
    assert fn(arg) == 12


def test_script_functions_work_in_dataframe_operations_and_task_prints_are_shown(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import pandas as pd
            import zmqdask.dataframe as dd
            from zmqdask import Client

            def double(part):
                return part * 2

            class Offset:
                def __init__(self, n):
                    self.n = n

                def __call__(self, x):
                    return x + self.n

            def shout(x):
                print("printed by task", x, flush=True)
                return x

            def chatty(t):
                for i in range(20):
                    print(f"LINE-{t}-{i}")
                return t

            if __name__ == "__main__":
                pdf = pd.DataFrame({"x": range(10)})
                with Client(n_workers=1) as client:
                    df = dd.from_pandas(pdf, npartitions=2)
                    print("map_partitions", df.map_partitions(double).x.sum().compute())
                    print("map", df.x.map(Offset(1)).sum().compute())
                    print("result", client.submit(shout, 7).result())
                    client.gather(client.map(chatty, range(6)))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "map_partitions 90" in lines and "map 55" in lines and "result 7" in lines
    assert "printed by task 7" in lines  # the worker's stdout is this process's, as in Dask
    # Workers print concurrently: every line arrives whole.
    assert sum(1 for line in lines if re.fullmatch(r"LINE-\d-\d+", line)) == 120, done.stdout
    assert "zmqdask-worker started" not in done.stdout


@pytest.fixture
def frame() -> dd.DataFrame:
    return dd.from_pandas(pd.DataFrame({"x": range(10), "y": range(10, 20)}), npartitions=3)


def test_compute_and_persist_look_inside_lists_tuples_and_dicts(frame: dd.DataFrame) -> None:
    total, peak = frame.x.sum(), frame.y.max()
    assert zmqdask.compute([total, peak], {"t": total}, 5) == ([45, 19], {"t": 45}, 5)
    assert zmqdask.compute((total,), [peak]) == ((45,), [19])
    kept = zmqdask.compute([total], traverse=False)[0]
    assert kept[0] is total  # traverse=False leaves containers alone, as in Dask
    (persisted,) = zmqdask.persist([frame])
    assert isinstance(persisted, list) and persisted[0].x.sum().compute() == 45


def test_compute_and_persist_through_a_client_look_inside_containers(client: Client, frame: dd.DataFrame) -> None:
    (result,) = zmqdask.compute({"sum": frame.x.sum(), "parts": [frame.y.min()]})
    assert result == {"sum": 45, "parts": [10]}
    (persisted,) = zmqdask.persist({"df": frame})
    assert persisted["df"].y.sum().compute() == 145


def test_scheduler_keyword_computes_locally_or_says_what_it_accepts(client: Client, frame: dd.DataFrame) -> None:
    assert frame.x.sum().compute(scheduler="sync") == 45
    assert frame.x.sum().compute(scheduler="distributed") == 45
    assert zmqdask.compute(frame.x.max(), scheduler="threads") == (9,)
    with pytest.raises(UsageError, match="unknown scheduler 'gpu'"):
        frame.x.sum().compute(scheduler="gpu")


def test_a_local_cluster_starts_when_made_and_its_client_leaves_it_running() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1.5GB")
    assert cluster.status == "running" and cluster.dashboard_link is None  # as in Dask
    assert cluster.scheduler_address == cluster.address and cluster.address.startswith("tcp://")
    try:
        with Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2  # as in Dask: there on return
            assert client.id == client.name
            assert client.status == "running"
            assert client.submit(inc, 1).result() == 2
            workers = client.scheduler_info()["workers"].values()
            assert {w["memory_limit"] for w in workers} == {1_500_000_000}
        assert cluster.status == "running"  # the caller's cluster: still running
        with Client(cluster.scheduler_address) as again:
            assert again.submit(inc, 2).result() == 3
        with pytest.raises(AttributeError, match="scheduler_info"):
            cluster.workers  # noqa: B018
    finally:
        cluster.close()
    assert cluster.status == "closed"


def test_a_local_cluster_scales_up_and_down(wait_until: Callable[..., None]) -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        held = client.submit(inc, 10)
        assert held.result() == 11
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        assert cluster.n_workers == 3 and sum(client.gather(client.map(inc, range(30)))) == 465
        cluster.scale(1)  # stops the newest pool, of two workers
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 60)
        assert cluster.n_workers == 1 and held.result() == 11 and client.submit(inc, 1).result() == 2
        with pytest.raises(UsageError, match="non-negative"):
            cluster.scale(-1)


def test_an_asynchronous_local_cluster_starts_when_awaited_or_given_to_a_client() -> None:
    async def main() -> list[Any]:
        seen = []
        async with LocalCluster(n_workers=1, asynchronous=True) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                seen.append(await client.submit(inc, 1))
        seen.append(cluster.status)
        later = LocalCluster(n_workers=1, asynchronous=True)
        seen.append(later.status)
        assert await later is later
        async with Client(later, asynchronous=True) as client:
            seen.append(await client.submit(inc, 2))
        await later.close()
        seen.append(later.status)
        given = LocalCluster(n_workers=1, asynchronous=True)
        async with Client(given, asynchronous=True) as client:  # a client starts it
            seen.append(await client.submit(inc, 3))
        await given.close()
        # Awaited and given to a client at once: started once, the second waits for the first.
        both = LocalCluster(n_workers=1, asynchronous=True)
        started, client = await asyncio.gather(both, Client(both, asynchronous=True))
        assert started is both
        seen.append(await client.submit(inc, 4))
        seen.append(len(both._pools))
        await client.close()
        # Closing stops the children in a thread: the loop goes on meanwhile.
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await both.close()
        ticker.cancel()
        seen.append(ticks > 0)
        return seen

    assert asyncio.run(main()) == [2, "closed", "created", 3, "closed", 4, 5, 1, True]


def test_a_closed_local_cluster_says_so_at_once() -> None:
    cluster = LocalCluster(n_workers=1)
    cluster.close()
    for use in (lambda: Client(cluster), lambda: cluster.scale(2), cluster.start):
        with pytest.raises(UsageError, match="closed; make a new one"):
            use()


def test_dask_placement_keywords_are_accepted_and_not_passed_to_the_function(client: Client) -> None:
    hints = {"workers": ["w1"], "resources": {"GPU": 1}, "allow_other_workers": True, "fifo_timeout": "1s"}
    assert client.submit(takes_no_keywords, 1, **hints).result() == 10
    assert client.gather(client.map(takes_no_keywords, [1, 2], **hints)) == [10, 20]
    with pytest.raises(UsageError, match="no actors"):
        client.submit(inc, 1, actor=True)
    with pytest.raises(UsageError, match="no actors"):
        client.map(inc, [1], actors=True)


def test_client_keywords_of_dask_local_clusters_are_accepted() -> None:
    with Client(n_workers=1, memory_limit=10**9, dashboard_address=":0", silence_logs=True) as client:
        assert client.submit(inc, 3).result() == 4
        assert {w["memory_limit"] for w in client.scheduler_info()["workers"].values()} == {10**9}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20), ("1e9", 10**9), (2048, 2048), ("100", 100), ("2kb", 2000)],
)
def test_sizes_parse_like_dask(text: int | str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "4 parsecs", -1, "GB"])
def test_bad_sizes_say_what_is_expected(text: int | str) -> None:
    with pytest.raises(UsageError, match="such as '4GB'"):
        parse_bytes(text)


def write_marker(path: str, delay: float) -> str:
    import time

    time.sleep(delay)
    Path(path).write_text("done")
    return path


def test_fire_and_forget_runs_a_task_whose_future_is_dropped(client: Client, tmp_path: Path, wait_until) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "marker"
    future = client.submit(write_marker, str(marker), 0.3, pure=False)
    zmqdask.fire_and_forget([future])
    del future
    wait_until(marker.exists, timeout=20)


def test_dask_client_methods_zmqdask_lacks_say_what_to_do_instead(client: Client) -> None:
    with pytest.raises(AttributeError, match=r"no rebalance\(\): results stay"):
        client.rebalance()
    with pytest.raises(AttributeError, match=r"no get_task_stream\(\): there is no task stream"):
        client.get_task_stream()
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        client.no_such_thing  # noqa: B018
    assert client.dashboard_link is None
    assert not hasattr(client, "replicate")


def test_shutdown_closes_the_client_and_its_own_cluster() -> None:
    client = Client(n_workers=1)
    cluster = client.cluster
    assert cluster is not None and cluster.broker_pid is not None
    client.shutdown()
    assert client.status == "closed" and cluster.broker_pid is None


def test_shutdown_stops_a_local_cluster_the_client_was_given() -> None:
    cluster = LocalCluster(n_workers=1)
    client = Client(cluster)
    assert client.submit(inc, 1).result() == 2
    client.shutdown()
    assert client.status == "closed" and cluster.status == "closed"


def sum_of_children(n: int) -> int:
    from zmqdask import get_client

    client = get_client()
    return sum(client.gather(client.map(inc, range(n), pure=False)))


def nested_children(depth: int) -> int:
    from zmqdask import get_client

    if depth == 0:
        return 1
    client = get_client()
    return 1 + client.submit(nested_children, depth - 1, pure=False).result(timeout=60)


def child_of(i: int) -> int:
    from zmqdask import get_client

    return get_client().submit(inc, i, pure=False).result(timeout=60)


def test_tasks_submit_tasks_through_get_client_without_running_out_of_threads(client: Client) -> None:
    # Workers have one thread each: the waiting tasks give their thread to their children.
    parents = client.map(sum_of_children, [20, 30, 40, 50], pure=False)
    assert client.gather(parents) == [210, 465, 820, 1275]
    assert client.submit(nested_children, 4, pure=False).result(timeout=60) == 5
    # More waiting parents than the workers' windows hold: seceded tasks leave room.
    assert client.gather(client.map(child_of, range(120), pure=False)) == list(range(1, 121))


def test_get_client_outside_tasks_without_a_client_says_how_to_get_one() -> None:
    with pytest.raises(ValueError, match=r"create one with Client\(\)"):
        zmqdask.get_client()


def test_to_csv_into_one_file_keeps_partition_order_and_one_header(client: Client, tmp_path: Path) -> None:
    pdf = pd.DataFrame({"x": range(25), "y": [f"v{i}" for i in range(25)]})
    frame = dd.from_pandas(pdf, npartitions=4)
    target = tmp_path / "out" / "all.csv"
    assert frame.to_csv(target, single_file=True, index=False) == [str(target)]
    assert pd.read_csv(target).equals(pdf)
    frame.x.to_csv(tmp_path / "x.csv", single_file=True)  # a Series too
    assert pd.read_csv(tmp_path / "x.csv", index_col=0)["x"].tolist() == list(range(25))
    with pytest.raises(UsageError, match="needs a file name"):
        frame.to_csv(tmp_path / "part-*.csv", single_file=True)


def test_dask_keywords_of_drop_set_index_and_parquet(tmp_path: Path) -> None:
    pdf = pd.DataFrame({"a": [3, 1, 2], "b": [1.0, 2.0, 3.0], "c": ["x", "y", "z"]})
    frame = dd.from_pandas(pdf, npartitions=2)
    assert list(frame.drop("a", axis=1).columns) == ["b", "c"]
    assert list(frame.drop(["a", "c"], axis="columns").compute().columns) == ["b"]
    with pytest.raises(UsageError, match="axis=1"):
        frame.drop("a")
    indexed = frame.set_index("a", sorted=True).compute()
    assert indexed.index.tolist() == [1, 2, 3] and indexed.b.tolist() == [2.0, 3.0, 1.0]
    pytest.importorskip("pyarrow")
    frame.to_parquet(tmp_path / "pq", engine="pyarrow")
    back = dd.read_parquet(tmp_path / "pq", engine="auto").compute()
    assert back.sort_values("b").reset_index(drop=True).equals(pdf)
    with pytest.raises(UsageError, match="overwrite=True"):
        frame.to_parquet(tmp_path / "pq", overwrite=False)
    with pytest.raises(UsageError, match="engine='fastparquet' is not available"):
        dd.read_parquet(tmp_path / "pq", engine="fastparquet")


def test_a_collection_persisted_by_a_closed_client_says_its_data_is_gone() -> None:
    with Client(n_workers=1) as short_lived:
        frame = dd.from_pandas(pd.DataFrame({"x": range(10)}), npartitions=2).persist()
        assert short_lived.compute(frame.x.sum()).result() == 45
    with pytest.raises(UsageError, match="went with its client"):
        frame.x.sum().compute()


def sleepy(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_as_completed_batches_and_timeout(client: Client, cluster: LocalCluster) -> None:
    futures = client.map(inc, range(10))
    batches = list(zmqdask.as_completed(futures, with_results=True).batches())
    assert sorted(value for batch in batches for _, value in batch) == list(range(1, 11))
    slow = client.submit(sleepy, 3.0, pure=False)
    with pytest.raises(zmqdask.TimeoutError, match=r"1 futures had not finished within 0\.2 s"):
        for _ in zmqdask.as_completed([client.submit(inc, 1), slow], timeout=0.2):
            pass

    async def main() -> None:
        async with Client(cluster.address, asynchronous=True) as aclient:
            late = aclient.submit(sleepy, 3.0, pure=False)
            with pytest.raises(zmqdask.TimeoutError, match="had not finished"):
                async for _ in zmqdask.as_completed([late], timeout=0.2):
                    pass

    asyncio.run(main())


class TwoPartError(Exception):
    """An exception whose __init__ takes more than it passes on to Exception."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raise_two_part(code: int) -> None:
    raise TwoPartError("failed", code)


def test_exceptions_whose_init_differs_from_their_args_keep_type_and_attributes(client: Client) -> None:
    future = client.submit(raise_two_part, 7)
    with pytest.raises(TwoPartError, match="failed") as caught:
        future.result()
    assert caught.value.code == 7
    assert isinstance(future.exception(), TwoPartError) and future.exception().code == 7


def test_explode_melt_and_comparison_methods_match_pandas() -> None:
    pdf = pd.DataFrame({"a": [[1, 2], [3], [], [4, 5, 6]] * 3, "b": range(12), "c": [1.5 * i for i in range(12)]})
    frame = dd.from_pandas(pdf, npartitions=3)
    pd.testing.assert_frame_equal(frame.explode("a").compute(), pdf.explode("a"))
    pd.testing.assert_series_equal(frame.a.explode().compute(), pdf.a.explode())
    pd.testing.assert_series_equal(frame.b.gt(5).compute(), pdf.b.gt(5))
    pd.testing.assert_series_equal(frame.b.le(frame.c).compute(), pdf.b.le(pdf.c))
    pd.testing.assert_frame_equal(frame[["b", "c"]].ne(3).compute(), pdf[["b", "c"]].ne(3))
    wide = pd.DataFrame({"id": range(6), "x": range(6), "y": range(10, 16)})
    long = dd.melt(dd.from_pandas(wide, npartitions=2), id_vars="id").compute()
    expected = pd.melt(wide, id_vars="id")
    order = ["variable", "id"]
    pd.testing.assert_frame_equal(
        long.sort_values(order).reset_index(drop=True), expected.sort_values(order).reset_index(drop=True)
    )
    with pytest.raises(UsageError, match="reset_index"):
        frame.explode("a", ignore_index=True)


def slow_square(x: int, delay: float = 0.02) -> int:
    import time

    time.sleep(delay)
    return x * x


def test_progress_draws_until_everything_is_done_and_futures_of_finds_them(client: Client) -> None:
    import io

    futures = client.map(slow_square, range(20), pure=False)
    shown = io.StringIO()
    zmqdask.progress(futures, file=shown, interval="20ms")
    assert all(future.done() for future in futures)
    lines = shown.getvalue().split("\r")
    assert lines[-1].startswith("[" + "#" * 40 + "] | 100% Completed") and lines[-1].endswith("s\n")
    # A persisted frame's partitions are futures too.
    pdf = pd.DataFrame({"x": range(100)})
    persisted = client.persist(dd.from_pandas(pdf, npartitions=4))
    assert len(zmqdask.futures_of(persisted)) == 4
    assert zmqdask.futures_of([futures[:3], {"f": futures[3]}]) == futures[:4]
    assert client.futures_of(persisted) == zmqdask.futures_of(persisted)
    shown = io.StringIO()
    zmqdask.progress(persisted, file=shown, complete=False)
    assert shown.getvalue().endswith("\r") and "100%" not in shown.getvalue().rsplit("\r", 2)[-2]
    with pytest.raises(UsageError, match="interval"):
        zmqdask.progress(futures, interval="soon")


def test_progress_on_a_running_event_loop_returns_at_once(run_async) -> None:  # type: ignore[no-untyped-def]
    import io

    async def body(c: Client) -> str:
        futures = c.map(slow_square, range(10), delay=0.05, pure=False)
        shown = io.StringIO()
        assert zmqdask.progress(futures, file=shown, interval=0.01) is None
        assert not all(future.done() for future in futures)  # it did not wait for them
        await zmqdask.wait(futures)
        deadline = asyncio.get_running_loop().time() + 10
        while "100%" not in shown.getvalue():
            assert asyncio.get_running_loop().time() < deadline, shown.getvalue()
            await asyncio.sleep(0.01)
        return shown.getvalue()

    last = run_async(body).rsplit("\r", 1)[-1]
    assert last.startswith("[" + "#" * 40 + "] | 100% Completed") and last.endswith("s\n")


def worker_fact(_: int) -> tuple[str, int]:
    worker = zmqdask.get_worker()
    # Dask code keeps one expensive object per worker this way.
    if not hasattr(worker, "calls_seen"):
        worker.calls_seen = 0
    worker.calls_seen += 1
    return worker.name, worker.calls_seen


def parent_with_worker_client(n: int) -> int:
    zmqdask.secede()
    zmqdask.rejoin()
    with zmqdask.worker_client() as inner:
        return sum(inner.gather(inner.map(inc, range(n), pure=False)))


def test_get_worker_worker_client_secede_and_rejoin_inside_tasks(client: Client) -> None:
    facts = client.gather(client.map(worker_fact, range(40), pure=False))
    by_worker: dict[str, list[int]] = {}
    for name, seen in facts:
        by_worker.setdefault(name, []).append(seen)
    # Each worker counted its own calls: the attribute lived on between tasks.
    assert sum(max(seen) for seen in by_worker.values()) == 40
    assert all(sorted(seen) == list(range(1, len(seen) + 1)) for seen in by_worker.values())
    parents = client.map(parent_with_worker_client, [10, 20, 30, 40], pure=False)
    assert client.gather(parents) == [55, 210, 465, 820]
    with pytest.raises(ValueError, match="only inside a task"):
        zmqdask.get_worker()
    zmqdask.secede()  # outside a task: nothing to do
    zmqdask.rejoin()


def hold_memory(nbytes: int, seconds: float) -> int:
    import time

    import numpy as np

    block = np.ones(nbytes, dtype=np.uint8)  # written, so resident
    time.sleep(seconds)
    return int(block.sum())


@pytest.mark.timeout(120)
def test_a_task_exceeding_the_memory_limit_kills_its_worker_and_fails_with_killed_worker(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with Client(n_workers=1, threads_per_worker=1, memory_limit="400MB", timeout=30) as c:
        assert c.scheduler_info()["workers"]
        hog = c.submit(hold_memory, 600 * 10**6, 30.0, pure=False)
        with pytest.raises(zmqdask.KilledWorker, match="exhausting memory"):
            hog.result(timeout=90)
        # The worker came back, and work within the limit runs as before.
        assert c.submit(hold_memory, 10**6, 0.0, pure=False).result(timeout=30) == 10**6
    err = capfd.readouterr().err
    expected = r"uses [\d.]+ MiB, more than 95% of its memory limit of 381.5 MiB, while running \['hold_memory"
    assert re.search(expected, err), err


def fails_until_file_exists(path: str, x: int) -> int:
    import os

    if not os.path.exists(path):
        raise ValueError("not yet")
    return x + 1


def count_and_fail(path: str) -> None:
    with open(path, "a") as log:
        log.write("run\n")
    with open(path) as log:
        raise ValueError(f"run {len(log.readlines())}")


def test_retry_runs_erred_futures_and_their_erred_inputs_again(client: Client, tmp_path: Path) -> None:
    flag = str(tmp_path / "ready")
    first = client.submit(fails_until_file_exists, flag, 1, pure=False)
    second = client.submit(inc, first, pure=False)
    fine = client.submit(inc, 10, pure=False)
    with pytest.raises(ValueError, match="not yet"):
        second.result(timeout=30)
    assert first.status == "error" and fine.result(timeout=30) == 11
    Path(flag).touch()
    client.retry([second, fine])  # second's erred input goes again too; fine is left alone
    assert second.result(timeout=30) == 3 and first.result(timeout=30) == 2
    assert fine.result(timeout=30) == 11
    runs = tmp_path / "runs.log"
    lone = client.submit(count_and_fail, str(runs), pure=False)
    with pytest.raises(ValueError):
        lone.result(timeout=30)
    lone.retry()
    with pytest.raises(ValueError, match="run 2"):  # it ran again, and failed again
        lone.result(timeout=30)


def test_retry_on_an_asynchronous_client(run_async, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "ready"

    async def body(c: Client) -> int:
        future = c.submit(fails_until_file_exists, str(flag), 41, pure=False)
        with pytest.raises(ValueError):
            await future
        flag.touch()
        await future.retry()
        return int(await future)

    assert run_async(body) == 42


def exits(code: int) -> None:
    sys.exit(code)


def interrupts() -> None:
    raise KeyboardInterrupt


def fails_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_a_task_calling_sys_exit_fails_its_future_and_the_client_goes_on(client: Client) -> None:
    for future in (client.submit(exits, 3, pure=False), client.submit(interrupts, pure=False)):
        with pytest.raises(zmqdask.errors.RemoteTaskFailure, match="which stops a process") as info:
            future.result(timeout=30)
        assert info.value.type_name in ("SystemExit", "KeyboardInterrupt")
    assert client.submit(inc, 1, pure=False).result(timeout=30) == 2


def test_cancelled_error_and_failed_results_of_as_completed_look_like_dask(client: Client) -> None:
    futures = client.map(fails_on_odd, range(4), pure=False)
    pairs = dict(zmqdask.as_completed(futures, with_results=True, raise_errors=False))
    assert [pairs[f] for f in futures[::2]] == [0, 2]
    for future in futures[1::2]:
        kind, exc, _tb = pairs[future]
        assert kind is ValueError and isinstance(exc, ValueError)
    cancelled = client.submit(slow_square, 3, 5.0, pure=False)
    cancelled.cancel()
    with pytest.raises(zmqdask.CancelledError):
        cancelled.result(timeout=30)
    # A cancelled future comes with its error, raised neither with nor without raise_errors.
    for raise_errors in (True, False):
        ((future, error),) = list(zmqdask.as_completed([cancelled], with_results=True, raise_errors=raise_errors))
        assert future is cancelled and isinstance(error, zmqdask.CancelledError) and cancelled.key in str(error)

    async def cancelled_async() -> Any:
        async with Client(client.address, asynchronous=True) as aclient:
            future = aclient.submit(slow_square, 4, 5.0, pure=False)
            await future.cancel()
            return [pair async for pair in zmqdask.as_completed([future], with_results=True)]

    ((_, error),) = asyncio.run(cancelled_async())
    assert isinstance(error, zmqdask.CancelledError)


def fails_first_time(path: str, value: int) -> int:
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first try fails")
    return value


def test_compute_and_persist_take_retries_and_dask_placement_keywords(client: Client, tmp_path: Path) -> None:
    pdf = pd.DataFrame({"x": range(10)})
    frame = dd.from_pandas(pdf, npartitions=2)
    flaky = frame.x.map_partitions(lambda part, path: part * fails_first_time(path, 2), str(tmp_path / "a"))
    assert flaky.sum().compute(retries=1) == 90
    again = frame.x.map_partitions(lambda part, path: part * fails_first_time(path, 3), str(tmp_path / "b"))
    assert client.compute(again.sum(), retries=2, workers=["w"], allow_other_workers=True).result(timeout=30) == 135
    persisted = client.persist(frame, retries=1, resources={"GPU": 1})
    assert len(persisted) == 10
    third = zmqdask.delayed(fails_first_time)(str(tmp_path / "c"), 7)
    assert third.compute(retries=1) == 7
    with pytest.raises(UsageError, match="unexpected keyword"):
        client.compute(frame, colour="blue")
    assert Client.current() is client


def test_dataframe_arithmetic_methods_iteration_and_column_removal_match_pandas() -> None:
    pdf = pd.DataFrame({"s": ["apple", "banana", "cherry", "date"], "x": [1.0, None, 3.0, 4.0], "y": range(4)})
    df = dd.from_pandas(pdf, npartitions=2)
    numbers, lazy_numbers = pdf[["x", "y"]], df[["x", "y"]]
    pd.testing.assert_frame_equal(lazy_numbers.sub(df.y, axis=0).compute(), numbers.sub(pdf.y, axis=0))
    pd.testing.assert_series_equal(df.x.add(df.y, fill_value=0).compute(), pdf.x.add(pdf.y, fill_value=0))
    pd.testing.assert_frame_equal(lazy_numbers.pow(2).compute(), numbers.pow(2))
    pd.testing.assert_series_equal(df.y.rsub(10).compute(), pdf.y.rsub(10))
    pd.testing.assert_series_equal(df.s.str[:2].compute(), pdf.s.str[:2])
    assert [row.s for _, row in df.iterrows()] == list(pdf.s)
    assert [row.s for row in df.itertuples(index=False)] == list(pdf.s)
    y = df.pop("y")
    assert list(df.columns) == ["s", "x"] and y.compute().tolist() == [0, 1, 2, 3]
    del df["x"]
    pd.testing.assert_frame_equal(df.compute(), pdf[["s"]])


def test_client_get_runs_graphs_written_in_dasks_format(client: Client, run_async) -> None:  # type: ignore[no-untyped-def]
    import operator

    dsk = {
        "x": 1,
        "y": (inc, "x"),
        ("z", 0): (operator.add, "x", "y"),
        "w": (sum, ["x", "y", ("z", 0)]),
        "v": (operator.mul, (inc, "w"), 2),  # a nested task
        "label": "x",  # a value naming a key is that key's value
    }
    assert client.get(dsk, "w") == 6
    assert client.get(dsk, ["y", ["v", ("z", 0)]]) == [2, [14, 3]]
    assert client.get(dsk, "label") == 1
    futures = client.get(dsk, ["w", "v"], sync=False)
    assert all(isinstance(f, zmqdask.Future) for f in futures) and client.gather(futures) == [6, 14]
    # Another graph that names its keys alike does not get the first one's values.
    assert client.get({"w": (inc, 41)}, "w") == 42
    with pytest.raises(UsageError, match="not in the graph"):
        client.get(dsk, "nope")
    with pytest.raises(ValueError, match="odd 1"):
        client.get({"a": 1, "b": (fails_on_odd, "a")}, "b")

    async def body(c: Client) -> Any:
        return await c.get({"a": 20, "b": (inc, "a")}, ["a", "b"])

    assert run_async(body) == [20, 21]


def load_lookup() -> pd.DataFrame:
    return pd.DataFrame({"k": [0, 1, 2], "label": ["zero", "one", "two"]})


def attach_labels(part: pd.DataFrame, lookup: pd.DataFrame) -> pd.DataFrame:
    return part.merge(lookup, on="k", how="left")


def test_map_partitions_takes_delayed_arguments_and_holds_results_to_the_meta_given(client: Client) -> None:
    pdf = pd.DataFrame({"k": [0, 1, 2, 1, 0, 2], "x": range(6)})
    frame = dd.from_pandas(pdf, npartitions=3)
    meta = pd.DataFrame({"k": pd.Series(dtype="int64"), "x": pd.Series(dtype="int64"), "label": pd.Series(dtype="str")})
    labelled = frame.map_partitions(attach_labels, zmqdask.delayed(load_lookup)(), meta=meta)
    expected = pd.concat(attach_labels(pdf.iloc[i : i + 2], load_lookup()) for i in (0, 2, 4))
    assert labelled.compute()["label"].tolist() == expected["label"].tolist()
    # A function returning one value per partition, declared as a Series, as Dask allows.
    sums = frame.map_partitions(lambda part: part.x.sum(), meta=("x", "i8"))
    assert sums.compute().tolist() == [1, 5, 9] and sums.sum().compute() == 15
    # Declared columns in another order are put in the declared order; other columns are refused.
    reordered = frame.map_partitions(lambda part: part[["x", "k"]], meta={"k": "i8", "x": "i8"})
    assert list(reordered.compute().columns) == ["k", "x"]
    wrong = frame.map_partitions(lambda part: part.rename(columns={"x": "q"}), meta={"k": "i8", "x": "i8"})
    with pytest.raises(ValueError, match="do not match the columns of the meta"):
        wrong.compute()


def test_awaiting_a_persisted_collection_or_delayed_value_gives_it_back_once_computed(client: Client) -> None:
    async def main() -> list[Any]:
        async with Client(client.address, asynchronous=True) as aclient:
            frame = dd.from_pandas(pd.DataFrame({"a": range(10)}), npartitions=2)
            persisted = await aclient.persist(frame)
            held = zmqdask.futures_of(persisted)
            value = await aclient.persist(zmqdask.delayed(abs)(-3))
            return [
                type(persisted).__name__,
                all(f.status == "finished" for f in held) and len(held) == 2,
                await aclient.compute(persisted.a.sum()),
                await aclient.compute(value),
                await frame is frame,  # nothing to wait for: itself
            ]

    assert asyncio.run(main()) == ["DataFrame", True, 45, 3, True]


def logged_double(part: pd.DataFrame, log: str) -> pd.DataFrame:
    with open(log, "a") as out:
        out.write("call\n")
    return part.assign(c=part.a * 2.0)


def test_collections_computed_together_compute_what_they_share_once(client: Client, tmp_path: Path) -> None:
    log = str(tmp_path / "calls")
    pdf = pd.DataFrame({"a": range(40), "d": [float(i) for i in range(40)]})
    shared = dd.from_pandas(pdf, npartitions=4).map_partitions(logged_double, log, meta=pdf.iloc[:0].assign(c=0.0))
    results = zmqdask.compute(shared.c.sum(), shared.d.max(), shared.a.min())
    assert results == (1560.0, 39.0, 0)
    assert Path(log).read_text().count("call") == 4  # once per partition, not once per output
    futures = client.compute([shared.c.max(), shared.d.sum()])
    assert client.gather(futures) == [78.0, 780.0]


def test_standardizing_a_frame_with_its_own_mean_and_std_runs_on_the_cluster(client: Client) -> None:
    pdf = pd.DataFrame({"x": [1.0, 4.0, 2.0, 8.0, 5.0, 7.0], "y": [3, 1, 4, 1, 5, 9]})
    frame = dd.from_pandas(pdf, npartitions=3)
    pd.testing.assert_frame_equal(((frame - frame.mean()) / frame.std()).compute(), (pdf - pdf.mean()) / pdf.std())


def number_rows(part: pd.DataFrame, step: int, partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    assert partition_info is not None
    return part.assign(number=partition_info["number"] * step, division=partition_info["division"])


def test_map_partitions_passes_partition_info_to_functions_that_take_it(client: Client) -> None:
    frame = dd.from_pandas(pd.DataFrame({"x": range(12)}), npartitions=3)
    numbered = frame.map_partitions(number_rows, 10).compute()
    assert numbered["number"].tolist() == [0] * 4 + [10] * 4 + [20] * 4
    assert numbered["division"].tolist() == [0] * 4 + [4] * 4 + [8] * 4
    # Through a projection, returning one value per partition, and with unknown divisions.
    assert frame.map_partitions(number_rows, 1)["number"].max().compute() == 2
    firsts = frame.map_partitions(lambda part, partition_info=None: partition_info["number"]).compute()
    assert firsts.tolist() == [0, 1, 2]
    unsorted = dd.from_pandas(pd.DataFrame({"x": range(12)}), npartitions=3, sort=False)
    unknown = unsorted.map_partitions(number_rows, 1).compute()
    assert unknown["division"].isna().all() and unknown["number"].tolist() == [0] * 4 + [1] * 4 + [2] * 4


def partition_pid(part: pd.DataFrame) -> pd.Series:
    import os

    return pd.Series([os.getpid()] * len(part), index=part.index)


def test_config_set_chooses_the_scheduler_like_dask_config(client: Client) -> None:
    import os

    frame = dd.from_pandas(pd.DataFrame({"x": range(8)}), npartitions=2)
    pids = frame.map_partitions(partition_pid, meta=("pid", "i8"))
    assert os.getpid() not in set(pids.compute())  # on the cluster
    with zmqdask.config.set(scheduler="sync"):
        assert zmqdask.config.get("scheduler") == "sync"
        assert set(pids.compute()) == {os.getpid()}  # in this process
        with zmqdask.config.set({"scheduler": "distributed", "dataframe.shuffle.method": "tasks"}):
            assert os.getpid() not in set(pids.compute())
        assert zmqdask.config.get("dataframe.shuffle.method") is None
    assert zmqdask.config.get("scheduler") is None and zmqdask.config.get("missing", 3) == 3


def _divide(a: float, b: float) -> float:
    return a / b


def test_partial_of_a_script_function_runs_on_the_workers(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    # A function of the user's script: the workers' __main__ is not the script, so neither
    # it nor a partial holding it can travel by reference.
    main = sys.modules["__main__"]
    script_function = types.FunctionType(_divide.__code__, {}, "script_divide")
    script_function.__module__ = "__main__"
    script_function.__qualname__ = "script_divide"
    monkeypatch.setattr(main, "script_divide", script_function, raising=False)
    halve_ten = functools.partial(script_function, 10)
    assert client.submit(halve_ten, 4).result() == 2.5
    assert client.gather(client.map(halve_ten, [1, 2, 5])) == [10.0, 5.0, 2.0]
    assert zmqdask.delayed(halve_ten)(8).compute() == 1.25
