"""Functions the benchmarks run on workers: importable by name in every worker process."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def inc(x: int) -> int:
    """Return ``x + 1``: the tiny task whose cost is all overhead."""
    return x + 1


def identity(value: Any) -> Any:
    """Return ``value`` unchanged: sends data to a worker and back."""
    return value


def payload_len(payload: Any) -> int:
    """Return the size in bytes of ``payload`` (a bytes-like object or numpy array)."""
    return int(memoryview(payload).nbytes)


def spin(seconds: float) -> float:
    """Keep one core busy for ``seconds`` and return the time actually spent."""
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        pass
    return time.perf_counter() - start


def make_payloads(size_bytes: int, count: int) -> list[np.ndarray]:
    """Return ``count`` distinct uint8 arrays of ``size_bytes`` each.

    Distinct contents keep any framework from sending one object once for many tasks.
    """
    return [np.full(size_bytes, i % 251, dtype=np.uint8) for i in range(count)]
