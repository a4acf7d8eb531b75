"""The curated top-level namespace stays complete, sorted and documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import zmqdask


def test_all_is_sorted_and_resolvable() -> None:
    assert zmqdask.__all__ == sorted(zmqdask.__all__)
    for name in zmqdask.__all__:
        assert getattr(zmqdask, name) is not None, name


def test_every_public_name_is_exported() -> None:
    helpers = {"annotations", "importlib", "Any", "TYPE_CHECKING"}
    public = {
        name
        for name, value in vars(zmqdask).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in helpers
    }
    assert public <= set(zmqdask.__all__), public - set(zmqdask.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in zmqdask.__all__:
        value = getattr(zmqdask, name)
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def _fresh_interpreter(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_broker_and_the_workers_start_without_the_client_or_pandas() -> None:
    loaded = _fresh_interpreter(
        "import sys, broker.cli, zmqdask.pool, zmqdask.worker; "
        "print(sorted(m for m in ('zmqdask.client', 'zmqdask.session', 'pandas') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_names_loaded_on_first_use_resolve_and_functions_named_like_modules_stay_functions() -> None:
    kinds = _fresh_interpreter(
        "import zmqdask.client, zmqdask.delayed, zmqdask.progress, zmqdask, inspect; "
        "from zmqdask import Client, as_completed; "
        "print(Client.__module__, as_completed.__module__, "
        "inspect.isfunction(zmqdask.delayed), inspect.isfunction(zmqdask.progress), 'Client' in dir(zmqdask))"
    )
    assert kinds == "zmqdask.client zmqdask.future True True True"
