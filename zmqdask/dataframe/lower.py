"""Lowering: an optimized expression becomes a task graph in the :mod:`zmqdask.graph` format.

Every node contributes its ``_layer()``; a :class:`Fused` node stands for a group of
Blockwise nodes and emits one task per output partition that runs the whole group
in-process (see :func:`run_fused`).  Keys are the nodes' ``<prefix>-<token>-<i>``, so the
same expression always lowers to the same keys and a second submission reuses results.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cached_property
from typing import Any

import pandas as pd

from zmqdask.dataframe.expr import Blockwise, Expr, node
from zmqdask.graph import TaskSpec, cull, references
from zmqdask.serialize import TaskRef


class Local:
    """A reference, inside a fused task, to a value computed earlier in the same task."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (Local, (self.key,))

    def __repr__(self) -> str:
        return f"Local({self.key!r})"


def _resolve(obj: Any, env: dict[str, Any]) -> Any:
    kind = type(obj)
    if kind is Local:
        return env[obj.key]
    if kind is tuple or kind is list:
        return kind(_resolve(item, env) for item in obj)
    if kind is dict:
        return {k: _resolve(v, env) for k, v in obj.items()}
    return obj


def _localize(obj: Any, internal: set[str]) -> Any:
    kind = type(obj)
    if kind is TaskRef and obj.key in internal:
        return Local(obj.key)
    if kind is tuple or kind is list:
        return kind(_localize(item, internal) for item in obj)
    if kind is dict:
        return {k: _localize(v, internal) for k, v in obj.items()}
    return obj


Step = tuple[str, Callable[..., Any], Any, Any, tuple[str, ...]]
"""One step of a fused task: ``(local key, function, args, kwargs, keys to drop after it)``."""


def run_fused(steps: tuple[Step, ...]) -> Any:
    """Run the steps of a fused task in order; returns the last step's value.

    Intermediate values are dropped right after their last use, so a chain of operations
    on a large partition holds about two copies at a time.
    """
    env: dict[str, Any] = {}
    value: Any = None
    for key, fn, args, kwargs, release in steps:
        value = fn(*_resolve(args, env), **_resolve(kwargs, env))
        env[key] = value
        for gone in release:
            env.pop(gone, None)
    return value


@node
class Fused(Expr):
    """Blockwise ``members`` (inputs first, ``root`` last) run as one task per partition.

    Its keys are the root's keys, so whatever referred to the root is unchanged; ``inputs``
    are the (already lowered) expressions the group reads from outside.
    """

    members: tuple[Blockwise, ...]
    inputs: tuple[Expr, ...]

    @property
    def root(self) -> Blockwise:
        """The member whose partitions are this node's output."""
        return self.members[-1]

    @cached_property
    def _token(self) -> str:
        return self.root._token

    def _prefix(self) -> str:
        return self.root._prefix()

    def dependencies(self) -> list[Expr]:
        return list(self.inputs)

    @cached_property
    def _meta(self) -> Any:
        return self.root._meta

    @property
    def npartitions(self) -> int:
        return self.root.npartitions

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.root.divisions

    def _steps(self, i: int) -> tuple[Step, ...]:
        by_name = {m._name: m for m in self.members}
        order: list[tuple[str, Callable[..., Any], Any, Any]] = []
        seen: set[str] = set()

        def visit(member: Blockwise, j: int) -> None:
            key = member._key(j)
            if key in seen:
                return
            seen.add(key)
            fn, args, kwargs = member._task(j)
            for ref in sorted(references((args, kwargs), set())):
                stem, _, part = ref.rpartition("-")
                dep = by_name.get(stem)
                if dep is not None:
                    visit(dep, int(part))
            order.append((key, fn, args, kwargs))

        visit(self.root, i)
        internal = {key for key, _, _, _ in order}
        last_use: dict[str, int] = {}
        localized = []
        for index, (key, fn, args, kwargs) in enumerate(order):
            args = _localize(args, internal)
            kwargs = _localize(dict(kwargs), internal)
            for ref in _local_keys((args, kwargs)):
                last_use[ref] = index
            localized.append((key, fn, args, kwargs))
        releases: dict[int, list[str]] = {}
        for key, index in last_use.items():
            releases.setdefault(index, []).append(key)
        return tuple(
            (key, fn, args, kwargs, tuple(sorted(releases.get(index, ()))))
            for index, (key, fn, args, kwargs) in enumerate(localized)
        )

    def _layer(self) -> dict[str, TaskSpec]:
        return {self._key(i): (run_fused, (self._steps(i),), {}) for i in range(self.npartitions)}

    def _describe(self) -> str:
        return " <- ".join(m._prefix() for m in reversed(self.members))

    def _tree_lines(self, indent: int = 0, seen: set[str] | None = None) -> list[str]:
        seen = set() if seen is None else seen
        pad = "  " * indent
        lines = [
            f"{pad}Fused: {len(self.members)} operations, one task per partition  [npartitions={self.npartitions}]"
        ]
        for member in reversed(self.members):
            lines.append(f"{pad}  | {type(member).__name__}: {member._describe()}".rstrip(": ").rstrip())
        seen.add(self._token)
        for dep in self.inputs:
            lines.extend(dep._tree_lines(indent + 1, seen))
        return lines


def _local_keys(obj: Any) -> set[str]:
    found: set[str] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is Local:
            found.add(item.key)
        elif kind is tuple or kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.values())
    return found


