"""Synchronous basics: submit, map, gather, as_completed, scatter and errors on a local cluster."""

from __future__ import annotations

import numpy as np

from zmqdask import Client, as_completed


def square(x: int) -> int:
    """Return ``x`` squared."""
    return x * x


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def total(values: np.ndarray) -> int:
    """Return the sum of an array as a Python int."""
    return int(values.sum())


def fail(x: int) -> int:
    """Always raise: shows how a task's exception reaches the caller."""
    raise ValueError(f"cannot handle {x}")


def main() -> None:
    """Run each feature once and print what it returns."""
    # Client() with no address starts a broker and worker processes on this machine;
    # leaving the with-block stops them.
    with Client(n_workers=2) as client:
        # submit runs one call on a worker and returns a Future at once; result() waits.
        future = client.submit(square, 4)
        print("submit:", future.result())

        # A Future passed to another task is a dependency: the task receives its value,
        # and the value moves between workers without coming back here.
        print("dependent:", client.submit(add, future, 10).result())

        # map submits one task per element; gather fetches all values in one request.
        futures = client.map(square, range(10))
        print("map + gather:", client.gather(futures))

        # as_completed yields futures in the order they finish, not the order submitted.
        print("as_completed sum:", sum(f.result() for f in as_completed(futures)))

        # scatter sends local data to a worker once; tasks then take the future, so the
        # array is not pickled again for every task that uses it.
        remote = client.scatter(np.arange(1_000_000))
        print("scatter + sum:", client.submit(total, remote).result())

        # A task's exception is raised again by result(), with its original type.
        try:
            client.submit(fail, 3).result()
        except ValueError as exc:
            print("error:", exc)


if __name__ == "__main__":
    main()
