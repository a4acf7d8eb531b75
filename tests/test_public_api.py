"""The curated top-level namespace stays complete, sorted and documented."""

from __future__ import annotations

import inspect

import zmqdask


def test_all_is_sorted_and_resolvable() -> None:
    assert zmqdask.__all__ == sorted(zmqdask.__all__)
    for name in zmqdask.__all__:
        assert getattr(zmqdask, name) is not None, name


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(zmqdask).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in {"annotations", "importlib", "Any"}
    }
    assert public <= set(zmqdask.__all__), public - set(zmqdask.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in zmqdask.__all__:
        value = getattr(zmqdask, name)
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
