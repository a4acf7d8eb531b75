"""``progress``: a text progress bar over futures, as ``dask.distributed.progress`` shows one.

In a script it blocks until every future is done, redrawing one line (``\\r``); on a thread
whose event loop is running (a notebook with an asynchronous client, an asyncio program) it
returns at once and a task on that loop draws the bar, so the loop never stalls.  It ends
when every future is done, failed or cancelled; a lost broker fails the futures within the
client's liveness timeout, so the bar never waits forever.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

from zmqdask.errors import UsageError
from zmqdask.future import Future, _futures_in

BAR_WIDTH = 40
"""Characters of the bar between its brackets."""

_tasks: set[asyncio.Task[None]] = set()  # drawing tasks, held until they finish


def futures_of(obj: Any) -> list[Future]:
    """The futures inside ``obj``: a Future, a persisted collection, or lists, tuples, sets
    and dicts of those (as ``dask.distributed.futures_of``)."""
    return _futures_in(obj, [])


def progress(
    *futures: Any,
    notebook: bool | None = None,
    multi: bool = True,
    complete: bool = True,
    group_by: Any = "prefix",
    interval: float | str = 0.1,
    file: TextIO | None = None,
) -> None:
    """Show how many of ``futures`` are done, until all are.

    ``futures`` may be Futures, persisted collections, or containers of them, as for
    :func:`zmqdask.wait`.  Dask's ``notebook``, ``multi`` and ``group_by`` are accepted; the
    bar is always one line of text.  ``complete=False`` removes the bar once all are done.
    """
    found = _futures_in(list(futures), [])
    seconds = _interval_seconds(interval)
    stream = file if file is not None else sys.stdout
    bar = _Bar(found, stream, complete)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        while not bar.draw():
            time.sleep(seconds)
        return
    task = loop.create_task(bar.run(seconds), name="zmqdask-progress")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _interval_seconds(interval: float | str) -> float:
    if isinstance(interval, str):  # Dask writes "100ms"
        text = interval.strip().lower()
        for suffix, scale in (("ms", 0.001), ("s", 1.0)):
            if text.endswith(suffix):
                try:
                    return max(0.01, float(text[: -len(suffix)]) * scale)
                except ValueError:
                    break
        raise UsageError(f"interval must be seconds or a string such as '100ms', got {interval!r}")
    if not isinstance(interval, (int, float)) or interval <= 0:
        raise UsageError(f"interval must be a positive number of seconds, got {interval!r}")
    return max(0.01, float(interval))


class _Bar:
    """One line of text: ``[#####     ] | 50% Completed | 1.2s``."""

    def __init__(self, futures: list[Future], stream: TextIO, complete: bool) -> None:
        self.futures = futures
        self.stream = stream
        self.complete = complete
        self.started = time.monotonic()
        self._width = 0

    def draw(self) -> bool:
        """Redraw the line; True (and the line finished) once every future is done."""
        total = len(self.futures)
        done = sum(1 for future in self.futures if future.done())
        fraction = done / total if total else 1.0
        filled = int(BAR_WIDTH * fraction)
        elapsed = time.monotonic() - self.started
        line = f"[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] | {fraction:4.0%} Completed | {elapsed:.1f}s"
        finished = done == total
        if finished and not self.complete:
            self._write("\r" + " " * self._width + "\r")
            return True
        self._write("\r" + line + ("\n" if finished else ""))
        self._width = len(line)
        return finished

    async def run(self, interval: float) -> None:
        while not self.draw():
            await asyncio.sleep(interval)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream: nobody to show the bar to
            pass
