"""Benchmark child process: runs the cases of one framework on one local cluster, reporting JSON lines.

``bench.py`` starts this script once per (framework, worker count) session and reads its
stdout.  Every result is one line ``@@bench {json}``; anything else on stdout is ignored.
A case that raises reports ``{"case": name, "error": text}`` and the run goes on; a case
that hangs is bounded here by ``asyncio.wait_for`` and, for blocking code, by the parent,
which kills this process group.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import importlib.util
import itertools
import json
import logging
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import workloads

MARKER = "@@bench "
"""Prefix of every result line on stdout."""

FRAMEWORKS = ("zmqdask", "dask", "pool")
"""Framework names accepted by ``--framework``."""

WARMUP_TASKS = 50
"""Tasks run untimed before a throughput case, so one-off costs (pickling the function) are not timed."""


TIMESERIES_END = "2000-01-31"
"""End of the timeseries frames (they start on 2000-01-01): 30 daily partitions, as by default."""

_SEEDS = itertools.count(1)


class NotApplicable(Exception):
    """The framework has no equivalent of this case; its cell shows ``n/a``."""


@dataclass(frozen=True)
class Spec:
    """Sizes of the work, shared by every framework of one run."""

    repeats: int
    roundtrips: int
    submit_tasks: int
    map_tasks: int
    chain_length: int
    scatter_bytes: int
    timeseries_freq: str
    payload_total_bytes: int
    payload_max_tasks: int
    spin_tasks: int
    spin_s: float


def emit(case: str, **fields: Any) -> None:
    """Write one result line for the parent."""
    print(MARKER + json.dumps({"case": case, **fields}), flush=True)


class ClientAdapter:
    """The dask.distributed-compatible API, shared by zmqdask and dask.distributed."""

    def __init__(self, framework: str, workers: int) -> None:
        self.framework = framework
        self.workers = workers
        self.client: Any = None
        self.persisted: Any = None
        if framework == "zmqdask":
            import zmqdask

            self._client_class: Any = zmqdask.Client
            self._datasets: Any = None
            self._wait: Callable[[Any], Awaitable[Any]] = zmqdask.wait
            self._cluster_kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1}
        else:
            import dask.datasets
            import distributed

            self._client_class = distributed.Client
            self._datasets = dask.datasets
            self._wait = distributed.wait
            self._cluster_kwargs = {
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": "127.0.0.1:0",
                "silence_logs": logging.ERROR,
            }

    async def start(self) -> None:
        """Start a local cluster and wait for a first result."""
        self.client = await self._client_class(asynchronous=True, **self._cluster_kwargs)
        if await self.client.submit(workloads.inc, 1, pure=False) != 2:
            raise RuntimeError("wrong first result")

    async def close(self) -> None:
        """Close the client, which stops the cluster it started."""
        self.persisted = None
        if self.client is not None:
            await self.client.close()

    async def round_trip(self, i: int) -> int:
        """Submit one tiny task and await its result."""
        return int(await self.client.submit(workloads.inc, i, pure=False))

    async def submit_gather(self, fn: Callable[..., Any], args: list[Any]) -> list[Any]:
        """Submit one task per argument in a loop, then gather all results."""
        futures = [self.client.submit(fn, a, pure=False) for a in args]
        return list(await self.client.gather(futures))

    async def map_gather(self, fn: Callable[..., Any], args: list[Any]) -> list[Any]:
        """``map`` then ``gather``."""
        return list(await self.client.gather(self.client.map(fn, args, pure=False)))

    async def chain(self, length: int) -> int:
        """Run ``length`` tasks, each taking the previous one's future, and await the last."""
        future = self.client.submit(workloads.inc, 0, pure=False)
        for _ in range(length - 1):
            future = self.client.submit(workloads.inc, future, pure=False)
        return int(await future)

    async def scatter(self, array: np.ndarray) -> Any:
        """Scatter ``array``; returns once a worker holds it."""
        return await self.client.scatter(array)

    async def held_copy(self, future: Any) -> Any:
        """A future of a task returning the scattered value: held by a worker, not by the client."""
        held = self.client.submit(workloads.identity, future, pure=False)
        await self._wait([held])
        return held

    async def gather(self, future: Any) -> Any:
        """Gather one future's value."""
        return await self.client.gather(future)

    async def there_and_back(self, array: np.ndarray) -> np.ndarray:
        """Pass ``array`` to a task returning it, and await the result."""
        return await self.client.submit(workloads.identity, array, pure=False)

    def timeseries(self, freq: str, end: str = TIMESERIES_END) -> Any:
        """A lazy timeseries frame (30 daily partitions by default) with data never used before.

        Each call gets a new seed: equal seeds give equal task keys, and a framework may
        then reuse results still in memory instead of computing anything.
        """
        if self._datasets is None:
            if importlib.util.find_spec("zmqdask.dataframe") is None:
                raise NotApplicable("zmqdask.dataframe does not exist yet")
            self._datasets = importlib.import_module("zmqdask.datasets")
        return self._datasets.timeseries(end=end, freq=freq, seed=next(_SEEDS))

    async def compute(self, collection: Any) -> Any:
        """Compute a lazy collection on the cluster and return its value."""
        return await self.client.compute(collection)

    async def persist(self, collection: Any) -> Any:
        """Persist a collection and wait until all its partitions are in worker memory."""
        persisted = self.client.persist(collection)
        await self._wait(persisted)
        return persisted


