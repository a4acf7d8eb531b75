"""``Client.run`` and worker set-ups (``upload_file``, ``register_worker_callbacks``): a
function called once in each worker process, outside its tasks.

The broker relays the call and the answers without reading them (see :mod:`broker.runs`).
On a worker, each call gets a thread of its own, so it runs even while every executor thread
is busy with tasks, and a slow call does not hold up the worker's traffic; its answer waits
in :class:`WorkerRuns` for the worker's main thread, which sends it with the next turn.  On
the client, a :class:`RunWaiter` collects the answers until each worker the broker named in
RUNNING has answered once.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib
import inspect
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from typing import Any

from zmqdask import serialize
from zmqdask.errors import CommunicationError, SerializationError, UsageError
from zmqdask.executor import error_detail
from zmqdask.protocol import ERRED, FINISHED

logger = logging.getLogger(__name__)

LONG_SETUP_S = 30.0
"""A set-up running this long is logged by its worker (its tasks wait for it)."""

Answer = tuple[int, Any, list[Any]]
"""(code, detail, payload frames) of one worker's answer, as in a RAN message."""


def call_of(frames: list[Any]) -> Any:
    """Load a pickled (function, args, kwargs) and call it; a coroutine it returns is run
    to the end on an event loop of the calling thread's own."""
    function, args, kwargs = serialize.loads(frames)
    result = function(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class WorkerRuns:
    """A worker's calls in flight and their answers not sent yet.

    A set-up (SETUP) runs in a thread too, so the worker keeps heartbeating however long it
    takes; while one runs, :attr:`setups_running` is not zero and the worker holds back the
    tasks that arrive (see ``Worker._defer_compute``), so they run with the set-up done.
    """

    def __init__(self, name: str, wake: Callable[[], None], max_answer_bytes: Callable[[], int]) -> None:
        self._name = name
        self._wake = wake
        self._max_answer_bytes = max_answer_bytes
        # Appended by run threads, taken by the main thread: deque operations are atomic.
        self._answers: collections.deque[tuple[int, bool, int, int, Any, list[Any]]] = collections.deque()
        self._generation = 0
        self.setups_running = 0
        """Set-ups started whose answer the main thread has not taken yet (main thread only)."""
        self._setup_started: dict[int, float] = {}
        """Run id -> when each running set-up started, until it is reported long (main thread)."""

    def start(self, run_id: int, frames: list[Any], setup: bool = False) -> None:
        """Run one call in a thread of its own (a daemon: a call that never ends must not
        keep the worker from exiting)."""
        if setup:
            self.setups_running += 1
            self._setup_started[run_id] = time.monotonic()
        thread = threading.Thread(
            target=self._run,
            args=(run_id, frames, self._generation, setup),
            name=f"{self._name}-run-{run_id}",
            daemon=True,
        )
        thread.start()

    def report_long_setups(self, now: float) -> None:
        """Log, once each, the set-ups running for :data:`LONG_SETUP_S` or more: the tasks
        sent to this worker wait for them."""
        for run_id, started in list(self._setup_started.items()):
            if now - started >= LONG_SETUP_S:
                del self._setup_started[run_id]
                logger.warning(
                    "worker %s: a set-up (register_worker_callbacks, upload_file) has been running for %.0f s; "
                    "the tasks sent here wait for it to finish",
                    self._name,
                    now - started,
                )

    @property
    def answers_waiting(self) -> bool:
        """Whether an answer waits for the main thread (checked on every turn: cheap)."""
        return bool(self._answers)

    def forget(self) -> None:
        """The broker forgot this worker: answers to its earlier runs would reach a broker
        that numbers runs afresh, and are dropped."""
        self._generation += 1

    def take_answers(self) -> list[tuple[int, int, Any, list[Any]]]:
        """The answers ready so far, as (run_id, code, detail, frames); for the main thread."""
        answers = []
        while self._answers:
            generation, setup, run_id, code, detail, frames = self._answers.popleft()
            if setup:
                self.setups_running -= 1
                self._setup_started.pop(run_id, None)
            if generation == self._generation:
                answers.append((run_id, code, detail, frames))
        return answers

    def _run(self, run_id: int, frames: list[Any], generation: int, setup: bool) -> None:
        origin = f"{'setup' if setup else 'run'}-{run_id}"
        answer: tuple[int, bool, int, int, Any, list[Any]]
        try:
            result = call_of(frames)
            try:
                out = serialize.dumps(result)
            except SerializationError:
                if not setup:
                    raise
                out = serialize.dumps(None)  # a set-up's result is a courtesy: it ran, say so
            nbytes = serialize.frames_nbytes(out)
            limit = self._max_answer_bytes()
            if nbytes > limit:
                raise SerializationError(
                    f"the result is {nbytes} bytes, more than a message may carry ({limit}); "
                    "return less, or compute it in a task and gather it"
                )
            answer = (generation, setup, run_id, FINISHED, None, out)
        except BaseException as exc:  # whatever it is (SystemExit too), the client must hear of it
            detail, out = error_detail(exc, origin)
            answer = (generation, setup, run_id, ERRED, detail, out)
        self._answers.append(answer)
        self._wake()


class RunWaiter:
    """One ``Client.run`` waiting for its answers, on the client's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[dict[bytes, Answer]] = loop.create_future()
        self._targets: list[bytes] | None = None
        self._answers: dict[bytes, Answer] = {}

    def running(self, targets: list[bytes]) -> None:
        """The broker named the workers it sent the call to."""
        self._targets = targets
        self._check()

    def answered(self, identity: bytes, answer: Answer) -> None:
        """One worker's answer (or the broker's LOST for it)."""
        self._answers[identity] = answer
        self._check()

    def fail(self, error: BaseException) -> None:
        """No more answers can come."""
        if not self.done.done():
            self.done.set_exception(error)

    def _check(self) -> None:
        targets = self._targets
        if targets is not None and not self.done.done() and all(t in self._answers for t in targets):
            self.done.set_result({t: self._answers[t] for t in targets})


ON_ERROR_CHOICES = ("raise", "return", "ignore")


def check_run_call(function: Any, nanny: bool, on_error: str) -> None:
    """Refuse, with what to do instead, a ``Client.run`` call that cannot be done here."""
    if not callable(function):
        raise UsageError(f"run expects a callable as its first argument, got {type(function).__name__}")
    if nanny:
        raise UsageError("run(nanny=True): the pool managers run no user code; run it in the workers (nanny=False)")
    if on_error not in ON_ERROR_CHOICES:
        raise UsageError(f"run(on_error={on_error!r}): expected one of {', '.join(map(repr, ON_ERROR_CHOICES))}")
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return
    if "dask_worker" in parameters:
        raise UsageError(
            "run: zmqdask has no Worker object to pass as dask_worker; the function runs in the worker "
            "process, so read what it needs there (os.getpid(), module globals, ...)"
        )


def worker_targets(address: str, workers_info: dict[str, Any], workers: Any) -> list[bytes] | None:
    """The identities of the workers named by ``workers`` (None: all of them).

    A worker is named by its address as in ``scheduler_info()["workers"]``, by its id (the
    end of that address) or by its name.
    """
    if workers is None:
        return None
    names = [workers] if isinstance(workers, str) else list(workers)
    lookup: dict[str, bytes] = {}
    for worker_id, details in workers_info.items():
        identity = bytes.fromhex(worker_id)
        lookup[f"{address}/{worker_id}"] = identity
        lookup[worker_id] = identity
        name = details.get("name") if isinstance(details, dict) else None
        if isinstance(name, str) and name:
            lookup.setdefault(name, identity)
    unknown = [name for name in names if not isinstance(name, str) or name not in lookup]
    if unknown:
        known = sorted(f"{address}/{worker_id}" for worker_id in workers_info)
        raise UsageError(
            f"run: no connected worker is named {', '.join(map(repr, unknown))}; name workers as "
            f"client.scheduler_info()['workers'] does: {', '.join(known) or '(none connected)'}"
        )
    return list(dict.fromkeys(lookup[name] for name in names))


def run_results(
    address: str,
    answers: dict[bytes, Answer],
    on_error: str,
    rebuild_error: Callable[[str, Any, list[Any]], BaseException],
) -> dict[str, Any]:
    """``Client.run``'s result: worker address -> the function's result (or its exception,
    with ``on_error="return"``); raises the first failure with ``on_error="raise"``."""
    results: dict[str, Any] = {}
    for identity, (code, detail, frames) in answers.items():
        worker = f"{address}/{identity.hex()}"
        value: Any
        if code == FINISHED:
            value = serialize.loads(frames)
        elif code == ERRED:
            value = rebuild_error(f"run on {worker}", detail, frames)
        else:
            value = CommunicationError(f"run on {worker}: {detail}")
        if isinstance(value, BaseException) and code != FINISHED:
            if on_error == "raise":
                raise value
            if on_error == "ignore":
                continue
        results[worker] = value
    return results


IMPORTABLE_ARCHIVES = (".zip", ".egg", ".whl")
"""Uploaded files that go on ``sys.path`` themselves (packages in an archive)."""

UPLOAD_ROOT_VARIABLE = "ZMQDASK_UPLOAD_ROOT"
"""The environment variable naming the pool's directory for its workers' uploads."""

_upload_directory: str | None = None


def upload_directory() -> str:
    """This process's directory for uploaded files, on ``sys.path`` first (made once, inside
    the pool's directory when there is one, which the pool removes when it stops; removed at
    exit too)."""
    global _upload_directory
    if _upload_directory is None:
        root = os.environ.get(UPLOAD_ROOT_VARIABLE)
        if root and os.path.isdir(root):
            _upload_directory = tempfile.mkdtemp(prefix="worker-", dir=root)
        else:
            _upload_directory = tempfile.mkdtemp(prefix="zmqdask-uploads-")
        atexit.register(shutil.rmtree, _upload_directory, True)
    if _upload_directory not in sys.path:
        sys.path.insert(0, _upload_directory)
    return _upload_directory


class UploadedFile:
    """The set-up ``Client.upload_file`` keeps for the workers: it writes the file into the
    worker's upload directory and, with ``load``, imports the module (again, if it was)."""

    def __init__(self, filename: str, data: bytes, load: bool) -> None:
        self.filename = filename
        self.data = data
        self.load = load

    def __call__(self) -> str:
        directory = upload_directory()
        path = os.path.join(directory, self.filename)
        # Written aside and renamed: a task importing it meanwhile never reads half a file.
        partial = f"{path}.{os.getpid()}.{threading.get_ident()}.partial"
        with open(partial, "wb") as stream:
            stream.write(self.data)
        os.replace(partial, path)
        stem, extension = os.path.splitext(self.filename)
        names: list[str] = []
        if extension == ".py":
            names = [stem]
        elif extension in IMPORTABLE_ARCHIVES:
            if path not in sys.path:
                sys.path.insert(0, path)
            names = _top_level_names(path)
        importlib.invalidate_caches()
        if self.load:
            for name in names:
                module = sys.modules.get(name)
                if module is not None:
                    importlib.reload(module)
                else:
                    importlib.import_module(name)
        return path


def _top_level_names(archive: str) -> list[str]:
    """The modules and packages at the top of a zip archive (an egg or wheel is one too)."""
    names = set()
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            head, _, rest = member.partition("/")
            if not rest and head.endswith(".py"):
                names.add(head[: -len(".py")])
            elif rest == "__init__.py":
                names.add(head)
    return sorted(names)
