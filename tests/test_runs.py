"""``Client.run`` on a real broker and worker processes: one call per worker, outside tasks."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zmqdask import Client, LocalCluster
from zmqdask.errors import CommunicationError, SerializationError, UsageError


def _pid_and(value: int, scale: int = 1) -> tuple[int, int]:
    return os.getpid(), value * scale


def _fail() -> None:
    raise ValueError("no such setting on this worker")


def _wait_for_file(path: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)
    return path


def _touch(path: str) -> None:
    Path(path).write_text("ran")


def test_run_calls_the_function_once_in_each_worker_process(client: Client) -> None:
    pids = client.run(os.getpid)
    workers = client.scheduler_info()["workers"]
    assert set(pids) == set(workers)
    assert pids == {address: details["pid"] for address, details in workers.items()}
    assert os.getpid() not in pids.values() and len(set(pids.values())) == 2


def test_run_passes_arguments_selects_workers_and_awaits_coroutines(client: Client) -> None:
    results = client.run(_pid_and, 21, scale=2)
    assert sorted(value for _, value in results.values()) == [42, 42]
    one = sorted(results)[0]
    worker_id = one.rsplit("/", 1)[1]
    name = client.scheduler_info()["workers"][one]["name"]
    for selector in ([one], one, [worker_id], [name]):
        assert client.run(_pid_and, 1, workers=selector) == {one: (results[one][0], 1)}

    async def later(value: int) -> int:
        await asyncio.sleep(0)
        return value + 1

    assert list(client.run(later, 1).values()) == [2, 2]


def test_run_answers_while_every_worker_thread_is_busy(client: Client, tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    # Two single-threaded workers, each running a task that waits for the file.
    futures = [client.submit(_wait_for_file, release, pure=False) for _ in range(2)]
    try:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        # The run came back while the tasks could not have finished: they wait for this file.
        assert not any(future.done() for future in futures)
    finally:
        _touch(release)
    assert client.gather(futures) == [release, release]


def test_run_errors_are_raised_returned_or_left_out(client: Client) -> None:
    with pytest.raises(ValueError, match="no such setting"):
        client.run(_fail)
    returned = client.run(_fail, on_error="return")
    assert len(returned) == 2 and all(isinstance(value, ValueError) for value in returned.values())
    assert client.run(_fail, on_error="ignore") == {}
    # A result that cannot travel back is an error like any other, not a hang.
    with pytest.raises(SerializationError):
        client.run(threading.Lock)
    assert len(client.run(os.getpid)) == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.run(os.getpid, workers=["tcp://nowhere:1/abc"]), "no connected worker is named"),
        (lambda c: c.run(os.getpid, on_error="log"), "on_error"),
        (lambda c: c.run(os.getpid, nanny=True), "nanny=True"),
        (lambda c: c.run(lambda dask_worker: 1), "dask_worker"),
        (lambda c: c.run(42), "callable"),
    ],
)
def test_run_refuses_what_it_cannot_do_with_what_to_do(
    client: Client, call: Callable[[Client], object], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        call(client)
    assert len(client.run(os.getpid)) == 2


def test_run_without_waiting_returns_at_once_and_still_runs(
    client: Client, tmp_path: Path, wait_until: Callable[..., None]
) -> None:
    marker = tmp_path / "marker"
    assert client.run(_touch, str(marker), wait=False) is None
    wait_until(marker.exists, timeout=30)


def test_run_on_an_asynchronous_client(run_async: Callable[..., object]) -> None:
    async def body(c: Client) -> object:
        pids = await c.run(os.getpid)
        return sorted(pids.values()) == sorted(d["pid"] for d in (await c.scheduler_info())["workers"].values())

    assert run_async(body) is True


def test_a_worker_that_dies_during_a_run_is_an_error_and_its_replacement_answers_the_next(
    wait_until: Callable[..., None],
) -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        (first,) = client.run(os.getpid).values()
        with pytest.raises(CommunicationError, match="left before answering"):
            client.run(os._exit, 3)

        def replaced() -> bool:
            workers = client.scheduler_info()["workers"]
            return len(workers) == 1 and next(iter(workers.values()))["pid"] != first

        wait_until(replaced, timeout=60)
        (second,) = client.run(os.getpid).values()
        assert second != first
        assert client.submit(_pid_and, 5).result(timeout=30)[1] == 5


def _import_value(name: str) -> object:
    import importlib

    return importlib.import_module(name).VALUE


def test_upload_file_makes_a_module_importable_and_a_new_upload_replaces_it(client: Client, tmp_path: Path) -> None:
    module = tmp_path / "zmqdask_uploaded_mod.py"
    module.write_text("VALUE = 'first'\n")
    paths = client.upload_file(str(module))
    assert len(paths) == 2 and all(path.endswith("zmqdask_uploaded_mod.py") for path in paths.values())
    assert client.submit(_import_value, "zmqdask_uploaded_mod", pure=False).result(timeout=30) == "first"
    module.write_text("VALUE = 'second'\n")
    client.upload_file(str(module))
    values = client.gather([client.submit(_import_value, "zmqdask_uploaded_mod", pure=False) for _ in range(4)])
    assert values == ["second"] * 4
    with pytest.raises(UsageError, match="cannot read"):
        client.upload_file(str(tmp_path / "missing.py"))


def test_upload_file_of_a_zipped_package(client: Client, tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "zmqdask_zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zmqdask_zipped_pkg/__init__.py", "VALUE = 42\n")
    client.upload_file(str(archive))
    assert client.submit(_import_value, "zmqdask_zipped_pkg", pure=False).result(timeout=30) == 42


def _mark_when(started: str, release: str) -> int:
    import builtins

    _touch(started)
    _wait_for_file(release)
    builtins.zmqdask_test_marked = os.getpid()  # type: ignore[attr-defined]
    return os.getpid()


def _marked() -> bool:
    import builtins

    return getattr(builtins, "zmqdask_test_marked", None) == os.getpid()


def test_a_set_up_runs_before_the_tasks_that_follow_it_and_on_every_new_worker(
    tmp_path: Path, wait_until: Callable[..., None]
) -> None:
    started, release = tmp_path / "started", str(tmp_path / "release")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        results: list[object] = []
        setup = functools.partial(_mark_when, str(started), release)
        registering = threading.Thread(target=lambda: results.append(client.register_worker_callbacks(setup)))
        registering.start()
        try:
            wait_until(started.exists, timeout=30)
            # Sent while the set-up waits: the worker holds the task back until it is done.
            future = client.submit(_marked, pure=False)
            assert not future.done()
        finally:
            _touch(release)
        registering.join(60)
        assert future.result(timeout=30) is True
        assert len(results) == 1 and len(results[0]) == 1  # type: ignore[arg-type]
        # A worker that starts later (here: after a restart) runs it before its first task.
        started.unlink()  # the new worker's set-up finds the release at once
        client.restart()
        assert client.submit(_marked, pure=False).result(timeout=30) is True
        assert all(client.run(_marked).values())


def test_who_has_and_has_what_name_the_workers_holding_values(client: Client) -> None:
    futures = client.map(_pid_and, range(4), pure=False, batch_size=1)
    values = client.gather(futures)
    workers = set(client.scheduler_info()["workers"])
    where = client.who_has(futures)
    assert set(where) == {f.key for f in futures}
    for future, (pid, _) in zip(futures, values, strict=True):
        (holder,) = where[future.key]
        assert holder in workers and client.run(os.getpid, workers=[holder])[holder] == pid
    held = client.has_what()
    assert set(held) == workers
    for future in futures:
        assert future.key in held[where[future.key][0]]
    one = sorted(workers)[0]
    assert set(client.has_what(workers=[one])) == {one}
    with pytest.raises(UsageError, match="no connected worker"):
        client.has_what(workers=["nobody"])


def test_get_versions_reports_every_process_and_checks_them(client: Client) -> None:
    found = client.get_versions(check=True, packages=["pytest"])
    assert set(found) == {"scheduler", "workers", "client"}
    assert set(found["workers"]) == set(client.scheduler_info()["workers"])
    for info in (found["client"], found["scheduler"], *found["workers"].values()):
        assert info["packages"]["zmqdask"] and info["packages"]["pyzmq"] and info["host"]["python"]
    assert all(info["packages"]["pytest"] for info in found["workers"].values())


def test_version_mismatches_name_the_processes_that_differ() -> None:
    from zmqdask.versions import mismatches

    def info(**packages: str | None) -> dict[str, dict[str, str | None]]:
        return {"packages": {"python": "3.12.1", "zmqdask": "1.0", "pyzmq": "26", **packages}}

    same = info(numpy="2.0")
    assert mismatches(same, info(), {"w1": same, "w2": same}) == []
    lines = mismatches(same, info(), {"w1": same, "w2": info(numpy="1.26")})
    assert lines == ["numpy: client: 2.0, broker: missing, w1: 2.0, w2: 1.26"]
    assert mismatches(same, info(pyzmq=None), {"w1": same}) == ["pyzmq: client: 26, broker: missing, w1: 26"]


def test_who_has_names_the_holders_of_calls_run_in_map_batches(client: Client) -> None:
    futures = client.map(_pid_and, range(300))  # quick calls: batched
    client.gather(futures)
    where = client.who_has(futures)
    assert set(where) == {f.key for f in futures} and all(len(holders) == 1 for holders in where.values())
    assert set(client.who_has()) == {f.key for f in futures}


def test_uploaded_files_go_when_the_pool_stops_even_from_killed_workers(tmp_path: Path) -> None:
    module = tmp_path / "zmqdask_upload_cleanup.py"
    module.write_text("VALUE = 1\n")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        (first,) = client.upload_file(str(module)).values()
        client.restart()  # the first worker is killed: it cannot remove its own directory
        (second,) = client.run(_import_value, "zmqdask_upload_cleanup").values()
        assert second == 1
        root = Path(first).parent.parent
        assert root.name.startswith("zmqdask-uploads-") and Path(first).exists()
    assert not root.exists()


def _setup_returning_a_lock() -> object:
    return threading.Lock()


def test_a_set_up_whose_result_cannot_travel_still_counts_as_done(client: Client) -> None:
    results = client.register_worker_callbacks(_setup_returning_a_lock)
    assert len(results) == 2 and set(results.values()) == {None}
    assert len(client.run(os.getpid)) == 2


def test_a_long_set_up_is_logged_once_by_its_worker(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from zmqdask import serialize
    from zmqdask.runs import LONG_SETUP_S, WorkerRuns

    release = str(tmp_path / "release")
    woken = threading.Event()
    runs = WorkerRuns("w-test", woken.set, lambda: 1 << 20)
    runs.start(1, serialize.dumps((_wait_for_file, (release,), {})), setup=True)
    with caplog.at_level("WARNING", logger="zmqdask.runs"):
        runs.report_long_setups(time.monotonic())
        assert not caplog.records
        runs.report_long_setups(time.monotonic() + LONG_SETUP_S + 1)
        runs.report_long_setups(time.monotonic() + LONG_SETUP_S + 2)
    assert len(caplog.records) == 1 and "has been running" in caplog.records[0].getMessage()
    _touch(release)
    assert woken.wait(30)
    assert [answer[:2] for answer in runs.take_answers()] == [(1, 0)] and runs.setups_running == 0