class PoolAdapter:
    """``concurrent.futures.ProcessPoolExecutor`` doing the same work where it can."""

    def __init__(self, framework: str, workers: int) -> None:
        self.workers = workers
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.persisted: Any = None

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.pool is None:
            raise RuntimeError("pool not started")
        return self.pool

    async def start(self) -> None:
        """Start the worker processes and wait for a first result."""
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=self.workers)
        if self.pool.submit(workloads.inc, 1).result() != 2:
            raise RuntimeError("wrong first result")

    async def close(self) -> None:
        """Stop the worker processes."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    async def round_trip(self, i: int) -> int:
        """Submit one tiny task and wait for its result."""
        return int(self._pool().submit(workloads.inc, i).result())

    async def submit_gather(self, fn: Callable[..., Any], args: list[Any]) -> list[Any]:
        """Submit one task per argument in a loop, then collect all results."""
        futures = [self._pool().submit(fn, a) for a in args]
        return [f.result() for f in futures]

    async def map_gather(self, fn: Callable[..., Any], args: list[Any]) -> list[Any]:
        """``Executor.map`` (chunksize 1) collected into a list."""
        return list(self._pool().map(fn, args))

    async def chain(self, length: int) -> int:
        """Run ``length`` dependent tasks; each result comes back before the next is sent."""
        value = 0
        for _ in range(length):
            value = self._pool().submit(workloads.inc, value).result()
        return value

    async def scatter(self, array: np.ndarray) -> Any:
        """The pool has no scatter."""
        raise NotApplicable("no scatter")

    async def held_copy(self, future: Any) -> Any:
        """The pool keeps no results on its workers."""
        raise NotApplicable("no results held by workers")

    async def gather(self, future: Any) -> Any:
        """The pool keeps no results on its workers."""
        raise NotApplicable("no results held by workers")

    async def there_and_back(self, array: np.ndarray) -> np.ndarray:
        """Pass ``array`` to a task returning it, and wait for the result."""
        return self._pool().submit(workloads.identity, array).result()

    def timeseries(self, freq: str, end: str = TIMESERIES_END) -> Any:
        """The pool has no collections."""
        raise NotApplicable("no DataFrame collections")

    async def compute(self, collection: Any) -> Any:
        """The pool has no collections."""
        raise NotApplicable("no DataFrame collections")

    async def persist(self, collection: Any) -> Any:
        """The pool has no collections."""
        raise NotApplicable("no DataFrame collections")


Adapter = ClientAdapter | PoolAdapter
CaseResult = dict[str, Any]


async def _timed(repeats: int, run: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]) -> list[float]:
    """Run ``run`` ``repeats`` times; return the durations, failing if a result is wrong."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = await run()
        seconds.append(time.perf_counter() - start)
        if not check(result):
            raise RuntimeError("wrong result")
    return seconds


async def case_roundtrip(adapter: Adapter, spec: Spec) -> CaseResult:
    """Sequential submit-and-await of tiny tasks: every latency."""
    latencies = []
    for _ in range(spec.repeats):
        for i in range(spec.roundtrips):
            start = time.perf_counter()
            result = await adapter.round_trip(i)
            latencies.append(time.perf_counter() - start)
            if result != i + 1:
                raise RuntimeError("wrong result")
    return {"latencies": latencies}


async def _throughput(
    adapter: Adapter, spec: Spec, how: Callable[[Callable[..., Any], list[Any]], Awaitable[list[Any]]], n: int
) -> CaseResult:
    args = list(range(n))
    expected = sum(args) + n
    await how(workloads.inc, args[:WARMUP_TASKS])
    seconds = await _timed(spec.repeats, lambda: how(workloads.inc, args), lambda r: sum(r) == expected)
    return {"seconds": seconds, "count": n}


async def case_submit(adapter: Adapter, spec: Spec) -> CaseResult:
    """A loop of ``submit`` calls, then one gather."""
    return await _throughput(adapter, spec, adapter.submit_gather, spec.submit_tasks)


