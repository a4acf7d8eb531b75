"""Joins and concatenation of partitioned frames: ``merge``, index-based ``join``, ``concat``.

The plan is chosen from the partition counts when the graph is built:

* both sides have one partition: one task;
* one side has a single partition and the join keeps only rows of the other side (or their
  matches): that partition is broadcast to every partition of the other side, no shuffle;
* both sides are indexed alike (known, equal divisions) and join on the index: partition
  ``i`` meets partition ``i``;
* otherwise both sides are hash-shuffled on their join keys into the same number of
  partitions (see :class:`~zmqdask.dataframe.shuffle.HashShuffle`; rows move worker to worker)
  and the buckets are merged pairwise.

Row order follows pandas within each output partition only; the result index of a merge on
columns restarts in each partition (as it would per pandas call).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Hashable
from functools import cached_property
from typing import Any

import pandas as pd

from zmqdask.dataframe.expr import Blockwise, Expr, emulate, is_frame_like, node, unknown_divisions
from zmqdask.dataframe.shuffle import HashShuffle
from zmqdask.dataframe.wrapping import new_collection
from zmqdask.errors import UsageError
from zmqdask.graph import TaskSpec
from zmqdask.serialize import TaskRef

logger = logging.getLogger(__name__)

HOWS = ("inner", "left", "right", "outer")
"""Join types supported by :func:`merge` and :func:`join`."""

# pandas 3.1 replaced DataFrame.join's lsuffix/rsuffix by suffixes=; older versions lack it.
_JOIN_TAKES_SUFFIXES = "suffixes" in inspect.signature(pd.DataFrame.join).parameters


def merge_partitions(
    left: Any,
    right: Any,
    how: str,
    left_on: tuple[Hashable, ...] | None,
    right_on: tuple[Hashable, ...] | None,
    suffixes: tuple[str, str],
    as_join: bool,
    indicator: bool = False,
) -> Any:
    """Join two pandas partitions; ``None`` keys mean the index of that side.

    ``as_join`` uses ``DataFrame.join`` semantics (the right side always by its index, the
    left side's index kept); ``indicator`` adds pandas' ``_merge`` column.
    """
    if as_join:
        on = None if left_on is None else list(left_on)
        if _JOIN_TAKES_SUFFIXES:
            return left.join(right, on=on, how=how, suffixes=suffixes)
        return left.join(right, on=on, how=how, lsuffix=suffixes[0], rsuffix=suffixes[1])
    how_: Any = how
    return pd.merge(
        left,
        right,
        how=how_,
        left_on=None if left_on is None else list(left_on),
        right_on=None if right_on is None else list(right_on),
        left_index=left_on is None,
        right_index=right_on is None,
        suffixes=suffixes,
        indicator=indicator,
    )


class JoinNode(Expr):
    """A join of ``left`` and ``right``, as :func:`merge_partitions` does it for two partitions.

    Subclasses are :func:`node` classes declaring these fields; the annotations here only
    inform type checkers.
    """

    left: Expr
    right: Expr
    how: str
    left_on: tuple[Hashable, ...] | None
    right_on: tuple[Hashable, ...] | None
    suffixes: tuple[str, str]
    as_join: bool
    indicator: bool

    @cached_property
    def _meta(self) -> Any:
        return emulate(
            merge_partitions,
            self.left._meta,
            self.right._meta,
            self.how,
            self.left_on,
            self.right_on,
            self.suffixes,
            self.as_join,
            self.indicator,
        )

    def _describe_join(self) -> str:
        """The join type and keys, for ``explain()``."""
        return f"how={self.how}, left_on={self.left_on}, right_on={self.right_on}"


@node
class Merge(JoinNode):
    """An abstract join; lowered to a broadcast, aligned or hash-shuffled plan."""

    left: Expr
    right: Expr
    how: str
    left_on: tuple[Hashable, ...] | None
    right_on: tuple[Hashable, ...] | None
    suffixes: tuple[str, str]
    as_join: bool = False
    indicator: bool = False

    def _prefix(self) -> str:
        return "join" if self.as_join else "merge"

    @cached_property
    def strategy(self) -> str:
        """``single``, ``broadcast-left``, ``broadcast-right``, ``aligned`` or ``hash``."""
        nleft, nright = self.left.npartitions, self.right.npartitions
        if nleft == 1 and nright == 1:
            return "single"
        if nright == 1 and self.how in ("inner", "left"):
            return "broadcast-right"
        if nleft == 1 and self.how in ("inner", "right"):
            return "broadcast-left"
        on_index = self.left_on is None and self.right_on is None
        if on_index and self.left.known_divisions and self.left.divisions == self.right.divisions and nleft == nright:
            return "aligned"
        return "hash"

    @property
    def npartitions(self) -> int:
        strategy = self.strategy
        if strategy == "single":
            return 1
        if strategy == "broadcast-left":
            return self.right.npartitions
        if strategy in ("broadcast-right", "aligned"):
            return self.left.npartitions
        return max(self.left.npartitions, self.right.npartitions)

    @property
    def divisions(self) -> tuple[Any, ...]:
        keeps_left_index = self.as_join or (self.left_on is None and self.right_on is None)
        if self.strategy == "aligned" and keeps_left_index:
            # Both sides cover the same range in partition i: so does any join of them.
            return self.left.divisions
        if self.strategy == "broadcast-right" and keeps_left_index and self.how in ("inner", "left"):
            return self.left.divisions
        return unknown_divisions(self.npartitions)

    def _lower(self) -> Expr | None:
        strategy = self.strategy
        if strategy == "hash":
            n = self.npartitions
            left: Expr = HashShuffle(self.left, self.left_on, n)
            right: Expr = HashShuffle(self.right, self.right_on, n)
            broadcast = ""
        else:
            left, right = self.left, self.right
            broadcast = {"broadcast-left": "left", "broadcast-right": "right"}.get(strategy, "")
        return MergePartitions(
            left,
            right,
            self.how,
            self.left_on,
            self.right_on,
            self.suffixes,
            self.as_join,
            broadcast,
            self.npartitions,
            self.divisions,
            self.indicator,
        )

    def _describe(self) -> str:
        return f"{self._describe_join()}, plan={self.strategy}"


@node
class MergePartitions(JoinNode, Blockwise):
    """Partition ``i`` of the left side joined with partition ``i`` of the right side.

    ``broadcast`` names a side with a single partition that meets every partition of the
    other side.
    """

    left: Expr
    right: Expr
    how: str
    left_on: tuple[Hashable, ...] | None
    right_on: tuple[Hashable, ...] | None
    suffixes: tuple[str, str]
    as_join: bool
    broadcast: str
    nout: int
    division_values: tuple[Any, ...]
    indicator: bool = False

    def _prefix(self) -> str:
        return "join-partitions" if self.as_join else "merge-partitions"

    @property
    def npartitions(self) -> int:
        return self.nout

    @property
    def divisions(self) -> tuple[Any, ...]:
        return self.division_values

    def _dep_partition(self, dep: Expr, i: int) -> int:
        if self.broadcast == "right" and dep == self.right:
            return 0
        if self.broadcast == "left" and dep == self.left:
            return 0
        return i

    def _task(self, i: int) -> TaskSpec:
        # _part consults _dep_partition, so a broadcast side is read at partition 0.
        left, right = self._part(self.left, i), self._part(self.right, i)
        args = (left, right, self.how, self.left_on, self.right_on, self.suffixes, self.as_join, self.indicator)
        return (merge_partitions, args, {})

    def _describe(self) -> str:
        side = f", broadcast {self.broadcast}" if self.broadcast else ""
        return f"{self._describe_join()}{side}"


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _as_expr(obj: Any) -> Expr:
    expr = getattr(obj, "expr", None)
    if isinstance(expr, Expr):
        return expr
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        from zmqdask.dataframe.sources import from_pandas_expr

        return from_pandas_expr(obj, npartitions=1, sort=False)
    raise UsageError(f"cannot join with {type(obj).__name__}; use a zmqdask or pandas DataFrame")


def _keys(value: Any) -> tuple[Hashable, ...] | None:
    if value is None:
        return None
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _check_columns(side: str, keys: tuple[Hashable, ...] | None, meta: Any) -> None:
    if keys is None:
        return
    names = list(meta.columns) if isinstance(meta, pd.DataFrame) else [meta.name]
    missing = [key for key in keys if key not in names]
    if missing:
        raise UsageError(f"{side} join keys {missing} are not columns of the {side} frame")


def merge(
    left: Any,
    right: Any,
    how: str = "inner",
    on: Any = None,
    left_on: Any = None,
    right_on: Any = None,
    left_index: bool = False,
    right_index: bool = False,
    suffixes: tuple[str, str] = ("_x", "_y"),
    indicator: bool = False,
) -> Any:
    """Database-style join of two frames on columns and/or indexes, like ``pandas.merge``
    (``indicator=True`` adds the ``_merge`` column saying where each row came from)."""
    if not isinstance(indicator, bool):
        raise UsageError("indicator must be True or False (a column name is not supported; rename _merge after)")
    if how not in HOWS:
        raise UsageError(f"how must be one of {HOWS}, got {how!r}")
    left_expr, right_expr = _as_expr(left), _as_expr(right)
    if on is not None:
        if left_on is not None or right_on is not None or left_index or right_index:
            raise UsageError("pass on= alone, or left_on=/right_on=/left_index=/right_index=")
        left_keys = right_keys = _keys(on)
    else:
        left_keys = None if left_index else _keys(left_on)
        right_keys = None if right_index else _keys(right_on)
        if left_keys is None and not left_index and right_keys is None and not right_index:
            common = [c for c in left_expr.columns if c in set(right_expr.columns)]
            if not common:
                raise UsageError("no common columns to merge on; pass on=, left_on= or right_on=")
            left_keys = right_keys = tuple(common)
        elif (left_keys is None and not left_index) or (right_keys is None and not right_index):
            raise UsageError("give join keys for both sides (left_on/left_index and right_on/right_index)")
    if left_keys is not None and right_keys is not None and len(left_keys) != len(right_keys):
        raise UsageError("left_on and right_on need the same number of keys")
    _check_columns("left", left_keys, left_expr._meta)
    _check_columns("right", right_keys, right_expr._meta)
    if left_keys is None and right_keys is None:
        left_expr, right_expr = _aligned_on_index(left_expr, right_expr)
    node_ = Merge(left_expr, right_expr, how, left_keys, right_keys, (suffixes[0], suffixes[1]), False, indicator)
    node_._meta  # noqa: B018 - an invalid join (e.g. clashing names) fails here, not at compute
    return new_collection(node_)


def join(left: Any, right: Any, on: Any = None, how: str = "left", lsuffix: str = "", rsuffix: str = "") -> Any:
    """Join ``right`` by its index to ``left``'s index (or to ``left``'s columns ``on``)."""
    if how not in HOWS:
        raise UsageError(f"how must be one of {HOWS}, got {how!r}")
    left_expr, right_expr = _as_expr(left), _as_expr(right)
    left_keys = _keys(on)
    _check_columns("left", left_keys, left_expr._meta)
    if left_keys is None:
        left_expr, right_expr = _aligned_on_index(left_expr, right_expr)
    node_ = Merge(left_expr, right_expr, how, left_keys, None, (lsuffix, rsuffix), True)
    node_._meta  # noqa: B018 - overlapping columns without suffixes fail here, not at compute
    return new_collection(node_)


def _aligned_on_index(left: Expr, right: Expr) -> tuple[Expr, Expr]:
    """Two sides joined index to index: with known divisions, both repartitioned to their
    union, so partition i meets partition i and the result keeps known divisions (no
    shuffle); as they are otherwise."""
    if left.npartitions == 1 or right.npartitions == 1 or not (left.known_divisions and right.known_divisions):
        return left, right
    if left.divisions == right.divisions:
        return left, right
    from zmqdask.dataframe.planning import align

    aligned_left, aligned_right = align(left, right)
    return aligned_left, aligned_right


# --------------------------------------------------------------------------------------------
# Concatenation along the index
# --------------------------------------------------------------------------------------------


def _concat_metas(*metas: Any) -> Any:
    return pd.concat(list(metas))


def conform(part: Any, meta: Any) -> Any:
    """A piece of one input given the columns and dtypes of the concatenated result."""
    from zmqdask.dataframe.categorical import conform_dtypes

    if isinstance(meta, pd.DataFrame) and isinstance(part, pd.DataFrame):
        if list(part.columns) != list(meta.columns):
            part = part.reindex(columns=meta.columns)
        if not part.dtypes.equals(meta.dtypes):
            part = conform_dtypes(part, meta)
    elif isinstance(meta, pd.Series) and part.dtype != meta.dtype:
        part = conform_dtypes(part, meta)
    return part


@node
class Concat(Blockwise):
    """The partitions of several frames one after the other (pandas' ``concat`` along rows)."""

    def _partitioning_parents(self) -> list[Expr] | None:
        return None  # its partitions are those of several inputs, one after the other

    frames: tuple[Expr, ...]

    def _prefix(self) -> str:
        return "concat"

    @cached_property
    def _meta(self) -> Any:
        return emulate(_concat_metas, *(frame._meta for frame in self.frames))

    @cached_property
    def _sources(self) -> tuple[tuple[int, int], ...]:
        return tuple((k, i) for k, frame in enumerate(self.frames) for i in range(frame.npartitions))

    @property
    def npartitions(self) -> int:
        return len(self._sources)

    @property
    def divisions(self) -> tuple[Any, ...]:
        frames = self.frames
        if not all(frame.known_divisions for frame in frames):
            return unknown_divisions(self.npartitions)
        try:
            # Known only if each frame's index lies strictly after the previous frame's.
            if any(a.divisions[-1] >= b.divisions[0] for a, b in itertools.pairwise(frames)):
                return unknown_divisions(self.npartitions)
        except TypeError:
            return unknown_divisions(self.npartitions)
        divisions: list[Any] = []
        for frame in frames:
            divisions.extend(frame.divisions[:-1])
        return (*divisions, frames[-1].divisions[-1])

    def _dep_partition(self, dep: Expr, i: int) -> int:
        return self._sources[i][1]

    def _task(self, i: int) -> TaskSpec:
        k, j = self._sources[i]
        return (conform, (TaskRef(self.frames[k]._key(j)), self._meta), {})

    def _required_columns(self, dep: Expr, needed: frozenset[Any] | None) -> frozenset[Any] | None:
        if needed is None or not isinstance(dep._meta, pd.DataFrame):
            return None
        return needed & frozenset(dep._meta.columns)

    def _describe(self) -> str:
        return f"{len(self.frames)} inputs"


def concat(
    objs: Any,
    axis: int | str = 0,
    join: str = "outer",
    ignore_index: bool = False,
    interleave_partitions: bool = False,
    ignore_unknown_divisions: bool = False,
    ignore_order: bool = False,
) -> Any:
    """The rows of several DataFrames or Series one after the other, like ``pandas.concat``.

    Partitions are kept as they are; divisions stay known when every input's index range
    lies after the previous one's.  Missing columns are filled as pandas fills them
    (``join="outer"``), or only the columns all inputs have are kept (``join="inner"``).
    Rows come in the order pandas gives them, input after input, so Dask's
    ``interleave_partitions`` (which sorts overlapping partitions by their divisions) is
    not needed to get a result: it and ``ignore_unknown_divisions`` and ``ignore_order``
    are accepted and change nothing.
    """
    if join not in ("outer", "inner"):
        raise UsageError(f"concat's join must be 'outer' or 'inner', not {join!r}")
    if axis in (1, "columns"):
        return _concat_columns(list(objs), ignore_index, join)
    if axis not in (0, "index", "rows"):
        raise UsageError(f"concat's axis must be 0 (rows) or 1 (columns), not {axis!r}")
    exprs = tuple(_as_expr(obj) for obj in objs)
    if not exprs:
        raise UsageError("concat needs at least one frame")
    if not all(is_frame_like(expr._meta) for expr in exprs):
        raise UsageError("concat needs DataFrames or Series")
    if join == "inner" and len(exprs) > 1:
        exprs = _common_columns(exprs)
    result = new_collection(Concat(exprs)) if len(exprs) > 1 else new_collection(exprs[0])
    return result.reset_index(drop=True) if ignore_index else result


def _common_columns(exprs: tuple[Expr, ...]) -> tuple[Expr, ...]:
    """The inputs of ``concat(join="inner")`` cut to the columns they all have (in the
    first one's order); Series count as one column named by their name."""
    from zmqdask.dataframe.expr import Projection

    def names(expr: Expr) -> list[Any]:
        meta = expr._meta
        return list(meta.columns) if isinstance(meta, pd.DataFrame) else [meta.name]

    shared = set(names(exprs[0]))
    for expr in exprs[1:]:
        shared &= set(names(expr))
    kept = [name for name in names(exprs[0]) if name in shared]
    return tuple(
        Projection(expr, tuple(kept)) if isinstance(expr._meta, pd.DataFrame) and names(expr) != kept else expr
        for expr in exprs
    )


def _concat_columns(objs: list[Any], ignore_index: bool, join: str = "outer") -> Any:
    """``concat(objs, axis=1)``: the inputs side by side, aligned partition by partition.

    Inputs with the same partitions (columns of one frame, say) go through unchanged; others
    are repartitioned to common divisions first, which needs known divisions, as in Dask.
    """
    from zmqdask.dataframe.collection import map_partitions

    exprs = [_as_expr(obj) for obj in objs]
    if not exprs:
        raise UsageError("concat needs at least one frame")
    if not all(is_frame_like(expr._meta) for expr in exprs):
        raise UsageError("concat needs DataFrames or Series")
    if len(exprs) == 1:
        return new_collection(exprs[0])
    return map_partitions(_side_by_side, ignore_index, join, *[new_collection(expr) for expr in exprs])


def _side_by_side(ignore_index: bool, join: str, *parts: Any) -> Any:
    """One partition of ``concat(..., axis=1)``."""
    return pd.concat(parts, axis=1, ignore_index=ignore_index, join="inner" if join == "inner" else "outer")
