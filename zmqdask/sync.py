"""A background event loop thread that lets synchronous code drive the async core."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from zmqdask.errors import TimeoutError as ZmqdaskTimeoutError

T = TypeVar("T")

_POLL_INTERVAL_S = 0.1
"""How often a blocked caller wakes up, so that Ctrl-C is noticed promptly."""


class LoopThread:
    """Runs an asyncio event loop in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "zmqdask-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._started.wait(10.0):
            raise RuntimeError("the event loop thread did not start within 10 s")

    @property
    def thread_id(self) -> int | None:
        """Identifier of the loop's thread."""
        return self._thread.ident

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it finishes.

        The wait wakes up every 100 ms, so KeyboardInterrupt reaches the caller promptly;
        it then cancels the coroutine before propagating.  ``timeout`` raises
        :class:`zmqdask.errors.TimeoutError` and also cancels it.
        """
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                remaining = _POLL_INTERVAL_S
                if deadline is not None:
                    remaining = min(remaining, max(0.0, deadline - time.monotonic()))
                try:
                    return future.result(timeout=remaining)
                except concurrent.futures.TimeoutError:
                    if future.done():
                        return future.result()
                    if deadline is not None and time.monotonic() >= deadline:
                        future.cancel()
                        raise ZmqdaskTimeoutError(f"operation did not finish within {timeout} s") from None
        except BaseException:
            # KeyboardInterrupt (or a timeout) while waiting: the work must not go on alone.
            if not future.done():
                future.cancel()
            raise

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