async def case_map(adapter: Adapter, spec: Spec) -> CaseResult:
    """One ``map`` call, then one gather."""
    return await _throughput(adapter, spec, adapter.map_gather, spec.map_tasks)


async def case_chain(adapter: Adapter, spec: Spec) -> CaseResult:
    """A chain of dependent tiny tasks."""
    n = spec.chain_length
    await adapter.chain(min(n, WARMUP_TASKS))
    seconds = await _timed(spec.repeats, lambda: adapter.chain(n), lambda r: r == n)
    return {"seconds": seconds, "count": n}


SCATTER_WARMUPS = 2
"""Untimed full-size scatters before the timed ones (one per worker of the main cases)."""


def _big_array(spec: Spec) -> np.ndarray:
    return np.arange(spec.scatter_bytes // 8, dtype=np.float64)


async def case_scatter(adapter: Adapter, spec: Spec) -> CaseResult:
    """Scatter a large array until a worker holds it; each repeat scatters new contents."""
    array = _big_array(spec)
    small = await adapter.gather(await adapter.scatter(array[:1000]))
    if not np.array_equal(small, array[:1000]):
        raise RuntimeError("wrong result")
    # Warm-up, one full-size scatter per worker: the first large value a process receives
    # lands in pages it never touched, which costs page faults in any framework.
    for warm_up in range(SCATTER_WARMUPS):
        array[0] = -float(warm_up + 1)
        future = await adapter.scatter(array)
        del future
    seconds = []
    for repeat in range(spec.repeats):
        # New contents each time: content-hashed keys must not find the previous copy.
        array[0] = float(repeat + 1)
        start = time.perf_counter()
        future = await adapter.scatter(array)
        seconds.append(time.perf_counter() - start)
        del future
    return {"seconds": seconds, "count": array.nbytes}


async def case_gather(adapter: Adapter, spec: Spec) -> CaseResult:
    """Gather a large array that only a worker holds (a task's result, fetched each repeat)."""
    array = _big_array(spec)
    scattered = await adapter.scatter(array)
    seconds = []
    for _ in range(spec.repeats):
        held = await adapter.held_copy(scattered)
        start = time.perf_counter()
        back = await adapter.gather(held)
        seconds.append(time.perf_counter() - start)
        if back.shape != array.shape or back[-1] != array[-1] or back is array:
            raise RuntimeError("wrong result")
        del held, back
    return {"seconds": seconds, "count": array.nbytes}


async def case_there_and_back(adapter: Adapter, spec: Spec) -> CaseResult:
    """A large array as a task's argument, returned as its result: both ways counted."""
    array = _big_array(spec)
    seconds = await _timed(
        spec.repeats,
        lambda: adapter.there_and_back(array),
        lambda r: r.shape == array.shape and r[-1] == array[-1] and r is not array,
    )
    return {"seconds": seconds, "count": 2 * array.nbytes}


def _is_xy_sum(value: Any) -> bool:
    return list(value.index) == ["x", "y"] and bool(np.isfinite(value.to_numpy()).all())


async def case_ts_sum(adapter: Adapter, spec: Spec) -> CaseResult:
    """``timeseries()[['x', 'y']].sum()`` on a fresh frame each time (data generation included)."""

    async def run(end: str = TIMESERIES_END) -> Any:
        return await adapter.compute(adapter.timeseries(spec.timeseries_freq, end)[["x", "y"]].sum())

    await run("2000-01-02")  # one partition, untimed: loads the DataFrame code in the workers
    return {"seconds": await _timed(spec.repeats, run, _is_xy_sum)}


async def case_ts_persist(adapter: Adapter, spec: Spec) -> CaseResult:
    """Persist a fresh timeseries frame; the last one is kept for the cases below."""

    async def run() -> Any:
        adapter.persisted = None  # release the previous frame before making the next
        adapter.persisted = await adapter.persist(adapter.timeseries(spec.timeseries_freq))
        return adapter.persisted

    return {"seconds": await _timed(spec.repeats, run, lambda r: r is not None)}


def _persisted(adapter: Adapter) -> Any:
    if adapter.persisted is None:
        adapter.timeseries("1D", "2000-01-02")  # raises NotApplicable where there are no collections
        raise RuntimeError("needs the ts_persist case first")
    return adapter.persisted


def _split_every(df: Any) -> Callable[[], int]:
    """A new ``split_every`` for each query, all at least ``npartitions`` (one combine step).

    Equal queries over equal data have equal task keys, and a framework may hand back a
    result still in memory instead of computing; a new parameter value makes every query new.
    """
    values = itertools.count(df.npartitions)
    return lambda: next(values)


async def case_ts_groupby(adapter: Adapter, spec: Spec) -> CaseResult:
    """``groupby('name').x.mean()`` over a persisted frame, a fresh one for every query.

    A new ``split_every`` is not enough here: a framework may keep the per-partition chunks of
    an earlier grouping (their keys do not depend on it) and only redo the combine step.  So
    each timed query runs over newly persisted data (persisting is not timed).
    """
    _persisted(adapter)  # the cases' order: ts_persist first
    seconds = []
    for repeat in range(spec.repeats + 1):
        adapter.persisted = None
        adapter.persisted = df = await adapter.persist(adapter.timeseries(spec.timeseries_freq))
        start = time.perf_counter()
        result = await adapter.compute(df.groupby("name").x.mean())
        elapsed = time.perf_counter() - start
        if not len(result) > 0:
            raise RuntimeError("wrong result")
        if repeat:  # the first query loads the grouping code in the workers
            seconds.append(elapsed)
    return {"seconds": seconds}


async def case_ts_filter(adapter: Adapter, spec: Spec) -> CaseResult:
    """``df[df.x > 0].y.sum()`` over the persisted frame."""
    df = _persisted(adapter)
    split_every = _split_every(df)

    def query() -> Awaitable[Any]:
        return adapter.compute(df[df.x > 0].y.sum(split_every=split_every()))

    await query()  # untimed, as for the groupby
    return {"seconds": await _timed(spec.repeats, query, lambda r: bool(np.isfinite(r)))}


async def case_payload(adapter: Adapter, spec: Spec, size: int) -> CaseResult:
    """``map`` + gather of tasks that each receive a distinct array of ``size`` bytes."""
    count = max(4, min(spec.payload_max_tasks, spec.payload_total_bytes // size))
    payloads = workloads.make_payloads(size, count)
    await adapter.map_gather(workloads.payload_len, payloads[:2])
    seconds = await _timed(
        spec.repeats,
        lambda: adapter.map_gather(workloads.payload_len, payloads),
        lambda r: r == [size] * count,
    )
    return {"seconds": seconds, "count": count}


async def case_spin(adapter: Adapter, spec: Spec) -> CaseResult:
    """``map`` + gather of tasks that each keep a core busy for ``spin_s``."""
    n = spec.spin_tasks
    args = [spec.spin_s] * n
    await adapter.map_gather(workloads.spin, args[: adapter.workers])
    seconds = await _timed(spec.repeats, lambda: adapter.map_gather(workloads.spin, args), lambda r: len(r) == n)
    return {"seconds": seconds, "count": n}


CASES: dict[str, Callable[[Adapter, Spec], Awaitable[CaseResult]]] = {
    "roundtrip": case_roundtrip,
    "submit": case_submit,
    "map": case_map,
    "chain": case_chain,
    "scatter": case_scatter,
    "gather": case_gather,
    "there_and_back": case_there_and_back,
    "ts_sum": case_ts_sum,
    "ts_persist": case_ts_persist,
    "ts_groupby": case_ts_groupby,
    "ts_filter": case_ts_filter,
    "spin": case_spin,
}
"""Case name -> coroutine; ``payload:<bytes>`` names are handled by :func:`case_payload`."""


def _case(name: str) -> Callable[[Adapter, Spec], Awaitable[CaseResult]]:
    if name.startswith("payload:"):
        size = int(name.split(":", 1)[1])
        return lambda adapter, spec: case_payload(adapter, spec, size)
    return CASES[name]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def run(framework: str, workers: int, cases: list[str], spec: Spec, timeout_s: float) -> None:
    """Start the framework's cluster, run ``cases`` in order, report each, and close."""
    adapter: Adapter
    try:
        adapter = PoolAdapter(framework, workers) if framework == "pool" else ClientAdapter(framework, workers)
        start = time.perf_counter()
        await asyncio.wait_for(adapter.start(), timeout_s)
        emit("startup", seconds=[time.perf_counter() - start])
    except Exception as exc:
        emit("startup", error=_describe(exc))
        return
    try:
        for name in cases:
            try:
                emit(name, **await asyncio.wait_for(_case(name)(adapter, spec), timeout_s))
            except NotApplicable as exc:
                emit(name, na=str(exc))
            except Exception as exc:
                emit(name, error=_describe(exc))
    finally:
        await asyncio.wait_for(adapter.close(), timeout_s)
    emit("end")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point used by ``bench.py``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--cases", default="", help="comma-separated case names")
    parser.add_argument("--spec", required=True, help="JSON object of Spec fields")
    parser.add_argument("--timeout", type=float, required=True, help="seconds per case")
    args = parser.parse_args(argv)
    # Frameworks warn about large graphs and similar things; the parent shows errors only.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    cases = [c for c in args.cases.split(",") if c]
    asyncio.run(run(args.framework, args.workers, cases, Spec(**json.loads(args.spec)), args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
