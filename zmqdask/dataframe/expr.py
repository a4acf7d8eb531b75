"""Immutable expression trees over partitioned pandas objects: the base every DataFrame operation builds on.

A lazy DataFrame, Series or Scalar is a thin wrapper around an :class:`Expr`.  Nodes are
frozen dataclasses; two nodes with the same type and operands have the same ``_token``, so
they compare equal, hash equal, and lower to the same task keys (common subexpressions are
shared for free).  Nothing is computed until the optimizer (``optimize.py``) rewrites the
tree and ``lower.py`` turns it into a task graph in the :mod:`zmqdask.graph` format.

Recipe: adding a node
=====================

1. Declare it with the :func:`node` decorator (a frozen dataclass without generated
   ``__eq__``/``__repr__``; equality and hashing go through the content token).  Fields are
   the operands, in order.  An operand that is an :class:`Expr` (also inside a tuple, list
   or dict operand) is an input: :meth:`Expr.dependencies` finds it, the optimizer rewrites
   it, and the lowering refers to its partitions.  Other operands must be tokenizable
   (see :func:`tokenize`) and cheap to pickle, because they travel inside the tasks.

2. Describe its output without computing anything:

   * ``_meta``: an *empty* pandas object with the output's schema (columns, dtypes, index
     type and name), or a sample scalar for scalar results.  Use ``@cached_property``.
     :func:`emulate` runs a partition function on fake two-row data to derive it.
   * ``npartitions`` and ``divisions`` (a tuple of ``npartitions + 1`` index boundaries,
     all ``None`` when unknown).  The defaults copy the first frame-like input.

3. Say how it becomes tasks.  Choose one:

   * Subclass :class:`Blockwise` when output partition ``i`` needs only partition ``i`` of
     each frame-like input (and partition 0 of scalar inputs).  Implement ``_function()``
     returning a *module-level* function; the default ``_task(i)`` calls it with the
     operands, inputs replaced by their partitions.  Override ``_task(i)`` for other
     argument shapes, using ``self._part(operand, i)`` to refer to inputs.  Blockwise chains
     are fused into one task per partition automatically; the function object is shared by
     every partition, which keeps pickling cheap.
   * Subclass :class:`Source` (a Blockwise without inputs) for data sources; ``_task(i)``
     produces partition ``i`` from small arguments (a path, a seed, a row range).
   * Build on :class:`Reduction` (chunk per partition, combine in groups, aggregate) for
     anything that reduces many partitions to one.
   * Otherwise subclass :class:`Expr` and implement ``_layer()`` returning
     ``{key: (function, args, kwargs)}`` for every output partition ``self._key(i)``;
     refer to input partition ``j`` as ``TaskRef(dep._key(j))``.  Intermediate tasks use
     keys ``f"{self._name}-<something>-{j}"`` so they stay unique and readable.

4. Optionally take part in optimization (all hooks return ``None`` for "no change"):

   * ``_simplify_down()``: rewrite this node from its own operands (e.g. merge two
     projections).  Must terminate: never undo another rule.
   * ``_lower()``: replace an abstract node by physical ones (e.g. a reduction by chunk +
     tree combine).  Runs after simplification.
   * ``_required_columns(dep, needed)``: which columns of input ``dep`` this node reads when
     its own consumers need ``needed`` (``None`` means "all").  Column pruning pushes the
     union of these demands into every source that implements ``_with_columns(columns)``.
   * ``_columnwise = True`` when output column ``c`` depends only on input column ``c`` of
     its DataFrame inputs (abs, fillna with a scalar, row selections...): projections then
     move below it and column demands pass through it.  ``_pushdown_projection(columns)``
     handles other cases (e.g. an assign whose new columns are not selected).
   * Sources may implement ``_with_filters(filters)`` to absorb row filters given as a list
     of ``(column, op, value)`` conjunctions (op in ``== != < <= > >= in``).  Column pruning
     may later call ``_with_columns`` without the filtered columns: the source must still
     read them to filter, and leave them out of its output.

A collection method wraps a node in the user-facing class chosen by its meta::

    from zmqdask.dataframe.collection import new_collection
    def abs(self):
        return new_collection(MapMethod(self.expr, "abs", (), {}))

Keys are ``f"{prefix}-{token}-{i}"``: ``prefix`` from ``_prefix()`` (the class name in
lower case by default), ``token`` a digest of the node's content that is stable across
processes, and ``i`` the partition number.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from zmqdask.dataframe.meta import emulate, is_frame_like, make_meta, meta_nonempty, unknown_divisions
from zmqdask.dataframe.tokens import tokenize
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:  # pragma: no cover - the decorator only informs type checkers

    def dataclass_transform(**_kwargs: Any) -> Callable[[Any], Any]:
        return lambda fn: fn


logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SPLIT_EVERY",
    "Blockwise",
    "ColumnLabel",
    "Expr",
    "Filter",
    "MapPartitions",
    "Partitions",
    "Projection",
    "Reduction",
    "RowMover",
    "SinglePartition",
    "Source",
    "TreeCombine",
    "column_label",
    "emulate",
    "frame_dependencies",
    "is_frame_like",
    "make_meta",
    "meta_nonempty",
    "node",
    "predicate_to_filters",
    "short_repr",
    "tokenize",
    "unknown_divisions",
]

_E = TypeVar("_E", bound="Expr")
_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------
# The node base class
# ---------------------------------------------------------------------------------------


@dataclass_transform(frozen_default=True, eq_default=False)
def node(cls: type[_T]) -> type[_T]:
    """Class decorator for expression nodes: a frozen dataclass compared by content token."""
    return dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)


def _walk_exprs(obj: Any) -> Iterator[Expr]:
    if isinstance(obj, Expr):
        yield obj
    elif type(obj) in (tuple, list):
        for item in obj:
            yield from _walk_exprs(item)
    elif type(obj) is dict:
        for item in obj.values():
            yield from _walk_exprs(item)


def _replace_exprs(obj: Any, mapping: Callable[[Expr], Expr]) -> Any:
    if isinstance(obj, Expr):
        return mapping(obj)
    if type(obj) in (tuple, list):
        return type(obj)(_replace_exprs(item, mapping) for item in obj)
    if type(obj) is dict:
        return {k: _replace_exprs(v, mapping) for k, v in obj.items()}
    return obj


class _MetaColumns:
    """``expr.columns``: the output's column labels, unless a subclass field shadows it.

    A non-data descriptor (no ``__set__``), so a dataclass field of the same name stores
    its value in the instance and wins.
    """

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            # Looked up on the class (as dataclasses do for defaults): behave as absent.
            raise AttributeError("columns")
        return obj._output_columns()


class Expr:
    """An immutable node of a lazy computation over partitioned pandas objects.

    Subclasses are declared with :func:`node`; see the module docstring for the recipe.
    """

    _is_expr_node: ClassVar[bool] = True
    """Tells :func:`tokenize` to use the node's own token."""

    _columnwise: ClassVar[bool] = False
    """Output column ``c`` depends only on column ``c`` of each DataFrame input."""

    # -- identity ---------------------------------------------------------------------

    @property
    def operands(self) -> tuple[Any, ...]:
        """The field values, in declaration order."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]

    @cached_property
    def _token(self) -> str:
        return tokenize(type(self).__module__, type(self).__qualname__, *self.operands)

    def _prefix(self) -> str:
        """The readable part of this node's keys."""
        return type(self).__name__.lower()

    @property
    def _name(self) -> str:
        """``prefix-token``: the common stem of this node's task keys."""
        return f"{self._prefix()}-{self._token}"

    def _key(self, i: int) -> str:
        """The task key of output partition ``i``."""
        return f"{self._name}-{i}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and type(other) is type(self) and other._token == self._token

    def __hash__(self) -> int:
        return hash(self._token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    # -- structure --------------------------------------------------------------------

    @cached_property
    def _input_fields(self) -> tuple[str, ...]:
        # Nodes are immutable: which fields hold inputs is found once (sources may hold long
        # tuples of plain values that need not be searched again at every rewrite).
        return tuple(
            f.name
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if any(True for _ in _walk_exprs(getattr(self, f.name)))
        )

    @cached_property
    def _dependency_list(self) -> tuple[Expr, ...]:
        seen: dict[str, Expr] = {}
        for name in self._input_fields:
            for dep in _walk_exprs(getattr(self, name)):
                seen.setdefault(dep._token, dep)
        return tuple(seen.values())

    def dependencies(self) -> list[Expr]:
        """The input expressions, in operand order, without repeats."""
        return list(self._dependency_list)

    def _replace(self: _E, **changes: Any) -> _E:
        """A copy with some operands replaced."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _map_dependencies(self: _E, mapping: Callable[[Expr], Expr]) -> _E:
        """A copy whose input expressions are replaced by ``mapping(input)``."""
        changes: dict[str, Any] = {}
        for name in self._input_fields:
            old = getattr(self, name)
            new = _replace_exprs(old, mapping)
            if _changed(old, new):
                changes[name] = new
        return self._replace(**changes) if changes else self

    def walk(self) -> Iterator[Expr]:
        """Every distinct node of the tree, each once, parents before children."""
        seen: set[str] = set()
        stack: list[Expr] = [self]
        while stack:
            expr = stack.pop()
            if expr._token in seen:
                continue
            seen.add(expr._token)
            yield expr
            stack.extend(reversed(expr.dependencies()))

    # -- schema and partitioning ------------------------------------------------------

    @cached_property
    def _meta(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define _meta")

    def _frame_dependencies(self) -> list[Expr]:
        return [d for d in self.dependencies() if is_frame_like(d._meta)]

    @property
    def npartitions(self) -> int:
        """Number of output partitions."""
        frames = self._frame_dependencies()
        return frames[0].npartitions if frames else 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        """Index boundaries of the partitions (``npartitions + 1`` values, ``None`` if unknown)."""
        frames = self._frame_dependencies()
        return frames[0].divisions if frames else unknown_divisions(self.npartitions)

    @property
    def known_divisions(self) -> bool:
        """Whether every division is known."""
        divisions = self.divisions
        return len(divisions) > 0 and divisions[0] is not None

    columns: Any = _MetaColumns()
    """Output column labels (a field called ``columns`` in a subclass takes precedence)."""

    def _output_columns(self) -> list[Any]:
        """Output column labels (empty for a Series or scalar).

        (Not called ``columns``: sources commonly have a ``columns`` field.)
        """
        meta = self._meta
        return list(meta.columns) if isinstance(meta, pd.DataFrame) else []

    # -- lowering ---------------------------------------------------------------------

    def _layer(self) -> dict[str, TaskSpec]:
        """The tasks producing every output partition ``self._key(i)``."""
        raise NotImplementedError(f"{type(self).__name__} must define _layer or be lowered")

    # -- optimizer hooks (None = no change) -------------------------------------------

    def _simplify_down(self) -> Expr | None:
        """A simpler equivalent built from this node's operands, or ``None``."""
        return None

    def _lower(self) -> Expr | None:
        """Physical nodes replacing this abstract one, or ``None`` if already physical."""
        return None

    def _partitioning_parents(self) -> list[Expr] | None:
        """The inputs whose partitioning this node keeps, or ``None`` if it decides itself
        where rows go.

        Keeping means: a row of partition ``i`` of such an input, if it is in the output,
        is in its partition ``i`` under the same index label.  Collections whose divisions
        are unknown can only be lined up partition by partition when they descend from the
        same nodes through such steps (see :func:`partitioning_roots`).
        """
        return None

    def _partitioning_identity(self) -> frozenset[str]:
        """What a node that keeps no input's partitioning stands for when collections are
        lined up (see :func:`partitioning_roots`): itself, unless its partitions are known
        to be those of another expression (a persisted one's, a source's before pruning)."""
        return frozenset({self._token})

    def _same_rows(self) -> Expr | None:
        """An input with exactly as many rows as this node (in any order), or ``None``.

        Counting rows then skips this node: ``len(df.set_index(...))`` needs no shuffle.
        """
        return None

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        """Columns of input ``dep`` this node reads when its consumers need ``needed``."""
        if self._is_columnwise() and isinstance(dep._meta, pd.DataFrame):
            return needed
        return None

    def _is_columnwise(self) -> bool:
        """Per-instance ``_columnwise`` (override when it depends on the operands)."""
        return self._columnwise

    def _pushdown_projection(self, columns: Any) -> Expr | None:
        """This node with ``Projection(input, columns)`` inputs, when that is equivalent.

        The default moves the projection below columnwise nodes.
        """
        if self._is_columnwise() and isinstance(self._meta, pd.DataFrame):
            return self._map_dependencies(lambda d: Projection(d, columns) if isinstance(d._meta, pd.DataFrame) else d)
        return None

    def _with_columns(self, columns: list[Any]) -> Expr | None:
        """For sources: the same source producing only ``columns`` (in this order)."""
        return None

    def _with_filters(self, filters: list[tuple[Any, str, Any]]) -> Expr | None:
        """For sources: the same source keeping only rows matching every filter."""
        return None

    # -- display ----------------------------------------------------------------------

    def _describe(self) -> str:
        """One line of operands for ``explain()``; inputs are shown as children instead."""
        parts = []
        inputs = set(self._input_fields)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in inputs:
                parts.append(f"{f.name}={short_repr(getattr(self, f.name))}")
        return ", ".join(parts)

    def _tree_lines(self, indent: int = 0, seen: set[str] | None = None) -> list[str]:
        seen = set() if seen is None else seen
        pad = "  " * indent
        head = f"{pad}{type(self).__name__}: {self._describe()}".rstrip(": ").rstrip()
        if self._token in seen:
            return [f"{head}  (shared, shown above)"]
        seen.add(self._token)
        lines = [f"{head}  [npartitions={self.npartitions}]"]
        for dep in self.dependencies():
            lines.extend(dep._tree_lines(indent + 1, seen))
        return lines

    def tree_repr(self) -> str:
        """The plan below this node as an indented tree."""
        return "\n".join(self._tree_lines())


def _changed(old: Any, new: Any) -> bool:
    if isinstance(old, Expr) or isinstance(new, Expr):
        return old is not new
    if type(old) in (tuple, list) and type(new) is type(old):
        return len(old) != len(new) or any(_changed(a, b) for a, b in zip(old, new, strict=False))
    if type(old) is dict and type(new) is dict:
        return any(_changed(old[k], new[k]) for k in old)
    return False


def short_repr(value: Any, limit: int = 60) -> str:
    """A bounded repr for plans and messages."""
    if isinstance(value, pd.DataFrame):
        text = f"<DataFrame {value.shape[0]}x{value.shape[1]}>"
    elif isinstance(value, (pd.Series, pd.Index)):
        text = f"<{type(value).__name__} len={len(value)}>"
    elif callable(value) and hasattr(value, "__qualname__"):
        text = value.__qualname__
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------
# Blockwise nodes: output partition i from input partition i
# ---------------------------------------------------------------------------------------


class Blockwise(Expr):
    """A node whose partition ``i`` needs partition ``i`` of each frame-like input.

    Scalar-like inputs (a reduction's result) are broadcast: every partition reads their
    single partition 0.  Chains of Blockwise nodes are fused into one task per partition.
    """

    def _function(self) -> Callable[..., Any]:
        """The module-level function applied to each partition (see ``_task``)."""
        raise NotImplementedError(f"{type(self).__name__} must define _function or _task")

    def _dep_partition(self, dep: Expr, i: int) -> int:
        """Which partition of input ``dep`` output partition ``i`` reads."""
        return i if is_frame_like(dep._meta) else 0

    def _partitioning_parents(self) -> list[Expr] | None:
        # Partition i of the output is made of partition i of each frame input (a source
        # has none: it is where partitioning starts).
        return [dep for dep in self.dependencies() if is_frame_like(dep._meta)]

    def _part(self, operand: Any, i: int) -> Any:
        """``operand`` with each input expression replaced by a reference to its partition."""
        if isinstance(operand, Expr):
            return TaskRef(operand._key(self._dep_partition(operand, i)))
        kind = type(operand)
        if kind is tuple or kind is list:
            return kind(self._part(item, i) for item in operand)
        if kind is dict:
            return {k: self._part(v, i) for k, v in operand.items()}
        return operand

    def _task(self, i: int) -> TaskSpec:
        """The task of output partition ``i``: by default ``function(*operands)``."""
        return (self._function(), tuple(self._part(op, i) for op in self.operands), {})

    def _layer(self) -> dict[str, TaskSpec]:
        return {self._key(i): self._task(i) for i in range(self.npartitions)}

    @cached_property
    def _meta(self) -> Any:
        metas = [_replace_exprs(op, lambda e: e._meta) for op in self.operands]
        return emulate(self._function(), *metas)


class Source(Blockwise):
    """A Blockwise node without inputs: it produces partitions from small arguments."""

    @property
    def npartitions(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define npartitions")

    @property
    def divisions(self) -> tuple[Any, ...]:
        return unknown_divisions(self.npartitions)


class RowMover(Expr):
    """A node that only moves the rows of its ``frame`` operand between partitions.

    Shuffles, sorts and repartitionings share this: the output holds exactly the input's
    rows, so counting rows may skip the node, and (unless a subclass says otherwise) the
    schema is the input's.  Subclasses are :func:`node` classes declaring a ``frame`` field;
    the annotation below only tells type checkers about it.
    """

    frame: Expr

    def _same_rows(self) -> Expr | None:
        return self.frame

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta


def _identity(value: Any) -> Any:
    return value


class ColumnLabel(tuple[Any, ...]):
    """One column label that is a tuple (a column of MultiIndex columns), as a projection's
    ``columns``: a plain tuple there means a list of labels.

    It hashes and compares as the tuple, so column sets and pandas look it up as the label.
    """

    __slots__ = ()

    def __zmqdask_tokenize__(self) -> tuple[str, tuple[Any, ...]]:
        """Tokenized apart from a plain tuple, which selects several columns."""
        return ("column-label", tuple(self))


def column_label(label: Hashable) -> Hashable:
    """``label`` as the ``columns`` of a projection selecting that one column (a Series)."""
    return ColumnLabel(label) if isinstance(label, tuple) else label


def _project(part: Any, columns: Any) -> Any:
    if type(columns) is tuple:
        return part[list(columns)]
    return part[columns]


def _filter(part: Any, predicate: Any) -> Any:
    return part[predicate]


@node
class Projection(Blockwise):
    """Column selection: a tuple of labels gives a DataFrame, a single label a Series
    (a :class:`ColumnLabel` when that label is itself a tuple)."""

    frame: Expr
    columns: Any

    def _prefix(self) -> str:
        return "getitem"

    def _function(self) -> Callable[..., Any]:
        return _project

    @cached_property
    def _meta(self) -> Any:
        return _project(self.frame._meta, self.columns)

    def _same_rows(self) -> Expr | None:
        return self.frame

    def _wanted(self) -> frozenset[Any]:
        return frozenset(self.columns) if type(self.columns) is tuple else frozenset([self.columns])

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        return self._wanted()

    def _simplify_down(self) -> Expr | None:
        frame = self.frame
        if type(self.columns) is tuple and list(self.columns) == frame._output_columns():
            return frame
        if isinstance(frame, Projection) and type(frame.columns) is tuple:
            return Projection(frame.frame, self.columns)
        return frame._pushdown_projection(self.columns)


@node
class Filter(Blockwise):
    """Row selection by an aligned boolean Series."""

    frame: Expr
    predicate: Expr

    def _function(self) -> Callable[..., Any]:
        return _filter

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        return needed if dep is self.frame or dep == self.frame else None

    def _simplify_down(self) -> Expr | None:
        frame = self.frame
        if isinstance(frame, Projection):
            # Filtering then projecting is the same, and brings the filter next to the source.
            return Projection(Filter(frame.frame, self.predicate), frame.columns)
        filters = predicate_to_filters(self.predicate, frame)
        if filters is not None:
            return frame._with_filters(filters)
        return None


_COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def predicate_to_filters(predicate: Expr, frame: Expr) -> list[tuple[Any, str, Any]] | None:
    """``predicate`` as a conjunction of ``(column, op, value)`` on ``frame``'s columns, if it is one.

    Recognizes ``frame[col] <op> literal`` (op a comparison), ``frame[col].isin(values)``
    and ``&`` of those; anything else gives ``None``.
    """
    op = getattr(predicate, "op", None)
    left = getattr(predicate, "left", None)
    right = getattr(predicate, "right", None)
    if op == "and_" and isinstance(left, Expr) and isinstance(right, Expr):
        first = predicate_to_filters(left, frame)
        second = predicate_to_filters(right, frame)
        return None if first is None or second is None else first + second
    if op in _COMPARISONS and isinstance(left, Projection) and not isinstance(right, Expr):
        if left.frame == frame and type(left.columns) is not tuple and right is not None and np.ndim(right) == 0:
            return [(left.columns, _COMPARISONS[op], right)]
    method = getattr(predicate, "method", None)
    target = getattr(predicate, "frame", None)
    if method == "isin" and isinstance(target, Projection) and target.frame == frame:
        args: Any = getattr(predicate, "args", ())
        if len(args) == 1 and type(target.columns) is not tuple and not isinstance(args[0], Expr):
            return [(target.columns, "in", list(args[0]))]
    return None


@node
class Partitions(Blockwise):
    """A subset of another expression's partitions, in the given order (used for culling)."""

    frame: Expr
    partitions: tuple[int, ...]

    _columnwise = True

    def _dep_partition(self, dep: Expr, i: int) -> int:
        return self.partitions[i]

    def _partitioning_parents(self) -> list[Expr] | None:
        return None  # partition i is another partition of the input

    def _task(self, i: int) -> TaskSpec:
        return (_identity, (TaskRef(self.frame._key(self.partitions[i])),), {})

    @cached_property
    def _meta(self) -> Any:
        return self.frame._meta

    @property
    def npartitions(self) -> int:
        return len(self.partitions)

    @property
    def divisions(self) -> tuple[Any, ...]:
        divisions = self.frame.divisions
        picked = self.partitions
        if divisions[0] is None or list(picked) != sorted(set(picked)):
            return unknown_divisions(len(picked))
        return (*tuple(divisions[p] for p in picked), divisions[picked[-1] + 1])

    def _simplify_down(self) -> Expr | None:
        frame = self.frame
        if self.partitions == tuple(range(frame.npartitions)):
            return frame
        if isinstance(frame, Partitions):
            return Partitions(frame.frame, tuple(frame.partitions[p] for p in self.partitions))
        return None


@node
class MapPartitions(Blockwise):
    """``func(partition, *args, **kwargs)`` on every partition; ``args`` may hold inputs."""

    frame: Expr
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    meta: Any
    divisions_kept: bool = False
    label: str = ""
    partition_info: bool = False
    """Pass ``partition_info={"number": i, "division": ...}`` to the function, as Dask does."""

    def _prefix(self) -> str:
        return self.label or getattr(self.func, "__name__", "map-partitions").lower().strip("<>")

    def _task(self, i: int) -> TaskSpec:
        args = (self._part(self.frame, i), *self._part(self.args, i))
        kwargs = self._part(self.kwargs, i)
        if self.partition_info:
            kwargs = {**kwargs, "partition_info": partition_info(self.frame.divisions, i)}
        return (self.func, args, kwargs)

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    def _describe(self) -> str:
        text = f"{self._prefix()}: {short_repr(self.func)}"
        extra = [short_repr(a) for a in self.args if not isinstance(a, Expr)]
        extra += [f"{k}={short_repr(v)}" for k, v in self.kwargs.items() if not isinstance(v, Expr)]
        return text + (f"({', '.join(extra)})" if extra else "")

    @property
    def divisions(self) -> tuple[Any, ...]:
        if self.divisions_kept:
            return self.frame.divisions
        return unknown_divisions(self.npartitions)

    def _partitioning_parents(self) -> list[Expr] | None:
        # A function said to change the index (clear_divisions, or not a frame) places rows
        # under labels of its own.
        return super()._partitioning_parents() if self.divisions_kept else None


def partition_info(divisions: tuple[Any, ...], i: int) -> dict[str, Any]:
    """What Dask passes as ``partition_info`` to a function of partition ``i``."""
    return {"number": i, "division": divisions[i]}


# ---------------------------------------------------------------------------------------
# Reductions: chunk per partition, combine in groups, aggregate
# ---------------------------------------------------------------------------------------

DEFAULT_SPLIT_EVERY = 8
"""How many intermediate results a combine task of a tree reduction takes."""

ROW_COUNT_LABEL = "len"
"""Label of the reduction counting rows, which may skip nodes that keep the row count."""


class SinglePartition(Expr):
    """A node whose whole result is one partition, without known index bounds.

    Reductions, assembled summaries and writes (whose result is a summary of what was
    written) are such nodes.
    """

    @property
    def npartitions(self) -> int:
        return 1

    @property
    def divisions(self) -> tuple[Any, ...]:
        return (None, None)


@node
class Reduction(SinglePartition):
    """A tree reduction of all partitions of ``frame`` into one result.

    ``chunk(partition, **chunk_kwargs)`` runs per partition (fused with the partition's
    producer); ``combine(list, **combine_kwargs)`` merges up to ``split_every`` chunk
    results into one of the same kind; ``aggregate(list, **aggregate_kwargs)`` produces
    the final value, whose schema ``meta`` describes.  All three must be module-level.
    """

    frame: Expr
    chunk: Callable[..., Any]
    combine: Callable[..., Any]
    aggregate: Callable[..., Any]
    meta: Any
    chunk_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    combine_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    aggregate_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    split_every: int = DEFAULT_SPLIT_EVERY
    label: str = "reduction"
    columns_needed: Any = None

    def _prefix(self) -> str:
        return self.label

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        return None if self.columns_needed is None else frozenset(self.columns_needed)

    def _describe(self) -> str:
        return f"{self.label}: chunk={self.chunk.__name__}, split_every={self.split_every}"

    def _simplify_down(self) -> Expr | None:
        if self.label == ROW_COUNT_LABEL:
            source = self.frame._same_rows()
            if source is not None:
                return self._replace(frame=source)
        return None

    def _lower(self) -> Expr | None:
        chunks = MapPartitions(self.frame, self.chunk, (), self.chunk_kwargs, None, False, f"{self.label}-chunk")
        return TreeCombine(
            chunks,
            self.combine,
            self.aggregate,
            self.meta,
            self.combine_kwargs,
            self.aggregate_kwargs,
            self.split_every,
            self.label,
        )


@node
class TreeCombine(SinglePartition):
    """The physical upper part of a tree reduction over already-chunked partitions."""

    frame: Expr
    combine: Callable[..., Any]
    aggregate: Callable[..., Any]
    meta: Any
    combine_kwargs: dict[str, Any]
    aggregate_kwargs: dict[str, Any]
    split_every: int
    label: str

    def _prefix(self) -> str:
        return self.label

    @cached_property
    def _meta(self) -> Any:
        return self.meta

    def _describe(self) -> str:
        inputs = self.frame.npartitions
        width = max(2, self.split_every)
        levels = 0
        while inputs > width:
            inputs = -(-inputs // width)
            levels += 1
        return f"{self.label}: {levels} combine level(s) of up to {width}, then {self.aggregate.__name__}"

    def _layer(self) -> dict[str, TaskSpec]:
        layer: dict[str, TaskSpec] = {}
        level: list[Any] = [TaskRef(self.frame._key(i)) for i in range(self.frame.npartitions)]
        width = max(2, self.split_every)
        depth = 0
        while len(level) > width:
            next_level: list[Any] = []
            for g in range(0, len(level), width):
                key = f"{self._name}-combine{depth}-{g // width}"
                layer[key] = (self.combine, (level[g : g + width],), self.combine_kwargs)
                next_level.append(TaskRef(key))
            level = next_level
            depth += 1
        meta = self.meta
        if isinstance(meta, pd.Series) and _nullable_number(meta.dtype):
            # Partial results merge in NumPy dtypes: give the result the nullable dtype pandas
            # gives (a DataFrame's sum of Int64 columns is Float64 values, say).
            layer[self._key(0)] = (aggregate_as, (level, self.aggregate, meta.dtype), self.aggregate_kwargs)
        else:
            layer[self._key(0)] = (self.aggregate, (level,), self.aggregate_kwargs)
        return layer


def _nullable_number(dtype: Any) -> bool:
    """Whether ``dtype`` is one of pandas' nullable numbers or booleans (Int64, Float64...)."""
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype) or isinstance(dtype, pd.CategoricalDtype):
        return False
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def aggregate_as(chunks: list[Any], aggregate: Callable[..., Any], dtype: Any, **kwargs: Any) -> Any:
    """``aggregate(chunks, **kwargs)`` in ``dtype`` when it is a Series that can take it."""
    result = aggregate(chunks, **kwargs)
    if isinstance(result, pd.Series) and result.dtype != dtype:
        try:
            return result.astype(dtype)
        except (TypeError, ValueError):
            return result
    return result


def frame_dependencies(exprs: Sequence[Expr]) -> list[Expr]:
    """The frame-like expressions among ``exprs``."""
    return [e for e in exprs if is_frame_like(e._meta)]


def partitioning_roots(expr: Expr) -> frozenset[str]:
    """Tokens of the nodes where ``expr``'s partitioning comes from: the nearest nodes, down
    its inputs, that do not keep an input's partitioning (see
    :meth:`Expr._partitioning_parents`)."""
    roots: set[str] = set()
    stack, seen = [expr], set()
    while stack:
        node_ = stack.pop()
        if node_._token in seen:
            continue
        seen.add(node_._token)
        parents = node_._partitioning_parents()
        if not parents:
            roots |= node_._partitioning_identity()
        else:
            stack.extend(parents)
    return frozenset(roots)