def build_graph(expr: Expr) -> tuple[dict[str, TaskSpec], list[str]]:
    """The culled task graph of an optimized expression and its output keys, in order."""
    graph: dict[str, TaskSpec] = {}
    for sub in expr.walk():
        graph.update(sub._layer())
    outputs = [expr._key(i) for i in range(expr.npartitions)]
    return cull(graph, outputs), outputs


# ---------------------------------------------------------------------------------------
# Finalizers: combine output partitions into the user's result (module-level: picklable)
# ---------------------------------------------------------------------------------------


def concat_partitions(parts: list[Any]) -> Any:
    """Concatenate partitions of a DataFrame, Series or Index into one pandas object."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], pd.Index):
        return parts[0].append(list(parts[1:]))
    non_empty = [p for p in parts if len(p)]
    if not non_empty:
        return parts[0]
    if len(non_empty) == 1:
        return non_empty[0]
    joined = pd.concat(unify_categories(non_empty))
    freq = contiguous_freq(non_empty)
    if freq is not None:
        # pandas would have kept the frequency of a regular index; concat drops it.
        joined.index.freq = freq
    return joined


def unify_categories(parts: list[Any]) -> list[Any]:
    """Pieces whose categorical columns, and categorical index, share one dtype (the union
    of their categories).

    Partitions categorize their own values; without this, concatenating pieces with
    different categories would silently give strings.
    """
    first = parts[0]
    if isinstance(first, pd.Series):
        columns: list[Any] = [None]
    elif isinstance(first, pd.DataFrame):
        columns = [c for c, dtype in first.dtypes.items() if isinstance(dtype, pd.CategoricalDtype)]
    else:
        return parts
    casts: dict[Any, pd.CategoricalDtype] = {}
    for column in columns:
        union = _union_categories([p.array if column is None else p[column].array for p in parts])
        if union is not None:
            casts[column] = union
    # Results keyed by categoricals (value_counts, grouped aggregations) carry them as the
    # index, or as levels of a MultiIndex.
    levels: dict[int, pd.CategoricalDtype] = {}
    for level in range(first.index.nlevels):
        if isinstance(_index_level(first.index, level).dtype, pd.CategoricalDtype):
            union = _union_categories([_index_level(p.index, level).array for p in parts])
            if union is not None:
                levels[level] = union
    if None in casts:
        parts = [p.astype(casts[None]) for p in parts]
    elif casts:
        parts = [p.astype(casts) for p in parts]
    if levels:
        parts = [p.set_axis(_cast_levels(p.index, levels), axis=0) for p in parts]
    return parts


def _index_level(index: pd.Index, level: int) -> pd.Index:
    """The distinct values of one level (the index itself when it has one level)."""
    return index.levels[level] if isinstance(index, pd.MultiIndex) else index


def _cast_levels(index: pd.Index, levels: dict[int, pd.CategoricalDtype]) -> pd.Index:
    """``index`` with its levels (by number) in the given categorical dtypes."""
    if not isinstance(index, pd.MultiIndex):
        return index.astype(levels[0])
    new_levels: list[Any] = [index.levels[level].astype(dtype) for level, dtype in levels.items()]
    return index.set_levels(new_levels, level=list(levels))


def _union_categories(arrays: list[Any]) -> pd.CategoricalDtype | None:
    """The dtype holding the categories of all ``arrays``: None when they already share one,
    are not all categoricals, or are ordered (ordered categoricals that differ differ in
    meaning; pandas' concat decides)."""
    dtypes = [array.dtype for array in arrays]
    if not all(isinstance(d, pd.CategoricalDtype) for d in dtypes) or all(d == dtypes[0] for d in dtypes):
        return None
    if bool(dtypes[0].ordered):
        return None
    return pd.CategoricalDtype(sorted_union_of_categories(arrays), ordered=False)


def sorted_union_of_categories(arrays: list[Any]) -> pd.Index:
    """The categories of all the categorical ``arrays``, sorted (by value, whatever each
    array's order)."""
    dtypes = [array.dtype for array in arrays]
    if len({d.categories.dtype for d in dtypes if len(d.categories)}) > 1 or any(not len(d.categories) for d in dtypes):
        # Categories of different kinds (a piece with none is float): compared as objects.
        arrays = [a.set_categories(a.categories.astype(object)) for a in arrays]
    return pd.api.types.union_categoricals(arrays, sort_categories=True, ignore_order=True).categories


def contiguous_freq(parts: list[Any]) -> Any:
    """The common ``freq`` of datetime-indexed pieces that continue each other, else None."""
    freq = getattr(parts[0].index, "freq", None)
    if freq is None or not isinstance(parts[0].index, pd.DatetimeIndex):
        return None
    for before, after in itertools.pairwise(parts):
        index = after.index
        if not isinstance(index, pd.DatetimeIndex) or index.freq != freq:
            return None
        if index[0] != before.index[-1] + freq:
            return None
    return freq


def first_output(parts: list[Any]) -> Any:
    """The single output of a scalar expression."""
    return parts[0]


def finalizer(meta: Any) -> Callable[[list[Any]], Any]:
    """The finalize function for an expression with this meta."""
    if isinstance(meta, (pd.DataFrame, pd.Series, pd.Index)):
        return concat_partitions
    return first_output
